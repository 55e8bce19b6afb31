"""The Python client (``tornado_ws_runner.client``, CONTRACT.md section 8) against a real
runner on 127.0.0.1: calls matched by message-id, streams, pushes, timeouts, refusals,
subprotocols, headers and TLS. The frame rules without I/O come first."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from typing import Any

import pytest
import tornado.httpclient
from wsutil import (
    PROBE,
    TIMEOUT,
    Serve,
    bounded,
    free_port,
    management,
    settle,
    until,
    ws_url,
)

from tornado_ws_runner import ErrorResponse as EngineErrorResponse
from tornado_ws_runner.client import (
    Client,
    ConnectionClosed,
    ErrorResponse,
    Response,
    connect,
)
from tornado_ws_runner.client.frames import (
    MessageIds,
    decode_frame,
    encode_message,
    result_of,
)

# -- the frame rules, without a server -------------------------------------------------------


def test_a_message_carries_the_clients_own_message_id_and_lower_cased_headers() -> None:
    """A Message-ID among the caller's headers cannot displace the client's own."""
    ids = MessageIds()
    first, second = ids.next(), ids.next()
    assert first != second and ids.ours(first) and not ids.ours("7") and not ids.ours(7)
    message = json.loads(
        encode_message("echo", first, {"a": 1}, {"id": 2}, {"Message-ID": "mine", "X-T": "t"})
    )
    assert message == {
        "name": "echo",
        "headers": {"message-id": first, "x-t": "t"},
        "params": {"id": 2},
        "payload": {"a": 1},
    }
    assert json.loads(encode_message("echo", first)) == {
        "name": "echo",
        "headers": {"message-id": first},
    }
    with pytest.raises(ValueError):
        encode_message("echo", first, float("nan"))


def test_frames_decode_and_a_whole_reply_becomes_one_response() -> None:
    """Text that is not {statusCode, headers, body} is no frame; a stream's reply is the
    list of its chunks' bodies; an error frame raises with its own status and body."""
    assert decode_frame("not json") is None
    assert decode_frame("[1]") is None
    assert decode_frame('{"statusCode": "200"}') is None
    assert decode_frame(b"\xff") is None
    frame = decode_frame('{"statusCode": 200, "headers": {"message-id": "m"}, "body": [1]}')
    assert frame is not None and (frame.status_code, frame.body) == (200, [1])
    chunk = Response({"i": 0}, 200, {"x-stream": "chunk"})
    done = Response(None, 200, {"x-stream": "done"})
    whole = result_of([chunk, chunk, done])
    assert (whole.status_code, whole.body, whole.headers) == (200, [{"i": 0}] * 2, done.headers)
    with pytest.raises(ErrorResponse) as raised:
        result_of([Response("plain text refusal", 401, {"message-id": "m"})])
    assert (raised.value.status_code, raised.value.body) == (401, "plain text refusal")
    assert raised.value.message == "plain text refusal"


# -- calls -------------------------------------------------------------------------------------


async def test_call_returns_the_reply_matched_by_a_unique_message_id(serve: Serve) -> None:
    """call() sends name, payload, params and headers and returns status, headers, body;
    each call gets a message-id of its own."""
    runner = await serve()
    async with connect(ws_url(runner)) as client:
        first = await client.call("echo", {"a": 1}, params={"id": 7}, headers={"X-Trace": "t1"})
        second = await client.call("echo")
    assert first.status_code == 200 and first.headers["x-echo"] == "yes"
    assert first.body["payload"] == {"a": 1} and first.body["params"] == {"id": 7}
    assert second.body["payload"] is None
    sent = [event.request.headers for event in PROBE.events]
    assert sent[0]["x-trace"] == "t1"
    assert sent[0]["message-id"] == first.headers["message-id"]
    assert sent[1]["message-id"] == second.headers["message-id"] != sent[0]["message-id"]


async def test_concurrent_calls_are_answered_out_of_order(serve: Serve) -> None:
    """Two calls in flight on one connection: the later one, answered first, returns
    first, and the earlier one still gets its own reply."""
    runner = await serve()
    async with connect(ws_url(runner)) as client:
        slow = asyncio.ensure_future(client.call("block", {"gate": "first"}))
        fast = asyncio.ensure_future(client.call("block", {"gate": "second"}))
        await until(lambda: PROBE.counters["started"] == 2, "both calls to be running")
        PROBE.open("second")
        assert (await bounded(fast)).body == {"gate": "second"}
        assert not slow.done()
        PROBE.open("first")
        assert (await bounded(slow)).body == {"gate": "first"}


