"""The send path (ws/sender.py) and the registry, without sockets: the byte bound, the
waits, the errors and the sweep, with a stand-in for Tornado's handler whose write Futures
the test resolves. tests/test_ws_streams.py proves the same bound over real sockets."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from tornado.websocket import WebSocketClosedError
from wsutil import stays, until

from tornado_ws_runner.errors import ConnectionGone
from tornado_ws_runner.ws.connection import Connection
from tornado_ws_runner.ws.registry import Registry
from tornado_ws_runner.ws.sender import SendWatch


class FakeSocket:
    """Records frames; each write's future resolves only when the test flushes it."""

    def __init__(self) -> None:
        self.writes: list[tuple[Any, asyncio.Future[None]]] = []
        self.closed: tuple[int | None, str | None] | None = None
        self.aborted = False
        self.fail: BaseException | None = None

    def write_message(self, message: bytes, binary: bool = False) -> asyncio.Future[None]:
        if self.fail is not None:
            raise self.fail
        future = asyncio.get_running_loop().create_future()
        self.writes.append((message, future))
        return future

    def flush(self, count: int = 1) -> None:
        for _, future in [w for w in self.writes if not w[1].done()][:count]:
            future.set_result(None)

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        self.closed = (code, reason)
        self.written_before_close = [message for message, _ in self.writes]

    def abort(self) -> None:
        self.aborted = True


def connection(send_buffer: int = 100, send_timeout: float = 30.0) -> Any:
    registry, watch = Registry(), SendWatch(send_buffer=send_buffer, send_timeout=send_timeout)
    transport = FakeSocket()
    conn = Connection(
        registry, watch, transport, source_ip="127.0.0.1", user_agent="t", subprotocol="p"
    )
    conn.accepted = True
    registry.add(conn)
    return watch, transport, conn


def test_a_connection_is_addressable_only_once_accepted() -> None:
    """Until on_connect succeeded, get() and ids() do not show a connection; len() counts it."""
    registry = Registry()
    conn = Connection(registry, SendWatch(), FakeSocket())
    registry.add(conn)
    assert (registry.get(conn.id), registry.ids(), len(registry)) == (None, [], 1)
    conn.accepted = True
    assert (registry.get(conn.id), registry.ids()) == (conn, [conn.id])


def test_connection_ids_are_uuid4_and_describe_has_the_contract_keys() -> None:
    """A Connection's id is a UUID v4; describe() has the management API's keys."""
    registry = Registry()
    ids = {Connection(registry, SendWatch(), FakeSocket()).id for _ in range(50)}
    assert len(ids) == 50 and all(uuid.UUID(i).version == 4 for i in ids)
    _, _, conn = connection()
    described = conn.describe()
    assert set(described) == {
        "connectionId",
        "connectedAt",
        "lastActiveAt",
        "sourceIp",
        "userAgent",
        "subprotocol",
    }
    assert described["connectedAt"].endswith("Z")


async def test_send_returns_only_once_the_frame_is_flushed() -> None:
    """send() waits for the transport's write future; pending_bytes counts it meanwhile."""
    watch, transport, conn = connection()
    sending = asyncio.ensure_future(conn.send("abcd"))
    await until(lambda: transport.writes, "the write")
    assert conn.pending_bytes == 4 and conn in watch.sending
    await stays(lambda: not sending.done(), 0.05, "send waits for the flush")
    transport.flush()
    await asyncio.wait_for(sending, 1)
    assert conn.pending_bytes == 0 and conn not in watch.sending


async def test_senders_past_the_bound_wait_until_bytes_drain() -> None:
    """Senders past send_buffer wait until bytes drain; one oversized frame may go alone."""
    watch, transport, conn = connection(send_buffer=100)
    first = asyncio.ensure_future(conn.send("a" * 60))
    second = asyncio.ensure_future(conn.send("b" * 60))
    await until(lambda: watch.stalls == 1, "the second sender to stall")
    assert len(transport.writes) == 1 and conn.pending_bytes == 60
    transport.flush()
    await asyncio.wait_for(first, 1)
    await until(lambda: len(transport.writes) == 2, "the second write")
    assert conn.pending_bytes == 60
    transport.flush()
    await asyncio.wait_for(second, 1)
    big = asyncio.ensure_future(conn.send("c" * 500))
    await until(lambda: len(transport.writes) == 3, "the big write")
    assert conn.pending_bytes == 500
    transport.flush()
    await asyncio.wait_for(big, 1)


