"""The edges of both ports under hostile or broken peers (issue 16): HTTP limits and
timeouts, upgrades in progress counted against max_connections, exactly one answer for
every frame however deep its message-id, and a stuck client's socket released at once.

Real runners on 127.0.0.1 and raw sockets: no client library would send these."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from wsutil import (
    PROBE,
    RawClient,
    Serve,
    bounded,
    registry,
    send,
    settle,
    tornado_connect,
    until,
    ws_url,
)

from tornado_ws_runner.ws import codec

TIMEOUTS = {"request_headers": 0.3, "request_body": 0.3}


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sends until it closes the connection (within ``within`` s)."""
    received = b""
    deadline = time.monotonic() + within
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"still open after {within}s; got {received[:200]!r}"
        try:
            chunk = await asyncio.wait_for(reader.read(65536), remaining)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- HTTP limits and timeouts on the client port ---------------------------------------------


async def test_an_upgrade_declaring_a_large_body_is_refused_without_being_read(
    serve: Serve,
) -> None:
    """Content-Length over limits.max_upgrade_body: Tornado's 400 before the body is read,
    so the server's memory does not grow with it (this process's RSS, the body being
    made before the baseline)."""
    runner = await serve()
    body = b"x" * (24 * 1024 * 1024)
    baseline = rss_kib()
    reader, writer = await asyncio.open_connection("127.0.0.1", runner.ports["listen"])
    writer.write(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    writer.write(body)
    answer = await closed_by_server(reader, 5)
    writer.transport.abort()
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
    assert rss_kib() - baseline < 8 * 1024, "the body was buffered"
    assert len(registry(runner)) == 0


async def test_a_silent_or_slow_peer_on_the_client_port_is_dropped_after_the_timeout(
    serve: Serve,
) -> None:
    """A TCP connection that sends nothing, and one that sends half an upgrade request,
    are closed once timeouts.request_headers has passed."""
    runner = await serve(timeouts=TIMEOUTS)
    port = runner.ports["listen"]
    silent_reader, silent = await asyncio.open_connection("127.0.0.1", port)
    slow_reader, slow = await asyncio.open_connection("127.0.0.1", port)
    slow.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
    started = time.monotonic()
    assert await closed_by_server(silent_reader, 3) == b""
    assert await closed_by_server(slow_reader, 3) == b""
    assert time.monotonic() - started >= 0.25, "closed before the timeout"
    silent.close()
    slow.close()


async def test_a_header_block_over_max_header_size_is_refused_on_the_client_port(
    serve: Serve,
) -> None:
    """Headers over limits.max_header_size: no upgrade, the connection is closed."""
    runner = await serve(limits={"max_header_size": 2048})
    reader, writer = await asyncio.open_connection("127.0.0.1", runner.ports["listen"])
    writer.write(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"X-Filler: " + b"f" * 4096 + b"\r\n\r\n"
    )
    answer = await closed_by_server(reader, 3)
    assert not answer.startswith(b"HTTP/1.1 101")
    writer.close()
    raw = await RawClient.connect(runner.ports["listen"], "/after")
    assert raw.status == 101, "a normal upgrade still works"
    raw.abort()


async def test_upgrades_in_progress_count_against_max_connections(serve: Serve) -> None:
    """With max_connections 3, three connections that never finish their upgrade hold the
    port full: the next gets a JSON 503 at once; once one goes, an upgrade succeeds."""
    runner = await serve(limits={"max_connections": 3})
    port = runner.ports["listen"]
    pending = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = await closed_by_server(reader, 3)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), answer[:100]
    assert json.loads(body)["statusCode"] == 503
    writer.close()
    pending[0][1].transport.abort()
    raw = await until_upgraded(port)
    assert raw.status == 101
    raw.abort()
    for _, w in pending[1:]:
        w.close()


