"""SocketStream (sockstream.py) over a real socket pair: what the IOStream had read comes
first, writes before the transport are kept, a write's Future waits for the socket,
closing fails what is pending, and chunks held while paused keep their order."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError
from wsutil import bounded, until

from tornado_ws_runner.ws.sockstream import SocketStream


class Recorder:
    """A Receiver that keeps what it is given, and pauses its stream on a marker."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.lost_calls = 0
        self.stream: SocketStream | None = None
        self.pause_on: bytes | None = None

    def receive(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        if self.pause_on is not None and self.pause_on in chunk and self.stream is not None:
            self.stream.pause_reading()

    def lost(self) -> None:
        self.lost_calls += 1

    def data(self) -> bytes:
        return b"".join(self.chunks)


class Pair:
    """A SocketStream on one end of a socket pair; ``peer`` is the other end."""

    def __init__(self) -> None:
        server, self.peer = socket.socketpair()
        self.peer.setblocking(False)
        self.iostream = IOStream(server)
        self.recorder = Recorder()
        self.stream: SocketStream | None = None

    def adopt(self) -> SocketStream:
        self.stream = SocketStream(self.recorder, self.iostream)
        self.recorder.stream = self.stream
        return self.stream

    async def receive(self, size: int) -> bytes:
        """Reads exactly ``size`` bytes from the peer end."""
        loop = asyncio.get_running_loop()
        got = bytearray()
        while len(got) < size:
            chunk = await bounded(loop.sock_recv(self.peer, size - len(got)))
            assert chunk, f"the stream closed after {len(got)} of {size} bytes"
            got += chunk
        return bytes(got)

    async def send(self, data: bytes) -> None:
        await bounded(asyncio.get_running_loop().sock_sendall(self.peer, data))


@pytest.fixture
def pair(io_loop: IOLoop) -> Iterator[Pair]:
    made = Pair()
    yield made
    if made.stream is not None:
        made.stream.close()
    else:
        made.iostream.close()
    made.peer.close()


async def test_bytes_the_iostream_read_past_come_first(pair: Pair) -> None:
    """What the IOStream read beyond the request is received before later bytes."""
    await pair.send(b"GET / HTTP/1.1\r\n\r\nearly-")
    head = await bounded(pair.iostream.read_until(b"\r\n\r\n"))
    assert head == b"GET / HTTP/1.1\r\n\r\n"
    stream = pair.adopt()
    await stream.connect()
    await pair.send(b"late")
    await until(lambda: pair.recorder.data() == b"early-late", "both parts received")
    assert pair.recorder.chunks[0] == b"early-"


async def test_writes_before_the_transport_are_sent_first_and_in_order(pair: Pair) -> None:
    """Writes made before connect() are kept, sent in order, and their Futures resolve."""
    stream = pair.adopt()
    first, second = stream.write(b"one,"), stream.write(b"two,")
    assert not first.done() and not second.done()
    await stream.connect()
    third = stream.write(b"three")
    assert await pair.receive(len(b"one,two,three")) == b"one,two,three"
    await bounded(asyncio.gather(first, second, third))


async def test_a_write_the_socket_cannot_take_waits_for_the_peer(pair: Pair) -> None:
    """A write's Future stays pending until the peer has read enough to take it all."""
    stream = pair.adopt()
    await stream.connect()
    assert stream.transport is not None
    size = 4 * 1024 * 1024  # far more than a socket pair's buffers hold
    pending = stream.write(b"x" * size)
    assert not pending.done() and stream.transport.get_write_buffer_size() > 0
    behind = stream.write(b"y")
    assert not behind.done()
    data = await pair.receive(size + 1)
    assert data.endswith(b"xy")
    await bounded(asyncio.gather(pending, behind))


async def test_close_fails_pending_writes_and_tells_the_receiver_once(pair: Pair) -> None:
    """close() drops unsent bytes: a pending write raises, later writes raise at once."""
    stream = pair.adopt()
    await stream.connect()
    pending = stream.write(b"x" * 4 * 1024 * 1024)
    assert not pending.done()
    stream.close()
    assert stream.closed()
    with pytest.raises(StreamClosedError):
        await bounded(pending)
    with pytest.raises(StreamClosedError):
        stream.write(b"late")
    await until(lambda: pair.recorder.lost_calls == 1, "the receiver told")
    stream.close()
    assert pair.recorder.lost_calls == 1


async def test_the_peer_closing_tells_the_receiver(pair: Pair) -> None:
    """The peer's EOF closes the stream and the receiver learns it once."""
    stream = pair.adopt()
    await stream.connect()
    await pair.send(b"bye")
    pair.peer.close()
    await until(lambda: pair.recorder.lost_calls == 1, "the receiver told")
    assert stream.closed() and pair.recorder.data() == b"bye"


async def test_chunks_held_while_paused_keep_their_order(pair: Pair) -> None:
    """Chunks that arrive while paused are handed over in order on resume, and a chunk
    that pauses again keeps the ones behind it held."""
    stream = pair.adopt()
    await stream.connect()
    stream.pause_reading()
    for chunk in (b"a", b"b|", b"c", b"d"):
        stream.data_received(chunk)
    assert pair.recorder.chunks == []
    pair.recorder.pause_on = b"|"
    stream.resume_reading()
    assert pair.recorder.chunks == [b"a", b"b|"]
    pair.recorder.pause_on = None
    stream.resume_reading()
    assert pair.recorder.chunks == [b"a", b"b|", b"c", b"d"]
    await pair.send(b"e")
    await until(lambda: pair.recorder.data() == b"ab|cde", "reading on after the resume")
