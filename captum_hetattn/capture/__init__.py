r"""Record attention probabilities and their gradients during one forward and one backward.

:class:`AttentionRecorder` is a context manager over a model. Inside it, every attention call the
model makes is recorded as an :class:`AttentionRecord`: the qualified name of the module that
computed it, how many times that module ran before in this recording (``call_index``), whether it
was self- or cross-attention (``role``), the post-softmax probabilities ``A`` of shape
``(batch, heads, n_query, n_key)`` and, after a backward, ``G = d objective / d A`` (zeros for a
map that is not on the path to the objective).

Backends (``backend="auto"`` combines them, each module is handled by exactly one):

- ``"hf"``: transformers models whose attention modules dispatch through
  ``ALL_ATTENTION_FUNCTIONS`` (the model files that define ``eager_attention_forward``). A
  function is registered in ``transformers.AttentionInterface`` (and the eager mask function in
  ``AttentionMaskInterface``, otherwise causal masks are silently dropped) under a neutral key
  that is then set as the attention implementation of the configs those modules read. The
  function delegates to the model file's *own* eager attention (the default that the module
  passes to ``get_interface``), so position biases, GQA or soft-capping stay exact, and records
  the weights that function returns (the tensor the attention output is computed from).
- ``"softmax"``: hand-written attention (LXMERT, VisualBERT, ViLT, BLIP, Perceiver, custom
  modules): a :class:`torch.overrides.TorchFunctionMode` catches ``F.softmax``,
  ``torch.softmax``, ``Tensor.softmax`` and ``nn.Softmax`` and gives each 4-D softmax over the
  last dimension to the innermost attention module running at that moment (a 3-D
  ``(batch * heads, n_q, n_k)`` softmax is accepted when the module tells its head count).
  Deformable attention's sampling-weight softmax is skipped. Modules that route through the
  ``AttentionInterface`` are switched to ``"eager"`` for the recording so that they compute a
  softmax too; ``nn.MultiheadAttention`` is handled as in ``"mha"``. A hand-written module that
  calls ``F.scaled_dot_product_attention`` itself (SAM's vision encoder) has that call computed
  as the kernel defines it, by the flash capture's ``attention_map`` (boolean, causal and
  additive masks, grouped keys), and its map recorded (:mod:`~.backends.sdpa`). A tracked
  module that runs and computes no softmax (linear attention, a state-space mixer: the layers of
  a hybrid model between its softmax ones) is reported by name: the engine passes relevance
  through it as through an MLP.
- ``"mha"``: :class:`torch.nn.MultiheadAttention`. While recording, its calls get
  ``need_weights=True, average_attn_weights=False`` (so the non-fused path runs and keeps the
  heads), the returned weights are recorded through their base tensor (the softmax output that
  the attention output is computed from; the returned view itself is off the gradient path) and
  the caller gets exactly what it asked for (no weights, or head-averaged weights). The
  ``nn.TransformerEncoder`` fast path and nested-tensor path are disabled while recording.

Which modules are attention modules: those that route through the ``AttentionInterface``,
``nn.MultiheadAttention`` instances, and modules whose class name contains ``Attention`` or
``Attn``. When ``modules`` is given, only calls inside those modules are recorded and each is
named after the innermost listed module running at that moment.

Role rule (``"self"`` or ``"cross"``), decided per call from the arguments of the module that
owns the call, captured by a forward pre-hook: if the module was given a key/value input under
one of the names in :data:`CROSS_INPUT_NAMES` (``encoder_hidden_states``, ``key_value_states``,
``context``, MHA's ``key``, ...), the call is cross-attention exactly when that input is a tensor
that *is not the same object* as the query input (the first argument). LXMERT's
``LxmertAttention(x, x)`` is therefore self-attention and ``LxmertAttention(x, y)`` cross. If the
module takes no such input, its ``is_cross_attention`` attribute decides, else ``"self"``. Only
when no module information is available at all does ``n_query != n_key`` decide.

Gradients arrive through tensor hooks registered on every recorded map, so a plain
``objective.backward()`` inside the context fills ``record.gradient``; at the end of that backward
(and at the latest when the context exits) maps that got no gradient get zeros.
:meth:`AttentionRecorder.compute_gradients` is the fast path: ``torch.autograd.grad`` to the maps
only, no parameter gradient, ``.grad`` never touched.

Activation checkpointing re-runs attention during the backward. A map produced while a backward
is running is treated as such a recomputation: it is merged into the earlier record of the same
module (the one with an identical map, else the first not yet merged) instead of creating a new
record; if the original map was produced without grad (reentrant checkpointing) the recomputed
map feeds the original record's gradient.

The package's rooms: :mod:`~captum_hetattn.capture.plan` decides which backend handles each
module (pure); :mod:`~captum_hetattn.capture.recorder` holds :class:`AttentionRecorder` (the
context, the records and maps, gradients, ``rearm``); :mod:`~captum_hetattn.capture.session` the
state of one recording; :mod:`~captum_hetattn.capture.backends` one module per backend
(``interface``, ``softmax``, ``mha``, ``flash``); :mod:`~captum_hetattn.capture.record` the
:class:`AttentionRecord`; :mod:`~captum_hetattn.capture.tracking` the module hooks;
:mod:`~captum_hetattn.capture.introspect` reading modules and their calls;
:mod:`~captum_hetattn.capture.claims` one recording of a model at a time;
:mod:`~captum_hetattn.capture.errors` the model's tracebacks.

Everything is restored on exit, also when the forward or the backward raised: module hooks,
tensor hooks, the torch function mode, attention implementations, the registered interface
entries and the MHA fast-path flag. ``training`` and ``requires_grad`` are never changed.

Limits, by design:

- One gradient pass per recording for ``.backward()`` (a second backward overwrites the maps it
  reaches); ``compute_gradients`` may be called again with ``retain_graph=True`` (each call
  overwrites every gradient) unless ``reduce`` already consumed them.
- In training mode with attention dropout, interface and softmax maps are taken before the
  dropout; an ``nn.MultiheadAttention`` map is taken after it (its softmax output is not
  reachable). Attribution is meant for ``eval()`` models, where dropout is the identity.
- One recording of a model at a time (of its modules and configs, which a wrapping model
  shares): a recording from another thread waits until the running one has exited, a nested
  one in the same thread raises ``RuntimeError`` (the inner one would take the outer one's
  calls). Different models are recorded concurrently. A plain forward of the model from another
  thread *during* a recording is not guarded: it would run through the recording's hooks.
- An exception the model raises inside the context propagates unchanged, without the
  interception frames (``__torch_function__``, the interface function) between the model's
  code and the call that failed.
- ``compute_gradients`` cannot run through reentrant checkpointing (``torch.autograd.grad``
  refuses it); use ``.backward()`` there.
"""

