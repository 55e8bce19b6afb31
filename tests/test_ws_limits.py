"""The runner's limits over real sockets: message size (1009), connection count and
allowed origins."""

from __future__ import annotations

import pytest
import tornado.httpclient
from websockets.exceptions import InvalidStatus
from wsutil import (
    PROBE,
    Serve,
    ask,
    closed_with,
    registry,
    send,
    tornado_connect,
    until,
    websockets_connect,
    ws_url,
)


def echo_of_size(size: int) -> str:
    """An echo message of exactly ``size`` bytes."""
    empty = '{"name":"echo","payload":""}'
    return empty.replace('""', '"' + "x" * (size - len(empty)) + '"')


# -- maximum message size ----------------------------------------------------------------------


async def test_frame_over_max_message_size_closes_1009_tornado(serve: Serve) -> None:
    """A frame over max_message_size closes 1009, one at the limit is answered (Tornado)."""
    runner = await serve(limits={"max_message_size": 1024})
    conn = await tornado_connect(ws_url(runner))
    assert (await ask(conn, echo_of_size(1024)))["statusCode"] == 200
    conn.write_message(echo_of_size(1025))
    code, _ = await closed_with(conn)
    assert code == 1009
    (cid,) = PROBE.connection_ids()
    await until(lambda: PROBE.disconnects_of(cid), "on_disconnect")


async def test_frame_over_max_message_size_closes_1009_websockets(serve: Serve) -> None:
    """The same 1009 close seen by the websockets client."""
    runner = await serve(limits={"max_message_size": 1024})
    async with websockets_connect(ws_url(runner)) as ws:
        assert (await ask(ws, echo_of_size(1000)))["statusCode"] == 200
        await send(ws, "x" * 200_000)  # still arriving when the server closes
        code, _ = await closed_with(ws)
    assert code == 1009


# -- maximum connections -----------------------------------------------------------------------


async def test_max_connections_refuses_the_next_upgrade_with_503(serve: Serve) -> None:
    """Over max_connections the upgrade gets 503 (both clients); open ones keep working."""
    runner = await serve(limits={"max_connections": 2})
    first = await tornado_connect(ws_url(runner))
    async with websockets_connect(ws_url(runner)) as second:
        await until(lambda: len(registry(runner)) == 2, "two registered connections")
        with pytest.raises(InvalidStatus) as refused:
            async with websockets_connect(ws_url(runner)):
                pass
        assert refused.value.response.status_code == 503
        with pytest.raises(tornado.httpclient.HTTPClientError) as refused_too:
            await tornado_connect(ws_url(runner))
        assert refused_too.value.code == 503
        assert (await ask(first, {"name": "echo"}))["statusCode"] == 200
        assert (await ask(second, {"name": "echo"}))["statusCode"] == 200
        assert len(PROBE.connects) == 2, "a refused upgrade never runs on_connect"
    await until(lambda: len(registry(runner)) == 1, "the closed one to leave")
    third = await tornado_connect(ws_url(runner))
    assert (await ask(third, {"name": "echo"}))["statusCode"] == 200
    first.close()
    third.close()


# -- allowed origins -----------------------------------------------------------------------------


async def test_allowed_origins(serve: Serve) -> None:
    """A foreign Origin gets 403; a listed Origin and no Origin are served (both clients)."""
    runner = await serve(limits={"allowed_origins": ["https://app.example"]})
    with pytest.raises(InvalidStatus) as refused:
        async with websockets_connect(ws_url(runner), origin="https://evil.example"):
            pass
    assert refused.value.response.status_code == 403
    with pytest.raises(tornado.httpclient.HTTPClientError) as refused_too:
        await tornado_connect(ws_url(runner), headers={"Origin": "https://evil.example"})
    assert refused_too.value.code == 403
    async with websockets_connect(ws_url(runner), origin="https://app.example") as ws:
        assert (await ask(ws, {"name": "echo"}))["statusCode"] == 200
    conn = await tornado_connect(ws_url(runner), headers={"Origin": "https://app.example"})
    assert (await ask(conn, {"name": "echo"}))["statusCode"] == 200
    conn.close()
    async with websockets_connect(ws_url(runner)) as no_origin:  # sends no Origin header
        assert (await ask(no_origin, {"name": "echo"}))["statusCode"] == 200
    assert len(PROBE.connects) == 3


async def test_any_origin_when_none_configured(serve: Serve) -> None:
    """With allowed_origins empty (the default) any Origin is served."""
    runner = await serve()
    async with websockets_connect(ws_url(runner), origin="https://anywhere.example") as ws:
        assert (await ask(ws, {"name": "echo"}))["statusCode"] == 200
