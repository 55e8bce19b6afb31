"""``python -m tornado_ws_runner.client``: the same as ``tornado-ws-runner-client``."""

import sys

from .cli import main

sys.exit(main())
