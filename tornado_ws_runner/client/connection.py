"""One client connection to a runner: messages out, every frame in matched to its call.

One reader task takes every frame off the socket (Tornado's ``read_message``) and
hands it on by its ``message-id``: to the call waiting for it, to the push buffer when
no call of this connection sent that id, or nowhere when a call of this connection did
but gave up waiting. Calls only write, then wait on their own buffer, so any number of
them can be in flight on one connection and be answered in any order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from ssl import SSLContext
from typing import Any, TypedDict, Unpack
from urllib.parse import urlsplit

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import (
    WebSocketClientConnection,
    WebSocketClosedError,
    WebSocketError,
    websocket_connect,
)

from ..engine import Response
from .errors import ABNORMAL_CLOSURE, ConnectionClosed
from .frames import (
    MessageIds,
    decode_frame,
    encode_message,
    ends_reply,
    error_from,
    is_done,
    result_of,
)
from .inbox import Inbox

__all__ = ["CallOptions", "Client", "connect"]

log = logging.getLogger("tornado_ws_runner.client")

#: Close codes after which ``pushes()`` simply ends: the server closed on purpose
#: (1000: done, e.g. a management DELETE; 1001: going away, e.g. shutdown).
_NORMAL_CLOSES = (1000, 1001)


class CallOptions(TypedDict, total=False):
    """What ``call``, ``stream`` and ``frames`` take besides the event's name and payload."""

    #: The message's ``params``.
    params: Mapping[str, Any] | None
    #: Message headers, lower-cased on the way; a ``message-id`` is replaced by the
    #: client's own.
    headers: Mapping[str, Any] | None
    #: Seconds: for ``call`` the whole reply, for ``stream`` and ``frames`` each frame.
    timeout: float | None


