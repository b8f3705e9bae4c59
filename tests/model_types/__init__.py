r"""Our own sweep over every transformers model type (issue 19).

``build`` makes a tiny model of one type (a shrunk default config plus per-type overrides), picks
the class a user would pick and builds a batch of 2 inputs; ``checks`` compares what the default
explainer returns with independent references; ``run`` classifies one type in a child process;
``sweep`` runs them all (``make sweep``) and writes ``results.md`` / ``results.json`` and the
README section. Nothing here reaches a model hub.
"""
