r"""Layer graphs for known architectures, as data.

Each ``*.json`` file beside this module is one :class:`~captum_hetattn.graph.LayerGraph` in its
dict form plus a ``match`` section saying which models it describes:

- ``architectures``: model class names (``"BlipForQuestionAnswering"``), checked first;
- ``model_types``: ``config.model_type`` values;
- ``encoder`` / ``decoder``: for composite configs (``vision-encoder-decoder``), the sub-models'
  ``model_type``.

Module patterns may match a suffix of the real names, so one preset serves a bare model
(``BertModel``: ``encoder.layer.0.attention.self``) and its task heads
(``BertForSequenceClassification``: ``bert.encoder.layer.0.attention.self``).

Plain PyTorch models built on ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``
have no config; they are recognised by their layer classes (``torch_layers.json``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from torch import nn

from captum_hetattn.graph.layer_graph import LayerGraph


@dataclass(frozen=True)
class Preset:
    """A named graph and the models it applies to."""

    name: str
    graph: LayerGraph
    architectures: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()
    encoder: tuple[str, ...] = ()
    decoder: tuple[str, ...] = ()

    def matches_config(self, architecture: str, config: Any) -> bool:
        if architecture in self.architectures:
            return True
        if getattr(config, "model_type", None) not in self.model_types:
            return False
        for part, allowed in (("encoder", self.encoder), ("decoder", self.decoder)):
            if allowed and getattr(getattr(config, part, None), "model_type", None) not in allowed:
                return False
        return True


_TORCH_LAYERS_FILE = "torch_layers.json"
_NOT_GRAPHS = (_TORCH_LAYERS_FILE, "stream_keywords.json")


def _load_presets() -> dict[str, Preset]:
    presets: dict[str, Preset] = {}
    for entry in sorted(resources.files(__package__).iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json") or entry.name in _NOT_GRAPHS:
            continue
        data = json.loads(entry.read_text(encoding="utf-8"))
        match = data.pop("match")
        graph = LayerGraph.from_dict(data)
        presets[graph.name] = Preset(
            name=graph.name,
            graph=graph,
            **{key: tuple(match.get(key, ())) for key in Preset.__dataclass_fields__
               if key not in ("name", "graph")},
        )
    return presets


PRESETS: dict[str, Preset] = _load_presets()
_TORCH_LAYERS: dict[str, Any] = json.loads(
    resources.files(__package__).joinpath(_TORCH_LAYERS_FILE).read_text(encoding="utf-8")
)


def register_preset(
    name: str,
    graph: LayerGraph,
    *,
    architectures: tuple[str, ...] = (),
    model_types: tuple[str, ...] = (),
) -> None:
    r"""Add (or replace) a preset so that :func:`graph_for` finds it for matching models.

    Args:
        name: preset name, usable as ``graph=name`` in the attribution classes.
        graph: the layer graph.
        architectures: model class names it applies to.
        model_types: ``config.model_type`` values it applies to.
    """
    if not isinstance(graph, LayerGraph):
        raise TypeError(f"graph must be a LayerGraph, got {type(graph).__name__}")
    PRESETS[name] = Preset(name, graph, tuple(architectures), tuple(model_types))


def preset(name: str) -> LayerGraph:
    r"""The graph of the preset called ``name`` (see ``PRESETS``).

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown preset '{name}'; known presets: {sorted(PRESETS)}")
    return PRESETS[name].graph


def find_preset(model: nn.Module) -> LayerGraph | None:
    r"""The preset graph for ``model``, or ``None`` if no preset describes it.

    A preset that names the model class is taken as it is. One found by ``config.model_type``
    alone is taken only if each of its nodes matches a module of the model: one model type
    also covers variants with fewer parts (``WhisperForAudioClassification`` has Whisper's
    encoder and no decoder), whose graph is then inferred from the data flow rather than
    bound to a preset that names modules the model lacks.
    """
    config = getattr(model, "config", None)
    architecture = type(model).__name__
    if config is not None:
        # class names first: one model_type (blip) covers heads with different graphs
        ordered = sorted(PRESETS.values(), key=lambda p: architecture not in p.architectures)
        names: list[str] | None = None
        for candidate in ordered:
            if not candidate.matches_config(architecture, config):
                continue
            if architecture in candidate.architectures:
                return candidate.graph
            names = names if names is not None else [n for n, _ in model.named_modules()]
            if _fits(candidate.graph, names):
                return candidate.graph
        return None
    return torch_layer_graph(model)


def _fits(graph: LayerGraph, module_names: list[str]) -> bool:
    """Whether every node of ``graph`` matches a module (once, under one prefix)."""
    try:
        graph.match(module_names)
    except ValueError:
        return False
    return True


def graph_for(model: nn.Module) -> LayerGraph:
    r"""The layer graph of a known architecture.

    Looks up the model class name, then ``config.model_type`` (and, for composite configs, the
    encoder/decoder types); plain PyTorch models are recognised by their
    ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer`` layers.

    Args:
        model: the model to explain.

    Returns:
        The preset :class:`LayerGraph`.

    Raises:
        ValueError: no preset describes the model (use ``infer_graph`` or write a graph).

    Examples::

        >>> from transformers import BertConfig, BertModel
        >>> graph = graph_for(BertModel(BertConfig(num_hidden_layers=2)))
        >>> [node.module for node in graph.nodes]
        ['encoder.layer.*.attention.self']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"graph_for needs an nn.Module, got {type(model).__name__}")
    graph = find_preset(model)
    if graph is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise ValueError(
            f"No preset layer graph for {type(model).__name__} (model_type={model_type!r}); "
            f"known presets: {sorted(PRESETS)}. Build one with infer_graph(model, *inputs) or "
            "write a LayerGraph"
        )
    return graph


def torch_layer_graph(model: nn.Module) -> LayerGraph | None:
    r"""Graph of a plain PyTorch model from its ``nn.Transformer*Layer`` modules (or ``None``).

    Layers are grouped by the container that holds them (``encoder.layers``), in the order of
    ``named_modules()``; the attention modules and streams of each layer class come from
    ``torch_layers.json``.
    """
    layer_nodes = {getattr(nn, cls): nodes for cls, nodes in _TORCH_LAYERS["layers"].items()}
    steps: list[dict[str, Any]] = []
    containers: set[str] = set()
    for name, module in model.named_modules():
        nodes = next((n for cls, n in layer_nodes.items() if isinstance(module, cls)), None)
        container, _, index = name.rpartition(".")
        if nodes is None or not index.isdigit() or container in containers:
            continue
        containers.add(container)
        steps.extend({**node, "module": f"{container}.*.{node['module']}"} for node in nodes)
    if not steps or len(steps) != len({node["query"] + node["key"] for node in steps}):
        return None  # two encoders (a dual tower): the data flow tells them apart, not this table
    used = {stream for node in steps for stream in (node["query"], node["key"])}
    streams = [stream for stream in _TORCH_LAYERS["streams"] if stream in used]
    readout = _TORCH_LAYERS["readout"]["target" if "target" in streams else "source"]
    return LayerGraph.from_dict(
        {"name": "torch_transformer", "streams": streams, "steps": steps, "readout": readout}
    )


def known_presets() -> Mapping[str, Preset]:
    """Read-only view of the registered presets."""
    return dict(PRESETS)


__all__ = [
    "PRESETS",
    "Preset",
    "find_preset",
    "graph_for",
    "known_presets",
    "preset",
    "register_preset",
    "torch_layer_graph",
]
