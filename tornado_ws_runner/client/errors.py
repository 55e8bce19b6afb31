"""The one exception of the client's own: the connection is not there to answer.

An error frame needs no class of its own: it is raised as the engine's
``ErrorResponse``, so a handler that calls another runner through this client and
lets the error through answers its own client with the same status.
"""

from __future__ import annotations

from ..errors import RunnerError

__all__ = ["ABNORMAL_CLOSURE", "ConnectionClosed"]

#: What RFC 6455 calls a close without a close frame (a reset, a vanished peer).
ABNORMAL_CLOSURE = 1006


class ConnectionClosed(RunnerError):
    """The connection was refused, or closed before a call had its whole reply.

    ``code`` and ``reason`` are the close frame's (1008 and the message of a failed
    ``on_connect``, 1000 ``closed by management``, 1001 at shutdown; 1006 when the
    socket went without one); ``http_status`` is set instead when the server refused
    the upgrade itself (403 for an Origin it does not allow, 503 when full), and all
    three are None when no connection was made at all (the reason says why). A handler
    that lets it through answers 502: the runner it called is what failed.
    """

    status_code = 502
    public_message = "Bad Gateway."

    def __init__(self, code: int | None, reason: str, http_status: int | None = None) -> None:
        self.code = code
        self.reason = reason
        self.http_status = http_status
        super().__init__(reason)

    def __str__(self) -> str:
        if self.code is not None:
            return f"connection closed ({self.code}): {self.reason}"
        if self.http_status is not None:
            return f"connection refused (HTTP {self.http_status}): {self.reason}"
        return f"no connection: {self.reason}"