async def test_the_bound_counts_utf8_bytes_not_characters() -> None:
    """pending_bytes counts a frame's UTF-8 bytes, not its characters."""
    watch, transport, conn = connection(send_buffer=100)
    first = asyncio.ensure_future(conn.send("€" * 30))  # 30 characters, 90 bytes
    second = asyncio.ensure_future(conn.send("€" * 30))
    await until(lambda: transport.writes, "the first write")
    assert conn.pending_bytes == 90
    await until(lambda: watch.stalls == 1, "the second sender to stall")
    assert len(transport.writes) == 1
    transport.flush(2)
    await asyncio.wait_for(first, 1)
    await until(lambda: len(transport.writes) == 2, "the second write")
    transport.flush()
    await asyncio.wait_for(second, 1)
    sent = transport.writes[0][0]
    text = sent.decode("utf-8") if isinstance(sent, bytes) else sent
    assert text == "€" * 30


async def test_send_on_a_closed_connection_raises_connection_gone() -> None:
    """send() raises ConnectionGone once the connection is closed."""
    _, _, conn = connection()
    conn.mark_closed(1000)
    with pytest.raises(ConnectionGone):
        await conn.send("x")


async def test_socket_errors_become_connection_gone() -> None:
    """Tornado's closed-socket error reaches callers as ConnectionGone; nothing stays pending."""
    error = WebSocketClosedError()
    watch, transport, conn = connection()
    transport.fail = error
    with pytest.raises(ConnectionGone):
        await conn.send("x")
    assert conn.pending_bytes == 0 and conn not in watch.sending
    transport.fail = None
    sending = asyncio.ensure_future(conn.send("y"))
    await until(lambda: transport.writes, "the write")
    transport.writes[0][1].set_exception(error)
    with pytest.raises(ConnectionGone):
        await asyncio.wait_for(sending, 1)
    assert conn.pending_bytes == 0


async def test_waiting_senders_are_released_with_connection_gone_on_close() -> None:
    """A sender waiting for buffer space gets ConnectionGone when the connection closes."""
    watch, transport, conn = connection(send_buffer=10)
    first = asyncio.ensure_future(conn.send("a" * 10))
    waiting = asyncio.ensure_future(conn.send("b" * 10))
    await until(lambda: watch.stalls == 1, "the stall")
    conn.mark_closed(1001)
    with pytest.raises(ConnectionGone):
        await asyncio.wait_for(waiting, 1)
    assert len(transport.writes) == 1, "the waiting frame was never written"
    transport.writes[0][1].set_exception(WebSocketClosedError())  # as Tornado does on close
    with pytest.raises(ConnectionGone):
        await asyncio.wait_for(first, 1)


async def test_mark_closed_runs_on_closed_once_and_leaves_the_registry() -> None:
    """mark_closed is true only the first time; on_closed runs once; close() closes."""
    _, transport, conn = connection()
    calls: list[Connection] = []
    conn.on_closed = calls.append
    assert conn.close(1000, "bye") is True
    assert conn.close(1000, "again") is False
    assert conn.mark_closed(1006) is False
    assert calls == [conn] and conn.close_code == 1000
    assert conn.registry.get(conn.id) is None and len(conn.registry) == 0
    assert transport.closed == (1000, "again")


async def test_mark_closed_cancels_the_connections_streams() -> None:
    """Closing a connection cancels its stream tasks."""
    _, _, conn = connection()
    task = asyncio.ensure_future(asyncio.sleep(30))
    conn.add_stream(task)
    conn.mark_closed()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_sweep_drops_only_clients_stuck_past_the_send_timeout() -> None:
    """sweep() drops (1008, abort, counted) only clients stuck past send_timeout."""
    registry, watch = Registry(), SendWatch(send_buffer=100, send_timeout=0.05)
    stuck_t, busy_t, idle_t = FakeSocket(), FakeSocket(), FakeSocket()
    stuck, busy, idle = (Connection(registry, watch, t) for t in (stuck_t, busy_t, idle_t))
    for c in (stuck, busy, idle):
        c.accepted = True
        registry.add(c)
    closed: list[str] = []
    stuck.on_closed = lambda c: closed.append(c.id)
    stuck_send = asyncio.ensure_future(stuck.send("x"))
    busy_send = asyncio.ensure_future(busy.send("y"))
    await until(lambda: stuck_t.writes and busy_t.writes, "both writes")
    started = time.monotonic()
    while time.monotonic() - started < 0.1:
        busy.last_progress = time.monotonic()  # as a client that keeps reading would
        await asyncio.sleep(0.005)
    watch.sweep()
    assert watch.slow_consumers == 1
    assert stuck_t.closed == (1008, "send timeout") and stuck_t.aborted
    assert closed == [stuck.id]
    assert registry.get(stuck.id) is None
    assert registry.get(busy.id) is busy and registry.get(idle.id) is idle
    assert busy_t.closed is None and idle_t.closed is None
    busy_t.flush()
    await asyncio.wait_for(busy_send, 1)
    stuck_t.writes[0][1].set_exception(WebSocketClosedError())
    with pytest.raises(ConnectionGone):
        await asyncio.wait_for(stuck_send, 1)


