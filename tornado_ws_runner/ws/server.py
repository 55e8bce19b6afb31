"""The client port's HTTP server: Tornado's HTTPServer, with the connections that have
not finished their upgrade counted against ``limits.max_connections``.

Without the count, a flood of TCP connections that never finish an upgrade (or never
send one) would be bounded only by the process's open files. Here a connection is
counted from its accept, through its upgrade, until it is a registered client; one past
the limit is answered 503 and closed before anything of it is read. Tornado's own
bounds apply to the rest of the HTTP phase (``limits.max_header_size``,
``limits.max_upgrade_body``, ``timeouts.request_headers``).
"""

from __future__ import annotations

from typing import Any

import tornado.httpserver
import tornado.iostream

from ..log import runner_log
from ..runtime import RunnerState
from . import codec

__all__ = ["ClientPortServer"]

_REFUSAL = codec.error_frame(503, "Too Many Connections", "", None).encode("utf-8")
_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_REFUSAL), _REFUSAL)
)


class ClientPortServer(tornado.httpserver.HTTPServer):
    """One listening port for WebSocket clients (plain or TLS); ``state`` is set before
    it serves (Tornado's HTTPServer takes its own arguments only)."""

    state: RunnerState
    #: Connections accepted whose HTTP phase (the upgrade) has not ended.
    upgrading = 0

    def handle_stream(self, stream: tornado.iostream.IOStream, address: tuple[Any, ...]) -> None:
        state = self.state
        if self.upgrading + len(state.registry) >= state.settings.limits.max_connections:
            state.metrics.rejected.labels("max_connections").inc()
            runner_log.warning(
                "refused a connection from %s: %d open and %d upgrading (the maximum is %d)",
                address[0] if address else "?",
                len(state.registry),
                self.upgrading,
                state.settings.limits.max_connections,
            )
            _refuse(stream)
            return
        self.upgrading += 1
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        """Tornado's HTTP phase of a connection has ended: upgraded, refused or gone."""
        self.upgrading -= 1
        super().on_close(server_conn)


def _refuse(stream: tornado.iostream.IOStream) -> None:
    try:
        written = stream.write(_REFUSED)
    except tornado.iostream.StreamClosedError:
        return
    written.add_done_callback(lambda _: stream.close())
