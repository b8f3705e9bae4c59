"""Value-weighted relevance (``weighting="value"``): the rules, what is captured on every
backend (checked against the modules' own weights), and the equal-weight special case."""

import pytest
import tiny_models
import torch
import torch.nn.functional as F

from captum_hetattn import (
    AttentionRollout,
    GenericAttentionExplainability,
    HeterogenousAttentionAttribution,
)
from captum_hetattn.binding.tokens import tokens_view
from captum_hetattn.capture import AttentionRecorder
from captum_hetattn.engine import pipeline as attribution_module
from captum_hetattn.engine.values import ValueTerms, ValueWatcher, value_terms
from captum_hetattn.rules import (
    AttentionFlow,
    aggregate_heads,
    propagate,
    propagate_row,
    read_rows,
    residual_shares,
    value_weighted,
)


def close(a, b, atol=1e-5):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=atol), (a - b).abs().max()


def _maps(batch, heads, n_q, n_k, seed):
    gen = torch.Generator().manual_seed(seed)
    attention = torch.rand(batch, heads, n_q, n_k, generator=gen).softmax(-1)
    return attention, torch.randn(batch, heads, n_q, n_k, generator=gen)


@pytest.mark.parametrize("correction", ["pos", "full", "abs", "none"])
def test_equal_value_norms_give_the_plain_head_mean(correction):
    attention, gradient = _maps(2, 3, 4, 5, 0)
    norms = torch.full((2, 3, 5), 2.7)
    close(value_weighted(attention, gradient, correction, norms),
          aggregate_heads(attention, gradient, correction))
    # a key with a larger value moves more; each row keeps its attention mass
    norms[:, :, 1] = 10.0
    weighted = value_weighted(attention, None, "none", norms)
    plain = aggregate_heads(attention, None, "none")
    assert (weighted[..., 1] > plain[..., 1]).all()
    close(weighted.sum(-1), plain.sum(-1))


