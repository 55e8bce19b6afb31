"""Open connections by id, and the one send path every frame to a client takes.

Replies, stream chunks, pushes and management postbacks all go through
``Connection.send``, so one per-connection bound holds for all of them: at most
``send_buffer`` bytes handed to Tornado and not yet flushed to the socket. A sender
past the bound waits; a client that leaves frames unflushed longer than the send
timeout is dropped by ``Registry.sweep`` (called periodically by the runner).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Protocol

from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError

from ..errors import ConnectionGone

__all__ = ["Connection", "Registry", "Transport"]


class Transport(Protocol):
    """The part of Tornado's WebSocketHandler a connection uses."""

    def send_text(self, data: bytes) -> Awaitable[None]:
        """Writes one text frame of UTF-8 ``data``; resolves once it is flushed."""
        ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...

    def abort(self) -> None: ...

    def ping(self, data: bytes = b"") -> None:
        """Writes a ping frame; raises WebSocketClosedError once the client is gone."""
        ...


def _iso(timestamp: float) -> str:
    return (
        datetime.fromtimestamp(timestamp, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class Connection:
    """One client: its identity, its metadata, and its send buffer accounting."""

    __slots__ = (
        "_drained",
        "accepted",
        "close_code",
        "closing",
        "connected_at",
        "connecting",
        "headers",
        "id",
        "identity",
        "in_flight",
        "last_active_at",
        "last_progress",
        "on_closed",
        "pending_bytes",
        "pong_at",
        "postback_url",
        "push",
        "registry",
        "slot_free",
        "source_ip",
        "streams",
        "subprotocol",
        "transport",
        "user_agent",
    )

    def __init__(
        self,
        registry: Registry,
        transport: Transport,
        source_ip: str | None = None,
        user_agent: str | None = None,
        subprotocol: str | None = None,
        postback_url: str | None = None,
    ) -> None:
        self.id = str(uuid.uuid4())
        self.registry = registry
        self.transport = transport
        self.connected_at = self.last_active_at = time.time()
        self.source_ip = source_ip
        self.user_agent = user_agent
        self.subprotocol = subprotocol
        self.postback_url = postback_url
        self.identity: Any = None
        self.headers: dict[str, Any] = {}
        self.closing = False
        #: False until on_connect has succeeded: the management API does not see it before.
        self.accepted = False
        #: The on_connect event while it runs: on_disconnect waits for it.
        self.connecting: asyncio.Task[Any] | None = None
        #: Called once when the connection closes, by whichever path (runs on_disconnect).
        self.on_closed: Callable[[Connection], None] | None = None
        self.close_code: int | None = None
        self.pending_bytes = 0
        self.last_progress = 0.0
        self.in_flight = 0
        self.slot_free: asyncio.Future[None] | None = None
        #: The stream tasks sending to this client; made at the first stream (most
        #: connections never stream, and an empty set is 216 bytes).
        self.streams: set[asyncio.Task[Any]] | None = None
        self._drained: asyncio.Future[None] | None = None
        self.push: Callable[..., Any] | None = None
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

    async def send(self, frame: str, last: bool = False) -> int:
        """Hands one text frame to the socket; returns its size once it is flushed.

        Raises ConnectionGone when the client is gone or goes away meanwhile. The size
        counted is the frame's UTF-8 size: it is encoded here, once, and Tornado sends
        the bytes as they are (still a text frame). ``last``: the caller's task ends with
        this frame, so it need not give other connections a turn afterwards.
        """
        if self.closing:
            raise ConnectionGone(self.id)
        data = frame.encode("utf-8")
        size = len(data)
        limit = self.registry.send_buffer
        while self.pending_bytes and self.pending_bytes + size > limit:
            self.registry.stalls += 1
            if self._drained is None or self._drained.done():
                self._drained = asyncio.get_running_loop().create_future()
            await self._drained
            if self.closing:
                raise ConnectionGone(self.id)
        try:
            write = self.transport.send_text(data)
        except (WebSocketClosedError, StreamClosedError):
            raise ConnectionGone(self.id) from None
        if isinstance(write, asyncio.Future) and write.done():
            # The socket took it at once (nothing was queued before it): there is nothing
            # to account, wait for or sweep.
            if write.exception() is not None:
                raise ConnectionGone(self.id)
            if not last:
                # Yield anyway: a producer whose frames all flush at once would keep the
                # loop to itself, and no other connection would be served meanwhile.
                await asyncio.sleep(0)
            return size
        await self._flushed(write, size)
        return size

    async def _flushed(self, write: Awaitable[None], size: int) -> None:
        """Waits for a frame the socket did not take at once, counted in pending_bytes."""
        if not self.pending_bytes:
            self.last_progress = time.monotonic()
            self.registry.sending.add(self)
        self.pending_bytes += size
        try:
            if self.streams and asyncio.current_task() in self.streams:
                # A stream task is cancelled when its client leaves; shielded, that cancel
                # does not reach the stream's write Future (a TLS IOStream would log it).
                await asyncio.shield(write)
            else:
                await write
        except (WebSocketClosedError, StreamClosedError):
            raise ConnectionGone(self.id) from None
        finally:
            self.pending_bytes -= size
            self.last_progress = time.monotonic()
            if not self.pending_bytes:
                self.registry.sending.discard(self)
            if self._drained is not None and not self._drained.done():
                self._drained.set_result(None)

    def add_stream(self, task: asyncio.Task[Any]) -> None:
        """``task`` sends a stream to this client: it is cancelled if the client leaves."""
        if self.streams is None:
            self.streams = set()
        self.streams.add(task)

    def discard_stream(self, task: asyncio.Task[Any]) -> None:
        if self.streams is not None:
            self.streams.discard(task)

    def mark_closed(self, code: int | None = None) -> bool:
        """Takes the connection out of the registry; True only the first time."""
        if self.closing:
            return False
        self.closing = True
        self.close_code = code
        self.registry.remove(self)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        for task in self.streams or ():
            task.cancel()
        if self.on_closed is not None:
            self.on_closed(self)
        return True

    def close(self, code: int = 1000, reason: str = "") -> bool:
        """Server-side close; True when this call started it."""
        first = self.mark_closed(code)
        self.transport.close(code, reason)
        return first


class Registry:
    """id -> Connection for the open connections, plus the counters a sweep needs."""

    def __init__(self, send_buffer: int = 1_048_576, send_timeout: float = 30.0) -> None:
        self.send_buffer = send_buffer  # bytes; see Connection.send
        self.send_timeout = send_timeout  # seconds; see sweep
        self._connections: dict[str, Connection] = {}
        self.sending: set[Connection] = set()
        self.stalls = 0
        self.slow_consumers = 0

    def add(self, connection: Connection) -> None:
        self._connections[connection.id] = connection

    def remove(self, connection: Connection) -> None:
        self._connections.pop(connection.id, None)
        self.sending.discard(connection)

    def get(self, connection_id: str) -> Connection | None:
        """An accepted connection: one still in on_connect is not yet addressable."""
        connection = self._connections.get(connection_id)
        return connection if connection is not None and connection.accepted else None

    def ids(self) -> list[str]:
        """The accepted connections' ids (len() and iteration count all open ones)."""
        return [cid for cid, connection in self._connections.items() if connection.accepted]

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._connections.values()))

    def sweep(self) -> None:
        """Drops clients whose queued frames made no progress within the send timeout."""
        now = time.monotonic()
        stuck = [c for c in self.sending if now - c.last_progress > self.send_timeout]
        for connection in stuck:
            self.slow_consumers += 1
            connection.close(1008, "send timeout")
            connection.transport.abort()
