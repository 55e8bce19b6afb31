"""Tornado's RFC 6455 protocol with frames cut from whole chunks and text frames written whole.

Tornado's ``WebSocketProtocol13`` reads each frame with three or four exact-size
``IOStream.read_bytes`` calls (header, length, mask, payload), each a Future awaited by a
coroutine, in a loop that runs inside the handshake's ``get()``. An idle connection so
holds a task and seven coroutine frames with their locals (the upgrade's headers among
them), ~4.5 KiB (bench/memory.py); every frame leaves its rest in the stream's buffer,
so the stream takes its reader off the event loop and puts it back, per message.

Here the bytes arrive in whole chunks and every whole frame in a chunk is cut from it
in one call (``_cut``). Once the handshake is done, a plain connection's socket moves to
the event loop's own transport (sockstream.py), which hands over each chunk as it comes
(``receive``); a TLS connection stays on its ``SSLIOStream``, read with ``partial=True``
and a done callback. Either way an idle connection holds no coroutine. The rules of
Tornado's ``_receive_frame`` are kept one by one (reserved bits, control frames longer
than 125 bytes or fragmented, a continuation with nothing to continue, a new message
inside a fragmented one: the connection is dropped; past ``max_message_size``: 1009);
what a whole message then means (text, binary, close, ping, pong) is Tornado's own
``_handle_message``, unchanged, as are the close handshake and the writes.

Limits: beyond the frame being cut, at most one chunk is held here (``READ_CHUNK`` bytes
on TLS; the event loop's read size, 256 KiB for asyncio's and uvloop's, otherwise), on
top of what ``max_message_size`` allows; a frame's length is checked against it as soon
as its header is in, before its payload is read. While ``on_message`` makes Tornado wait
(it returned an awaitable), nothing is read (no read pending on TLS, the transport's
reading paused otherwise), so the client waits in its own TCP window, as with Tornado's
loop.
"""

from __future__ import annotations

import functools
import struct
from typing import TYPE_CHECKING, cast

from tornado.concurrent import Future
from tornado.iostream import StreamClosedError
from tornado.log import gen_log
from tornado.util import _websocket_mask
from tornado.websocket import WebSocketHandler, WebSocketProtocol13

from .sockstream import SocketStream

if TYPE_CHECKING:
    from tornado.websocket import _WebSocketParams

__all__ = ["READ_CHUNK", "BufferedProtocol13"]

#: bytes asked of a TLS stream per read (more when a longer frame is being read).
READ_CHUNK = 65536

_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


