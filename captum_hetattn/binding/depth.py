r"""Softmaxes over something other than tokens that look like a cross-attention call: a learned
query attending over the *depth* of each token (inkling2's block attention residuals stack the
token's states from earlier blocks and let a parameter query pick among them).

Such a call hands the attention function ``(batch, tokens, queries, blocks)``: its queries are
computed from no token of the hidden states around it (a parameter), and its keys are not those
hidden states' tokens (there are ``blocks`` of them, one stack per token). It is left out by
name, like channel attention, instead of ending the explanation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from captum_hetattn.binding.canonical import _candidates, _Canonical
from captum_hetattn.binding.tokens import tokens_view
from captum_hetattn.capture import AttentionRecord


def over_depth(
    record: AttentionRecord, side: str, unfed: Sequence[_Canonical]
) -> str | None:
    r"""Why a call is not attention over tokens, when its ``query`` slots are computed from no
    token of any of the hidden states around it (``unfed``, each of the right batch size) and
    its map's key count is none of their token counts; else ``None`` (the layout is unknown
    for another reason: the caller refuses by name).

    Args:
        record: a raw map of the call.
        side: the side that found no tokens; only a query side says anything here.
        unfed: the hidden states (of the right batch size) that the slots were probed against
            and that none of them is computed from.

    Returns:
        The reason the call is left out, or ``None``.
    """
    if side != "query" or not unfed:
        return None
    sizes = sorted({candidate.size for candidate in unfed})
    if record.n_key in sizes:
        return None
    where = ", ".join(candidate.where for candidate in unfed)
    return (f"its queries are computed from no token of {where} (a learned query) and its "
            f"{record.n_key} keys are not their {'/'.join(map(str, sizes))} tokens: the softmax "
            "is not over tokens (e.g. attention over depth, a token's states of earlier layers)")


def per_token_query(record: AttentionRecord, batch: int) -> str | None:
    r"""Why a call that looks like one dense cross map is a softmax over each token's depth:
    its queries are one learned query, the same for every example and along the map's second
    dimension, and that dimension is the token count of the hidden states around the call (so
    it runs over tokens, not heads: each token attends over a stack of its own states).

    Returns:
        The reason the call is left out, or ``None``.
    """
    # the query states handed to the attention function (the module's input is the stack)
    query = record.states[0] if record.states else None
    if record.role != "cross" or query is None or query.dim() < 3 or len(record.shape) != 4:
        return None
    positions = record.shape[1]
    if positions < 2 or tuple(query.shape[:2]) != (batch, positions):
        return None
    if not torch.equal(query, query[:1, :1].expand_as(query)):
        return None  # queries computed per example or per head: attention as usual
    keys = record.states[1] if len(record.states) > 1 else None
    if keys is None or tuple(keys.shape[:3]) != (batch, positions, record.n_key):
        return None  # keys not a stack of n_key states at each of those positions
    candidates = _candidates(record, "query")
    views = [tokens_view(c.tensor, c.token_dim) for c in candidates]
    around = [c.where for c, v in list(zip(candidates, views, strict=True))[1:]
              if v.shape[:2] == (batch, positions)]
    held = any(tuple(t.shape[:2]) == (batch, positions)  # the stack itself: (B, n, blocks, d)
               for t in (*views, *(c.tensor for c in candidates)))
    if not query.any() and (not held or any(v.shape[1] == record.n_key for v in views)):
        # all zero (an untrained Q-Former's learned queries, or inkling2's zero-initialised
        # depth queries) says nothing of the second dimension by itself: tokens only where the
        # hidden states around hold that many tokens and none holds as many as the keys
        return None
    where = f" of {around[0]}" if around else ""
    return (f"its queries are one learned query repeated over the {positions} tokens{where}, "
            f"each attending over a stack of {record.n_key} states of its own token: the "
            "softmax is not over tokens (attention over depth)")
