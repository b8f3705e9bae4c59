r"""The capture plan (:func:`captum_hetattn.capture.plan.plan_capture`) is pure: which backend
handles each module, decided from the modules alone — no hook installed, no forward run."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from captum_hetattn.capture.plan import BACKENDS, Plan, plan_capture


def bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=20,
                        attn_implementation="eager")
    return BertModel(config).eval()


class HandAttention(nn.Module):
    """Hand-written attention: a softmax inside a module whose class name says Attention."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.num_heads = 2
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - never run here
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v


class HandModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(HandAttention() for _ in range(2))
        self.head = nn.Linear(8, 2)


class MhaModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)


def named(model: nn.Module, ids: dict[int, nn.Module] | frozenset[int]) -> set[str]:
    names = {id(m): n for n, m in model.named_modules()}
    return {names[i] for i in ids}


def hooks(model: nn.Module) -> list[tuple[int, int]]:
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


def test_bert_goes_through_the_interface_and_nothing_is_installed():
    model = bert()
    before = hooks(model)
    implementations = [m.config._attn_implementation for m in model.modules()
                       if hasattr(m, "config")]
    plan = plan_capture(model)
    assert isinstance(plan, Plan)
    assert plan.backends == {"hf"}
    assert named(model, plan.interface) == {f"encoder.layer.{i}.attention.self" for i in (0, 1)}
    assert plan.tracked == plan.interface and not plan.softmax and not plan.mha
    assert not plan.mode and not plan.eager and plan.listed is None
    assert plan.interfaces is not None
    assert hooks(model) == before  # pure: no hook, no config changed
    assert implementations == [m.config._attn_implementation for m in model.modules()
                               if hasattr(m, "config")]


def test_bert_under_the_softmax_backend_is_switched_to_eager():
    model = bert()
    plan = plan_capture(model, "softmax")
    assert plan.backends == {"softmax"}
    assert not plan.interface and plan.interfaces is None
    selves = {f"encoder.layer.{i}.attention.self" for i in (0, 1)}
    assert named(model, plan.eager) == selves
    assert selves <= named(model, plan.softmax) and selves <= named(model, plan.mode)


def test_multihead_attention_goes_to_mha():
    model = MhaModel()
    plan = plan_capture(model)
    assert plan.backends == {"mha"}
    assert named(model, plan.mha) == {"attn"} and named(model, plan.tracked) == {"attn"}
    assert not plan.mode  # no softmax mode for MHA
    assert plan_capture(model, "mha").mha == plan.mha


def test_hand_written_attention_goes_to_the_softmax_mode():
    model = HandModel()
    plan = plan_capture(model)
    assert plan.backends == {"softmax"}
    assert named(model, plan.softmax) == {"layers.0", "layers.1"}
    assert named(model, plan.mode) == {"layers.0", "layers.1"}
    assert not plan.interface and not plan.mha


def test_listed_modules_scope_the_plan():
    model = HandModel()
    plan = plan_capture(model, modules=["layers.1"])
    assert named(model, plan.softmax) == {"layers.1"}
    assert named(model, plan.listed) == {"layers.1"}
    assert named(model, plan.tracked) == {"layers.1"}
    bert_model = bert()
    plan = plan_capture(bert_model, modules="encoder.layer.0")
    assert named(bert_model, plan.interface) == {"encoder.layer.0.attention.self"}
    assert named(bert_model, plan.tracked) == {"encoder.layer.0.attention.self",
                                                "encoder.layer.0"}


def test_backend_errors():
    assert BACKENDS == ("auto", "hf", "softmax", "mha")
    with pytest.raises(ValueError, match="unknown backend"):
        plan_capture(HandModel(), "nope")
    with pytest.raises(ValueError, match="backend='hf'"):
        plan_capture(HandModel(), "hf")
    with pytest.raises(ValueError, match="backend='mha'"):
        plan_capture(bert(), "mha")
    with pytest.raises(ValueError, match="no module named 'missing'"):
        plan_capture(HandModel(), modules=["missing"])
