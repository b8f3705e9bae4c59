r"""The token maps of junctions, resolved for one recorded forward.

The data flow finds where tokens move between streams without attention (a
:class:`~captum_hetattn.binding.dataflow.FlowJunction` with its probed map); the graph's
:class:`~captum_hetattn.graph.junctions.Junction` of the same two streams says how to read the
map instead (``splice``: placeholder token ids, ``concat``: offsets, both possibly read from the
model config), else the probed map is taken.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from captum_hetattn.binding.dataflow import DataFlow, FlowJunction
from captum_hetattn.graph.junctions import Junction
from captum_hetattn.graph.layer_graph import LayerGraph
from captum_hetattn.rules import TokenMap


def resolve_junctions(
    graph: LayerGraph,
    flow: DataFlow,
    names: Mapping[int, str],
    inputs: Sequence[Any],
    config: Any,
) -> dict[int, list[TokenMap]]:
    r"""The token map of every junction of the data flow, by the call it comes before.

    Args:
        graph: the layer graph (its junctions say how to resolve the maps).
        flow: the data flow of the recorded forward.
        names: stream index → name.
        inputs: the model inputs (for junctions that read token ids).
        config: the model config (for junction parameters read from it).

    Returns:
        Record index → the junctions applied right before that call, in order.

    Raises:
        ValueError: a graph junction that the forward does not have, or one whose parameters do
            not fit the inputs or the config.
    """
    declared = {(j.into, j.origin): j for j in graph.junctions}
    junctions_before: dict[int, list[TokenMap]] = {}
    for junction in flow.junctions:
        into, origin = names[junction.into], names[junction.origin]
        spec = declared.pop((into, origin), None)
        resolved = _resolve(junction, spec, into, origin, inputs, config, flow)
        junctions_before.setdefault(junction.before, []).append(resolved)
    if declared:
        into, origin = next(iter(declared))
        raise ValueError(
            f"the graph's junction '{origin}'->'{into}' does not occur in the recorded forward: "
            f"no token of stream '{origin}' reaches stream '{into}' without attention"
        )
    return junctions_before


def _resolve(
    junction: FlowJunction,
    spec: Junction | None,
    into: str,
    origin: str,
    inputs: Sequence[Any],
    config: Any,
    flow: DataFlow,
) -> TokenMap:
    probed = junction.rows.matrix
    if spec is None or spec.kind == "probe":
        return TokenMap(into, origin, junction.weights, probed.any(dim=-1),
                        f"junction '{origin}'->'{into}' (probe)", junction.additive)
    batch, n_into, n_origin = probed.shape
    params = {k: _param(v, config, spec) for k, v in spec.params.items()}
    skip = int(params.get("skip", 0))
    matrix = torch.zeros_like(probed)
    if spec.kind == "splice":
        if "placeholder" not in params:
            raise ValueError(f"{spec.label}: a splice needs a 'placeholder' token id")
        ids = _token_ids(flow, junction.into, inputs, n_into, spec)
        for b in range(batch):
            rows = (ids[b] == int(params["placeholder"])).nonzero().flatten()
            if rows.numel() != n_origin - skip:
                raise ValueError(
                    f"{spec.label}: example {b} has {rows.numel()} placeholder tokens "
                    f"(id {params['placeholder']}) but stream '{origin}' gives {n_origin - skip} "
                    f"tokens (skip={skip})"
                )
            matrix[b, rows, torch.arange(skip, n_origin)] = True
    else:  # concat
        count = int(params.get("count", n_origin - skip))
        offset = int(params.get("offset", 0))
        offset = offset + n_into if offset < 0 else offset
        if offset + count > n_into or skip + count > n_origin:
            raise ValueError(
                f"{spec.label}: {count} tokens from {skip} at offset {offset} do not fit streams "
                f"'{origin}' ({n_origin}) -> '{into}' ({n_into})"
            )
        matrix[:, torch.arange(offset, offset + count), torch.arange(skip, skip + count)] = True
    weights = matrix.float() / matrix.float().sum(dim=-1, keepdim=True).clamp(min=1)
    return TokenMap(into, origin, weights, matrix.any(dim=-1),
                    f"junction '{origin}'->'{into}' ({spec.kind})")


def _token_ids(flow: DataFlow, stream: int, inputs: Sequence[Any], n: int,
               spec: Junction) -> Tensor:
    for item in flow.inputs:
        tensor = inputs[item.position] if item.position < len(inputs) else None
        if (item.stream == stream and isinstance(tensor, Tensor)
                and not tensor.is_floating_point() and tensor.shape[-1] == n):
            return tensor
    raise ValueError(
        f"{spec.label}: no token-id input of {n} tokens feeds the receiving stream, so the "
        "placeholder positions cannot be read; pass the ids as an input or use kind='probe'"
    )


def _param(value: Any, config: Any, spec: Junction) -> Any:
    if not isinstance(value, Mapping):
        return value
    key = value.get("config")
    found = _config_value(config, key)
    if found is None:
        raise ValueError(f"{spec.label}: the model config has no '{key}'")
    if "values" in value:
        if found not in value["values"]:
            raise ValueError(
                f"{spec.label}: config '{key}'={found!r} is not one of {list(value['values'])}"
            )
        return value["values"][found]
    return found


def _config_value(config: Any, key: str | None) -> Any:
    if config is None or key is None:
        return None
    if getattr(config, key, None) is not None:
        return getattr(config, key)
    for sub in getattr(config, "sub_configs", {}) or {}:
        found = _config_value(getattr(config, sub, None), key)
        if found is not None:
            return found
    return None
