"""``python -m ops.standins``: see :mod:`ops.standins.cli`."""

import sys

from ops.standins.cli import main

sys.exit(main())
