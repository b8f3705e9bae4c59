r"""Sources of the data flow: a stream's rows that no other stream feeds come from the model
inputs, one source per input signature; rows no traced input feeds are parameter tokens (never a
source) or the tokens of an input the engine does not trace (a source of their own).

Parameter tokens spliced into an input's stream (ViT's ``[CLS]``, registers, GroupViT's group
tokens, TVP's prompt) keep their column in that input's source, so every shape stays, but the
data flow lists them (``DataFlow.parameter_rows``): they start with no input relevance, and the
engine reads their columns as zero (DESIGN §11)."""

from __future__ import annotations

import torch
from torch import Tensor

from captum_hetattn.binding.flowdata import FlowSource, FlowStream, InputRows
from captum_hetattn.binding.packed import unmapped_inputs
from captum_hetattn.binding.params import (
    fed_rows,
    parameter_only,
    takes_untraced,
    untraced_weights,
)
from captum_hetattn.binding.probes import _GENERATOR
from captum_hetattn.binding.tokens import GATHERED, _restore_layout, tokens_view


class SourceFinder:
    r"""The data flow builder's part that finds sources (mixed into it: it reads the builder's
    ``records``, ``walker``, ``input_tensors``, ``map_inputs``, ``batch``, ``dependence`` and
    appends to its ``sources`` and ``inputs``)."""

    def _add_sources(
        self, stream: FlowStream, i: int, tensor: Tensor, positions, dim: int
    ) -> None:
        """The sources of a new stream's fresh rows (:meth:`_add_input_sources`), then the
        parameter tokens among the rows they hold (:meth:`_mark_parameter_rows`)."""
        start = len(self.sources)
        self._add_input_sources(stream, i, tensor, positions, dim)
        self._mark_parameter_rows(stream, i, tensor, dim, start)

    def _mark_parameter_rows(self, stream: FlowStream, i: int, tensor: Tensor, dim: int,
                             start: int) -> None:
        """Fresh rows of the sources added from ``start`` on that no input feeds: parameter
        tokens, listed in ``parameter_rows``. Where untraced data enters the stream, the
        weights read beside it stand for it (:func:`untraced_weights`); where none is found,
        its rows are not told apart from parameter tokens and nothing is listed."""
        added = self.sources[start:]
        fresh = stream.fresh
        if not added or fresh is None:
            return
        positions = sorted({p for source in added for p in source.inputs if p >= 0})
        origins = [self._fed_origin(tensor, p) for p in positions]
        fed = None
        if any(-1 in s.inputs for s in added) \
                or takes_untraced(tensor, stop=self.walker.marks, batch=self.batch):
            weights = untraced_weights(tensor, stop=self.walker.marks, batch=self.batch)
            if not weights:
                return
            origins += weights
        else:
            fed = self.fed.get(stream.index)
        if fed is None:
            fed = fed_rows(tensor, dim, origins)
        if fed is None:  # no double backward through the embedding: left as before
            return
        held = torch.zeros_like(fresh)
        for source in added:
            held[:, source.columns.to(held.device)] = True
        fed = fed.to(fresh.device)
        # spliced among rows an input feeds: where no row of an example is fed, its rows come
        # through a path the Jacobian does not see (codes chosen by argmin, as Mimi's decoder
        # reads them), not from parameters alone: left as before
        unfed = fresh & held & ~fed & (fresh & held & fed).any(dim=-1, keepdim=True)
        if bool(unfed.any()):
            self.parameter_rows[stream.index] = unfed

    def _fed_origin(self, tensor: Tensor, position: int) -> Tensor:
        """Input ``position``'s tensor, or the patch embedding's output that is its only path
        to ``tensor`` (cheaper to differentiate than every pixel)."""
        from captum_hetattn.binding.lifts import lifted_origin  # lifts imports the data flow

        origin, token_dim = self.input_tensors[position]
        return lifted_origin(tensor, origin, self.lifts) if token_dim < 0 else origin

    def _add_input_sources(
        self, stream: FlowStream, i: int, tensor: Tensor, positions, dim: int
    ) -> None:
        """One source over all the stream's columns, or one per input signature when two
        inputs feed its fresh rows (single-stream fusion)."""
        positions = [p for p in positions if p in self.input_tensors]
        fresh = stream.fresh
        assert fresh is not None
        all_columns = torch.arange(stream.size, device=fresh.device)
        if not positions:
            self._add_inputless(stream, tensor)
            return
        untraced = takes_untraced(tensor, stop=self.walker.marks, batch=self.batch)
        if len(positions) == 1 and not self.map_inputs and not untraced:
            if not bool(fresh.all()) and not self._feeds_fresh(tensor, dim, positions[0], fresh):
                # the input reaches this stream only through the rows another stream feeds (a
                # residual path): its fresh rows are no input's (PVT's [CLS] on a later stage)
                self._add_inputless(stream, tensor, fresh.any(dim=0).nonzero().flatten())
                return
            self.inputs.append(InputRows(positions[0], stream.index, None))  # not traced
            columns = self._less_appended_padding(stream, i, tensor, dim, positions[0])
            self.sources.append(FlowSource(stream.index, columns, tuple(positions)))
            return
        origins = [self.input_tensors[p] for p in positions]
        record = self.records[i]
        if dim >= GATHERED:  # examples of different sizes: an input's elements are not (B, m)
            raise NotImplementedError(unmapped_inputs(record, positions))
        dependences = self.dependence(("inputs", i, tuple(positions)), tensor, dim, origins,
                                      self.batch, exact=len(positions) > 1)
        # inputs that reach only rows spliced in from other streams belong to those streams
        kept = [(p, d) for p, d in zip(positions, dependences, strict=True)
                if (d.codes is None and d.full is None) or (d.feeds() & fresh).any()]
        if not kept:
            self._add_inputless(stream, tensor)
            return
        positions, dependences = [p for p, _ in kept], [d for _, d in kept]
        if all(d.codes is not None or d.full is not None for d in dependences):
            self.fed[stream.index] = torch.stack([d.feeds() for d in dependences]).any(dim=0)
        for position, dependence in kept:
            self.inputs.append(InputRows(position, stream.index, dependence.codes))
        if len(positions) == 1 and untraced and dependences[0].codes is not None:
            self._split_untraced(stream, record, positions[0], dependences[0].feeds() & fresh)
            return
        if len(positions) == 1:
            self.sources.append(FlowSource(stream.index, all_columns, tuple(positions)))
            return
        feeds = torch.stack([d.feeds() for d in dependences], dim=1)  # (B, inputs, n)
        feeds, fresh = _less_padding(feeds, fresh, record.masked_keys)
        if not bool((feeds == feeds[:1]).all() and (fresh == fresh[:1]).all()):
            raise ValueError(
                f"attention module '{record.name}' [call {record.call_index}]: its tokens come "
                f"from {len(positions)} inputs, laid out differently in each example of the "
                "batch; explain the examples one at a time"
            )
        runs = _signature_runs(feeds[0], fresh[0].nonzero().flatten())
        if len(runs) <= 1:
            self.sources.append(FlowSource(stream.index, all_columns, tuple(positions)))
            return
        for signature, columns in runs:
            feeding = tuple(p for p, on in zip(positions, signature, strict=True) if on)
            self.sources.append(FlowSource(stream.index, columns, feeding or (-1,)))

    def _split_untraced(self, stream: FlowStream, record, position: int, fed: Tensor) -> None:
        """A stream whose fresh rows the traced input feeds in part while an untraced tensor
        enters it too (LayoutLMv3's text ids traced, its pixels an additional argument): the
        rows the input does not feed are a source of their own (the stream holds two, and its
        self-attention is C), never the traced input's. Padding the call's mask hides (a float
        mask multiplied into the embeddings, DeBERTa) is no one's."""
        fresh = stream.fresh
        assert fresh is not None
        unfed = fresh & ~fed
        padding = record.masked_keys
        if padding is not None and padding.shape == unfed.shape:
            unfed = unfed & ~padding.to(unfed.device)
        columns = torch.arange(stream.size, device=fresh.device)
        if not bool(unfed.any()):
            self.sources.append(FlowSource(stream.index, columns, (position,)))
            return
        if not bool((unfed == unfed[:1]).all()):
            example = int((unfed != unfed[:1]).any(dim=1).nonzero()[0])
            raise ValueError(
                f"attention module '{record.name}' [call {record.call_index}]: the rows model "
                f"input {position} does not feed differ between example 0 and example "
                f"{example} of the batch; explain the examples one at a time"
            )
        self.sources.append(FlowSource(stream.index, columns[~unfed[0]], (position,)))
        self.sources.append(FlowSource(stream.index, columns[unfed[0]], (-1,)))

    def _less_appended_padding(
        self, stream: FlowStream, i: int, tensor: Tensor, dim: int, position: int
    ) -> Tensor:
        """The stream's columns less the rows the model appends after the tokens of input
        ``position`` (an id lookup, or float ``(B, n, d)`` embeddings) that no input feeds (LED
        and Longformer pad the embeddings to their attention window): that padding is no token
        of the user's. Rows before the input's (learned placeholders) stay."""
        output, token_dim = self.input_tensors[position]
        columns = torch.arange(stream.size, device=tensor.device)
        fresh = stream.fresh
        # a lookup's tokens lie along its token dim; a float input's only when it is (B, n, d)
        dim_of_tokens = token_dim if token_dim >= 0 else (1 if output.dim() == 3 else None)
        if fresh is None or dim_of_tokens is None or dim_of_tokens >= output.dim() \
                or output.shape[dim_of_tokens] >= stream.size:
            return columns
        (dependence,) = self.dependence(("inputs", i, (position,)), tensor, dim,
                                        [self.input_tensors[position]], self.batch, exact=False)
        if dependence.codes is None:
            return columns
        fed = (dependence.feeds() | ~fresh).to(columns.device)
        last = torch.where(fed, columns, -1).amax(dim=1)  # (B,) the last row an input feeds
        if not bool((last == last[0]).all()):
            record = self.records[i]
            example = int((last != last[0]).nonzero()[0])
            raise ValueError(
                f"attention module '{record.name}' [call {record.call_index}]: the padding "
                f"rows the model appends to input {position} differ between example 0 and "
                f"example {example} of the batch; explain the examples one at a time"
            )
        return columns[: int(last[0]) + 1]

    def _trim_padded(self, start: int) -> None:
        """Sources added from ``start`` on that one model-padded input feeds (Longformer pads
        the ids to its attention window inside its forward) own only the input's real columns:
        the padding the model appended is no token of the user's."""
        for k in range(start, len(self.sources)):
            source = self.sources[k]
            lengths = {self.padded_inputs.get(p) for p in source.inputs}
            if len(lengths) == 1 and None not in lengths:
                (length,) = lengths
                source.columns = source.columns[source.columns < length]

    def _add_inputless(self, stream: FlowStream, tensor: Tensor, columns=None) -> None:
        """Rows no traced input feeds (``columns``, default all): parameter tokens (a pooling
        probe, latents, learned queries, a [CLS]) are never a source, their own share left out
        like GAE's read token; tokens of an untraced input are a source of their own."""
        if not parameter_only(tensor, stop=self.walker.marks):
            columns = torch.arange(stream.size) if columns is None else columns
            self.sources.append(FlowSource(stream.index, columns, (-1,)))

    def _feeds_fresh(self, tensor: Tensor, dim: int, position: int, fresh: Tensor) -> bool:
        """Whether model input ``position`` feeds any of a stream's fresh rows (one backward
        pass from those rows)."""
        view = tokens_view(tensor, dim)
        weights = torch.randn(view.shape, generator=_GENERATOR).to(view) * fresh[..., None]
        (grad,) = torch.autograd.grad(tensor, self.input_tensors[position][0],
                                      _restore_layout(weights, tensor, dim), retain_graph=True,
                                      allow_unused=True)
        return grad is not None and bool(grad.any())

