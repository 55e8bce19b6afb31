"""A connection's socket after the upgrade, on an asyncio transport instead of an IOStream.

Tornado's ``IOStream`` reads in Python: each chunk is an event-loop callback, a new
64 KiB zeroed buffer, a Future resolved, and a second ``recv`` that finds the socket
empty; each write is a Future and a pass through the stream's write buffer. The event
loop's own transport (uvloop's in C, or asyncio's selector transport) does the same work
with one ``data_received`` per chunk and ``write`` straight to the socket
(docs/performance.md). Tornado's ``WebSocketProtocol13`` only needs a few of the
stream's methods once the handshake is done; ``SocketStream`` has them, with the
IOStream's meaning, so the close handshake, pings and pongs stay Tornado's own.

TLS connections keep their ``SSLIOStream``: the TLS state lives in it and cannot move.

Backpressure: ``write`` returns a Future resolved once the transport's buffer is empty
again (the IOStream resolves each write once its bytes are flushed; both mean "the
socket took it"). The write buffer's high-water mark is 0, so the transport reports
every write it could not send at once. Reading: ``pause_reading`` holds chunks that
were already on their way, so no frame is cut while a message makes the reader wait.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol, cast

from tornado.iostream import IOStream, StreamClosedError

__all__ = ["Receiver", "SocketStream"]


class Receiver(Protocol):
    """What reads from a SocketStream: frames.py's protocol."""

    def receive(self, chunk: bytes) -> None:
        """Bytes from the client, in order."""
        ...

    def lost(self) -> None:
        """The connection is gone, by either side's doing; called once."""
        ...


class SocketStream(asyncio.Protocol):
    """The IOStream methods Tornado's WebSocket protocol calls, over an asyncio transport."""

    __slots__ = (
        "_closed",
        "_early",
        "_flushes",
        "_held",
        "_loop",
        "_paused",
        "_receiver",
        "io_loop",
        "socket",
        "transport",
    )

    def __init__(self, receiver: Receiver, stream: IOStream) -> None:
        """Takes ``stream``'s socket; bytes it already read are the first ones received."""
        self._receiver = receiver
        self.io_loop = stream.io_loop
        self._loop = asyncio.get_running_loop()
        self.socket = stream.socket
        self.transport: asyncio.Transport | None = None
        self._closed = False
        #: Reading is paused until connect() has the transport.
        self._paused = True
        #: Chunks received while reading was paused, to hand over in order.
        self._held: list[bytes] | None = None
        #: Writes made before the transport was connected (sent by connection_made).
        self._early: list[bytes] | None = None
        #: Futures of writes waiting for the transport's buffer to empty.
        self._flushes: list[asyncio.Future[None]] | None = None
        size = stream._read_buffer_size  # read with the upgrade request, past its end
        if size:
            buffered = cast("asyncio.Future[bytes]", stream.read_bytes(size))
            self._held = [buffered.result()]  # served from the buffer, at once
        stream.io_loop.remove_handler(self.socket)

    @staticmethod
    def can_take(stream: IOStream) -> bool:
        """False for TLS (its state lives in the SSLIOStream) and for a stream with bytes
        still to write or already closed."""
        return type(stream) is IOStream and not stream.writing() and not stream.closed()

    async def connect(self) -> None:
        """Hands the socket to the event loop, then reads on."""
        try:
            await self._loop.connect_accepted_socket(lambda: self, self.socket)
        except OSError:
            self._set_closed()
            self.socket.close()
            self._receiver.lost()
            return
        self.resume_reading()

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transport is not an asyncio.Transport subclass, but has its methods.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=0)
        if self._closed:
            transport.abort()
            return
        if self._paused:
            transport.pause_reading()
        early, self._early = self._early, None
        for data in early or ():
            transport.write(data)
        if not transport.get_write_buffer_size():
            self.resume_writing()

    def data_received(self, data: bytes) -> None:
        if self._paused:
            if self._held is None:
                self._held = []
            self._held.append(data)
            return
        self._receiver.receive(data)

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_closed()
        self._receiver.lost()

    def pause_writing(self) -> None:
        """The transport holds unsent bytes: writes from now on wait until it is empty."""
        if self._flushes is None:
            self._flushes = []

    def resume_writing(self) -> None:
        flushes, self._flushes = self._flushes, None
        for future in flushes or ():
            if not future.done():
                future.set_result(None)

    # -- what Tornado's WebSocketProtocol13 and frames.py call --------------------

    def write(self, data: bytes) -> asyncio.Future[None]:
        """Sends ``data``; the Future resolves once the socket has taken all of it."""
        if self._closed:
            raise StreamClosedError()
        future: asyncio.Future[None] = self._loop.create_future()
        transport = self.transport
        if transport is None:  # not connected yet
            if self._early is None:
                self._early = []
            self._early.append(data)
            self.pause_writing()
        else:
            transport.write(data)
        if self._flushes is None:
            future.set_result(None)
        else:
            self._flushes.append(future)
        return future

    def pause_reading(self) -> None:
        self._paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Reads on; chunks held while paused go to the receiver first, in order."""
        if not self._paused or self.transport is None:
            return
        self._paused = False
        while self._held:
            chunk = self._held.pop(0)
            self._receiver.receive(chunk)
            if self._paused:  # that chunk paused reading again: keep the rest
                return
        self._held = None
        if not self._closed:
            self.transport.resume_reading()

    def set_nodelay(self, value: bool) -> None:
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if value else 0)

    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Drops the connection now, unsent bytes with it (as IOStream.close does)."""
        if self._closed:
            return
        self._set_closed()
        if self.transport is not None:
            self.transport.abort()

    def _set_closed(self) -> None:
        self._closed = True
        flushes, self._flushes = self._flushes, None
        for future in flushes or ():
            if not future.done():
                future.set_exception(StreamClosedError())
                future.exception()  # retrieved: asyncio would log it otherwise
