r"""Input rows read from the structure (``binding.lifts``): a float input read by a
non-overlapping patch embedding or by a linear map per token is probed at that module's output,
and its elements' rows composed; they equal the rows traced through the module to every input
element, exactly, and so do the attributions.

ViT, a patch model with an odd layout (a non-square kernel that leaves a margin, tokens
reversed, [CLS] last, one kernel position never read), BERT (token ids: nothing lifted) and the
``shapes_vqa`` zoo model (LXMERT: region features and boxes through linear maps).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_hetattn import AttentionRecorder, HeterogenousAttentionAttribution
from captum_hetattn.binding import lifts, trace
from captum_hetattn.capture.tracking import CallTracker

torch.set_num_threads(1)


def _vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=37, num_labels=3)
    model = ViTForImageClassification(config).eval()
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return model, (lambda x: model(pixel_values=x).logits), (pixels,), (), 1


class _OddPatches(nn.Module):
    """4×3 patches of an 18×14 image (a margin of pixels no patch reads), tokens reversed,
    [CLS] appended last, one kernel position with all-zero weights."""

    def __init__(self) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, 16, kernel_size=(4, 3), stride=(4, 3))
        with torch.no_grad():
            self.patches.weight[:, 1, 0, 2] = 0
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.position = nn.Parameter(torch.randn(1, 17, 16))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
            for _ in range(2))
        self.head = nn.Linear(16, 3)

    def forward(self, pixels):
        tokens = self.patches(pixels).flatten(2).transpose(1, 2).flip(1)
        tokens = torch.cat([tokens, self.cls.expand(tokens.shape[0], -1, -1)], dim=1)
        tokens = tokens + self.position
        for layer in self.layers:
            tokens = layer(tokens)
        return self.head(tokens[:, -1])


def _odd():
    torch.manual_seed(0)
    model = _OddPatches().eval()
    pixels = torch.randn(2, 3, 18, 14, generator=torch.Generator().manual_seed(1))
    return model, model, (pixels,), (), 1


def _bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=37, num_labels=3)
    model = BertForSequenceClassification(config).eval()
    ids = torch.randint(5, 90, (2, 7), generator=torch.Generator().manual_seed(2))
    return model, (lambda i: model(input_ids=i).logits), (ids,), (), 1


def _vqa():
    from captum_hetattn.zoo import load

    zoo = load("shapes_vqa")
    example = zoo.make_examples(1, seed=5)[0]
    return (zoo.model, zoo.forward_func, tuple(example.inputs),
            tuple(example.additional_forward_args), example.label)


MODELS = {"vit": _vit, "odd_patches": _odd, "bert": _bert, "shapes_vqa": _vqa}
LIFTED = {"vit": True, "odd_patches": True, "bert": False, "shapes_vqa": True}


def _input_rows(model, forward, inputs, extra, lifted):
    traced = [x.detach().requires_grad_() if x.is_floating_point() else x for x in inputs]
    with torch.enable_grad(), AttentionRecorder(model, record_io=True) as recorder:
        forward(*traced, *extra)
        if not lifted:
            recorder.lifts.clear()
        flow = trace(recorder, [*traced, *extra], map_inputs=True)
    return [(r.position, r.stream, r.rows) for r in flow.inputs]


@pytest.mark.parametrize("name", list(MODELS))
def test_lifted_input_rows_equal_the_traced_rows(name, monkeypatch):
    model, forward, inputs, extra, _ = MODELS[name]()
    composed = []
    elements = lifts._Lift.elements
    monkeypatch.setattr(lifts._Lift, "elements",
                        lambda self, codes: composed.append(1) or elements(self, codes))
    got = _input_rows(model, forward, inputs, extra, lifted=True)
    assert bool(composed) == LIFTED[name]
    want = _input_rows(model, forward, inputs, extra, lifted=False)
    assert [g[:2] for g in got] == [w[:2] for w in want] and got
    for (_, _, a), (_, _, b) in zip(got, want, strict=True):
        assert (a is None) == (b is None)
        assert a is None or torch.equal(a, b)


@pytest.mark.parametrize("name", list(MODELS))
def test_attributions_with_lifted_rows_equal_traced_ones(name, monkeypatch):
    model, forward, inputs, extra, target = MODELS[name]()
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    got = explainer.attribute(inputs, target=target, additional_forward_args=extra or None)
    monkeypatch.setattr(CallTracker, "_on_lift", lambda *args: None)
    fresh = HeterogenousAttentionAttribution(forward, model=model)
    want = fresh.attribute(inputs, target=target, additional_forward_args=extra or None)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_an_input_that_also_reaches_the_stream_another_way_is_traced():
    class TwoPaths(_OddPatches):
        def forward(self, pixels):  # the pixels' mean added to every token: not a lift
            tokens = self.patches(pixels).flatten(2).transpose(1, 2)
            tokens = tokens + pixels.mean(dim=(1, 2, 3))[:, None, None]
            tokens = torch.cat([tokens, self.cls.expand(tokens.shape[0], -1, -1)], dim=1)
            for layer in self.layers:
                tokens = layer(tokens + self.position)
            return self.head(tokens[:, -1])

    torch.manual_seed(0)
    model = TwoPaths().eval()
    pixels = torch.randn(2, 3, 18, 14, generator=torch.Generator().manual_seed(1))
    traced = pixels.detach().requires_grad_()
    with torch.enable_grad(), AttentionRecorder(model, record_io=True) as recorder:
        model(traced)
        (lift,) = [lifts._Lift(m, t, o, n) for _, m, t, o, n in recorder.lifts]
        stream = recorder.records[0].query_input
        assert not lifts._only_path(stream, lift)


@pytest.mark.parametrize("kind", ["conv", "conv_unread", "linear", "linear_unread"])
def test_lifted_rows_fed_follow_from_the_tokens(kind):
    """``_Lifted.feeds`` reads the rows fed off the module's tokens: equal to the rows the
    input's elements feed (an unread token's elements feed none; a module whose weights are all
    zero feeds no row)."""
    torch.manual_seed(0)
    if kind.startswith("conv"):
        module = nn.Conv2d(3, 4, kernel_size=(4, 3), stride=(4, 3))
        tensor = torch.randn(2, 3, 18, 14)
    else:
        module = nn.Linear(5, 4)
        tensor = torch.randn(2, 6, 5)
    if kind.endswith("unread"):
        nn.init.zeros_(module.weight)
    output = module(tensor)
    lift = lifts._Lift(module, tensor, output, None)
    tokens = output[0, 0].numel() if kind.startswith("conv") else output.shape[1]
    codes = torch.randint(-1, 7, (2, tokens), generator=torch.Generator().manual_seed(3))
    lifted = lifts._Lifted(7, lift.elements(codes), token_codes=lift.token_codes(codes))
    expected = lifts._Dependence(7, lift.elements(codes)).feeds()
    assert torch.equal(lifted.feeds(), expected)
    assert bool(expected.any()) == (not kind.endswith("unread"))
