"""``python -m feds2r``: the same command line as ``feds2r`` (and ``torchrun -m feds2r``)."""

import sys

from feds2r.cli import main

if __name__ == "__main__":
    sys.exit(main())