@pytest.mark.parametrize(
    ("name", "params", "status", "message"),
    [
        ("teapot", None, 418, "short and stout"),
        ("fail", None, 500, "Internal Server Error"),
        ("conflict", {"leave": True}, 409, "Already there."),
        ("nope", None, 501, "Not Implemented."),
    ],
)
async def test_an_error_frame_raises_error_response_with_its_status_and_body(
    serve: Serve, name: str, params: Any, status: int, message: str
) -> None:
    """Every frame of 400 or more raises the engine's own ErrorResponse, with the
    frame's status, body and headers; the connection goes on."""
    runner = await serve()
    async with connect(ws_url(runner)) as client:
        with pytest.raises(ErrorResponse) as raised:
            await client.call(name, params=params)
        assert (await client.call("echo")).status_code == 200
    error = raised.value
    assert ErrorResponse is EngineErrorResponse
    assert error.status_code == status and error.message == message
    assert error.body["statusCode"] == status and error.body["message"] == message
    assert error.headers == {"Content-Type": "application/json"}  # no message-id of this call


async def test_a_call_that_times_out_leaves_the_connection_usable_and_its_reply_is_dropped(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """timeout= bounds a call; the reply that comes later is neither a push nor taken
    for another call's, and the connection serves the next calls."""
    caplog.set_level(logging.DEBUG, logger="tornado_ws_runner.client")
    runner = await serve()
    async with connect(ws_url(runner)) as client:
        with pytest.raises(TimeoutError):
            await client.call("block", {"gate": "late"}, timeout=0.05)
        PROBE.open("late")
        await until(
            lambda: any("its call is over" in r.getMessage() for r in caplog.records),
            "the late reply to arrive and be dropped",
        )
        reply = await client.call("push", 1)
        pushes = client.pushes()
        first_push = await bounded(anext(pushes))
        await pushes.aclose()
        assert (await client.call("echo", "after")).body["payload"] == "after"
    assert reply.body == {"replied": True}
    assert first_push.body == {"pushed": 1}


async def test_a_handler_that_lets_the_clients_errors_through_answers_with_them(
    serve: Serve,
) -> None:
    """A handler calling a runner through the client: an error reply reaches its own
    client with the same status and body and none of the inner exchange's headers (a
    failed stream's x-stream: done); a refused connection answers 502."""
    runner = await serve()
    inner = {"url": ws_url(runner)}
    async with connect(ws_url(runner)) as client:
        relayed = await client.call("relay", {**inner, "name": "echo"})
        [teapot] = [f async for f in client.frames("relay", {**inner, "name": "teapot"})]
        [failed] = [f async for f in client.frames("relay", {**inner, "name": "failingStream"})]
        with pytest.raises(ErrorResponse) as refused:
            await client.call("relay", {"url": ws_url(runner, "/?reject=raise"), "name": "echo"})
    assert relayed.status_code == 200 and relayed.body["name"] == "echo"
    assert (teapot.status_code, teapot.body["message"]) == (418, "short and stout")
    assert teapot.headers["Content-Type"] == "application/json"
    assert (failed.status_code, failed.body["message"]) == (500, "Internal Server Error")
    assert set(failed.headers) == {"Content-Type", "message-id"}
    assert (refused.value.status_code, refused.value.message) == (502, "Bad Gateway.")


# -- streams -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync", "list"])
async def test_stream_yields_each_chunk_body_until_done(serve: Serve, kind: str) -> None:
    """stream() yields the chunks' bodies and ends at the done frame; call() of the same
    event gathers them into one Response."""
    runner = await serve()
    async with connect(ws_url(runner)) as client:
        chunks = [c async for c in client.stream("stream", params={"n": 5, "kind": kind})]
        whole = await client.call("stream", params={"n": 3, "kind": kind})
    assert chunks == [{"i": i} for i in range(5)]
    assert whole.status_code == 200 and whole.body == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert whole.headers["x-stream"] == "done" and whole.headers["x-kind"] == kind


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [("runtime", 500, "Internal Server Error"), ("conflict", 409, "Producer conflict.")],
)
async def test_a_failing_producer_raises_after_the_chunks_it_made(
    serve: Serve, error: str, status: int, message: str
) -> None:
    """The chunks before the failure are yielded; the failed done frame raises its error."""
    runner = await serve()
    got: list[Any] = []
    async with connect(ws_url(runner)) as client:
        with pytest.raises(ErrorResponse) as raised:
            async for chunk in client.stream("failingStream", params={"error": error}):
                got.append(chunk)
        with pytest.raises(ErrorResponse):
            await client.call("failingStream", params={"error": error})
    assert got == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert raised.value.status_code == status and raised.value.message == message
    assert "x-stream" not in raised.value.headers and "x-stream-id" not in raised.value.headers


