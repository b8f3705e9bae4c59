r"""An exception the model raises during a recording stays the model's: same type and message,
its innermost frame is the model's code (not the softmax interception or the interface function
the recorder put in between), and the model is restored afterwards."""

from __future__ import annotations

import traceback
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tiny_models import BUILDERS, run
from torch import Tensor, nn

from captum_hetattn import HeterogenousAttentionAttribution, capture
from captum_hetattn.capture import AttentionRecorder
from captum_hetattn.capture.backends import interface as interface_backend
from captum_hetattn.capture.backends import softmax as softmax_backend

pytestmark = pytest.mark.filterwarnings("ignore")

CAPTURE_FILE = softmax_backend.__file__  # the softmax mode and its handler
INTERCEPTION_FILES = (CAPTURE_FILE, interface_backend.__file__)


class HandAttention(nn.Module):
    r"""Hand-written attention (recorded by softmax interception) that can be told to fail:
    ``"shape"`` multiplies mismatched tensors, ``"value"`` raises its own ``ValueError``,
    ``"softmax"`` asks for a softmax over a dimension that does not exist."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.fail: str | None = None

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.fail == "shape":
            k = k[..., :-1]  # one feature short: the matmul below fails
        if self.fail == "value":
            raise ValueError(f"HandAttention got {n} tokens")
        scores = torch.matmul(q, k.transpose(-1, -2)) / self.head_dim**0.5
        probs = F.softmax(scores, dim=5 if self.fail == "softmax" else -1)
        return self.out(torch.matmul(probs, v).transpose(1, 2).reshape(b, n, -1))


class HandModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.layers = nn.ModuleList(HandAttention() for _ in range(2))
        self.head = nn.Linear(8, 3)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.embed(ids)
        for layer in self.layers:
            x = x + layer(x)
        return self.head(x[:, 0])


def hand_model() -> tuple[HandModel, Tensor]:
    torch.manual_seed(0)
    return HandModel().eval(), torch.randint(0, 20, (2, 5))


def frames(exc: BaseException) -> list[tuple[str, str]]:
    return [(f.filename, f.name) for f in traceback.extract_tb(exc.__traceback__)]


def model_frames(exc: BaseException) -> list[tuple[str, str]]:
    return [(file, name) for file, name in frames(exc) if file != nn.modules.module.__file__]


def interception_frames(exc: BaseException) -> list[tuple[str, str]]:
    return [
        (file, name) for file, name in frames(exc)
        if (file in INTERCEPTION_FILES and name in ("__torch_function__", "_hf_attention"))
        or name == "handle_torch_function"
    ]


def failure(call) -> BaseException:
    with pytest.raises(Exception) as info:
        call()
    return info.value


def state(model: nn.Module) -> dict[str, Any]:
    implementations = [
        getattr(getattr(m, "config", None), "_attn_implementation_internal", None)
        for m in model.modules()
    ]
    return dict(
        hooks=[(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()],
        implementations=implementations,
        modes=torch._C._len_torch_function_stack(),
        fastpath=torch.backends.mha.get_fastpath_enabled(),
        claims=dict(capture._CLAIMS),
    )


def recorded(model: nn.Module, call) -> Any:
    with AttentionRecorder(model):
        return call()


# ------------------------------------------------------------------ hand-written attention


@pytest.mark.parametrize("fail", ["shape", "value", "softmax"])
def test_a_model_error_under_the_softmax_mode_keeps_the_models_frames(fail):
    model, ids = hand_model()
    before, expected = state(model), model(ids)
    model.layers[1].fail = fail
    plain = failure(lambda: model(ids))
    caught = failure(lambda: recorded(model, lambda: model(ids)))
    assert type(caught) is type(plain) and str(caught) == str(plain)
    assert not interception_frames(caught), frames(caught)
    # the same frames as without the recorder below the call, but for nn.Module's dispatch
    # (with hooks registered, _call_impl runs forward through an inner function)
    ours, theirs = model_frames(caught), model_frames(plain)
    assert ours[-len(theirs) + 1:] == theirs[1:]
    if fail != "softmax":  # F.softmax's own frame is innermost then, with or without recorder
        assert frames(caught)[-1] == (__file__, "forward")
    model.layers[1].fail = None
    assert state(model) == before
    assert torch.equal(model(ids), expected)  # a plain forward works afterwards


def test_through_the_explainer_the_innermost_frame_is_the_models():
    model, ids = hand_model()
    before, expected = state(model), model(ids)
    model.layers[0].fail = "shape"
    plain = failure(lambda: model(ids))
    explainer = HeterogenousAttentionAttribution(model)
    caught = failure(lambda: explainer.attribute(ids, target=1))
    assert type(caught) is type(plain) and str(caught) == str(plain)
    names = frames(caught)
    assert names[-1] == (__file__, "forward")
    assert not interception_frames(caught), names
    assert any(file.endswith("engine/pipeline.py") for file, _ in names)  # above the model: fine
    model.layers[0].fail = None
    assert state(model) == before
    assert torch.equal(model(ids), expected)
    assert explainer.attribute(ids, target=1).shape == ids.shape


def test_chained_model_errors_lose_the_interception_frames_too():
    model, ids = hand_model()
    model.layers[0].fail = "shape"

    def wrapped() -> Tensor:
        try:
            return model(ids)
        except RuntimeError as err:
            raise LookupError("the model failed") from err

    caught = failure(lambda: recorded(model, wrapped))
    assert isinstance(caught, LookupError) and isinstance(caught.__cause__, RuntimeError)
    assert not interception_frames(caught.__cause__)
    assert frames(caught.__cause__)[-1] == (__file__, "forward")


def test_errors_of_the_recorder_itself_keep_its_frames(monkeypatch):
    model, ids = hand_model()

    def broken(module: nn.Module) -> int:
        raise KeyError("recorder bug")

    # reached from the recorder's own softmax handler, inside the softmax backend
    monkeypatch.setattr(softmax_backend, "head_count", broken)
    caught = failure(lambda: recorded(model, lambda: model(ids)))
    assert isinstance(caught, KeyError)
    names = frames(caught)
    assert names[-1] == (__file__, "broken")
    assert (CAPTURE_FILE, "__torch_function__") in names  # how the bug was reached
    assert names[-2] == (CAPTURE_FILE, "_on_softmax")


# ------------------------------------------------------------------ transformers models


def test_an_error_in_the_model_files_eager_attention_keeps_its_frames():
    model, inputs = BUILDERS["bert"]()
    before, expected = state(model), run(model, inputs).last_hidden_state
    attention = model.encoder.layer[1].attention.self
    scaling, attention.scaling = attention.scaling, "not a number"
    plain = failure(lambda: run(model, inputs))
    caught = failure(lambda: recorded(model, lambda: run(model, inputs)))
    assert type(caught) is type(plain) and str(caught) == str(plain)
    assert frames(caught)[-1] == frames(plain)[-1]
    assert frames(caught)[-1][1] == "eager_attention_forward"
    assert not interception_frames(caught), frames(caught)
    attention.scaling = scaling
    assert state(model) == before
    assert torch.equal(run(model, inputs).last_hidden_state, expected)


def test_a_value_error_of_a_hand_written_transformers_model_is_unchanged():
    model, inputs = BUILDERS["visual_bert"]()
    before, expected = state(model), run(model, inputs).last_hidden_state
    bad = dict(inputs, attention_mask=inputs["attention_mask"][:, :4])
    plain = failure(lambda: run(model, bad))
    caught = failure(lambda: recorded(model, lambda: run(model, bad)))
    assert type(caught) is type(plain) and str(caught) == str(plain)
    assert frames(caught)[-1] == frames(plain)[-1]
    assert "modeling_visual_bert" in frames(caught)[-1][0]
    assert not interception_frames(caught), frames(caught)
    assert state(model) == before
    assert torch.equal(run(model, inputs).last_hidden_state, expected)
