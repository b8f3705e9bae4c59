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
