"""StreamResponse over a real socket: chunk and done frames, producer failures,
backpressure, the per-connection send bound, slow and vanishing clients."""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

import pytest
from wsutil import (
    PROBE,
    RawClient,
    Serve,
    ask,
    bounded,
    recv,
    registry,
    send,
    settle,
    tornado_connect,
    until,
    websockets_connect,
    ws_url,
)

CHUNK = 16384  # characters per chunk of the endless producer
FRAME = CHUNK + 400  # a chunk's frame: the chunk plus its JSON envelope and headers


class Port:
    """The client port a test runs on: plain (ws://) or TLS (wss://), the same send path."""

    def __init__(self, kind: str, certificate: tuple[str, str]) -> None:
        self.kind = kind
        self.key, self.cert = certificate

    async def serve(self, serve: Serve, **sections: Any) -> Any:
        if self.kind == "tls":
            sections["tls"] = {"key": self.key, "cert": self.cert, "port": 0}
        return await serve(**sections)

    def url(self, runner: Any) -> str:
        return ws_url(runner, tls=self.kind == "tls")

    def context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=self.cert) if self.kind == "tls" else None

    async def tornado(self, runner: Any) -> Any:
        """Tornado's client: it stops reading its socket while nobody reads a message."""
        return await tornado_connect(self.url(runner), ssl_options=self.context())

    def websockets(self, runner: Any) -> Any:
        return websockets_connect(self.url(runner), ssl=self.context())


@pytest.fixture(params=["plain", "tls"])
def port(request: pytest.FixtureRequest, certificate: tuple[str, str]) -> Port:
    return Port(request.param, certificate)


