"""``python -m tornado_ws_runner``: the same as the console script."""

import sys

from .daemon.cli import main

sys.exit(main())
