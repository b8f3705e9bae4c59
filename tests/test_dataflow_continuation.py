r"""The data flow's cheap continuation (a call that reads the newest state of one stream goes
on with it, no probe): LXMERT's cross-layer calls and Swin's last stage bind as probing every
call binds them, without the probes (and without a spurious fusion)."""

from __future__ import annotations

import importlib

import torch

from captum_hetattn import HeterogenousAttentionAttribution
from captum_hetattn.binding import dataflow
from captum_hetattn.rules import TokenMap

trace = importlib.import_module("captum_hetattn.binding.trace")  # (the module, not the function)


def _lxmert():
    from transformers import LxmertConfig, LxmertForQuestionAnswering

    config = LxmertConfig(hidden_size=32, num_attention_heads=2, intermediate_size=37,
                          l_layers=2, x_layers=3, r_layers=1, visual_feat_dim=8,
                          visual_pos_dim=4, num_qa_labels=4, vocab_size=50)
    torch.manual_seed(0)
    model = LxmertForQuestionAnswering(config).eval()
    g = torch.Generator().manual_seed(1)
    inputs = (torch.randint(5, 50, (2, 7), generator=g), torch.randn(2, 5, 8, generator=g),
              torch.rand(2, 5, 4, generator=g))

    def forward(i, f, b):
        return model(input_ids=i, visual_feats=f, visual_pos=b).question_answering_score

    return model, forward, inputs


def _swin_last_stage_plain():
    from transformers import SwinConfig, SwinForImageClassification

    # 8×8 patches in windows of 4: stage 1 windowed, stage 2 (4×4 patches) one window (plain)
    config = SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2],
                        num_heads=[2, 2], window_size=4, num_labels=3)
    torch.manual_seed(0)
    model = SwinForImageClassification(config).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model, (lambda x: model(pixel_values=x).logits), (pixels,)


def _bound(monkeypatch, build, probe_all: bool):
    """The explanation of ``build()``'s model, the calls whose streams were probed, the bound
    steps and the stream sizes; with ``probe_all``, every record in a tower of its own (no
    continuation: every stream probed)."""
    from captum_hetattn.engine import pipeline

    model, forward, inputs = build()
    probes: list[int] = []
    recordings: list[object] = []
    original_probe = dataflow._Builder._probe_stream
    original_analyse, original_bind = trace.analyse, pipeline.bind

    def probe(self, i, *args):
        probes.append(i)
        return original_probe(self, i, *args)

    def analyse(records, inputs, embeddings, towers, *args, **kwargs):
        if probe_all:
            towers = [f"tower {k}" for k in range(len(towers))]
        return original_analyse(records, inputs, embeddings, towers, *args, **kwargs)

    def bind(*args, **kwargs):
        out = original_bind(*args, **kwargs)
        recordings.append(out[0] if isinstance(out, tuple) else out)
        return out

    with monkeypatch.context() as patch:
        patch.setattr(dataflow._Builder, "_probe_stream", probe)
        patch.setattr(trace, "analyse", analyse)
        patch.setattr(pipeline, "bind", bind)
        explanation = HeterogenousAttentionAttribution(forward, model=model).explain(
            inputs, target=1)
    (recording,) = recordings
    steps = [(type(s).__name__, s.into, s.origin, s.additive) if isinstance(s, TokenMap)
             else tuple((c.node.name, c.node.query, c.node.key) for c in s)
             for s in recording.steps]
    return explanation, probes, steps, dict(recording.sizes)


def test_lxmert_cross_layers_continue_their_streams_without_probes(monkeypatch):
    ours, probes, steps, sizes = _bound(monkeypatch, _lxmert, probe_all=False)
    probed, every, probed_steps, probed_sizes = _bound(monkeypatch, _lxmert, probe_all=True)
    assert sizes == probed_sizes == {"text": 7, "image": 5}
    assert steps == probed_steps
    # the two inputs' streams and the first cross layer's queries and keys (another tower):
    # none of the later cross layers' self calls or second-direction keys
    assert len(probes) == 4 and len(every) > 4
    for name in ours.relevance:
        torch.testing.assert_close(ours.relevance[name], probed.relevance[name])


def test_swin_last_stage_goes_on_without_a_fusion(monkeypatch):
    # its queries read the stage's input through a view, a pad, a window partition and a norm:
    # the residual that reaches that input is the stream's own state, not an added stream
    _, _, steps, sizes = _bound(monkeypatch, _swin_last_stage_plain, probe_all=False)
    assert len(sizes) == 2, sizes  # the two stages
    assert not [s for s in steps if s[0] == "TokenMap" and s[3]]  # no additive junction
    assert sum(1 for s in steps if s[0] == "TokenMap") == 1  # the patch merging
