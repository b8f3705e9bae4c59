"""The read tokens' own share (``w_j·R[j, j]``) is out of what users see, by default, for every
method; ``Explanation.own`` keeps it and ``include_own=True`` gives the paper's raw row.

References are recomputed here from the maps the explainer returns (``return_maps=True``), with
the paper's rules written out by hand (one stream: ``R ← (I + Ā) R`` per layer), never with the
engine's own propagation."""

import re

import pytest
import torch
import transformers as tf
from captum.attr import visualization as viz

from captum_hetattn import (
    AttentionRollout,
    GenericAttentionExplainability,
    HeterogenousAttentionAttribution,
    RawAttention,
)

METHODS = [
    HeterogenousAttentionAttribution,
    GenericAttentionExplainability,
    AttentionRollout,
    RawAttention,
]
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
WORDS = ["[CLS]", "the", "red", "square", "is", "left", "[SEP]"]


@pytest.fixture(scope="module")
def classifier(bert):
    """A BERT sequence classifier from a config ([CLS] readout through the pooler)."""
    return bert


@pytest.fixture(scope="module")
def pooled(classifier):
    """The same encoder read by mean pooling over the real tokens (a sentence embedding's
    score), as sentence-transformers models do: every real token is read."""
    model, _, ids, mask = classifier
    torch.manual_seed(3)
    head = torch.randn(32)

    def forward(i, m):
        hidden = model.bert(input_ids=i, attention_mask=m).last_hidden_state
        weights = m[..., None].to(hidden.dtype)
        return ((hidden * weights).sum(1) / weights.sum(1)) @ head[:, None]

    return model, forward, ids, mask


def _real(mask):
    return mask.bool()


def _by_hand(explanation, readout, rollout=False):
    """``R`` of the one text stream from the returned maps, by the paper's self rule (or
    rollout's ``(R + ĀR)/2``), and its readout row."""
    maps = list(explanation.maps.values())
    n = maps[0].shape[-1]
    relevance = torch.eye(n).expand(maps[0].shape[0], n, n)
    for attention in maps:
        relevance = relevance + attention.float() @ relevance
        if rollout:
            relevance = relevance / 2
    row = (readout[:, None, :] @ relevance)[:, 0]
    return relevance, row


@pytest.mark.parametrize("method", METHODS)
def test_the_readout_token_is_not_the_largest_entry_of_attribute(method, classifier):
    model, forward, ids, mask = classifier
    explainer = method(forward, model=model)
    attributions = explainer.attribute(ids, target=1, additional_forward_args=(mask,))
    raw = explainer.attribute(ids, target=1, additional_forward_args=(mask,), include_own=True)
    for example in range(ids.shape[0]):
        real = _real(mask)[example]
        context = attributions[example][real]
        # [CLS] is read alone: its whole own entry w·R[0, 0] is out, so it is 0, not evidence
        assert context[0].abs() <= 1e-6 * context.abs().max()
        assert context[1:].abs().max() > 0
        assert int(context.abs().argmax()) != 0
        if method is RawAttention:
            continue  # no identity: the last map's [CLS] row is near uniform here
        # the paper's raw row: [CLS] is the largest entry (what users saw before); with the
        # gradient-weighted maps its identity swamps the rest
        assert int(raw[example][real].abs().argmax()) == 0
        if method is not AttentionRollout:
            assert raw[example][0] > 10 * raw[example][real][1:].abs().max()


@pytest.mark.parametrize("method", METHODS)
def test_own_is_kept_apart_and_adds_back_to_the_raw_row(method, classifier, pooled):
    for model, forward, ids, mask in (classifier, pooled):
        explainer = method(forward, model=model)
        context = explainer.explain(ids, target=0, additional_forward_args=(mask,))
        raw = explainer.explain(ids, target=0, additional_forward_args=(mask,),
                                include_own=True)
        assert context.own.keys() == raw.own.keys() == {"text"}
        torch.testing.assert_close(context.own["text"], raw.own["text"])
        torch.testing.assert_close(context.stream_relevance["text"] + context.own["text"],
                                   raw.stream_relevance["text"], atol=1e-6, rtol=0)
        torch.testing.assert_close(context.relevance["text"] + context.own["text"],
                                   raw.relevance["text"], atol=1e-6, rtol=0)
        # the own share lies on the read tokens only
        assert (context.own["text"][context.readout["text"] == 0] == 0).all()
        assert (context.own["text"][context.readout["text"] > 0] > 0).all()


