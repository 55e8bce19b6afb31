"""Keep-alive pings (keepalive.py) over real sockets: a silent peer is closed, peers
that answer stay, and a round over many connections spans loop turns."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
from wsutil import (
    PROBE,
    RawClient,
    Serve,
    ask,
    registry,
    stays,
    until,
    websockets_connect,
    ws_url,
)

from tornado_ws_runner.ws import keepalive


async def test_a_peer_that_never_answers_pings_is_closed(serve: Serve) -> None:
    """A raw peer that never answers pings is pinged, closed, and on_disconnect runs."""
    # on_disconnect runs when the close frame goes out; Tornado then gives the peer 5 s
    # (fixed in Tornado) to answer it before dropping the socket.
    runner = await serve(timeouts={"ping_interval": 0.2, "ping_timeout": 0.2})
    raw = await RawClient.connect(runner.ports["listen"], "/silent")
    assert raw.status == 101
    opcode, _ = await raw.read_frame()
    assert opcode == 0x9, "a ping"
    opcode, payload = await raw.read_frame()
    assert opcode == 0x8, "a close frame after the ping timeout"
    assert b"ping timed out" in payload
    (cid,) = PROBE.connection_ids()
    await until(lambda: PROBE.disconnects_of(cid), "on_disconnect", timeout=10)
    assert registry(runner).get(cid) is None
    raw.abort()


async def test_a_peer_that_answers_pings_stays_connected(serve: Serve) -> None:
    """A client that answers pings (websockets does) outlives many ping intervals."""
    runner = await serve(timeouts={"ping_interval": 0.1, "ping_timeout": 0.1})
    async with websockets_connect(ws_url(runner), ping_interval=None) as ws:
        await until(lambda: PROBE.connection_ids(), "on_connect")
        cid = PROBE.connection_ids()[0]
        await stays(lambda: registry(runner).get(cid) is not None, 0.6, "still connected")
        assert (await ask(ws, {"name": "echo"}))["statusCode"] == 200
    assert len(PROBE.disconnects) == 1


async def test_one_round_pings_every_connection_and_closes_only_the_silent(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keep-alive round spans several loop turns (2 connections per turn here): every
    connection is pinged, the one that never answers is closed, the others stay."""
    monkeypatch.setattr(keepalive, "BATCH", 2)
    runner = await serve(timeouts={"ping_interval": 0.1, "ping_timeout": 0.1})
    async with AsyncExitStack() as stack:
        answering = [
            await stack.enter_async_context(websockets_connect(ws_url(runner), ping_interval=None))
            for _ in range(5)
        ]
        silent = await RawClient.connect(runner.ports["listen"], "/silent")
        stack.callback(silent.abort)
        await until(lambda: len(PROBE.connection_ids()) == 6, "six connections")
        assert (await silent.read_frame())[0] == 0x9, "the silent peer is pinged"
        opcode, payload = await silent.read_frame()
        assert (opcode, b"ping timed out" in payload) == (0x8, True)
        await until(lambda: len(PROBE.disconnects) == 1, "on_disconnect of the silent peer")
        await stays(lambda: len(registry(runner)) == 5, 0.5, "the answering five stay")
        for ws in answering:
            assert (await ask(ws, {"name": "echo"}))["statusCode"] == 200
