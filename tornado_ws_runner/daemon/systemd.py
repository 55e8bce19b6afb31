"""sd_notify for ``Type=notify`` units: READY/RELOADING/STOPPING and watchdog pings.

Hand-written rather than a dependency: the protocol is one datagram per message to
``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace), and the libraries
on PyPI for it add nothing the dozen lines below do not.
"""

from __future__ import annotations

import os
import socket

from tornado.ioloop import PeriodicCallback

from ..log import runner_log

__all__ = ["Notifier"]


class Notifier:
    """Sends notify messages when run under systemd; does nothing otherwise."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address
        self.watchdog_usec = 0
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog_usec = int(usec)
        self._socket: socket.socket | None = None
        self._watchdog: PeriodicCallback | None = None

    def __call__(self, message: str) -> None:
        self.send(message)
        if message.startswith("READY=1") and self.watchdog_usec and self._watchdog is None:
            # Half the interval, as sd_watchdog_enabled(3) advises.
            self._watchdog = PeriodicCallback(
                lambda: self.send("WATCHDOG=1"), self.watchdog_usec / 2000
            )
            self._watchdog.start()
        elif message.startswith("STOPPING=1") and self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None

    def send(self, message: str) -> None:
        if not self.address:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto(message.encode(), self.address)
        except OSError as exc:
            runner_log.warning("cannot notify systemd at %s: %s", self.address, exc.strerror)

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
        if self._socket is not None:
            self._socket.close()
