"""A connection's send path: every frame to a client, and the backpressure on it.

Replies, stream chunks, pushes and management posts all go through ``Sender.send``.
It hands the frame to Tornado's ``WebSocketHandler.write_message`` and awaits the
Future that returns, which resolves once the socket has taken the frame: a sender goes
on only as fast as its client reads. Two bounds hold on top of that, for all senders of
one connection together:

- ``limits.send_buffer`` (bytes, default 1 MiB): the frames handed to Tornado and not
  yet flushed. A frame that would take a connection past it waits until earlier ones
  flush (one larger than the whole bound goes alone), so a client that stops reading
  holds at most this much of the server's memory in frames.
- ``timeouts.send`` (seconds, default 30): a connection whose unflushed frames make no
  progress this long is closed with 1008 ``send timeout`` and its socket dropped;
  every sender waiting on it gets ``ConnectionGone``. ``SendWatch.sweep`` finds them.

A frame's bytes leave the bound when its Future resolves (a done callback), so the
sender of a message's last frame (``send_last``) need not wait for it: its task ends,
and its bytes still hold back the connection's next senders.

Replies under load are written together. Each write to a socket can wake the reader at
the other end, and replies written one by one, each after its own message's work, wake
it once per reply. So when the loop's previous turn wrote more than one reply, the
replies of this turn are held (their bytes already count against the bound) and written
back to back at its end, in order; a lone reply, as one client's
round trip makes, is written at once. A connection's held replies are written before
any other frame of it and before its close.

A stream's task is cancelled when its client leaves, so that its producer is closed at
once. Its waits for a frame's Future are shielded: cancelling that Future would cancel
Tornado's own write Future inside it, which Tornado then reports as an error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from functools import partial
from typing import Any, Protocol

from tornado.ioloop import PeriodicCallback
from tornado.websocket import WebSocketClosedError

from ..errors import ConnectionGone
from ..log import runner_log

__all__ = ["SendWatch", "Sender", "Socket"]


class Socket(Protocol):
    """The part of Tornado's ``WebSocketHandler`` the send path uses."""

    def write_message(self, message: bytes, binary: bool = False) -> asyncio.Future[None]: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...

    def abort(self) -> None:
        """Drops the TCP connection without a close handshake."""
        ...

    def ping(self, data: bytes = b"") -> None:
        """Writes a ping frame (keepalive.py); raises WebSocketClosedError once closed."""
        ...


class SendWatch:
    """The bounds every connection's send path shares, and the connections it watches."""

    def __init__(self, send_buffer: int = 1_048_576, send_timeout: float = 30.0) -> None:
        self.send_buffer = send_buffer  # bytes handed to Tornado and not yet flushed
        self.send_timeout = send_timeout  # seconds without progress; 0: never
        #: The senders with frames not yet flushed.
        self.sending: set[Sender] = set()
        self.stalls = 0  # sends that waited for buffer space
        self.frames_out = 0  # frames flushed to clients
        self.bytes_out = 0  # their bytes (UTF-8 text)
        self.slow_consumers = 0  # connections closed by the send timeout
        self._timer: PeriodicCallback | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The replies of the open turn that wait for its end; None: no turn is open.
        self._held: list[tuple[Sender, bytes]] | None = None
        self._replies = 0  # replies written or held in the open turn
        #: The turn before had more than one reply: this turn's replies are held.
        self.holding = False

    def start(self) -> None:
        """Sweeps four times per send timeout (at most once a second, at least every 50 ms),
        so a stuck client is dropped within a quarter of the timeout after it."""
        if self.send_timeout:
            interval = max(0.05, min(1.0, self.send_timeout / 4))
            self._timer = PeriodicCallback(self.sweep, interval * 1000)
            self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def reply(self, sender: Sender, data: bytes) -> None:
        """Writes a message's last frame now, or holds it to the end of the turn (see
        the module); either way its bytes count against the bound from here."""
        if self._held is None:
            self._held = []
            self._replies = 0
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._end_turn)
        self._replies += 1
        if self.holding:
            sender.hold(len(data))
            self._held.append((sender, data))
        else:
            sender.write(data)

    def write_held(self) -> None:
        """Writes every held reply now, in the order they came."""
        held = self._held
        if held:
            self._held = []
            for sender, data in held:
                sender.release(data)

    def _end_turn(self) -> None:
        self.write_held()
        self._held = None
        self.holding = self._replies > 1

    def sweep(self) -> None:
        """Drops the clients whose frames made no progress within the send timeout."""
        now = time.monotonic()
        stuck = [s for s in self.sending if now - s.last_progress > self.send_timeout]
        for sender in stuck:
            self.slow_consumers += 1
            sender.socket.abort()  # first: a close frame would only queue behind the rest
            sender.close(1008, "send timeout")


