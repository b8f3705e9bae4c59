"""An explanation with no source used to come back as ``relevance == {}`` with no error or
warning (CANINE's hashed ids, XLNet's sequence-first ids): every input seemed irrelevant. It is
now refused naming the streams, the calls, the input and the first module that consumed it;
and the models whose ids the engine can follow (hashed per element, transposed) are explained."""

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from captum_hetattn import HeterogenousAttentionAttribution


class _MixedIds(nn.Module):
    """Ids mixed across positions before the lookup (no element-wise function of the input)."""

    def __init__(self) -> None:
        super().__init__()
        config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=32)
        self.bert = BertModel(config).eval()
        self.lookup = nn.Embedding(50, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mixed = (ids + ids.roll(1, dims=1)) % 50
        hidden = self.bert(inputs_embeds=self.lookup(mixed)).last_hidden_state
        return self.head(hidden[:, 0])


class _Unused(nn.Module):
    """A float input that reaches the output but no attention call's tokens."""

    def __init__(self) -> None:
        super().__init__()
        config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=32)
        self.bert = BertModel(config).eval()
        self.tokens = nn.Parameter(torch.randn(1, 6, 16))
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(inputs_embeds=self.tokens.expand(x.shape[0], -1, -1))
        return self.head(hidden.last_hidden_state[:, 0]) + x.sum(dim=1, keepdim=True)


def test_untraceable_ids_are_refused_naming_streams_calls_input_and_consumer():
    torch.manual_seed(0)
    model = _MixedIds().eval()
    ids = torch.randint(2, 50, (2, 7))
    explainer = HeterogenousAttentionAttribution(model, model=model)
    with pytest.raises(ValueError) as info:
        explainer.explain(ids, target=1)
    message = str(info.value)
    assert "_MixedIds: no attention stream could be traced back to a model input" in message
    assert "(7 tokens)" in message and "streams '" in message
    assert "'bert.encoder.layer.0.attention.self' [call 0]" in message
    assert "'bert.encoder.layer.1.attention.self' [call 0]" in message
    assert "integer input 0 (2, 7)" in message and "'lookup'" in message
    # the model is restored: no hook left behind, and it still runs
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert model(ids).shape == (2, 3)


def test_float_input_that_feeds_no_token_is_refused():
    torch.manual_seed(0)
    model = _Unused().eval()
    explainer = HeterogenousAttentionAttribution(model, model=model)
    with pytest.raises(ValueError, match=r"float input 0 \(2, 4\) reaches no attention call"):
        explainer.attribute(torch.randn(2, 4), target=0)