async def read_stream(conn: Any, message_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The chunk frames of one stream and its done frame."""
    chunks = []
    while True:
        frame = await recv(conn)
        assert frame["headers"]["message-id"] == message_id
        if frame["headers"]["x-stream"] == "done":
            return chunks, frame
        assert frame["headers"]["x-stream"] == "chunk"
        chunks.append(frame)


class Sampler:
    """Samples the bytes a connection has handed to Tornado and not yet flushed."""

    def __init__(self, runner: Any, connection_id: str) -> None:
        self.conn = registry(runner).get(connection_id)
        assert self.conn is not None
        self.max_pending = 0
        self.samples = 0

    def sample(self) -> None:
        self.samples += 1
        self.max_pending = max(self.max_pending, self.conn.pending_bytes)

    async def during(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            self.sample()
            await asyncio.sleep(0.002)


async def connection_id(conn: Any) -> str:
    await ask(conn, {"name": "echo", "headers": {"message-id": "id"}})
    return str(PROBE.events[-1].request.headers["connection-id"])


# -- the frames of a stream -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync", "list"])
async def test_stream_sends_every_chunk_then_exactly_one_done(
    serve: Serve, port: Port, kind: str
) -> None:
    """200 chunk frames (one stream id, message-id, in order), then exactly one done frame."""
    runner = await port.serve(serve)
    async with port.websockets(runner) as ws:
        await send(
            ws,
            {"name": "stream", "params": {"n": 200, "kind": kind}, "headers": {"message-id": "s"}},
        )
        chunks, done = await read_stream(ws, "s")
        assert [c["body"] for c in chunks] == [{"i": i} for i in range(200)]
        ids = {c["headers"]["x-stream-id"] for c in chunks}
        assert len(ids) == 1 and done["headers"]["x-stream-id"] in ids
        assert all(c["statusCode"] == 200 and c["headers"]["x-kind"] == kind for c in chunks)
        assert done["statusCode"] == 200 and done["body"] is None
        # nothing of that stream follows its done frame
        after = await ask(ws, {"name": "echo", "headers": {"message-id": "after"}})
        assert after["headers"]["message-id"] == "after"


async def test_two_streams_have_their_own_ids(serve: Serve, port: Port) -> None:
    """Each stream gets its own x-stream-id; frames of each carry their message-id."""
    runner = await port.serve(serve)
    conn = await port.tornado(runner)
    for mid in ("one", "two"):
        await send(conn, {"name": "stream", "params": {"n": 30}, "headers": {"message-id": mid}})
    frames = [await recv(conn) for _ in range(62)]
    by_id: dict[str, set[str]] = {"one": set(), "two": set()}
    for frame in frames:
        by_id[frame["headers"]["message-id"]].add(frame["headers"]["x-stream-id"])
    assert len(by_id["one"]) == len(by_id["two"]) == 1 and by_id["one"] != by_id["two"]
    assert sum(f["headers"]["x-stream"] == "done" for f in frames) == 2
    conn.close()


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [("runtime", 500, "Internal Server Error"), ("conflict", 409, "Producer conflict.")],
)
async def test_failing_producer_ends_with_one_done_frame_with_the_error(
    serve: Serve, port: Port, error: str, status: int, message: str
) -> None:
    """A failing producer ends with one done frame carrying the error status and body."""
    runner = await port.serve(serve)
    async with port.websockets(runner) as ws:
        await send(
            ws,
            {"name": "failingStream", "params": {"error": error}, "headers": {"message-id": "f"}},
        )
        chunks, done = await read_stream(ws, "f")
        assert [c["body"] for c in chunks] == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert done["statusCode"] == status
        assert done["body"]["statusCode"] == status and done["body"]["message"] == message
        assert "secret" not in str(done) and "Traceback" not in str(done)
        assert done["headers"]["x-stream-id"] == chunks[0]["headers"]["x-stream-id"]
        assert (await ask(ws, {"name": "echo"}))["statusCode"] == 200
    assert PROBE.flags["failing_closed"] is True


# -- backpressure ----------------------------------------------------------------------------


async def test_a_paused_client_makes_the_producer_wait_and_memory_stays_bounded(
    serve: Serve,
    port: Port,
) -> None:
    """A paused client stalls the producer within the send bound; reading resumes it."""
    send_buffer = 64 * 1024
    runner = await port.serve(serve, limits={"send_buffer": send_buffer})
    # Tornado's client stops reading from its socket while nobody calls read_message.
    conn = await port.tornado(runner)
    sampler = Sampler(runner, await connection_id(conn))
    await send(conn, {"name": "endless", "params": {"key": "p"}, "headers": {"message-id": "e"}})
    await until(lambda: PROBE.counters["p"] > 0, "the producer to start")
    stalled = await settle(lambda: PROBE.counters["p"])
    assert not PROBE.flags.get("p_capped"), "the producer was never held back"
    await sampler.during(0.3)
    assert PROBE.counters["p"] == stalled, "the producer waits while the client does not read"
    assert sampler.conn.pending_bytes > 0, "a frame is waiting for the socket"
    assert sampler.max_pending <= send_buffer + FRAME
    # The client reads again: production resumes.
    for _ in range(stalled + 20):
        frame = await recv(conn)
        assert frame["headers"]["x-stream"] == "chunk"
    await until(lambda: PROBE.counters["p"] > stalled + 10, "the producer to resume")
    conn.close()
    await until(lambda: PROBE.flags.get("p_closed"), "the producer to be closed")


async def test_concurrent_senders_share_one_bound_per_connection(serve: Serve, port: Port) -> None:
    """Three streams on one stuck connection share one send bound; extra senders stall."""
    send_buffer = 40_000
    runner = await port.serve(serve, limits={"send_buffer": send_buffer})
    conn = await port.tornado(runner)
    sampler = Sampler(runner, await connection_id(conn))
    for key in ("a", "b", "c"):
        await send(conn, {"name": "endless", "params": {"key": key}})
    await until(lambda: all(PROBE.counters[k] for k in "abc"), "three producers")
    await settle(lambda: sum(PROBE.counters[k] for k in "abc"))
    assert not any(PROBE.flags.get(f"{k}_capped") for k in "abc")
    await sampler.during(0.3)
    assert sampler.max_pending <= send_buffer + FRAME
    assert runner.state.watch.stalls > 0
    conn.close()
    await until(lambda: all(PROBE.flags.get(f"{k}_closed") for k in "abc"), "producers closed")


async def test_the_bound_holds_in_bytes_for_non_ascii_frames(serve: Serve, port: Port) -> None:
    """The send bound holds in bytes for frames of 3-byte characters."""
    send_buffer = 64 * 1024
    frame_bytes = 3 * CHUNK + 400
    runner = await port.serve(serve, limits={"send_buffer": send_buffer})
    conn = await port.tornado(runner)
    sampler = Sampler(runner, await connection_id(conn))
    for key in ("a", "b", "c", "d"):
        await send(conn, {"name": "endless", "params": {"key": key, "char": "€"}})
    await until(lambda: all(PROBE.counters[k] for k in "abcd"), "four producers")
    await settle(lambda: sum(PROBE.counters[k] for k in "abcd"))
    assert not any(PROBE.flags.get(f"{k}_capped") for k in "abcd")
    await sampler.during(0.3)
    assert sampler.max_pending <= send_buffer + frame_bytes
    conn.close()
    await until(lambda: all(PROBE.flags.get(f"{k}_closed") for k in "abcd"), "producers closed")


async def test_a_client_vanishing_mid_stream_closes_the_producer(serve: Serve) -> None:
    """A client vanishing mid-stream gets its producer closed promptly; on_disconnect once."""
    runner = await serve()
    raw = await RawClient.connect(runner.ports["listen"], "/stream")
    assert raw.status == 101
    await raw.send_text('{"name": "endless", "params": {"key": "v"}}')
    for _ in range(3):
        opcode, _payload = await raw.read_frame()
        assert opcode == 0x1
    raw.abort()
    await until(lambda: PROBE.flags.get("v_closed"), "the producer to be closed", timeout=2)
    (cid,) = PROBE.connection_ids()
    await until(lambda: PROBE.disconnects_of(cid), "on_disconnect")
    await until(lambda: not registry(runner).get(cid) and not runner.state.tasks, "cleanup")
    assert len(PROBE.disconnects_of(cid)) == 1


async def test_a_client_leaving_while_the_producer_waits_closes_it_at_once(
    serve: Serve,
) -> None:
    """The client of a plain handler's stream leaves while the producer waits between
    chunks: the producer is closed then, not left waiting."""
    runner = await serve()
    raw = await RawClient.connect(runner.ports["listen"], "/stream")
    await raw.send_text('{"name": "waitingStream", "params": {"gate": "w"}}')
    opcode, payload = await raw.read_frame()
    assert opcode == 0x1 and json.loads(payload)["body"] == "first"
    raw.abort()
    await until(lambda: PROBE.flags.get("w_closed"), "the producer to be closed", timeout=2)


async def test_a_client_stuck_past_the_send_timeout_is_disconnected(
    serve: Serve, port: Port
) -> None:
    """A client stuck past timeouts.send is dropped and counted; idle clients are not."""
    send_buffer = 64 * 1024
    runner = await port.serve(serve, limits={"send_buffer": send_buffer}, timeouts={"send": 0.5})
    idle = await port.tornado(runner)
    idle_id = await connection_id(idle)
    conn = await port.tornado(runner)
    cid = await connection_id(conn)
    sampler = Sampler(runner, cid)
    await send(conn, {"name": "endless", "params": {"key": "s"}})
    await until(lambda: PROBE.counters["s"] > 0, "the producer to start")
    while registry(runner).get(cid) is not None:
        sampler.sample()
        assert not PROBE.flags.get("s_capped"), "the producer was never held back"
        await bounded(asyncio.sleep(0.002))
        assert sampler.samples < 5000, "the stuck client was never dropped"
    assert runner.state.watch.slow_consumers == 1
    assert sampler.max_pending <= send_buffer + FRAME
    await until(lambda: PROBE.disconnects_of(cid), "on_disconnect")
    await until(lambda: PROBE.flags.get("s_closed"), "the producer to be closed")
    assert (await ask(idle, {"name": "echo"}))["statusCode"] == 200
    assert registry(runner).get(idle_id) is not None
    idle.close()
    conn.close()
