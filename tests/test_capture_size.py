"""The capture path chosen by map size: calls with fewer map entries than
capture.FLASH_MIN_ENTRIES are captured eagerly, larger ones through flash capture; both give the
same relevance (to float rounding) as a fresh explainer on the other path."""

import pytest
import torch
import transformers as tf

from captum_hetattn import HeterogenousAttentionAttribution, capture


def _bert(tokens=9, batch=2):
    torch.manual_seed(0)
    config = tf.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=37, vocab_size=50, num_labels=3,
                           attn_implementation="sdpa")
    model = tf.BertForSequenceClassification(config).eval()
    ids = torch.randint(5, 50, (batch, tokens), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[1, tokens - 3:] = 0
    return model, ids, mask


def _relevance(model, ids, mask):
    explainer = HeterogenousAttentionAttribution(
        lambda i, m: model(input_ids=i, attention_mask=m).logits, model=model)
    return explainer.attribute(ids, target=1, additional_forward_args=(mask,))


@pytest.mark.parametrize("tokens", [9, 40])
def test_small_maps_are_captured_eagerly_and_agree_with_flash(tokens, count_flash, monkeypatch):
    model, ids, mask = _bert(tokens)
    entries = ids.shape[0] * model.config.num_attention_heads * tokens * tokens
    monkeypatch.setattr(capture, "FLASH_MIN_ENTRIES", entries + 1)  # these maps are small
    eager = _relevance(model, ids, mask)
    assert not count_flash  # no call through flash capture
    monkeypatch.setattr(capture, "FLASH_MIN_ENTRIES", entries)  # from this size on: flash
    flash = _relevance(model, ids, mask)
    assert len(count_flash) == model.config.num_hidden_layers
    assert eager.abs().max() > 0
    torch.testing.assert_close(eager, flash, rtol=1e-5, atol=1e-7)