async def until_upgraded(port: int) -> RawClient:
    """Upgrades once the server has seen a pending connection go: each try is a round
    trip (bounded in time)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        raw = await RawClient.connect(port, "/retry")
        if raw.status == 101:
            return raw
        raw.abort()
    raise AssertionError("no upgrade accepted after a pending connection left")


# -- the management port -------------------------------------------------------------------


async def test_silent_slow_and_idle_management_connections_are_closed(serve: Serve) -> None:
    """A silent connection, a request whose body stops coming, and a kept-alive
    connection after its answer are each closed after their timeout."""
    runner = await serve(timeouts=TIMEOUTS)
    port = runner.ports["management"]
    silent_reader, silent = await asyncio.open_connection("127.0.0.1", port)
    assert await closed_by_server(silent_reader, 3) == b""
    body_reader, body = await asyncio.open_connection("127.0.0.1", port)
    body.write(b"POST /@connections/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n12345")
    assert b"HTTP/1.1 2" not in await closed_by_server(body_reader, 3)
    idle_reader, idle = await asyncio.open_connection("127.0.0.1", port)
    idle.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await closed_by_server(idle_reader, 3)
    assert answer.startswith(b"HTTP/1.1 200") and b'"status":"ok"' in answer
    for writer in (silent, body, idle):
        writer.close()


async def test_a_header_block_over_max_header_size_is_refused_on_the_management_port(
    serve: Serve,
) -> None:
    runner = await serve(limits={"max_header_size": 2048})
    reader, writer = await asyncio.open_connection("127.0.0.1", runner.ports["management"])
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"f" * 4096 + b"\r\n\r\n")
    answer = await closed_by_server(reader, 3)
    assert not answer.startswith(b"HTTP/1.1 200")
    writer.close()


# -- one answer for every frame ------------------------------------------------------------


UNECHOABLE_BODY = {"statusCode": 400, "message": "Bad Request.", "details": codec.UNECHOABLE}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


async def test_every_message_id_gets_one_answer_however_deep(serve: Serve) -> None:
    """Message-ids nested from well inside to past the interpreter's depth: each message
    gets exactly one frame; one whose id cannot be sent back gets a 400 without it, and
    nothing is logged as a task exception (the serve fixture fails on any)."""
    runner = await serve()
    limit = sys.getrecursionlimit()
    # Every depth: only the encoder fails in a window a few levels wide, whose place
    # depends on how deep the stack is when a message is answered.
    depths = list(range(limit - 120, limit + 10))
    conn = await tornado_connect(ws_url(runner))
    for depth in depths:
        message_id = nested(depth)
        await conn.write_message(
            f'{{"name": "echo", "headers": {{"message-id": {message_id}}}, "payload": {depth}}}'
        )
    answers = [json.loads(await bounded(conn.read_message())) for _ in depths]
    unechoable = [a for a in answers if a["body"] == UNECHOABLE_BODY]
    assert unechoable, "no depth reached the encoder's limit: nothing was proven"
    assert all("message-id" not in a["headers"] for a in unechoable)
    # Deeper still, the message is no JSON the decoder takes: text, answered 501.
    others = [a for a in answers if a["body"] != UNECHOABLE_BODY]
    assert all(a["headers"].get("message-id") is not None or a["statusCode"] == 501 for a in others)
    await send(conn, {"name": "echo", "headers": {"message-id": "after"}})
    after = json.loads(await bounded(conn.read_message()))
    assert after["headers"]["message-id"] == "after", "exactly one answer per frame"
    conn.close()


def test_reply_falls_back_to_an_answer_without_the_message_id() -> None:
    """codec.reply without sockets: a response that cannot be encoded becomes the error
    error_for makes; a message-id that cannot be encoded, a 400 without it."""
    from tornado_ws_runner import ErrorResponse, Response

    made: list[Exception] = []

    def error_for(exc: Exception) -> ErrorResponse:
        made.append(exc)
        return ErrorResponse("Internal Server Error", 500)

    bad_body = json.loads(codec.reply(Response({"x": float("nan")}), "m", error_for))
    assert bad_body["statusCode"] == 500 and bad_body["headers"]["message-id"] == "m"
    deep: Any = []
    for _ in range(sys.getrecursionlimit() + 10):
        deep = [deep]
    unechoed = json.loads(codec.reply(Response("ok"), deep, error_for))
    assert unechoed["statusCode"] == 400 and "message-id" not in unechoed["headers"]
    assert len(made) == 2


# -- a client that stops reading -----------------------------------------------------------


async def test_a_stuck_clients_socket_is_released_within_a_second_of_its_send_timeout(
    serve: Serve,
) -> None:
    """Past timeouts.send the client is dropped at once: its socket closes (no 5 s close
    wait for a client that reads nothing), and a management POST waiting for it answers
    410 at that moment."""
    runner = await serve(limits={"send_buffer": 64 * 1024}, timeouts={"send": 1.5})
    raw = await RawClient.connect(runner.ports["listen"], "/stuck")
    assert raw.status == 101
    await raw.send_text('{"name": "endless", "params": {"key": "k"}}')
    await until(lambda: PROBE.counters["k"] > 0, "the producer to start")
    await settle(lambda: PROBE.counters["k"], window=0.2)
    (cid,) = registry(runner).ids()
    assert registry(runner).get(cid).pending_bytes > 0, "the client's frames are stuck"
    stalls = runner.state.watch.stalls
    post = asyncio.ensure_future(
        AsyncHTTPClient().fetch(
            HTTPRequest(
                f"http://127.0.0.1:{runner.ports['management']}/@connections/{cid}",
                method="POST",
                body=json.dumps({"big": "y" * 200_000}),
                headers={"Content-Type": "application/json"},
                request_timeout=10,
            ),
            raise_error=False,
        )
    )
    await until(lambda: runner.state.watch.stalls > stalls, "the POST to wait for room")
    assert not post.done()
    await until(lambda: runner.state.watch.slow_consumers == 1, "the send timeout", timeout=5)
    dropped = time.monotonic()
    await until(lambda: not runner.state.sockets, "the socket closed", timeout=1)
    answer = await bounded(post)
    assert answer.code == 410
    assert time.monotonic() - dropped < 1.0
    raw.abort()
