"""One client connection: who it is, what the management API shows of it, and its state.

Its send path is the ``Sender`` it is built on (sender.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..engine import Identity, Response
from . import codec
from .sender import Sender, SendWatch, Socket

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["DECLARED_LOST", "Connection"]

#: ``closed_by`` of the connections of a node the cluster declared lost: their
#: on_disconnect ran on the node that claimed it, so it does not run here again.
DECLARED_LOST = "declared-lost"


def _iso(timestamp: float) -> str:
    return (
        datetime.fromtimestamp(timestamp, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class Connection(Sender):
    """One client: its id, identity and metadata, its messages in flight and streams."""

    __slots__ = (
        "accepted",
        "close_code",
        "closed_by",
        "connected_at",
        "connecting",
        "groups",
        "headers",
        "id",
        "identity",
        "in_flight",
        "last_active_at",
        "on_closed",
        "pong_at",
        "postback_url",
        "registry",
        "slot_free",
        "source_ip",
        "subprotocol",
        "user_agent",
    )

    def __init__(
        self,
        registry: Registry,
        watch: SendWatch,
        socket: Socket,
        source_ip: str | None = None,
        user_agent: str | None = None,
        subprotocol: str | None = None,
        postback_url: str | None = None,
    ) -> None:
        super().__init__(watch, socket)
        self.id = str(uuid.uuid4())
        self.registry = registry
        self.connected_at = self.last_active_at = time.time()
        self.source_ip = source_ip
        self.user_agent = user_agent
        self.subprotocol = subprotocol
        self.postback_url = postback_url
        self.identity: Any = None
        self.headers: dict[str, Any] = {}
        #: False until on_connect has succeeded: the management API does not see it before.
        self.accepted = False
        #: The on_connect event while it runs: on_disconnect waits for it.
        self.connecting: asyncio.Task[Any] | None = None
        #: Called once when the connection closes, by whichever path (runs on_disconnect).
        self.on_closed: Callable[[Connection], None] | None = None
        self.close_code: int | None = None
        #: Who ended it, as on_disconnect's ``disconnect-reason`` header says: client,
        #: server, management or shutdown (node-lost comes from cluster mode).
        self.closed_by = "client"
        self.in_flight = 0
        #: The groups it is in (registry.py), made at the first join.
        self.groups: set[str] | None = None
        self.slot_free: asyncio.Future[None] | None = None
        #: The loop's time of the last pong (keepalive.py closes those without a recent one).
        self.pong_at = 0.0

    def describe(self) -> dict[str, Any]:
        return {
            "connectionId": self.id,
            "connectedAt": _iso(self.connected_at),
            "lastActiveAt": _iso(self.last_active_at),
            "sourceIp": self.source_ip,
            "userAgent": self.user_agent,
            "subprotocol": self.subprotocol,
        }

    def directory_entry(self) -> dict[str, Any]:
        """What cluster mode's directory holds of it: what the management API describes,
        and the identity, for an on_disconnect on another node."""
        identity = self.identity
        saved = None
        if isinstance(identity, Identity):
            fields = ("id", "issuer", "name", "email", "claims")
            saved = {name: getattr(identity, name) for name in fields}
        return {**self.describe(), "identity": saved}

    async def push(self, response: Response | dict[str, Any]) -> None:
        """Sends an out-of-band frame to this client (the ``push-function`` header);
        raises ConnectionGone if it left."""
        if isinstance(response, Response):
            frame = codec.encode(response, response.headers.get("message-id"))
        else:
            frame = codec.strict_dumps(response)
        await self.send(frame)

    def close(self, code: int = 1000, reason: str = "", by: str = "server") -> bool:
        """Closes the connection from the server's side (``by``: who asked); True when
        this call started it."""
        if not self.closing:
            self.closed_by = by
        return super().close(code, reason)

    def mark_closed(self, code: int | None = None) -> bool:
        """Takes the connection out of the registry; True only the first time, when
        ``on_closed`` runs."""
        if not super().mark_closed(code):
            return False
        self.close_code = code
        self.registry.remove(self)
        if self.slot_free is not None and not self.slot_free.done():
            self.slot_free.set_result(None)
        if self.on_closed is not None:
            self.on_closed(self)
        return True