class Client:
    """A connection to a runner; get one from ``connect`` (or ``Client.open``).

    ``call`` and ``stream`` may run concurrently from any number of tasks. Every
    failure to get a whole reply raises: ``ErrorResponse`` for an error frame,
    ``TimeoutError`` past ``timeout``, ``ConnectionClosed`` when the connection is or
    goes away (a refusal by ``on_connect`` is a close that comes after the upgrade, so
    it is raised by the first call, or by ``pushes()``, rather than by ``connect``).
    """

    def __init__(
        self, conn: WebSocketClientConnection, max_pushes: int, stream_buffer: int
    ) -> None:
        self._conn = conn
        self._ids = MessageIds()
        self._pending: dict[str, Inbox] = {}
        self._pushes = Inbox(max_pushes)
        self._stream_buffer = stream_buffer
        self._closing = False
        self._closed: ConnectionClosed | None = None
        #: Pushes dropped because the buffer of ``max_pushes`` was full: the oldest go.
        self.dropped_pushes = 0
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        subprotocols: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None,
        ssl: SSLContext | None = None,
        ca_certs: str | None = None,
        connect_timeout: float = 20.0,
        max_message_size: int = 10 * 1024 * 1024,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
        max_pushes: int = 1000,
        stream_buffer: int = 256,
    ) -> Client:
        """Connects (``connect`` does too, and closes when its block ends).

        - ``subprotocols`` are offered in ``Sec-WebSocket-Protocol``; ``headers`` go on
          the upgrade request (``on_connect`` sees them, lower-cased).
        - ``ssl`` (an SSLContext) or ``ca_certs`` (a CA file) for a ``wss://`` server
          whose certificate the system does not trust.
        - ``connect_timeout`` bounds the TCP connect and the upgrade together.
        - ``max_message_size`` (bytes): a larger frame from the server closes the
          connection. ``ping_interval``/``ping_timeout``: keep-alive pings from this side
          (the runner pings its clients anyway).
        - ``max_pushes``: unread pushes kept (then the oldest go). ``stream_buffer``:
          frames kept for a call that is not reading them yet; beyond it the client stops
          reading the socket until that call reads, which makes the server's producer
          wait. So a program that, inside its loop over a long stream, awaits another
          call on the same connection, needs a larger buffer or a second connection.

        Any failure to connect raises ConnectionClosed: refused (its reason), an HTTP
        refusal of the upgrade (``http_status``), TLS, timeout.
        """
        if max_pushes < 1 or stream_buffer < 1:
            raise ValueError("max_pushes and stream_buffer must be at least 1")
        if urlsplit(url).scheme not in ("ws", "wss"):
            raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        request = HTTPRequest(
            url,
            headers=dict(headers or {}),
            connect_timeout=connect_timeout,
            request_timeout=connect_timeout,
            ssl_options=ssl,
            ca_certs=ca_certs,
        )
        try:
            conn = await websocket_connect(
                request,
                subprotocols=list(subprotocols) if subprotocols else None,
                max_message_size=max_message_size,
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
            )
        except HTTPClientError as exc:
            if exc.code == 599:  # Tornado's code for "no HTTP response": a timeout, a reset
                raise ConnectionClosed(None, str(exc)) from exc
            raise ConnectionClosed(None, exc.message, http_status=exc.code) from exc
        except (OSError, WebSocketError) as exc:  # refused, unreachable, TLS, not a WebSocket
            raise ConnectionClosed(None, str(exc) or type(exc).__name__) from exc
        return cls(conn, max_pushes, stream_buffer)

    # -- what the connection is -------------------------------------------------------

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server chose among those offered (the runner: the first)."""
        return self._conn.selected_subprotocol

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def close_code(self) -> int | None:
        return None if self._closed is None else self._closed.code

    @property
    def close_reason(self) -> str | None:
        return None if self._closed is None else self._closed.reason

    # -- calls ------------------------------------------------------------------------

    async def call(
        self, name: str, payload: Any = None, **options: Unpack[CallOptions]
    ) -> Response:
        """Sends event ``name`` and returns its reply: ``status_code``, ``headers``, ``body``.

        ``timeout`` bounds the whole call (TimeoutError); the connection stays usable,
        and a reply that comes later is dropped. A streamed reply is gathered: its body
        is the list of the chunks' bodies, its headers those of the done frame.
        """
        message: CallOptions = {"params": options.get("params"), "headers": options.get("headers")}
        async with asyncio.timeout(options.get("timeout")):
            frames = [f async for f in self.frames(name, payload, **message)]
        return result_of(frames)

    async def stream(
        self, name: str, payload: Any = None, **options: Unpack[CallOptions]
    ) -> AsyncGenerator[Any, None]:
        """Sends event ``name`` and yields the body of each chunk of its streamed reply.

        The message goes out when iteration starts. It ends at the done frame, or raises
        the ErrorResponse of a failed one (the producer raised) after the chunks that
        came before. A reply that is not a stream counts as a stream of its one body.
        ``timeout`` bounds the wait for each frame, not the whole stream. Leaving the
        loop early drops the rest of the stream.
        """
        replies = self.frames(name, payload, **options)
        async with contextlib.aclosing(replies):
            async for frame in replies:
                if frame.status_code >= 400:
                    raise error_from(frame)
                if not is_done(frame):
                    yield frame.body

    async def frames(
        self, name: str, payload: Any = None, **options: Unpack[CallOptions]
    ) -> AsyncGenerator[Response, None]:
        """Sends event ``name`` and yields every frame of its reply as it is, error frames
        included (nothing is raised for a status): one frame, or a stream's chunks and
        its done frame. ``timeout`` bounds the wait for each frame."""
        timeout = options.get("timeout")
        params, headers = options.get("params"), options.get("headers")
        async with asyncio.timeout(timeout):
            message_id, inbox = await self._send(name, payload, params, headers)
        try:
            while True:
                async with asyncio.timeout(timeout):
                    frame = await inbox.get()
                if frame is None:
                    raise self._closed_error()
                yield frame
                if ends_reply(frame):
                    return
        finally:
            self._forget(message_id, inbox)

    async def pushes(self) -> AsyncGenerator[Response, None]:
        """Yields the frames that answer no call of this connection, oldest first.

        Pushes are buffered from the moment the connection opens, whether or not
        anything iterates here; past ``max_pushes`` unread ones the oldest is dropped
        (and counted in ``dropped_pushes``), so that an unread push never holds up a
        reply. Iterators share that one buffer: each push goes to one of them. The
        iteration ends when the connection closes normally (this client closed it, or
        the server with 1000 or 1001) and raises ConnectionClosed otherwise, e.g. for
        a refusal by ``on_connect`` (1008).
        """
        while True:
            frame = await self._pushes.get()
            if frame is None:
                if self._closing or self.close_code in _NORMAL_CLOSES:
                    return
                raise self._closed_error()
            yield frame

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Calls still waiting raise ConnectionClosed: no reply can reach them now."""
        self._closing = True
        if self._closed is None:
            self._closed = ConnectionClosed(code, reason or "closed by the client")
        for inbox in self._pending.values():
            inbox.end()  # also lets a reader waiting for room in one go on
        self._pending.clear()
        self._conn.close(code, reason or None)
        await self._reader  # Tornado drops the socket if the server does not answer the close

    # -- inside -----------------------------------------------------------------------

    async def _send(
        self,
        name: str,
        payload: Any,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, Any] | None,
    ) -> tuple[str, Inbox]:
        if self._closed is not None:
            raise self._closed_error()
        message_id = self._ids.next()
        text = encode_message(name, message_id, payload, params, headers)
        inbox = Inbox(self._stream_buffer)
        self._pending[message_id] = inbox  # before the write: the reply may come at once
        try:
            await self._conn.write_message(text)
        except WebSocketClosedError:
            self._forget(message_id, inbox)
            raise self._closed_error() from None
        except BaseException:
            self._forget(message_id, inbox)
            raise
        return message_id, inbox

    def _forget(self, message_id: str, inbox: Inbox) -> None:
        """The call is over (answered, or it gave up): later frames of it are dropped."""
        if self._pending.get(message_id) is inbox:
            del self._pending[message_id]
        inbox.end()

    def _closed_error(self) -> ConnectionClosed:
        """A fresh exception per raise: one instance raised in several tasks would
        collect all their tracebacks. Before the reader has seen the close (a write
        found the socket gone first), Tornado's record of it is the one there is."""
        closed = self._closed or self._close_seen()
        return ConnectionClosed(closed.code, closed.reason, closed.http_status)

    def _close_seen(self) -> ConnectionClosed:
        code = self._conn.close_code
        reason = self._conn.close_reason or ""
        return ConnectionClosed(ABNORMAL_CLOSURE if code is None else code, reason)

    async def _read(self) -> None:
        try:
            while (data := await self._conn.read_message()) is not None:
                await self._dispatch(data)
        finally:
            if self._closed is None:
                self._closed = self._close_seen()
            log.debug("connection closed: %s", self._closed)
            for inbox in self._pending.values():
                inbox.end()
            self._pending.clear()
            self._pushes.end()

    async def _dispatch(self, data: str | bytes) -> None:
        frame = decode_frame(data)
        if frame is None:
            log.warning("dropped a frame that is not {statusCode, headers, body}: %.100r", data)
            return
        message_id = frame.headers.get("message-id")
        inbox = self._pending.get(message_id) if isinstance(message_id, str) else None
        if inbox is not None:
            await inbox.put(frame)
        elif self._ids.ours(message_id):
            log.debug("dropped a frame of message %s: its call is over", message_id)
        elif self._pushes.put_dropping_oldest(frame):
            self.dropped_pushes += 1
            if self.dropped_pushes == 1:
                log.warning("push buffer full: dropping the oldest unread pushes")


@contextlib.asynccontextmanager
async def connect(url: str, **options: Any) -> AsyncIterator[Client]:
    """``async with connect(url) as client``: a connection, closed when the block ends.

    ``options`` are those of ``Client.open``. Any failure to connect raises
    ConnectionClosed.
    """
    client = await Client.open(url, **options)
    try:
        yield client
    finally:
        await client.close()
