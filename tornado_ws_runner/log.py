"""Named loggers and the TRACE level the Configurapi log levels need."""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import threading
import time
from collections import deque
from collections.abc import Callable

__all__ = [
    "TRACE",
    "AccessLines",
    "SecondCachingFormatter",
    "access",
    "access_log",
    "configure",
    "engine_log",
    "management_log",
    "runner_log",
]

#: Below DEBUG: per-policy and per-event durations (Configurapi's ``trace``).
TRACE = 5
logging.addLevelName(TRACE, "TRACE")

runner_log = logging.getLogger("tornado_ws_runner")
access_log = logging.getLogger("tornado_ws_runner.access")
engine_log = logging.getLogger("tornado_ws_runner.engine")
management_log = logging.getLogger("tornado_ws_runner.management")


class BatchedStderrHandler(logging.StreamHandler):
    """stderr, with access lines written in batches instead of one write(2) each.

    A write(2) per line would cost more than the rest of an event. An access line is
    queued (a deque: the event loop's thread appends, the flushing thread takes, no lock
    between them) and a small thread writes the queue out at least every ``interval``
    seconds, in one write. Every other line (start, reload, warnings) is written at once,
    after the access lines queued before it.
    """

    def __init__(self, interval: float = 0.5) -> None:
        stream = io.TextIOWrapper(
            io.FileIO(os.dup(2), "w"), encoding="utf-8", errors="backslashreplace"
        )
        super().__init__(stream)
        self.interval = interval
        self._lines: deque[str] = deque()
        #: Queues an access line formatted by AccessLines (no LogRecord).
        self.write_line: Callable[[str], None] = self._lines.append
        threading.Thread(target=self._flush_periodically, name="log-flush", daemon=True).start()

    def flush(self) -> None:
        """Per-record flush is skipped: emit() decides; see flush_now()."""

    def flush_now(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_queued()
            self.stream.flush()

    def _write_queued(self) -> None:
        lines = self._lines
        # Only this method takes from the queue (under the handler's lock), so the
        # lines counted now are there to take, however many are appended meanwhile.
        batch = [lines.popleft() for _ in range(len(lines))]
        if batch:
            batch.append("")
            try:
                self.stream.write(self.terminator.join(batch))
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": batch[0]}))

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == access_log.name:
            try:
                self._lines.append(self.format(record))
            except Exception:
                self.handleError(record)
            return
        self._write_queued()  # logging.Handler.handle holds the lock around emit()
        super().emit(record)
        self.stream.flush()

    def _flush_periodically(self) -> None:
        while True:
            time.sleep(self.interval)
            self.flush_now()

    def close(self) -> None:
        self.flush_now()
        super().close()


class SecondCachingFormatter(logging.Formatter):
    """``logging.Formatter`` with the date and time part of ``asctime`` made once a second.

    Formatting it (localtime, strftime) is a good part of an access line's cost; lines
    of the same second share it. Only the milliseconds are added per record. The text is
    the same as ``logging.Formatter``'s.
    """

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self.fmt = fmt
        self._second: int | None = None
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self._asctime(int(record.created), record.msecs)

    def _asctime(self, second: int, msecs: float) -> str:
        if second != self._second:
            stamp = time.strftime(self.default_time_format, self.converter(second))
            self._second, self._stamp = second, stamp
        if self.default_msec_format:
            return self.default_msec_format % (self._stamp, msecs)
        return self._stamp

    def line_maker(
        self, name: str, levelname: str, clock: Callable[[], float] = time.time
    ) -> Callable[[str], str] | None:
        """A function making, from a message, the line format() makes of a record of
        logger ``name`` at ``levelname`` created at ``clock()``; None when the format
        shows more than ``asctime``, ``levelname``, ``name`` and one ``%(message)s``.

        The text around the message is made once per millisecond (the finest part of
        ``asctime``): lines of one millisecond only join it to their message.
        """
        fmt = self.fmt
        probe = _FieldProbe()
        try:
            fmt % probe
        except (TypeError, ValueError):
            return None
        if not probe.asked <= {"asctime", "levelname", "name", "message"}:
            return None
        head, found, tail = fmt.partition("%(message)s")
        if not found or "%(message)s" in tail:
            return None
        fields = {"levelname": levelname, "name": name, "asctime": ""}
        try:  # "%%(message)s" is no field: such a split leaves a lone "%" behind
            around = [head % fields, tail % fields]
        except (KeyError, TypeError, ValueError):
            return None
        asctime = self._asctime if "asctime" in probe.asked else None
        shown = [-1]  # the millisecond whose asctime is in ``around``

        def make(message: str) -> str:
            if asctime is not None:
                now = clock()
                second = int(now)
                msecs = int((now - second) * 1000)  # as LogRecord does
                if second * 1000 + msecs != shown[0]:
                    shown[0] = second * 1000 + msecs
                    fields["asctime"] = asctime(second, msecs)
                    around[:] = head % fields, tail % fields
            return around[0] + message + around[1]

        return make


class _FieldProbe(dict[str, object]):
    """The keys a %-format looks up."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def __missing__(self, key: str) -> object:
        self.asked.add(key)
        return 0


class AccessLines:
    """The access lines: one per connection opened and closed and per event.

    Through ``logging`` a line costs a LogRecord, the logger's and the handler's checks
    and ``Formatter.format``, several times what the line itself needs. When
    ``configure`` has sent the logs to stderr at INFO or below with a format showing
    only ``asctime``, ``levelname``, ``name`` and ``message``, a line is made here, the
    same text the formatter makes, and queued on the handler. Otherwise it goes through
    ``logging``. Only ``configure`` switches between the two, and only the event loop's
    thread writes lines (``make`` reuses one dict).
    """

    __slots__ = ("_direct",)

    def __init__(self) -> None:
        self._direct: Callable[[str], None] | None = None

    def line(self, msg: str, *args: object) -> None:
        """Logs ``msg % args`` on ``tornado_ws_runner.access`` at INFO."""
        direct = self._direct
        if direct is None:
            access_log.info(msg, *args)
        else:
            direct(msg % args)

    def direct_to(self, handler: logging.Handler) -> None:
        """Writes lines straight to ``handler`` where it can (see the class), else through
        ``logging``."""
        self._direct = None
        formatter = handler.formatter
        if not (
            isinstance(handler, BatchedStderrHandler)
            and isinstance(formatter, SecondCachingFormatter)
            and access_log.isEnabledFor(logging.INFO)
        ):
            return
        make = formatter.line_maker(access_log.name, "INFO")
        if make is None:
            return
        write = handler.write_line
        self._direct = lambda message: write(make(message))


#: Where the client port (ws/handler.py) writes its access lines.
access = AccessLines()


#: What each LogRecord collects at every call unless switched off, and the format fields
#: that show it (the logging HOWTO's "Optimization" section names these switches).
_COLLECTED = {
    "logThreads": ("%(thread)", "%(threadName)"),
    "logProcesses": ("%(process)",),
    "logMultiprocessing": ("%(processName)",),
    "logAsyncioTasks": ("%(taskName)",),
}


#: Their values at import: what turns each back on.
_ON = {switch: getattr(logging, switch) for switch in _COLLECTED if hasattr(logging, switch)}


def _collect_only_what(fmt: str) -> None:
    """Lets LogRecords collect only what ``fmt`` shows.

    The switches are the logging module's documented ones, and process-wide: this
    process's logging is configured here, from runner.yaml, and nowhere else.
    """
    for switch, on in _ON.items():
        shown = any(field in fmt for field in _COLLECTED[switch])
        setattr(logging, switch, on if shown else False)


def configure(
    level: str,
    fmt: str,
    file: str | None = None,
    syslog: bool = False,
    syslog_address: str = "/dev/log",
) -> None:
    """Sends the package's logs (and Tornado's) to stderr, a file or syslog.

    A file is watched, so logrotate may move it; syslog lines carry the program name;
    stderr batches the access lines (BatchedStderrHandler).
    """
    handler: logging.Handler
    if file:
        handler = logging.handlers.WatchedFileHandler(file)
    elif syslog:
        handler = logging.handlers.SysLogHandler(address=syslog_address)
        fmt = "tornado-ws-runner[%(process)d]: " + fmt.replace("%(asctime)s ", "")
    else:
        handler = BatchedStderrHandler()
    handler.setFormatter(SecondCachingFormatter(fmt))
    _collect_only_what(fmt)
    numeric = TRACE if level.lower() == "trace" else logging.getLevelName(level.upper())
    for name in ("tornado_ws_runner", "tornado"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(numeric)
        logger.propagate = False
    access.direct_to(handler)
