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


def test_dory_looped_layers_are_explained_flash_equal_to_eager():
    """Dory runs a recurrent section of layers twice per forward: the inferred graph names
    those modules one by one (a pattern over modules run once and twice bound the looped ones
    twice), and the flash capture equals the eager one."""
    from transformers import DoryConfig, DoryForCausalLM

    torch.manual_seed(0)
    model = DoryForCausalLM(DoryConfig(
        vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, n_input_layers=1,
        n_output_layers=1, n_recurrent_loops=2, sliding_window=4,
        max_position_embeddings=64)).eval()
    ids = torch.randint(5, 99, (2, 7), generator=torch.Generator().manual_seed(2))
    func = lambda i: model(input_ids=i).logits[:, -1]  # noqa: E731
    explained = {}
    for capture in ("eager", "flash"):
        explainer = HeterogenousAttentionAttribution(func, model=model, capture=capture)
        explained[capture] = explainer.explain(ids, target=5, return_maps=True)
    eager, flash = explained["eager"], explained["flash"]
    assert len(eager.call_maps) == 6  # 1 + 2 layers × 2 loops + 1
    for a, b in zip(eager.call_maps, flash.call_maps, strict=True):
        torch.testing.assert_close(b.attention, a.attention, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(flash.relevance["text"], eager.relevance["text"], atol=1e-6,
                               rtol=1e-5)
    looped = [n for n in explainer.graph.nodes if n.call_index == 1]
    assert {n.module for n in looped} == {"model.layers.1.self_attn", "model.layers.2.self_attn"}


def test_wavlm_fused_multi_head_attention_forward_is_captured():
    """WavLM calls F.multi_head_attention_forward itself (it used to give 'no attention call
    was recorded'): its per-head maps are recorded, their head mean is the model's own
    (head-averaged) weights, and a batch equals its examples."""
    from transformers import WavLMConfig, WavLMForSequenceClassification

    torch.manual_seed(0)
    model = WavLMForSequenceClassification(WavLMConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20,
        conv_dim=(16, 16), conv_stride=(4, 4), conv_kernel=(8, 8), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, num_buckets=16, max_bucket_distance=20,
        num_labels=3)).eval()
    wave = torch.randn(2, 400, generator=torch.Generator().manual_seed(1))
    explainer = HeterogenousAttentionAttribution(lambda w: model(input_values=w).logits,
                                                 model=model)
    explained = explainer.explain(wave, target=1, return_maps=True)
    with torch.no_grad():
        own = model(input_values=wave, output_attentions=True).attentions
    assert [c.name for c in explained.call_maps] == [
        f"wavlm.encoder.layers.{i}.attention" for i in range(2)]
    for call, weights in zip(explained.call_maps, own, strict=True):
        assert call.attention.shape == weights.shape
        assert not torch.allclose(call.attention[:, 0], call.attention[:, 1])  # per head
        torch.testing.assert_close(call.attention.mean(1), weights[:, 0])
        assert bool((call.gradient != 0).any())
    relevance = explained.relevance["audio"]
    raw = relevance + explained.own["audio"]  # the paper's row: every frame is reached
    assert bool(torch.isfinite(relevance).all()) and bool((raw != 0).all())
    alone = explainer.explain(wave[1:], target=1).relevance["audio"]
    torch.testing.assert_close(alone[0], relevance[1], atol=1e-6, rtol=1e-5)
