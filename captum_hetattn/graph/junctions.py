r"""Junctions: tokens that move from one stream into another without attention.

Plain Python, like the whole core of the graph room; the binding resolves each junction's token
map at run time (:mod:`captum_hetattn.binding.junctions`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from captum_hetattn.graph.spec import _check_keys

JUNCTION_KINDS: tuple[str, ...] = ("probe", "splice", "concat")
JUNCTION_PARAMS: dict[str, tuple[str, ...]] = {
    "probe": (),
    "splice": ("placeholder", "skip"),
    "concat": ("skip", "count", "offset"),
}
CONFIG_PARAM_KEYS: tuple[str, ...] = ("config", "values")


@dataclass(frozen=True)
class Junction:
    r"""Tokens that move from stream ``origin`` into stream ``into`` without attention.

    The rows of ``into`` that receive tokens are replaced by a token map of ``origin``'s
    tokens (``R[into, s][rows] = M · R[origin, s]``), resolved at run time. Where in the call
    order it applies is read from the data flow: right after the last call of ``origin`` whose
    state the rows copy (LLaVA reads the vision tower's second-to-last layer).

    Args:
        into: the receiving stream (a language model's sequence, a cross call's keys).
        origin: the stream the tokens come from.
        kind: how ``M`` is resolved:

            - ``"probe"`` (default): from the recorded forward, by gradient probes — exact for
              any map in which each origin token feeds rows without attention (splices,
              concatenation, projection, pixel shuffle, 2×2 merging; a merged row is the mean
              of its tokens);
            - ``"splice"``: origin tokens ``skip, skip+1, ...`` replace, in order, the rows of
              ``into`` whose token id is ``placeholder`` (LLaVA, PaliGemma);
            - ``"concat"``: origin tokens ``skip, ...`` (``count`` of them, default all) fill
              the rows from ``offset`` on (a prefix at 0; negative counts from the end).
        params: the kind's parameters. A value may be ``{"config": "key"}`` (read from the
            model config, sub-configs searched too) and, for strings,
            ``{"config": "key", "values": {"default": 1, "full": 0}}``.

    Examples::

        >>> Junction("text", "image", kind="splice",
        ...          params={"placeholder": {"config": "image_token_id"}, "skip": 1})
    """

    into: str
    origin: str
    kind: str = "probe"
    params: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=True)

    def __post_init__(self) -> None:
        if self.kind not in JUNCTION_KINDS:
            raise ValueError(
                f"{self.label}: kind must be one of {JUNCTION_KINDS}, got {self.kind!r}"
            )
        if self.into == self.origin:
            raise ValueError(f"{self.label}: a junction joins two different streams")
        object.__setattr__(self, "params", dict(self.params))
        what = f"{self.label} ({self.kind})"
        _check_keys(self.params, JUNCTION_PARAMS[self.kind], "params", what)
        for name, value in self.params.items():
            if isinstance(value, Mapping):
                _check_keys(value, CONFIG_PARAM_KEYS, f"params.{name}", what)
                if "config" not in value:
                    raise ValueError(
                        f"{self.label}: parameter '{name}' given as a dict must name a config key: "
                        f"{{'config': ...}}, got {dict(value)!r}"
                    )

    @property
    def label(self) -> str:
        return f"junction '{self.origin}'->'{self.into}'"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"into": self.into, "from": self.origin, "kind": self.kind}
        out.update(self.params)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str = "") -> Junction:
        r"""A junction from its dict (parameters beside ``into``/``from``/``kind``); ``path``
        (``junctions[0]``) says where errors point."""
        data = dict(data)
        try:
            into, origin = data.pop("into"), data.pop("from")
        except KeyError as err:
            raise ValueError(f"Junction spec {data!r} lacks {err}") from None
        kind = data.pop("kind", "probe")
        if kind in JUNCTION_KINDS:
            _check_keys(data, ("into", "from", "kind", *JUNCTION_PARAMS[kind]), path,
                        f"Junction spec '{origin}'->'{into}' ({kind})")
        return cls(into, origin, kind, data)
