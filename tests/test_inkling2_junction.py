"""Inkling2 with several attention-residual blocks (n_layers_per_attn_res_block=2): a junction
whose token map does not fit its streams stopped the propagation with a message that named only
streams (rules/adjoint.check_flows); it is refused when bound, naming the modules around it."""

import pytest
import torch

inkling2 = pytest.importorskip("transformers.models.inkling2.modeling_inkling2")
from transformers.models.inkling2.configuration_inkling2 import Inkling2TextConfig  # noqa: E402

from captum_hetattn import HeterogenousAttentionAttribution  # noqa: E402


def test_a_misfit_junction_names_the_modules_around_it():
    torch.manual_seed(0)
    config = Inkling2TextConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, swa_num_attention_heads=2,
        swa_num_key_value_heads=2, swa_head_dim=16, d_rel=16, moe_intermediate_size=64,
        n_routed_experts=4, num_experts_per_tok=2, n_layers_per_attn_res_block=2,
        max_position_embeddings=64, pad_token_id=0,
        layer_types=["hybrid_sliding", "hybrid_sliding", "hybrid_sliding", "hybrid"])
    model = inkling2.Inkling2TextModel(config).eval()
    ids = torch.randint(5, 90, (2, 7), generator=torch.Generator().manual_seed(1))
    explainer = HeterogenousAttentionAttribution(
        lambda i: model(input_ids=i).last_hidden_state[:, -1, :4], model=model)
    try:  # explained (should the depth stack be bound one day), or refused by module
        explanation = explainer.explain((ids,), target=1)
    except ValueError as err:
        message = str(err)
        assert "junction '" in message and "before attention module 'layers." in message
        assert "as attention module 'layers." in message
    else:
        assert all(bool(v.isfinite().all()) for v in explanation.relevance.values())
    assert model.training is False