def test_residual_shares():
    keep, mix = residual_shares(torch.tensor([[1.0, 3.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    close(keep, torch.tensor([[1.0, 0.5, 1.0]]))
    close(mix, torch.tensor([[1.0, 1.5, 1.0]]))


def test_residual_weights_in_full_and_row_propagation_agree():
    gen = torch.Generator().manual_seed(3)
    sizes = {"text": 4, "image": 5}

    def flow(q, k):
        attention = torch.rand(2, sizes[q], sizes[k], generator=gen)
        return AttentionFlow(q, k, attention, f"{q}<-{k}",
                             residual=torch.rand(2, sizes[q], generator=gen) * 2)

    steps = [flow("text", "text"), flow("image", "image"),
             [flow("text", "image"), flow("image", "text")], flow("text", "text")]
    readout = {"text": torch.softmax(torch.randn(2, 4, generator=gen), -1)}
    full = read_rows(propagate(sizes, steps), sizes, readout)
    row = propagate_row(sizes, steps, readout)
    for stream in sizes:
        close(full[stream], row[stream])
    # residual 1 everywhere is the paper's rule
    ones = [[AttentionFlow(f.query, f.key, f.attention, f.label, torch.ones_like(f.residual))
             for f in (s if isinstance(s, list) else [s])] for s in steps]
    plain = [[AttentionFlow(f.query, f.key, f.attention, f.label)
              for f in (s if isinstance(s, list) else [s])] for s in steps]
    for stream, value in propagate_row(sizes, ones, readout).items():
        close(value, propagate_row(sizes, plain, readout)[stream])
    with pytest.raises(ValueError, match="residual weights of shape"):
        propagate(sizes, [AttentionFlow("text", "text", torch.rand(2, 4, 4), "bad",
                                        residual=torch.ones(2, 5))])


def _terms(model, inputs):
    """``value_terms`` of every call, recorded as the explainer records them."""
    model.zero_grad()
    watcher = ValueWatcher()
    with torch.enable_grad(), AttentionRecorder(model, record_io=True) as recorder, watcher:
        tiny_models.run(model, inputs)
        return [(r, value_terms(r, model.get_submodule(r.name), watcher))
                for r in recorder.records]


def _check(terms: ValueTerms, values, out_weight, output, query_input, heads):
    """ν and the norms from the module's own projections, computed by hand."""
    batch, n_key, width = values.shape
    head = width // heads
    for h in range(heads):
        projected = values[..., h * head:(h + 1) * head] @ out_weight[:, h * head:(h + 1) * head].T
        close(terms.norms[:, h], projected.norm(dim=-1), atol=1e-4)
    close(terms.output_norm, output.norm(dim=-1), atol=1e-4)
    close(terms.input_norm, query_input.norm(dim=-1), atol=1e-4)


def _inputs_of(model, inputs, names):
    """The first positional input of each named module in a plain forward."""
    seen = {}

    def keep(name):
        def hook(module, args):
            seen.setdefault(name, args[0].detach())
        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(keep(n)) for n in names]
    try:
        tiny_models.run(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return [seen[n] for n in names]


@pytest.mark.parametrize("family, attention, value, dense", [
    # transformers attention interface
    ("bert", "encoder.layer.{}.attention.self", "encoder.layer.{}.attention.self.value",
     "encoder.layer.{}.attention.output.dense"),
    # softmax interception (hand-written attention)
    ("lxmert", "encoder.layer.{}.attention.self", "encoder.layer.{}.attention.self.value",
     "encoder.layer.{}.attention.output.dense"),
])
def test_values_and_output_projection_are_read(family, attention, value, dense):
    model, inputs = tiny_models.BUILDERS[family]()
    recorded = dict((r.name, t) for r, t in _terms(model, inputs))
    for layer in range(2):
        name = attention.format(layer)
        hidden, context = _inputs_of(model, inputs, [name, dense.format(layer)])
        values = model.get_submodule(value.format(layer))(hidden).detach()
        weight = model.get_submodule(dense.format(layer)).weight.detach()
        _check(recorded[name], values, weight, context @ weight.T, hidden, 2)


def test_multihead_attention_backend_uses_its_own_projections():
    model, inputs = tiny_models.torch_transformer()
    recorded = _terms(model, inputs)
    record, terms = recorded[0]
    mha = model.encoder.layers[0].self_attn
    x = model.embed(inputs["src"]) + model.position[:6]
    embed = mha.embed_dim
    values = F.linear(x, mha.in_proj_weight[2 * embed:], mha.in_proj_bias[2 * embed:])
    output, _ = mha(x, x, x, key_padding_mask=inputs["src_key_padding_mask"],
                    need_weights=False)
    _check(terms, values.detach(), mha.out_proj.weight.detach(),
           (output - mha.out_proj.bias).detach(), x.detach(), 2)
    assert tokens_view(record.attention, 1).shape[0] == 2


def test_equal_norms_and_shares_give_the_equal_weight_method(monkeypatch):
    """The special case, end to end: with every ν equal and ‖o‖ = ‖x‖ captured, value
    weighting is the paper's method; with the real terms it differs."""
    model, inputs = tiny_models.lxmert()

    def forward(ids, feats, boxes, mask):
        return model(input_ids=ids, visual_feats=feats, visual_pos=boxes,
                     attention_mask=mask).pooled_output

    args = (inputs["input_ids"], inputs["visual_feats"], inputs["visual_pos"])
    explainer = HeterogenousAttentionAttribution(forward, model=model, graph="lxmert")
    kwargs = dict(target=0, additional_forward_args=(inputs["attention_mask"],))
    plain = explainer.explain(args, **kwargs)
    weighted = explainer.explain(args, weighting="value", **kwargs)
    assert not torch.allclose(plain.relevance["image"], weighted.relevance["image"])
    real = attribution_module.value_terms

    def equalised(record, module, watcher):
        terms = real(record, module, watcher)
        return ValueTerms(torch.full_like(terms.norms, 3.0), terms.input_norm,
                          terms.input_norm)

    monkeypatch.setattr(attribution_module, "value_terms", equalised)
    for correction in ("pos", "full"):
        same = explainer.explain(args, weighting="value", correction=correction, **kwargs)
        reference = explainer.explain(args, correction=correction, **kwargs)
        for source in reference.relevance:
            close(same.relevance[source], reference.relevance[source])


def test_attribute_and_noise_link_and_errors():
    model, inputs = tiny_models.bert()

    def forward(ids, mask):
        return model(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]

    explainer = HeterogenousAttentionAttribution(forward, model=model)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    attributions = explainer.attribute(ids, target=0, additional_forward_args=(mask,),
                                       weighting="value")
    assert attributions.shape == ids.shape and torch.isfinite(attributions).all()
    # the full-matrix path (noise link) and the adjoint agree on a self-attention-only model
    linked = explainer.explain(ids, target=0, additional_forward_args=(mask,),
                               weighting="value", noise_link=True)
    row = explainer.explain(ids, target=0, additional_forward_args=(mask,), weighting="value")
    close(linked.relevance["text"], row.relevance["text"])
    with pytest.raises(ValueError, match="weighting must be None or 'value'"):
        explainer.explain(ids, target=0, additional_forward_args=(mask,), weighting="values")
    for other in (GenericAttentionExplainability, AttentionRollout):
        with pytest.raises(ValueError, match="option of HeterogenousAttentionAttribution"):
            other(forward, model=model).explain(ids, target=0, additional_forward_args=(mask,),
                                                weighting="value")


def test_attention_that_is_not_a_matmul_is_named():
    """A map multiplied by einsum: its values are not seen, the module is named."""

    class EinsumAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(8, 24)

        def forward(self, x):
            q, k, v = self.qkv(x).reshape(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
            weights = (q @ k.transpose(-1, -2)).softmax(-1)
            return torch.einsum("bhqk,bhkd->bqhd", weights, v).reshape(2, 5, 8)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = EinsumAttention()
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.attention(x)[:, 0])

    torch.manual_seed(0)
    model = Model().eval()
    explainer = HeterogenousAttentionAttribution(model)
    x = torch.randn(2, 5, 8)
    assert torch.isfinite(explainer.attribute(x, target=0)).all()
    with pytest.raises(NotImplementedError, match="'attention' does not multiply"):
        explainer.attribute(x, target=0, weighting="value")
