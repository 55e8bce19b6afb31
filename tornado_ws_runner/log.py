"""Named loggers and the TRACE level the Configurapi log levels need."""

from __future__ import annotations

import logging

__all__ = ["TRACE", "access_log", "engine_log", "management_log", "runner_log"]

#: Below DEBUG: per-policy and per-event durations (Configurapi's ``trace``).
TRACE = 5
logging.addLevelName(TRACE, "TRACE")

runner_log = logging.getLogger("tornado_ws_runner")
access_log = logging.getLogger("tornado_ws_runner.access")
engine_log = logging.getLogger("tornado_ws_runner.engine")
management_log = logging.getLogger("tornado_ws_runner.management")
