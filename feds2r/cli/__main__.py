"""``python -m feds2r.cli``: the ``feds2r`` command."""

import sys

from feds2r.cli import main

sys.exit(main())
