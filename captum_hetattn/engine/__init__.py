r"""The engine of one explanation call: record → bind → backward → readout → propagate →
assemble (:mod:`~captum_hetattn.engine.pipeline`).

- :mod:`~captum_hetattn.engine.pipeline` — the call's :class:`~.pipeline.Options` and its steps;
- :mod:`~captum_hetattn.engine.reduce` — head reduction as each gradient arrives;
- :mod:`~captum_hetattn.engine.streaming` — the readout rows propagated during the backward;
- :mod:`~captum_hetattn.engine.readout` — every readout rule and check;
- :mod:`~captum_hetattn.engine.checks` — input, target, objective, model and option checks;
- :mod:`~captum_hetattn.engine.targets` — score functions, many targets, generation targets;
- :mod:`~captum_hetattn.engine.report` — warn-once and every warning text;
- :mod:`~captum_hetattn.engine.result` — :class:`~.result.Explanation` and its parts;
- :mod:`~captum_hetattn.engine.values` — value norms and residual shares (``weighting="value"``).
"""