async def test_a_stream_left_early_is_dropped_without_stalling_the_connection(
    serve: Serve,
) -> None:
    """With room for two unread frames, the reader stops reading the socket, and the
    producer waits (or reaches its cap); leaving the stream then lets the reader go on:
    the rest of the stream is dropped (not taken for pushes) and the connection keeps
    answering."""
    runner = await serve()
    async with connect(ws_url(runner), stream_buffer=2) as client:
        params = {"key": "left", "size": 1024}
        async with contextlib.aclosing(client.stream("endless", params=params)) as chunks:
            async for chunk in chunks:
                assert chunk == "x" * 1024
                await settle(lambda: PROBE.counters["left"])  # the reader is held up
                break
        assert (await client.call("push", "p", timeout=TIMEOUT)).body == {"replied": True}
        pushes = client.pushes()
        assert (await bounded(anext(pushes))).body == {"pushed": "p"}
        await pushes.aclose()


# -- pushes ------------------------------------------------------------------------------------


async def test_pushes_are_the_frames_no_call_asked_for(serve: Serve) -> None:
    """A handler's push and a management POST (with a message-id of the poster's own)
    come out of pushes(), in order; the calls' replies do not."""
    runner = await serve()
    async with connect(ws_url(runner)) as client:
        await client.call("push", 42)
        cid = PROBE.connection_ids()[-1]
        posted = await tornado.httpclient.AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{runner.ports['management']}/@connections/{cid}",
            method="POST",
            body='{"hi": 1}',
            headers={"Content-Type": "application/json", "message-id": "7"},
        )
        assert posted.code == 200
        pushes = client.pushes()
        first, second = await bounded(anext(pushes)), await bounded(anext(pushes))
        await pushes.aclose()
    assert (first.status_code, first.body) == (200, {"pushed": 42})
    assert first.headers == {"x-push": "yes"}
    assert second.body == {"hi": 1} and second.headers["message-id"] == "7"


async def test_unread_pushes_are_bounded_and_the_oldest_go(serve: Serve) -> None:
    """Past max_pushes unread pushes the oldest is dropped and counted."""
    runner = await serve()
    async with connect(ws_url(runner), max_pushes=2) as client:
        await client.call("echo")
        cid = PROBE.events[-1].request.headers["connection-id"]
        for n in (1, 2, 3):
            assert (await management(runner, "POST", f"/@connections/{cid}", {"n": n})).code == 200
        await until(lambda: client.dropped_pushes == 1, "the first push to be dropped")
        pushes = client.pushes()
        kept = [(await bounded(anext(pushes))).body for _ in range(2)]
        await pushes.aclose()
    assert kept == [{"n": 2}, {"n": 3}]


# -- closes and refusals -----------------------------------------------------------------------


async def test_a_refusal_by_on_connect_raises_its_close_code_and_reason(serve: Serve) -> None:
    """on_connect failing closes with 1008 and its message: a call raises ConnectionClosed
    with both, pushes() too, and so does every later call."""
    runner = await serve()
    async with connect(ws_url(runner, "/?reject=raise&reason=Nope")) as client:
        with pytest.raises(ConnectionClosed) as raised:
            await client.call("echo")
        with pytest.raises(ConnectionClosed) as from_pushes:
            await bounded(anext(client.pushes()))
        with pytest.raises(ConnectionClosed):
            await client.call("echo")
        assert (client.close_code, client.close_reason) == (1008, "Nope")
    assert (raised.value.code, raised.value.reason) == (1008, "Nope")
    assert (from_pushes.value.code, from_pushes.value.reason) == (1008, "Nope")
    assert "1008" in str(raised.value) and "Nope" in str(raised.value)
    assert PROBE.events == []  # nothing was routed


