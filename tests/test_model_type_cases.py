"""Model types that crashed or were refused for a mechanism's sake (issue 19), each built tiny
from a config in the test: explained now (batch == single examples, padding zero) or refused by
name."""

import pytest
import torch
from transformers import (
    BioGptConfig,
    BioGptForCausalLM,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
)

from captum_hetattn import HeterogenousAttentionAttribution


def _random_mask(batch: int, length: int) -> torch.Tensor:
    mask = torch.randint(0, 2, (batch, length), generator=torch.Generator().manual_seed(3))
    mask[:, 0] = mask[:, -1] = 1  # the tokens the models read are real
    return mask


def _biogpt():
    torch.manual_seed(0)
    model = BioGptForCausalLM(BioGptConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=64)).eval()
    return model, lambda i, m: model(input_ids=i, attention_mask=m).logits[:, -1]


def _deberta_v2():
    torch.manual_seed(0)
    model = DebertaV2ForSequenceClassification(DebertaV2Config(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, relative_attention=True, position_biased_input=False,
        pos_att_type=["p2c", "c2p"], max_relative_positions=-1, position_buckets=-1,
        type_vocab_size=16, num_labels=6)).eval()
    return model, lambda i, m: model(input_ids=i, attention_mask=m).logits


@pytest.mark.parametrize("build", [_biogpt, _deberta_v2], ids=["biogpt", "deberta-v2"])
def test_random_per_example_mask_is_explained_like_single_examples(build):
    """BioGPT's position embedding is an nn.Embedding subclass handed the attention mask first:
    it is no lookup of the mask (it used to be taken for one: 'stack expects each tensor to be
    equal size'). DeBERTa's masked query rows see no key: zero, so its padding is found."""
    model, func = build()
    ids = torch.randint(5, 99, (3, 7), generator=torch.Generator().manual_seed(2))
    mask = _random_mask(3, 7)
    explainer = HeterogenousAttentionAttribution(func, model=model)
    batch = explainer.attribute(ids, target=5, additional_forward_args=(mask,))
    assert bool(torch.isfinite(batch).all())
    assert batch[mask == 0].abs().sum() == 0  # masked tokens get nothing
    assert (batch[mask == 1] != 0).sum() > mask.sum() // 2
    for example in range(3):
        alone = explainer.attribute(ids[example:example + 1], target=5,
                                    additional_forward_args=(mask[example:example + 1],))
        torch.testing.assert_close(alone[0], batch[example], atol=1e-6, rtol=1e-5)
