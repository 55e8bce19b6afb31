"""Tornado's RFC 6455 protocol with a cheaper way to read frames and write text frames.

Tornado's ``WebSocketProtocol13`` parses each frame with three or four exact-size
``IOStream.read_bytes`` calls (header, length, mask, payload). Each one is a Future,
and because the first leaves the rest of the frame in the stream's buffer, the stream
takes its reader off the event loop (``remove_reader``) and puts it back for the next
frame (``add_reader``), on every message. Here the stream is read in whole chunks
(``partial=True``) into this protocol's own buffer and the frame parts are cut from
it, so the stream's buffer empties on every read and its reader stays registered.
Tornado's frame loop runs in a task of its own rather than inside the handshake's
coroutines (see ``_receive_frame_loop``). Everything else (frame validation,
fragmentation, control frames, the 1009 close, the keep-alive pings) is Tornado's,
unchanged.

Limits: at most ``READ_CHUNK`` bytes beyond the frame being parsed are held here, on
top of what Tornado's ``max_message_size`` allows; while the handler makes Tornado wait
(``on_message`` returned an awaitable), no read is pending, so the client waits in its
own TCP window as before.
"""

from __future__ import annotations

import asyncio
import struct
from typing import TYPE_CHECKING

from tornado.concurrent import Future
from tornado.log import gen_log
from tornado.websocket import WebSocketHandler, WebSocketProtocol13

if TYPE_CHECKING:
    from tornado.websocket import _WebSocketParams

__all__ = ["READ_CHUNK", "BufferedProtocol13"]

#: bytes asked of the stream per read when the buffer holds less than a frame part.
READ_CHUNK = 65536

_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


class BufferedProtocol13(WebSocketProtocol13):
    """A server-side ``WebSocketProtocol13`` (no masking, no compression flags).

    Its two fields are slots: two more keys in the instance dict made it grow to the
    next size, 1.5 KiB more per connection (tracemalloc).
    """

    __slots__ = ("_at", "_in", "_reader")

    def __init__(self, handler: WebSocketHandler, params: _WebSocketParams) -> None:
        super().__init__(handler, False, params)
        self._in = b""
        self._at = 0
        self._reader: asyncio.Task[None] | None = None

    async def _receive_frame_loop(self) -> None:
        """Starts the frame loop in a task of its own, and returns.

        Tornado awaits the loop at the end of the handshake, inside the request's
        ``get()``: the handshake's five coroutine frames, their task and their locals
        (the upgrade's header values among them) would stay alive for the connection's
        life, ~3 KiB per idle connection (bench/memory.py). Returning ends them; the
        errors Tornado's ``accept_connection`` handles around the loop are handled here.
        """
        self._reader = asyncio.get_running_loop().create_task(self._read_frames())

    async def _read_frames(self) -> None:
        try:
            await super()._receive_frame_loop()
        except asyncio.CancelledError:
            self._abort()
        except ValueError:
            gen_log.debug("Malformed WebSocket request received", exc_info=True)
            self._abort()

    async def _read_bytes(self, n: int) -> bytes:
        """Exactly ``n`` bytes, cut from the buffer; the stream is read only when short."""
        buf, at = self._in, self._at
        if len(buf) - at < n:
            parts = [buf[at:]]
            have = len(parts[0])
            while have < n:
                chunk = await self.stream.read_bytes(max(n - have, READ_CHUNK), partial=True)
                parts.append(chunk)
                have += len(chunk)
            buf, at = b"".join(parts), 0
        self._wire_bytes_in += n
        end = at + n
        if end == len(buf):
            self._in, self._at = b"", 0
            return buf if at == 0 else buf[at:]
        self._in, self._at = buf, end
        return buf[at:end]

    def write_text(self, data: bytes) -> Future[None]:
        """One final text frame of ``data`` (already UTF-8), built with a single copy.

        The Future is the IOStream's write Future: resolved once the frame is flushed to
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