class Sender:
    """The send half of a connection (``Connection`` adds who the client is)."""

    __slots__ = (
        "_drained",
        "closing",
        "held",
        "last_progress",
        "pending_bytes",
        "socket",
        "streams",
        "watch",
    )

    def __init__(self, watch: SendWatch, socket: Socket) -> None:
        self.watch = watch
        self.socket = socket
        self.closing = False
        self.pending_bytes = 0
        self.held = 0  # replies the watch holds to the end of the turn
        self.last_progress = 0.0
        self._drained: asyncio.Future[None] | None = None
        #: The stream tasks sending to this client; made at the first stream (most
        #: connections never stream).
        self.streams: set[asyncio.Task[Any]] | None = None

    async def send(self, frame: str) -> None:
        """Sends one text frame and returns once the socket has taken it.

        Raises ConnectionGone when the client is gone, or goes while the frame waits.
        """
        data = self._encoded(frame)
        if self.pending_bytes and self.pending_bytes + len(data) > self.watch.send_buffer:
            await self._room_for(len(data))
        written = self.write(data)
        try:
            if self.streams and asyncio.current_task() in self.streams:
                await asyncio.shield(written)
            else:
                await written
        except WebSocketClosedError:
            raise ConnectionGone() from None

    def send_last(self, frame: str) -> Awaitable[None] | None:
        """Sends the frame its sender ends with (a reply, a stream's done frame): None
        once handed on (to Tornado, or held to the end of the turn), or, when the send
        buffer has no room for it yet, what to await until it has been.

        Like ``send``, it waits for room in the send buffer, and the frame's bytes count
        against the bound until its Future resolves; only the sender does not wait for
        that, since nothing of its own comes after. A plain method: most replies find
        room, and then cost no coroutine.
        """
        data = self._encoded(frame)
        if self.pending_bytes and self.pending_bytes + len(data) > self.watch.send_buffer:
            return self._write_when_room(data)
        self.watch.reply(self, data)
        return None

    async def _write_when_room(self, data: bytes) -> None:
        await self._room_for(len(data))
        self.watch.reply(self, data)

    def _encoded(self, frame: str) -> bytes:
        if self.closing:
            raise ConnectionGone()
        return frame.encode("utf-8")

    async def _room_for(self, size: int) -> None:
        """Waits until ``size`` more bytes fit the bound (or nothing is pending)."""
        watch = self.watch
        while self.pending_bytes and self.pending_bytes + size > watch.send_buffer:
            watch.stalls += 1
            if self._drained is None or self._drained.done():
                self._drained = asyncio.get_running_loop().create_future()
            await self._drained
            if self.closing:
                raise ConnectionGone()

    def write(self, data: bytes) -> asyncio.Future[None]:
        """Hands a frame to Tornado, after this connection's held replies."""
        if self.held:
            self.watch.write_held()
        try:
            written = self.socket.write_message(data)
        except WebSocketClosedError:
            raise ConnectionGone() from None
        size = len(data)
        self._count(size)
        written.add_done_callback(partial(self._flushed, size))
        return written

    def hold(self, size: int) -> None:
        """A reply of ``size`` bytes waits for the end of the turn (SendWatch.reply)."""
        self.held += 1
        self._count(size)

    def release(self, data: bytes) -> None:
        """Hands a held reply to Tornado; one for a client gone meanwhile is dropped."""
        self.held -= 1
        size = len(data)
        try:
            written = self.socket.write_message(data)
        except WebSocketClosedError:
            self._flushed(size)
        except Exception:  # the other held replies still go out
            runner_log.exception("writing a held reply failed")
            self._flushed(size)
        else:
            written.add_done_callback(partial(self._flushed, size))

    def _count(self, size: int) -> None:
        if not self.pending_bytes:
            self.last_progress = time.monotonic()
            self.watch.sending.add(self)
        self.pending_bytes += size

    def _flushed(self, size: int, written: asyncio.Future[None] | None = None) -> None:
        """Tornado has flushed the frame, or failed to (or never took it: no
        ``written``): its bytes leave the bound."""
        self.pending_bytes -= size
        self.last_progress = time.monotonic()
        watch = self.watch
        if not self.pending_bytes:
            watch.sending.discard(self)
        if written is not None and not written.cancelled() and written.exception() is None:
            watch.frames_out += 1
            watch.bytes_out += size
        self._wake()

    def _wake(self) -> None:
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
        """No more frames: ``send`` raises ConnectionGone from now on, waiters included,
        and the streams are cancelled. True only the first time."""
        if self.closing:
            return False
        self.closing = True
        self.watch.sending.discard(self)
        self._wake()
        for task in self.streams or ():
            task.cancel()
        return True

    def close(self, code: int = 1000, reason: str = "") -> bool:
        """Closes the connection from the server's side; True when this call started it."""
        if self.held:  # replies already answered go out before the close frame
            self.watch.write_held()
        first = self.mark_closed(code)
        self.socket.close(code, reason)
        return first