from captum_hetattn.capture.backends.flash import FlashAttention, attention_map
from captum_hetattn.capture.claims import _CLAIMS as _CLAIMS  # read here by tests
from captum_hetattn.capture.introspect import CROSS_INPUT_NAMES, autograd_node
from captum_hetattn.capture.plan import BACKENDS, Plan, plan_capture
from captum_hetattn.capture.record import AttentionRecord, Context
from captum_hetattn.capture.recorder import AttentionRecorder

__all__ = [
    "BACKENDS",
    "CROSS_INPUT_NAMES",
    "FLASH_BUDGET",
    "FLASH_MIN_ENTRIES",
    "LAYOUT_PASSES",
    "PROBE_PASSES",
    "AttentionRecord",
    "AttentionRecorder",
    "Context",
    "FlashAttention",
    "Plan",
    "attention_map",
    "autograd_node",
    "plan_capture",
]

#: map entries per chunk of heads in a flash call's backward (64 MB of float32); a recorder
#: made without ``flash_budget`` reads it here when it is made, so setting it here takes effect
FLASH_BUDGET = 2**24

#: map entries (``B · H · n_q · n_k``) from which a call runs through the flash capture; a call
#: with fewer is captured eagerly (the same maps to float rounding): below it the eager
#: function's kept map and its backward's own ``dO · Vᵀ`` cost less than the fused kernel plus
#: rebuilding each map and its gradient in the backward (ViT-base, 197 tokens: eager faster at
#: batch 1 and 2, flash at batch 8; BERT-base 128 tokens: eager at batch 1, flash at 8). Read at
#: each call, so setting it here takes effect; ``0``: flash wherever it can run
FLASH_MIN_ENTRIES = 2**20

#: backward passes one recording's data-flow probes may spend on exact token maps where tokens
#: feed several rows (one pass per row); past it those maps are traced in blocks of rows, with a
#: warning naming the module (:mod:`captum_hetattn.binding.probe_budget`). ``None``: no limit
PROBE_PASSES: int | None = 256

#: backward passes the probes that find one call's token layout may spend (a few dozen for
#: windows, bands and packed sequences: two per bit of the token count); past it the call is
#: left out with a warning naming it, not probed for minutes
#: (:mod:`captum_hetattn.binding.probe_budget`). ``None``: no limit
LAYOUT_PASSES: int | None = 512