def _signature_runs(signatures: Tensor, fresh: Tensor) -> list[tuple[tuple[bool, ...], Tensor]]:
    """Fresh rows grouped by the set of inputs feeding them; rows fed by no input join the next
    group (a ``[CLS]``-like parameter token before its modality's tokens), else the previous."""
    per_row = [tuple(bool(v) for v in signatures[:, r]) for r in fresh.tolist()]
    labels: list[tuple[bool, ...] | None] = [sig if any(sig) else None for sig in per_row]
    following: tuple[bool, ...] | None = None
    for r in range(len(labels) - 1, -1, -1):
        if labels[r] is None:
            labels[r] = following
        else:
            following = labels[r]
    preceding: tuple[bool, ...] | None = None
    for r in range(len(labels)):
        if labels[r] is None:
            labels[r] = preceding
        else:
            preceding = labels[r]
    groups: dict[tuple[bool, ...] | None, list[int]] = {}
    for row, label in zip(fresh.tolist(), labels, strict=True):
        groups.setdefault(label, []).append(row)
    return [
        (label or (False,) * signatures.shape[0], torch.tensor(rows, device=fresh.device))
        for label, rows in groups.items()
    ]


def padded_input(ids: Tensor, tensor: Tensor) -> bool:
    r"""Whether ``ids`` is the integer input ``tensor`` right-padded along its last dimension
    with one value (the model padding its own ids, Longformer's ``_pad_to_window_size``)."""
    n = tensor.shape[-1]
    if ids.shape[:-1] != tensor.shape[:-1] or ids.shape[-1] <= n:
        return False
    tail = ids[..., n:]
    pad = tail.flatten()[0]
    # an input that is all the padding value (a mask of ones beside pad id 1) is not told apart
    # from a lookup of padding alone (LED looks its padding up on its own)
    return bool(torch.equal(ids[..., :n], tensor) and (tail == pad).all()
                and (tensor != pad).any())


def _less_padding(feeds: Tensor, fresh: Tensor, padding: Tensor | None) -> tuple[Tensor, Tensor]:
    r"""``feeds`` ``(B, inputs, n)`` and ``fresh`` ``(B, n)`` with each padded token (a key the
    call's mask hides from every query) given the signature of the same token in an example
    where it is real: which inputs feed padding says nothing of the layout (TimesFM zeroes a
    wholly padded patch's values, so only its padding flags feed it)."""
    if padding is None or padding.shape != fresh.shape or not bool(padding.any()):
        return feeds, fresh
    padding = padding.to(fresh.device)
    first_real = (~padding).long().argmax(dim=0)  # per token, an example where it is real
    columns = torch.arange(fresh.shape[1], device=fresh.device)
    pad_feeds = padding[:, None, :].expand_as(feeds)
    feeds = torch.where(pad_feeds, feeds[first_real, :, columns].T[None], feeds)
    fresh = torch.where(padding, fresh[first_real, columns][None], fresh)
    return feeds, fresh
