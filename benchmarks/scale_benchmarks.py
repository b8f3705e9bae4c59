"""The scale benchmarks (batch, long context, many targets, IG, evaluation throughput).

Run from the repository root: ``.venv/bin/python benchmarks/scale_benchmarks.py [--quick]
[--only SECTION ...] [--lengths 512 2048 ...] [--budget SECONDS]`` — the same as
``captum-hetattn bench`` / ``python -m captum_hetattn.bench``; writes ``benchmarks/results.md``
and ``benchmarks/results.json``. See :mod:`captum_hetattn.bench`.
"""

from __future__ import annotations

import sys

from captum_hetattn.bench import main

if __name__ == "__main__":
    sys.exit(main())
