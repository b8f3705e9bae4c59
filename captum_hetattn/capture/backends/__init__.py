r"""The capture backends, one class each (a :class:`~captum_hetattn.capture.backends.base.Backend`
with an ``install(stack)`` that changes the model, or the process, until the recording's
:class:`contextlib.ExitStack` closes):

- :mod:`~captum_hetattn.capture.backends.interface`: transformers' ``AttentionInterface``;
- :mod:`~captum_hetattn.capture.backends.softmax`: softmax interception in hand-written modules;
- :mod:`~captum_hetattn.capture.backends.mha`: ``torch.nn.MultiheadAttention``;
- :mod:`~captum_hetattn.capture.backends.flash`: interface calls through the fast kernel, maps
  built in the backward.
"""
