"""``python -m feds2r.cli``: the ``feds2r`` command, as ``python -m feds2r`` (torchrun too)."""

import sys

from feds2r.__main__ import run

sys.exit(run())
