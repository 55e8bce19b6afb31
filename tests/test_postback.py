"""ws_postback_function: a handler posts to its own postback-url; errors come back typed."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "management"))

from management_harness import async_test, running, settings

from tornado_ws_runner import ErrorResponse, JsonResponse, Response, ws_postback_function


@pytest.mark.parametrize(
    ("shape", "body"),
    [("dict", {"n": 1}), ("response", {"n": 2}), ("response", "plain text"), ("body", [1, 2])],
)
@async_test
async def test_handler_postback_reaches_its_own_client(shape, body):
    """A handler posting to its postback-url: the client gets the frame, then the reply."""
    async with running() as run:
        client = await run.client()
        client.send(
            {
                "name": "postback",
                "headers": {"message-id": "m1"},
                "payload": {"as": shape, "body": body},
            }
        )
        pushed = await client.recv()
        assert pushed["statusCode"] == 200
        assert pushed["body"] == body
        if shape == "body":  # a bare body has no headers of its own to send
            assert "message-id" not in pushed["headers"]
        else:
            assert pushed["headers"]["message-id"] == "pushed-1"
            assert pushed["headers"]["x-pushed-by"] == "postbackHandler"
        reply = await client.recv()
        assert reply["body"] == {"posted": shape}
        assert reply["headers"]["message-id"] == "m1"


@async_test
async def test_dict_response_headers_are_sent_as_http_headers():
    """A {statusCode, headers, body} dict: its headers go out as HTTP headers, body as JSON."""
    seen: dict[str, object] = {}

    class Capture(tornado.web.RequestHandler):
        def post(self) -> None:
            seen["headers"] = dict(self.request.headers)
            seen["body"] = self.request.body
            self.finish({"ok": True})

    async with _server(Capture) as url:
        await ws_postback_function(
            url,
            {
                "statusCode": 200,
                "headers": {"message-id": "42", "X-Trace": "t-1"},
                "body": {"a": 1},
            },
        )
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["message-id"] == "42"
    assert headers["x-trace"] == "t-1"
    assert headers["content-type"] == "application/json"
    assert json.loads(seen["body"]) == {"a": 1}


@async_test
async def test_text_body_and_given_content_type_are_kept():
    """A str body goes as text; a content type in the response's headers wins."""
    seen: list[tuple[str, bytes]] = []

    class Capture(tornado.web.RequestHandler):
        def post(self) -> None:
            seen.append((self.request.headers["Content-Type"], self.request.body))

    async with _server(Capture) as url:
        await ws_postback_function(url, "héllo")
        await ws_postback_function(url, JsonResponse({"x": 1}))
        await ws_postback_function(url, Response("<b/>", headers={"content-type": "text/html"}))
    assert seen == [
        ("text/plain; charset=utf-8", "héllo".encode()),
        ("application/json", b'{"x":1}'),
        ("text/html", b"<b/>"),
    ]


@async_test
async def test_unknown_connection_raises_410_with_the_parsed_error_body():
    """Posting to a connection that is not open raises ErrorResponse 410 with the JSON body."""
    async with running() as run:
        with pytest.raises(ErrorResponse) as caught:
            await ws_postback_function(run.url("/@connections/no-such-id"), {"hello": 1})
    error = caught.value
    assert error.status_code == 410
    assert isinstance(error.message, dict)
    assert error.message["statusCode"] == 410
    assert error.message["message"] == "Gone."
    assert "no-such-id" in error.message["details"]
    assert error.body["statusCode"] == 410


@async_test
async def test_text_error_answer_is_kept_as_text():
    """An error answer that is not JSON becomes the ErrorResponse message as text."""

    class Teapot(tornado.web.RequestHandler):
        def post(self) -> None:
            self.set_status(418)
            self.set_header("Content-Type", "text/plain")
            self.finish("short and stout")

    async with _server(Teapot) as url:
        with pytest.raises(ErrorResponse) as caught:
            await ws_postback_function(url, "hi")
    assert (caught.value.status_code, caught.value.message) == (418, "short and stout")


@async_test
async def test_token_is_sent_as_bearer():
    """token= authorizes against a management port that has a token."""
    async with running(settings(token="tok")) as run:
        client = await run.client()
        cid = await client.connection_id()
        url = run.url(f"/@connections/{cid}")
        with pytest.raises(ErrorResponse) as caught:
            await ws_postback_function(url, "denied")
        assert caught.value.status_code == 401
        await ws_postback_function(url, "allowed", token="tok")
        assert (await client.recv())["body"] == "allowed"


@async_test
async def test_unreachable_endpoint_raises_502():
    """A refused connection raises ErrorResponse 502 (Bad Gateway), not a socket error."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(ErrorResponse) as caught:
            await ws_postback_function(f"http://127.0.0.1:{port}/@connections/x", {"a": 1})
    assert caught.value.status_code == 502
    assert caught.value.message == "Bad Gateway."


@async_test
async def test_silent_endpoint_raises_504():
    """An endpoint that never answers raises ErrorResponse 504 after the timeout."""

    class Silent(tornado.web.RequestHandler):
        async def post(self) -> None:
            await asyncio.sleep(5)

    async with _server(Silent) as url:
        with pytest.raises(ErrorResponse) as caught:
            await ws_postback_function(url, "hi", timeout=0.2)
    assert caught.value.status_code == 504


class _server:
    """A throwaway HTTP server on a free port serving one handler at /; yields its URL."""

    def __init__(self, handler: type[tornado.web.RequestHandler]) -> None:
        self.server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/", handler)]))

    async def __aenter__(self) -> str:
        [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.server.add_sockets([sock])
        return f"http://127.0.0.1:{sock.getsockname()[1]}/"

    async def __aexit__(self, *exc: object) -> None:
        self.server.stop()
        await self.server.close_all_connections()


def test_node_name_is_the_same_function():
    """wsPostbackFunction (the Node name) is ws_postback_function."""
    from tornado_ws_runner import wsPostbackFunction

    assert wsPostbackFunction is ws_postback_function
