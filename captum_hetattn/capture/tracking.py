r"""Module hooks that follow the model's calls while recording: a frame per running tracked
module (its role hint and, with ``record_io``, its inputs), the enclosing modules running now,
the model's embedding lookups, and the convolutions and linear maps applied to its float
inputs."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor, nn

from captum_hetattn.capture.backends.mha import MhaBackend
from captum_hetattn.capture.backends.softmax import SoftmaxBackend
from captum_hetattn.capture.introspect import autograd_node, call_inputs
from captum_hetattn.capture.memo import module_signature, named_modules_of
from captum_hetattn.capture.record import Context
from captum_hetattn.capture.session import Frame, Session


class CallTracker:
    r"""Forward hooks on the tracked modules (and, with ``record_io``, on the modules enclosing
    them and on every ``nn.Embedding``).

    Args:
        session: the running recording (its frames and contexts).
        embeddings: where embedding lookups go (``record_io``).
        softmax: the softmax backend, switched on while its modules run.
        mha: the MHA backend, given its modules' calls.
    """

    def __init__(self, session: Session, embeddings: list, softmax: SoftmaxBackend | None,
                 mha: MhaBackend | None, lifts: list | None = None) -> None:
        self.session = session
        self.embeddings = embeddings
        self.lifts = lifts if lifts is not None else []
        self.softmax = softmax
        self.mha = mha

    def install(self, stack: ExitStack, model: nn.Module) -> None:
        r"""Hook the plan's tracked modules (and with ``record_io`` the enclosing modules and
        embeddings) until ``stack`` closes."""
        tracked = self.session.plan.tracked
        for module in tracked.values():
            pre = module.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
            stack.callback(pre.remove)
            post = module.register_forward_hook(
                self._post_hook, with_kwargs=True, always_call=True
            )
            stack.callback(post.remove)
        if self.session.record_io:
            for name, module in named_modules_of(model):
                if isinstance(module, nn.Embedding):
                    handle = module.register_forward_hook(
                        functools.partial(self._on_embedding, name)
                    )
                    stack.callback(handle.remove)
                    handle = module.register_forward_pre_hook(
                        functools.partial(_check_ids, name))
                    stack.callback(handle.remove)
                elif isinstance(module, (nn.Conv2d, nn.Linear)):
                    handle = module.register_forward_hook(functools.partial(self._on_lift, name))
                    stack.callback(handle.remove)
            self._track_contexts(stack, model)

    def _track_contexts(self, stack: ExitStack, model: nn.Module) -> None:
        """Hooks on the modules enclosing attention modules (``record_io``): a windowed call's
        hidden states are a permutation of its layer's, and the layer's are in token order."""
        plan = self.session.plan
        names = [plan.names[i] for i in plan.tracked if i in plan.names]
        enclosing = {
            ".".join(name.split(".")[:k]) for name in names for k in range(name.count(".") + 1)
        }
        for name, module in named_modules_of(model):
            if name not in enclosing or id(module) in plan.tracked:
                continue
            pre = module.register_forward_pre_hook(
                functools.partial(self._enter_context, name), with_kwargs=True
            )
            post = module.register_forward_hook(self._leave_context, always_call=True)
            stack.callback(pre.remove)
            stack.callback(post.remove)

    def _enter_context(self, name: str, module: nn.Module, args: tuple, kwargs: dict) -> None:
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
        self.session.contexts.append(Context(name, first, autograd_node(first)))

    def _leave_context(self, module: nn.Module, args: tuple, output: Any) -> None:
        contexts = self.session.contexts
        if not contexts:
            return
        context = contexts.pop()
        output = first_tensor(output)
        if isinstance(output, Tensor):
            context.output, context.output_node = output, autograd_node(output)

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        session = self.session
        hint, query_input, key_input = call_inputs(module, args, kwargs)
        frame = Frame(module, hint, call_id=next(session.call_ids))
        mask = kwargs.get("attention_mask")
        frame.mask = mask if isinstance(mask, Tensor) else None
        if session.record_io:
            frame.contexts = session.contexts[::-1]
            frame.query_input, frame.key_input = query_input, key_input
            frame.nodes = {"query": autograd_node(query_input), "key": autograd_node(key_input)}
            frame.others = [a for a in (*args, *kwargs.values())
                            if isinstance(a, Tensor) and a is not query_input
                            and a.is_floating_point() and a.dim() >= 2]
        plan = session.plan
        if self.softmax is not None:
            frame.made = (len(session.entries), len(self.softmax.recorder.skipped))
        session.ran.add(id(module))
        if id(module) in plan.interface:
            session.interface_ran.add(id(module))
        session.frames.append(frame)
        if id(module) in plan.mode:
            self.softmax.enter()  # type: ignore[union-attr]
        if id(module) in plan.mha:
            return self.mha.force_weights(module, args, kwargs, frame)  # type: ignore[union-attr]
        return None

    def _post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any):
        session = self.session
        if id(module) in session.plan.mode:
            self.softmax.leave()  # type: ignore[union-attr]
        frames = session.frames
        frame = None
        for i in range(len(frames) - 1, -1, -1):
            if frames[i].module is module:
                frame = frames.pop(i)
                break
        if frame is not None and id(module) in session.plan.mode:
            self.softmax.recorder.arm_late(frame.made[0])  # type: ignore[union-attr]
            self._no_softmax(frame, output)
        if frame is not None and frame.mha_request is not None and output is not None:
            replaced = self.mha.on_output(module, frame, output)  # type: ignore[union-attr]
            self._attach_output(frame, output)
            return replaced
        if frame is not None:
            self._attach_output(frame, output)
            if id(module) in session.plan.mode and frame.records:
                from captum_hetattn.capture.recorder import drop_pooled  # (imports tracking)

                drop_pooled(self.softmax.recorder, frame,  # type: ignore[union-attr]
                            first_tensor(output))
        return None

    def _no_softmax(self, frame: Frame, output: Any) -> None:
        """A ``mode`` module's call ended (``record_io``): one that made no record and no
        softmax of its own but mixes tokens (linear attention, a state-space or convolutional
        token mixer: the layers a hybrid model runs between its softmax ones) is reported by
        name, so that neither the explanation nor an inferred graph takes it silently for
        attention that ran. The engine treats it as it treats an MLP: the identity on tokens.
        A module that works token by token (LXMERT's ``LxmertAttentionOutput``) is not."""
        session, skipped = self.session, self.softmax.recorder.skipped  # type: ignore[union-attr]
        if not session.record_io or not session.in_scope(frame.module):
            return
        if torch._C._current_graph_task_id() != -1:
            return  # a recomputation in the backward (checkpointing) merges into records
        records, softmaxes = frame.made
        if len(session.entries) > records or len(skipped) > softmaxes:
            return  # recorded (itself or inside), or its softmax was reported already
        name = session.name_of(session.owner(frame.module))
        if all(n != name for n, _ in skipped) and self._mixes_tokens(frame, output):
            skipped.append((name, (
                "it ran and computed no softmax over tokens (linear attention, a state-space "
                "or convolutional token mixer, or a gate), so it has no map to explain: "
                "relevance passes through it as through an MLP (each token keeps its own), and "
                "how it mixes tokens is not in the explanation")))

    def _mixes_tokens(self, frame: Frame, output: Any) -> bool:
        """Whether the call's last output token reads other tokens of its input (one backward
        pass through the module's own graph); ``True`` where it cannot be told."""
        hidden, out = frame.query_input, first_tensor(output)
        if not (isinstance(hidden, Tensor) and isinstance(out, Tensor) and hidden.dim() == 3
                and out.dim() == 3 and hidden.shape[:2] == out.shape[:2]
                and hidden.shape[1] > 1 and hidden.requires_grad and out.requires_grad):
            return True
        memo = self.session.memo
        key = None if memo is None else (
            "mixes_tokens", module_signature(frame.module), _tensor_key(hidden),
            _tensor_key(out), type(out.grad_fn).__name__, _tensor_key(frame.mask))
        if memo is not None and (kept := memo.get(frame.module, key)) is not None:
            return kept  # the same code, submodules, hooks and shapes: the same answer
        weights = torch.zeros_like(out)
        weights[:, -1] = 1.0
        previous, self.session.muted = self.session.muted, True
        try:
            (grad,) = torch.autograd.grad(out, hidden, weights, retain_graph=True,
                                          allow_unused=True)
        except RuntimeError:  # a graph its own in-place updates broke (RWKV's state): unknown
            return True
        finally:
            self.session.muted = previous
        mixes = grad is not None and bool(grad[:, :-1].any())
        if memo is not None:
            memo.put(frame.module, key, mixes)
        return mixes

    def _attach_output(self, frame: Frame, output: Any) -> None:
        """Give the records made inside this call the module's output (``record_io``)."""
        if not (self.session.record_io and frame.records):
            return
        self.session.settle_layouts(frame)
        output = first_tensor(output)
        for record in frame.records:
            record.output = output if isinstance(output, Tensor) else None
            record.nodes["output"] = autograd_node(record.output)

    def _on_lift(self, name: str, module: nn.Module, args: tuple, output: Any) -> None:
        """A convolution or linear map applied to a leaf of the graph (a traced float model
        input: pixels, region features), for the data flow's input rows."""
        first = args[0] if args else None
        if (isinstance(first, Tensor) and first.requires_grad and first.grad_fn is None
                and isinstance(output, Tensor)):
            self.lifts.append((name, module, first, output, autograd_node(output)))

    def _on_embedding(self, name: str, module: nn.Module, args: tuple, output: Any) -> Any:
        if args and isinstance(args[0], Tensor) and isinstance(output, Tensor):
            if (not output.requires_grad and output.is_floating_point()
                    and torch.is_grad_enabled()):
                # a frozen model on token ids: the lookup becomes the leaf of the autograd graph,
                # so the hidden states and maps after it have gradients (parameters get none)
                output = output.detach().requires_grad_()
            self.embeddings.append((name, args[0], output, autograd_node(output)))
            # the model gets a copy: writing image features into it in place (Kosmos-2) must
            # leave the recorded lookup as it was
            return output.clone()
        return None


def _tensor_key(tensor: Tensor | None) -> tuple[Any, ...] | None:
    """A tensor as a structural answer sees it: shape, strides, dtype, device."""
    if tensor is None:
        return None
    return (tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor.device)


def first_tensor(output: Any) -> Tensor | None:
    """A module's main output: the output itself, else the first tensor in it, depth first
    (I-BERT returns ``((context,), (scale,))``; a ``ModelOutput`` holds its tensors by name)."""
    if isinstance(output, Tensor) or output is None:
        return output
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def _check_ids(name: str, module: nn.Embedding, args: tuple) -> None:
    """Ids an embedding has no row for (beyond its vocabulary, negative) are refused by name
    before the lookup, instead of torch's 'index out of range in self'."""
    ids = args[0] if args else None
    if type(module).forward is not nn.Embedding.forward:
        return  # a subclass reads its argument its own way (positions from a mask: BioGPT)
    if not isinstance(ids, Tensor) or ids.is_floating_point() or not ids.numel():
        return
    rows = module.num_embeddings
    bad = (ids < 0) | (ids >= rows)
    if not bool(bad.any()):
        return
    where = bad.nonzero()[0].tolist()
    value = int(ids[tuple(where)])
    example = f" (example {where[0]})" if ids.dim() >= 2 else ""
    raise ValueError(
        f"embedding '{name}' has {rows} rows (ids 0 to {rows - 1}) but is handed id {value} "
        f"at {tuple(where)}{example} of its ids of shape {tuple(ids.shape)}: the ids do not "
        "belong to this model's vocabulary (another tokenizer? ids not cast back after "
        "arithmetic?)"
    )