class BufferedProtocol13(WebSocketProtocol13):
    """A server-side ``WebSocketProtocol13`` (no masking, no compression flags).

    Its fields are slots: more keys in the instance dict made it grow to the next size,
    1.5 KiB more per connection (tracemalloc).
    """

    __slots__ = ("_have", "_need", "_parts", "_reading")

    def __init__(self, handler: WebSocketHandler, params: _WebSocketParams) -> None:
        super().__init__(handler, False, params)
        #: Bytes read and not yet cut into frames, when there are any (else None).
        self._parts: list[bytes] | None = None
        self._have = 0  # bytes in _parts
        self._need = 2  # bytes _parts must hold before the next frame can be cut
        self._reading = True  # until the handler is told no more frames will come

    async def _receive_frame_loop(self) -> None:
        """Moves a plain connection's socket to the event loop's transport, or asks a TLS
        stream for its first chunk; then returns.

        Tornado awaits its frame loop at the end of the handshake, inside the request's
        ``get()``; returning lets the handshake's coroutines end (~3 KiB per idle
        connection). From here on the transport, or the reads' done callbacks, drive it.
        """
        stream = self.stream
        if SocketStream.can_take(stream):
            sockstream = SocketStream(self, stream)
            self.stream = sockstream  # type: ignore[assignment]
            await sockstream.connect()
        else:
            self._read_more()

    def _read_more(self) -> None:
        stream = self.stream
        if type(stream) is SocketStream:
            stream.resume_reading()
            return
        try:
            want = max(self._need - self._have, READ_CHUNK)
            read = cast("Future[bytes]", self.stream.read_bytes(want, partial=True))
        except StreamClosedError:
            self._stopped(abort=True)
            return
        read.add_done_callback(self._on_chunk)

    def _on_chunk(self, read: Future[bytes]) -> None:
        try:
            chunk = read.result()
        except StreamClosedError:
            self._stopped(abort=True)
            return
        self.receive(chunk)

    def receive(self, chunk: bytes) -> None:
        """Cuts the frames ``chunk`` completes, or keeps it until one is whole."""
        parts = self._parts
        if parts is None:
            if len(chunk) < self._need:
                self._parts, self._have = [chunk], len(chunk)
                self._read_more()
                return
            buf = chunk
        else:
            parts.append(chunk)
            self._have += len(chunk)
            if self._have < self._need:
                self._read_more()
                return
            buf = b"".join(parts)
            self._parts, self._have = None, 0
        self._cut(buf)

    def _cut(self, buf: bytes) -> None:
        """Handles each whole frame in ``buf``; keeps the rest and reads on, or stops."""
        at, size = 0, len(buf)
        need = 2
        while not self.client_terminated:
            if size - at < 2:
                need = 2
                break
            first, second = buf[at], buf[at + 1]
            final, opcode, length = first & 0x80, first & 0x0F, second & 0x7F
            if first & 0x70 or (opcode & 0x8 and (length >= 126 or not final)):
                self._abort()
                break
            head = 2
            if length >= 126:  # the length follows: 16 bits for 126, 64 bits for 127
                head, wide = (4, _U16) if length == 126 else (10, _U64)
                if size - at < head:
                    need = head
                    break
                (length,) = wide.unpack_from(buf, at + 2)
            fragments = self._fragmented_message_buffer
            if length + len(fragments or b"") > self.params.max_message_size:
                self.close(1009, "message too big")
                self._abort()
                break
            if second & 0x80:
                head += 4
            end = at + head + length
            if end > size:
                need = head + length
                break
            data = buf[at + head : end]
            if second & 0x80:
                data = _websocket_mask(buf[at + head - 4 : at + head], data)
            self._wire_bytes_in += end - at
            at = end
            if opcode == 0:
                if fragments is None:
                    self._abort()
                    break
                fragments.extend(data)
                if not final:
                    continue
                # Tornado types _fragmented_message_opcode as None; it holds an int here.
                opcode, data = self._fragmented_message_opcode, bytes(fragments)  # type: ignore[assignment]
                self._fragmented_message_buffer = None
            elif not opcode & 0x8:
                if fragments is not None:
                    self._abort()
                    break
                if not final:
                    self._fragmented_message_opcode = opcode  # type: ignore[assignment]
                    self._fragmented_message_buffer = bytearray(data)
                    continue
            try:
                handled = self._handle_message(opcode, data)
            except ValueError:  # a close reason that is not UTF-8
                gen_log.debug("Malformed WebSocket request received", exc_info=True)
                self._abort()
                break
            if handled is not None:
                if type(self.stream) is SocketStream:
                    self.stream.pause_reading()
                handled.add_done_callback(functools.partial(self._cut_after, buf[at:]))
                return
        if self.client_terminated:
            self._stopped()
            return
        if at < size:
            rest = buf[at:] if at else buf
            self._parts, self._have = [rest], len(rest)
        self._need = need
        self._read_more()

    def _cut_after(self, rest: bytes, handled: Future[None]) -> None:
        """The rest of a chunk, once the message before it no longer makes Tornado wait."""
        self._cut(rest)

    def lost(self) -> None:
        """The SocketStream's connection is gone."""
        self._stopped(abort=True)

    def _stopped(self, abort: bool = False) -> None:
        """Tells the handler, once, that no frame will come any more (Tornado's loop did
        it on leaving); ``abort``: the stream failed, drop the connection first."""
        if abort:
            self._abort()
        if self._reading:
            self._reading = False
            self.handler.on_ws_connection_close(self.close_code, self.close_reason)

    def write_text(self, data: bytes) -> Future[None]:
        """One final text frame of ``data`` (already UTF-8), built with a single copy.

        The Future is the stream's write Future: resolved once the frame is flushed to
        the socket, raising StreamClosedError if the stream closed first.
        """
        size = len(data)
        if size < 126:
            header = _SHORT.pack(0x81, size)
        elif size <= 0xFFFF:
            header = _MEDIUM.pack(0x81, 126, size)
        else:
            header = _LONG.pack(0x81, 127, size)
        self._wire_bytes_out += len(header) + size
        return self.stream.write(header + data)
