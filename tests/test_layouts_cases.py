r"""Layouts of calls that are not one dense map over their hidden states (issue 19, requests from
binding): each is explained with maps that match the model's, or left out / refused by name."""

import warnings

import pytest
import torch

from captum_hetattn import HeterogenousAttentionAttribution

transformers = pytest.importorskip("transformers")


def _inkling2():
    from transformers.models.inkling2 import configuration_inkling2 as conf
    from transformers.models.inkling2 import modeling_inkling2 as mod

    torch.manual_seed(0)
    config = conf.Inkling2TextConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, swa_num_attention_heads=2, swa_num_key_value_heads=2,
        swa_head_dim=16, d_rel=16, moe_intermediate_size=64, n_routed_experts=4,
        num_experts_per_tok=2, n_layers_per_attn_res_block=4, max_position_embeddings=64,
        layer_types=["hybrid_sliding", "hybrid_sliding", "hybrid_sliding", "hybrid"],
        pad_token_id=0,
    )
    model = mod.Inkling2TextModel(config).eval()
    with torch.no_grad():  # a learned query that is not zero, so the depth softmax is not flat
        for name, parameter in model.named_parameters():
            if name.endswith("_input.query"):
                parameter.normal_()
    return model


def test_inkling2_attention_over_depth_is_left_out_by_name_and_the_rest_explained():
    model = _inkling2()
    ids = torch.randint(5, 90, (2, 7), generator=torch.Generator().manual_seed(1))

    def forward(i):
        return model(input_ids=i).last_hidden_state[:, -1, :4]

    explainer = HeterogenousAttentionAttribution(forward, model=model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = explainer.explain((ids,), target=1)
    depth = [str(w.message) for w in caught if "over depth" in str(w.message)]
    named = {m.split("'")[1] for m in depth}
    # every block attention residual (attention_input / mlp_input / final_input) is named
    residuals = {n for n, m in model.named_modules()
                 if type(m).__name__ == "Inkling2BlockAttentionResidual"}
    assert residuals and named == residuals, (named, residuals)
    called = [c.name for c in batch.calls]
    assert not any("attention_input" in n or "mlp_input" in n for n in called)
    assert any("self_attn" in n for n in called)
    relevance = batch.relevance["text"] if "text" in batch.relevance else next(
        iter(batch.relevance.values()))
    assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0
    for b in range(2):
        single = explainer.explain((ids[b:b + 1],), target=1)
        alone = single.relevance["text"] if "text" in single.relevance else next(
            iter(single.relevance.values()))
        torch.testing.assert_close(relevance[b:b + 1], alone, atol=1e-6, rtol=1e-5)