@pytest.mark.parametrize("correction", ["pos", "full"])
def test_include_own_is_the_papers_raw_row(classifier, correction):
    """Against the paper's rule recomputed from the maps: the raw row with ``include_own``,
    and the whole own entry ``R[0, 0]`` of the [CLS] readout out of the default."""
    model, forward, ids, mask = classifier
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    raw = explainer.explain(ids, target=2, additional_forward_args=(mask,),
                            correction=correction, return_maps=True, include_own=True)
    relevance, row = _by_hand(raw, raw.readout["text"])
    torch.testing.assert_close(raw.relevance["text"], row, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(raw.own["text"][:, 0], relevance[:, 0, 0], atol=1e-6, rtol=1e-5)
    attributions = explainer.attribute(ids, target=2, additional_forward_args=(mask,),
                                       correction=correction, include_own=True)
    torch.testing.assert_close(attributions, row, atol=1e-6, rtol=1e-5)
    context = explainer.attribute(ids, target=2, additional_forward_args=(mask,),
                                  correction=correction)
    expected = row.clone()
    expected[:, 0] = 0
    torch.testing.assert_close(context, expected, atol=1e-6, rtol=1e-5)


def test_pooled_readouts_lose_each_read_tokens_staying_share_under_the_adjoint(pooled):
    """Mean pooling reads every real token: ours and rollout (the adjoint) take out each read
    token's staying share ``w_j·∏_l (1 + Ā_l[j, j]) / s`` (s = 1 for ours, 2 for rollout): the
    paths that never leave ``j``; GAE and the noise link (every block) take out the whole own
    entry ``w_j·R[j, j]``."""
    model, forward, ids, mask = pooled
    for method, scale in ((HeterogenousAttentionAttribution, 1.0), (AttentionRollout, 2.0)):
        explanation = method(forward, model=model).explain(
            ids, target=0, additional_forward_args=(mask,), return_maps=True)
        weights = explanation.readout["text"]
        assert ((weights > 0) == _real(mask)).all()  # every real token is read
        staying = weights.clone()
        for attention in explanation.maps.values():
            staying = staying * (1 + attention.float().diagonal(dim1=-2, dim2=-1)) / scale
        torch.testing.assert_close(explanation.own["text"], staying, atol=1e-6, rtol=1e-5)
        relevance, row = _by_hand(explanation, weights, rollout=method is AttentionRollout)
        torch.testing.assert_close(explanation.relevance["text"], row - staying,
                                   atol=1e-6, rtol=1e-5)
        # what the staying share leaves of the own entry: the round trips j → k → j only
        whole = weights * relevance.diagonal(dim1=-2, dim2=-1)
        assert ((whole - staying)[_real(mask)] >= -1e-6).all()
    for method, options in ((GenericAttentionExplainability, {}),
                            (HeterogenousAttentionAttribution, {"noise_link": True})):
        explanation = method(forward, model=model).explain(
            ids, target=0, additional_forward_args=(mask,), return_maps=True, **options)
        weights = explanation.readout["text"]
        relevance, row = _by_hand(explanation, weights)  # one stream: no cross call differs
        own = weights * relevance.diagonal(dim1=-2, dim2=-1)
        torch.testing.assert_close(explanation.own["text"], own, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(explanation.relevance["text"], row - own, atol=1e-6,
                                   rtol=1e-5)


def test_raw_attention_leaves_out_the_read_tokens_attention_to_themselves(pooled):
    model, forward, ids, mask = pooled
    explanation = RawAttention(forward, model=model).explain(
        ids, target=0, additional_forward_args=(mask,), return_maps=True)
    weights = explanation.readout["text"]
    last = list(explanation.maps.values())[-1].float()
    own = weights * last.diagonal(dim1=-2, dim2=-1)
    torch.testing.assert_close(explanation.own["text"], own)
    torch.testing.assert_close(explanation.relevance["text"],
                               (weights[:, None] @ last)[:, 0] - own, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_pooled_batch_equals_single_calls(method, pooled):
    model, forward, ids, mask = pooled
    explainer = method(forward, model=model)
    batched = explainer.explain(ids, target=0, additional_forward_args=(mask,))
    for example, length in ((0, 7), (1, 5), (2, 3)):
        alone = explainer.explain(ids[example:example + 1, :length], target=0,
                                  additional_forward_args=(mask[example:example + 1, :length],))
        for field in ("relevance", "own"):
            torch.testing.assert_close(getattr(batched, field)["text"][example:example + 1,
                                                                        :length],
                                       getattr(alone, field)["text"], atol=1e-5, rtol=1e-4)


def test_many_targets_keep_their_own_share(classifier):
    model, forward, ids, mask = classifier
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    several = explainer.explain(ids, targets=[0, 2], additional_forward_args=(mask,))
    assert several.own["text"].shape == (3, 2, 7)
    for k, target in enumerate((0, 2)):
        single = explainer.explain(ids, target=target, additional_forward_args=(mask,))
        torch.testing.assert_close(several.own["text"][:, k], single.own["text"])
        torch.testing.assert_close(several.relevance["text"][:, k], single.relevance["text"])


def test_visualize_text_from_attribute_shows_the_words(classifier):
    """Captum's text visualiser, fed ``attribute()`` as a user would (scaled to [-1, 1], no
    token zeroed by hand): the words are coloured, [CLS] is not the one highlighted word."""
    model, forward, ids, mask = classifier
    explainer = HeterogenousAttentionAttribution(forward, model=model)

    def lightness(attributions):
        words = attributions[0] / attributions[0].abs().max()
        record = viz.VisualizationDataRecord(words, 0.9, "1", "1", "1", words.sum(), WORDS,
                                             0.0)
        html = viz.visualize_text([record], legend=False).data
        return [int(v) for v in re.findall(r"hsl\(\d+, 75%, (\d+)%\)", html)]

    shown = lightness(explainer.attribute(ids, target=1, additional_forward_args=(mask,)))
    assert len(shown) == len(WORDS)
    assert shown[0] == 100  # [CLS]: no colour
    assert sum(value < 95 for value in shown[1:]) >= 3  # the words carry the colour
    assert min(shown[1:]) == 50  # the most relevant word, at full strength
    # before: only [CLS] coloured, every word white
    raw = lightness(explainer.attribute(ids, target=1, additional_forward_args=(mask,),
                                        include_own=True))
    assert raw[0] == 50 and all(value >= 99 for value in raw[1:])


def test_include_own_must_be_a_bool(classifier):
    model, forward, ids, mask = classifier
    with pytest.raises(TypeError, match="include_own"):
        HeterogenousAttentionAttribution(forward, model=model).attribute(
            ids, target=0, additional_forward_args=(mask,), include_own="yes")


def test_displays_grey_a_single_readout_token_only(classifier, pooled):
    """A [CLS] readout greys [CLS] (so a raw row draws like the default); a mean-pooled
    readout reads every word, whose context relevance is shown: none is greyed."""
    from captum_hetattn.visualization import explanation_readout_token

    for (model, forward, ids, mask), expected in ((classifier, 0), (pooled, None)):
        explanation = HeterogenousAttentionAttribution(forward, model=model).explain(
            ids, target=0, additional_forward_args=(mask,))
        assert explanation_readout_token(explanation, "text", 0) == expected


def test_a_negative_readout_counts_from_the_end(classifier):
    """``readout=-1`` reads the last token, as ``target=-1`` picks the last class; per
    example too; beyond the stream's length it is refused by name."""
    model, forward, ids, mask = classifier
    mask = torch.ones_like(mask)  # no padding: a readout on a padding token is refused
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    last = explainer.explain(ids, target=0, additional_forward_args=(mask,), readout=-1)
    assert last.readout_token.tolist() == [6, 6, 6]
    same = explainer.explain(ids, target=0, additional_forward_args=(mask,), readout=6)
    torch.testing.assert_close(last.relevance["text"], same.relevance["text"])
    mixed = explainer.explain(ids, target=0, additional_forward_args=(mask,),
                              readout=torch.tensor([0, -3, 2]))
    assert mixed.readout_token.tolist() == [0, 4, 2]
    with pytest.raises(ValueError, match="out of range for stream 'text'"):
        explainer.explain(ids, target=0, additional_forward_args=(mask,), readout=-8)


def test_numpy_integer_targets_and_readouts_are_taken_as_ints(classifier):
    np = pytest.importorskip("numpy")
    model, forward, ids, mask = classifier
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    expected = explainer.attribute(ids, target=2, additional_forward_args=(mask,))
    logits = forward(ids, mask).detach().numpy()
    for target in (np.int64(2), np.int32(2), [np.int64(2)] * 3):
        torch.testing.assert_close(
            explainer.attribute(ids, target=target, additional_forward_args=(mask,)), expected)
    torch.testing.assert_close(
        explainer.attribute(ids, target=logits.argmax(axis=1).tolist(),
                            additional_forward_args=(mask,)),
        explainer.attribute(ids, target=[int(t) for t in logits.argmax(axis=1)],
                            additional_forward_args=(mask,)))
    several = explainer.explain(ids, targets=[np.int64(0), np.int64(2)],
                                additional_forward_args=(mask,))
    assert several.relevance["text"].shape == (3, 2, 7)
    read = explainer.explain(ids, target=0, additional_forward_args=(torch.ones_like(mask),),
                             readout=np.int64(-1))  # no padding read: that is refused
    assert read.readout_token.tolist() == [6, 6, 6]
    with pytest.raises(TypeError, match="target"):
        explainer.attribute(ids, target=np.float64(2.0), additional_forward_args=(mask,))


def test_the_docstring_example_runs_on_a_transformers_classifier():
    """``HeterogenousAttentionAttribution(model).attribute(pixel_values, target=3)``, as the
    docstring shows, on a ViT classifier: its ``ModelOutput`` is read at its logits."""
    torch.manual_seed(0)
    model = tf.ViTForImageClassification(tf.ViTConfig(**SMALL, image_size=16, patch_size=4,
                                                      num_labels=5)).eval()
    pixel_values = torch.randn(2, 3, 16, 16)
    attributions = HeterogenousAttentionAttribution(model).attribute(pixel_values, target=3)
    wrapped = HeterogenousAttentionAttribution(
        lambda x: model(x).logits, model=model).attribute(pixel_values, target=3)
    assert attributions.shape == pixel_values.shape
    torch.testing.assert_close(attributions, wrapped)


def test_an_output_without_scores_says_how_to_wrap_the_model(classifier):
    """A model whose output has no logits (an encoder's hidden states): the message gives
    one complete fix that works, the model named."""
    model, _, ids, mask = classifier
    with pytest.raises(TypeError) as raised:
        HeterogenousAttentionAttribution(model.bert).attribute(ids, target=0)
    message = str(raised.value)
    assert "last_hidden_state" in message and "model=model" in message
    fixed = HeterogenousAttentionAttribution(
        lambda *args: model.bert(*args).last_hidden_state[:, 0, :2],
        model=model.bert)  # the kind of fix the message gives runs (not .sum(-1): the sum of
    # a layer-normed state is constant, its gradient zero: refused, test_glpn_readout)
    assert fixed.attribute(ids, target=0).shape == ids.shape