async def turn_ends() -> None:
    """Returns after the loop's current turn: past the callbacks scheduled so far."""
    loop = asyncio.get_running_loop()
    later = loop.create_future()
    loop.call_soon(later.set_result, None)
    await later


def written(transport: FakeSocket) -> list[Any]:
    return [message for message, _ in transport.writes]


async def test_replies_are_held_to_the_turns_end_only_after_a_turn_of_several() -> None:
    """A lone reply is written at once; after a turn with more than one reply, the next
    turn's replies wait for its end (counted against the bound meanwhile), then go out
    in the order they came; a lone reply again turns holding off."""
    watch, a_t, a = connection(send_buffer=1000)
    b_t = FakeSocket()
    b = Connection(a.registry, watch, b_t)
    a.send_last("a1")
    assert written(a_t) == [b"a1"], "a lone reply goes at once"
    await turn_ends()
    a.send_last("a2")
    b.send_last("b2")
    assert written(a_t) == [b"a1", b"a2"] and written(b_t) == [b"b2"]
    await turn_ends()
    a.send_last("a3")
    b.send_last("b3")
    a.send_last("a4")
    assert written(a_t) == [b"a1", b"a2"] and written(b_t) == [b"b2"], "held this turn"
    assert a.pending_bytes == 2 + 2 + 2 + 2 and b.pending_bytes == 2 + 2
    await turn_ends()
    assert written(a_t) == [b"a1", b"a2", b"a3", b"a4"] and written(b_t) == [b"b2", b"b3"]
    a.send_last("a5")
    assert written(a_t)[-1] == b"a4", "the turn before had three: held"
    await turn_ends()
    assert written(a_t)[-1] == b"a5"
    a.send_last("a6")
    assert written(a_t)[-1] == b"a6", "the turn before had one: at once"
    a_t.flush(6)
    b_t.flush(2)
    await until(lambda: not watch.sending, "every frame to be flushed")
    assert watch.frames_out == 8


async def hold_next_turn(conn: Connection) -> None:
    """Makes the next turn hold its replies: this one answers twice."""
    conn.send_last("x")
    conn.send_last("y")
    await turn_ends()


async def test_a_connections_held_replies_go_before_its_other_frames_and_its_close() -> None:
    """A frame sent while the connection has replies held goes after them, and so does
    a close frame: answered replies are not lost to a close in the same turn."""
    _, transport, conn = connection(send_buffer=1000)
    await hold_next_turn(conn)
    conn.send_last("reply")
    conn.write(b"push")
    assert written(transport)[2:] == [b"reply", b"push"]
    await turn_ends()
    await hold_next_turn(conn)
    conn.send_last("last")
    conn.close(1000, "bye")
    assert transport.closed == (1000, "bye")
    assert transport.written_before_close[-1] == b"last"


async def test_a_held_reply_to_a_client_gone_meanwhile_is_dropped_and_leaves_the_bound() -> None:
    """The client left before the turn's end: its held reply is not written, its bytes
    leave the bound, and the other held replies still go out."""
    watch, gone_t, gone = connection(send_buffer=1000)
    staying_t = FakeSocket()
    staying = Connection(gone.registry, watch, staying_t)
    await hold_next_turn(gone)
    gone.send_last("lost")
    staying.send_last("kept")
    assert gone.pending_bytes == 2 + 4
    gone.mark_closed(1006)
    gone_t.fail = WebSocketClosedError()  # as Tornado does once the client has gone
    await turn_ends()
    assert written(gone_t) == [b"x", b"y"] and written(staying_t) == [b"kept"]
    gone_t.flush(2)
    await until(lambda: gone.pending_bytes == 0, "the held reply's bytes to leave")
    assert gone not in watch.sending
