r"""``python -m captum_hetattn.bench``: the scale benchmarks (see :mod:`captum_hetattn.bench`)."""

import sys

from captum_hetattn.bench.runner import main

if __name__ == "__main__":
    sys.exit(main())
