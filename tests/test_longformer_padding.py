r"""Longformer pads its ids to a multiple of the attention window inside its forward: the
user's ids (not the model's padded copy) are the source, over the real tokens only."""

import pytest
import torch

from captum_hetattn import HeterogenousAttentionAttribution

transformers = pytest.importorskip("transformers")

PAD = 1


def _model():
    torch.manual_seed(0)
    config = transformers.LongformerConfig(
        vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, attention_window=4, max_position_embeddings=40,
        pad_token_id=PAD, num_labels=3,
    )
    return transformers.LongformerForSequenceClassification(config).eval()


IDS = torch.randint(5, 60, (2, 6), generator=torch.Generator().manual_seed(1))


def _explain(model, ids, mask):
    def forward(ids, mask):
        return model(input_ids=ids, attention_mask=mask).logits

    return HeterogenousAttentionAttribution(forward, model=model).explain(
        ids, target=1, additional_forward_args=(mask,))


def test_ids_the_model_pads_itself_are_the_source_over_the_real_tokens():
    model = _model()
    mask = torch.ones_like(IDS)
    explanation = _explain(model, IDS, mask)
    # the old code found no source at all (the padded ids matched no input): relevance == {}
    assert len(explanation.relevance) == 1
    (relevance,) = explanation.relevance.values()
    assert relevance.shape == IDS.shape
    assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0
    # the same forward with the ids padded by the user: the real tokens' relevance agrees,
    # the padding is explained as tokens of the user's only there
    padded_ids = torch.cat([IDS, torch.full((2, 2), PAD)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 2, dtype=mask.dtype)], dim=1)
    (reference,) = _explain(model, padded_ids, padded_mask).relevance.values()
    assert reference.shape == padded_ids.shape
    torch.testing.assert_close(relevance, reference[:, :6], atol=1e-5, rtol=1e-4)


def test_model_padded_batch_equals_singles():
    model = _model()
    mask = torch.ones_like(IDS)
    (batch,) = _explain(model, IDS, mask).relevance.values()
    for i in range(IDS.shape[0]):
        (single,) = _explain(model, IDS[i:i + 1], mask[i:i + 1]).relevance.values()
        torch.testing.assert_close(batch[i:i + 1], single, atol=1e-5, rtol=1e-4)


def _led():
    torch.manual_seed(0)
    config = transformers.LEDConfig(
        vocab_size=60, d_model=16, encoder_layers=2, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, attention_window=4, max_encoder_position_embeddings=40,
        max_decoder_position_embeddings=40, pad_token_id=PAD,
    )
    return transformers.LEDForConditionalGeneration(config).eval()


def _explain_led(model, ids, mask):
    decoder = torch.tensor([[2, 11, 23]]).expand(len(ids), -1)

    def forward(ids, decoder_ids, mask):
        return model(input_ids=ids, decoder_input_ids=decoder_ids,
                     attention_mask=mask).logits[:, -1]

    return HeterogenousAttentionAttribution(forward, model=model).explain(
        (ids, decoder), target=7, additional_forward_args=(mask,))


def test_led_padding_looked_up_apart_is_no_source_alone_or_in_a_batch():
    r"""LED looks up its window padding on its own and appends it to the embeddings: the ids are
    the source over their own tokens, alone and in a batch whose second example is padded by
    its mask (a mask of ones is never taken for ids padded with pad id 1)."""
    model = _led()
    mask = torch.ones_like(IDS)
    mask[1, 4:] = 0
    ids = IDS.clone()
    ids[1, 4:] = PAD
    batch = _explain_led(model, ids, mask).relevance
    source = [n for n, r in batch.items() if tuple(r.shape) == tuple(ids.shape)]
    assert len(source) == 1 and len(batch) == 2, {n: r.shape for n, r in batch.items()}
    assert batch[source[0]][1, 4:].abs().sum() == 0  # the user's padding takes nothing
    for i in range(2):
        single = _explain_led(model, ids[i:i + 1], mask[i:i + 1]).relevance
        assert set(single) == set(batch), (i, {n: r.shape for n, r in single.items()})
        for name, r in single.items():
            assert torch.isfinite(r).all()
            torch.testing.assert_close(batch[name][i:i + 1], r, atol=1e-5, rtol=1e-4)


def test_embeddings_the_model_pads_itself_are_the_source_over_the_real_tokens():
    r"""The same padding on ``inputs_embeds``: the 2 rows the model appends (a lookup of the pad
    id) are no token of the user's; relevance equals the ids path's."""
    model = _model()
    glob = torch.zeros_like(IDS)
    glob[:, 0] = 1
    embeddings = model.longformer.embeddings.word_embeddings(IDS).detach()

    def by_embeddings(embeds, glob):
        return model(inputs_embeds=embeds, global_attention_mask=glob).logits

    def by_ids(ids, glob):
        return model(input_ids=ids, global_attention_mask=glob).logits

    (relevance,) = HeterogenousAttentionAttribution(by_embeddings, model=model).explain(
        embeddings, target=1, additional_forward_args=(glob,)).relevance.values()
    (reference,) = HeterogenousAttentionAttribution(by_ids, model=model).explain(
        IDS, target=1, additional_forward_args=(glob,)).relevance.values()
    assert relevance.shape == IDS.shape  # was (2, 8): the model's padding counted as tokens
    torch.testing.assert_close(relevance, reference, atol=1e-5, rtol=1e-4)
