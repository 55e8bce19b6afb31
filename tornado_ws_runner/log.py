"""Named loggers and the TRACE level the Configurapi log levels need."""

from __future__ import annotations

import logging
import logging.handlers

__all__ = ["TRACE", "access_log", "configure", "engine_log", "management_log", "runner_log"]

#: Below DEBUG: per-policy and per-event durations (Configurapi's ``trace``).
TRACE = 5
logging.addLevelName(TRACE, "TRACE")

runner_log = logging.getLogger("tornado_ws_runner")
access_log = logging.getLogger("tornado_ws_runner.access")
engine_log = logging.getLogger("tornado_ws_runner.engine")
management_log = logging.getLogger("tornado_ws_runner.management")


def configure(level: str, fmt: str, file: str | None = None, syslog: bool = False) -> None:
    """Sends the package's logs (and Tornado's) to stderr, a file or syslog.

    A file is watched, so logrotate may move it; syslog lines carry the program name.
    """
    handler: logging.Handler
    if file:
        handler = logging.handlers.WatchedFileHandler(file)
    elif syslog:
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        fmt = "tornado-ws-runner[%(process)d]: " + fmt.replace("%(asctime)s ", "")
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(fmt))
    numeric = TRACE if level.lower() == "trace" else logging.getLevelName(level.upper())
    for name in ("tornado_ws_runner", "tornado"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(numeric)
        logger.propagate = False
