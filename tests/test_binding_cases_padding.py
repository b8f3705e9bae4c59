r"""Padded rows are never a source (issue 19): a batch whose examples pad an encoder or a decoder
differently gives each example what it gets alone — relevance on its real tokens equal, zero on
its padding — through the propagation, for an encoder, a decoder and an encoder-decoder, and
for a model some of whose softmax calls are left out with a warning."""

import pytest
import torch
from torch import nn

from captum_hetattn import HeterogenousAttentionAttribution

transformers = pytest.importorskip("transformers")

SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def _ids(lengths, vocab=90, pad=1):
    generator = torch.Generator().manual_seed(sum(lengths))
    ids = torch.full((len(lengths), max(lengths)), pad)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(5, vocab, (n,), generator=generator)
        mask[b, :n] = 1
    return ids, mask


def _last_real(logits, mask):
    return logits[torch.arange(len(mask)), mask.sum(dim=1) - 1]


def _bert():
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=99, num_labels=8, **SIZES)).eval()
    ids, mask = _ids([7, 4, 6])
    return model, (ids,), (mask,), lambda i, m: model(input_ids=i, attention_mask=m).logits, \
        [(0, mask)]


def _gpt2():
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=32)).eval()
    ids, mask = _ids([3, 7, 5])

    def forward(i, m):
        return _last_real(model(input_ids=i, attention_mask=m).logits, m)

    return model, (ids,), (mask,), forward, [(0, mask)]


def _bart():
    torch.manual_seed(0)
    model = transformers.BartForConditionalGeneration(transformers.BartConfig(
        vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
        decoder_ffn_dim=37, max_position_embeddings=32, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None)).eval()
    ids, mask = _ids([7, 4, 6])
    decoder, decoder_mask = _ids([2, 4, 3])

    def forward(i, d, m, dm):
        out = model(input_ids=i, attention_mask=m, decoder_input_ids=d,
                    decoder_attention_mask=dm)
        return _last_real(out.logits, dm)

    return model, (ids, decoder), (mask, decoder_mask), forward, [(0, mask), (1, decoder_mask)]


@pytest.mark.parametrize("build", [_bert, _gpt2, _bart], ids=["bert", "gpt2", "bart"])
def test_examples_padded_differently_equal_their_single_runs(build):
    model, inputs, masks, forward, padded = build()
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    batch = explainer.attribute(inputs, target=7, additional_forward_args=masks)
    batch = batch if isinstance(batch, tuple) else (batch,)
    for position, mask in padded:
        assert batch[position][mask == 0].abs().sum() == 0, "padding got relevance"
    for b in range(len(masks[0])):
        real = [int(m[b].sum()) for m in masks]
        single = explainer.attribute(
            tuple(x[b:b + 1, :n] for x, n in zip(inputs, real, strict=True)), target=7,
            additional_forward_args=tuple(m[b:b + 1, :n] for m, n in zip(masks, real,
                                                                          strict=True)))
        single = single if isinstance(single, tuple) else (single,)
        assert any(bool(s.abs().sum() > 0) for s in single)
        for position, n in enumerate(real):
            torch.testing.assert_close(batch[position][b, :n], single[position][0],
                                       atol=1e-6, rtol=1e-5)


class _MaskedAttention(nn.Module):
    def __init__(self, width: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.qkv = heads, nn.Linear(width, 3 * width)

    def forward(self, x, mask):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2) / 8 ** 0.5).masked_fill(~mask[:, None, None], -1e9)
        return x + (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)


class _ChannelAttention(_MaskedAttention):
    """A softmax over channel groups (DaViT's channel attention): not over tokens."""

    def forward(self, x, mask):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 4, 1)
        q, k = q * mask[:, None, None], k * mask[:, None, None]
        scores = (q @ k.transpose(-1, -2) / 4).softmax(dim=-1)  # (B, H, c/H, c/H)
        return x + (scores @ v).permute(0, 3, 1, 2).reshape(b, n, c)


class _WithChannels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.first, self.channels = _MaskedAttention(), _ChannelAttention()
        self.second, self.head = _MaskedAttention(), nn.Linear(16, 3)

    def forward(self, ids, mask):
        mask = mask.bool()
        h = self.second(self.channels(self.first(self.embed(ids), mask), mask), mask)
        pooled = (h * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)
        return self.head(pooled)


def test_a_batch_equals_its_examples_when_a_call_is_left_out():
    torch.manual_seed(0)
    model = _WithChannels().eval()
    ids, mask = _ids([6, 3, 5], vocab=50)
    explainer = HeterogenousAttentionAttribution(model, model=model)
    with pytest.warns(UserWarning, match="'channels'.*not over tokens"):
        batch = explainer.explain(ids, target=1, additional_forward_args=(mask,))
    assert [c.name for c in batch.calls] == ["first", "second"]
    (relevance,) = batch.relevance.values()
    assert relevance[mask == 0].abs().sum() == 0
    for b, n in enumerate(mask.sum(dim=1).tolist()):
        single = explainer.explain(ids[b:b + 1, :n], target=1,
                                   additional_forward_args=(mask[b:b + 1, :n],))
        (alone,) = single.relevance.values()
        assert alone.abs().sum() > 0
        torch.testing.assert_close(relevance[b, :n], alone[0], atol=1e-6, rtol=1e-5)