async def test_calls_waiting_when_the_server_closes_fail_with_its_close(serve: Serve) -> None:
    """A management DELETE closes with 1000: the call in flight raises ConnectionClosed
    with that code and reason, and pushes() ends without an error."""
    runner = await serve()
    async with connect(ws_url(runner)) as client:
        await client.call("echo")
        cid = PROBE.events[-1].request.headers["connection-id"]
        waiting = asyncio.ensure_future(client.call("block", {"gate": "never"}))
        await until(lambda: PROBE.counters["started"] == 1, "the call to be running")
        assert (await management(runner, "DELETE", f"/@connections/{cid}")).code == 204
        with pytest.raises(ConnectionClosed) as raised:
            await bounded(waiting)
        assert [p async for p in client.pushes()] == []
    assert (raised.value.code, raised.value.reason) == (1000, "closed by management")
    PROBE.open("never")


async def test_closing_the_client_fails_the_calls_still_waiting(serve: Serve) -> None:
    runner = await serve()
    client = await Client.open(ws_url(runner))
    waiting = asyncio.ensure_future(client.call("block", {"gate": "never"}))
    await until(lambda: PROBE.counters["started"] == 1, "the call to be running")
    await bounded(client.close())
    with pytest.raises(ConnectionClosed) as raised:
        await bounded(waiting)
    assert raised.value.code == 1000 and client.closed
    assert [p async for p in client.pushes()] == []
    PROBE.open("never")


async def test_an_http_refusal_raises_connection_closed_with_the_status(serve: Serve) -> None:
    """An upgrade the server answers with HTTP 403 (an Origin it does not allow) raises
    at connect, with the status; the upgrade's headers reach the server."""
    runner = await serve(limits={"allowed_origins": ["https://good.example"]})
    with pytest.raises(ConnectionClosed) as raised:
        async with connect(ws_url(runner), headers={"Origin": "https://evil.example"}):
            pass
    assert (raised.value.http_status, raised.value.code) == (403, None)
    assert "403" in str(raised.value)
    good = {"Origin": "https://good.example", "X-Token": "abc"}
    async with connect(ws_url(runner), headers=good) as client:
        assert (await client.call("echo")).status_code == 200
    assert PROBE.connects[-1].request.headers["x-token"] == "abc"


async def test_nothing_listening_raises_connection_closed() -> None:
    """No connection at all: no close code, no HTTP status, the reason says why; a URL
    that is not ws:// or wss:// is a ValueError before any attempt."""
    with pytest.raises(ValueError):
        await Client.open(f"http://127.0.0.1:{free_port()}/")
    with pytest.raises(ConnectionClosed) as raised:
        async with connect(f"ws://127.0.0.1:{free_port()}/", connect_timeout=5):
            pass
    assert raised.value.code is None and raised.value.http_status is None
    assert "refused" in raised.value.reason.lower()


# -- what the connection is made with ----------------------------------------------------------


async def test_subprotocols_are_offered_and_the_chosen_one_is_known(serve: Serve) -> None:
    runner = await serve()
    async with connect(ws_url(runner), subprotocols=["chat.v1", "chat.v0"]) as client:
        assert client.subprotocol == "chat.v1"
        await client.call("echo")
    assert PROBE.events[-1].request.headers["sec-websocket-protocol"] == "chat.v1"


async def test_tls_with_a_ca_file_or_an_ssl_context(
    serve: Serve, certificate: tuple[str, str]
) -> None:
    """wss:// works with ca_certs or ssl=; a certificate nobody trusts raises at connect."""
    key, cert = certificate
    runner = await serve(tls={"key": key, "cert": cert, "port": 0})
    url = ws_url(runner, tls=True)
    async with connect(url, ca_certs=cert) as client:
        assert (await client.call("echo", "ca")).body["payload"] == "ca"
    context = ssl.create_default_context(cafile=cert)
    async with connect(url, ssl=context) as client:
        assert (await client.call("echo", "ctx")).body["payload"] == "ctx"
    with pytest.raises(ConnectionClosed) as raised:
        async with connect(url, ssl=ssl.create_default_context()):
            pass
    assert "certificate" in raised.value.reason.lower()
