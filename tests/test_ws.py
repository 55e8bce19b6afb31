"""The WebSocket runner end to end: a real server on 127.0.0.1, real clients.

Connection lifecycle, message adaptation, frames and errors, concurrency, push, TLS
and the blocking ``run()`` (CONTRACT.md section 3). Both Tornado's client and the
independent ``websockets`` library talk to the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import tornado.websocket
from wsutil import (
    CATCHALL_CONFIG,
    CONFIG,
    HERE,
    PROBE,
    RawClient,
    ask,
    bounded,
    closed_with,
    free_port,
    identified_client,
    management,
    recv,
    registry,
    send,
    stays,
    tornado_connect,
    until,
    websockets_connect,
    ws_url,
)

from tornado_ws_runner import Response
from tornado_ws_runner.errors import ConnectionGone
from tornado_ws_runner.ws.handler import ClientHandler


async def connection_id_of(conn: Any) -> str:
    """The server-side id of a client's connection, as its echo reports it."""
    await send(conn, {"name": "echo", "headers": {"message-id": "whoami"}})
    frame = await recv(conn)
    assert frame["headers"]["message-id"] == "whoami"
    return str(PROBE.events[-1].request.headers["connection-id"])


# -- the core message flow, with both clients --------------------------------------------------


async def test_echo_round_trip_tornado_client(serve: Any) -> None:
    """A message is routed by name and answered with {statusCode, headers, body} (Tornado)."""
    runner = await serve()
    conn = await tornado_connect(ws_url(runner))
    frame = await ask(
        conn,
        {
            "name": "echo",
            "params": {"id": 123},
            "query": {"q": "s"},
            "payload": {"foo": "bar"},
            "headers": {"Message-ID": "abc-123"},
        },
    )
    assert frame == {
        "statusCode": 200,
        "headers": {"x-echo": "yes", "message-id": "abc-123"},
        "body": {
            "name": "echo",
            "payload": {"foo": "bar"},
            "params": {"id": 123, "q": "s"},
            "query": {"q": "s"},
            "identity": None,
        },
    }
    conn.close()


async def test_echo_round_trip_websockets_client(serve: Any) -> None:
    """The same flow with the independent websockets client, action instead of name."""
    runner = await serve()
    async with websockets_connect(ws_url(runner)) as ws:
        frame = await ask(ws, {"action": "echo", "headers": {"message-id": 9}})
        assert frame["statusCode"] == 200
        assert frame["headers"]["message-id"] == 9
        assert frame["body"]["name"] == "echo"
        assert frame["body"]["payload"] is None
        # a UTF-8 binary frame is a message too
        await send(ws, json.dumps({"name": "echo", "payload": "é"}).encode())
        assert (await recv(ws))["body"]["payload"] == "é"


@pytest.mark.parametrize("client", ["tornado", "websockets"])
async def test_first_offered_subprotocol_is_echoed(serve: Any, client: str) -> None:
    """The first subprotocol the client offers is selected and reaches the handlers."""
    runner = await serve()
    if client == "tornado":
        conn = await tornado_connect(ws_url(runner), subprotocols=["proto-a", "proto-b"])
        assert conn.selected_subprotocol == "proto-a"
        await ask(conn, {"name": "echo"})
        conn.close()
    else:
        async with websockets_connect(ws_url(runner), subprotocols=["proto-a", "proto-b"]) as ws:
            assert ws.subprotocol == "proto-a"
            await ask(ws, {"name": "echo"})
    assert PROBE.connects[-1].request.headers["sec-websocket-protocol"] == "proto-a"
    assert PROBE.events[-1].request.headers["sec-websocket-protocol"] == "proto-a"


# -- connecting --------------------------------------------------------------------------------


async def test_connection_ids_are_unique_uuid4(serve: Any) -> None:
    """Every connection gets a random UUID v4 of its own."""
    runner = await serve()
    conns = [await tornado_connect(ws_url(runner)) for _ in range(4)]
    ids = [await connection_id_of(c) for c in conns]
    assert len(set(ids)) == 4
    for cid in ids:
        assert uuid.UUID(cid).version == 4 and str(uuid.UUID(cid)) == cid
    assert sorted(registry(runner).ids()) == sorted(ids)
    for c in conns:
        c.close()


async def test_on_connect_sees_upgrade_headers_query_and_path(serve: Any) -> None:
    """on_connect gets the upgrade headers (lower-cased) plus ours, the URL query and path."""
    runner = await serve()
    conn = await tornado_connect(
        ws_url(runner, "/any/path?x=1&token=abc"),
        subprotocols=["chat"],
        headers={"X-Custom-Token": "Secret", "User-Agent": "probe/1"},
    )
    cid = await connection_id_of(conn)
    (event,) = PROBE.connects
    headers = event.request.headers
    assert headers["x-custom-token"] == "Secret"
    assert headers["user-agent"] == "probe/1"
    assert headers["upgrade"].lower() == "websocket"
    assert all(k == k.lower() for k in headers)
    assert headers["connection-id"] == cid
    mgmt = runner.ports["management"]
    assert headers["postback-url"] == f"http://127.0.0.1:{mgmt}/@connections/{cid}"
    assert headers["sec-websocket-protocol"] == "chat"
    assert event.request.query == {"x": "1", "token": "abc"}
    assert event.request.path == "/any/path"
    assert event.name == "on_connect"
    conn.close()


@pytest.mark.parametrize("how", ["raise", "leave"])
async def test_on_connect_failure_closes_1008_with_the_message_tornado(
    serve: Any, how: str
) -> None:
    """on_connect answering >= 400 (raised or left) closes with 1008 and its message."""
    runner = await serve()
    conn = await tornado_connect(ws_url(runner, f"/?reject={how}&reason=No+token."))
    code, reason = await closed_with(conn)
    assert (code, reason) == (1008, "No token.")
    (cid,) = PROBE.connection_ids()
    await until(lambda: len(PROBE.disconnects_of(cid)) == 1, "on_disconnect")
    assert len(registry(runner)) == 0


async def test_on_connect_plain_response_over_400_closes_1008_policy_violation(
    serve: Any,
) -> None:
    """A plain Response >= 400 (no error message) closes with 1008 Policy Violation."""
    runner = await serve()
    conn = await tornado_connect(ws_url(runner, "/?reject=plain"))
    assert await closed_with(conn) == (1008, "Policy Violation")


async def test_on_connect_failure_closes_1008_websockets(serve: Any) -> None:
    """The 1008 rejection seen by the websockets client, with the reason."""
    runner = await serve()
    async with websockets_connect(ws_url(runner, "/?reject=raise&reason=Bad+key.")) as ws:
        assert await closed_with(ws) == (1008, "Bad key.")


async def test_on_connect_long_non_ascii_reason_still_gives_a_valid_close(serve: Any) -> None:
    """A long non-ASCII rejection message is cut to fit a close frame (123 bytes)."""
    runner = await serve()
    reason = "é" * 100  # 200 bytes in UTF-8
    async with websockets_connect(ws_url(runner, f"/?reject=raise&reason={quote(reason)}")) as ws:
        code, got = await closed_with(ws)
    assert code == 1008
    assert got and reason.startswith(got)
    assert len(got.encode()) <= 123


async def test_no_message_is_routed_when_on_connect_fails(serve: Any, monkeypatch: Any) -> None:
    """Messages sent while on_connect runs are dropped (never routed) when it fails."""
    seen: list[Any] = []
    handlers: list[ClientHandler] = []
    original = ClientHandler.on_message

    def spy(self: ClientHandler, message: str | bytes) -> Any:
        seen.append(message)
        handlers.append(self)
        return original(self, message)

    monkeypatch.setattr(ClientHandler, "on_message", spy)
    runner = await serve()
    conn = await tornado_connect(ws_url(runner, "/?gate=auth&reject=raise&reason=Denied."))
    for i in range(3):
        await send(conn, {"name": "echo", "headers": {"message-id": i}})
    await until(lambda: PROBE.connects, "on_connect to start")
    PROBE.open("auth")
    assert await closed_with(conn) == (1008, "Denied.")
    (cid,) = PROBE.connection_ids()
    await until(lambda: PROBE.disconnects_of(cid), "on_disconnect")
    await until(lambda: handlers and handlers[0] not in runner.state.sockets, "the socket closed")
    assert len(seen) == 3, "the messages reached the server"
    assert PROBE.events == [] and ("message", 0) not in PROBE.log


async def test_messages_during_on_connect_are_handled_after_it_in_order(serve: Any) -> None:
    """Messages that arrive while on_connect runs wait for it, then run in order."""
    runner = await serve()
    async with websockets_connect(ws_url(runner, "/?gate=slow-auth&user=alice")) as ws:
        for i in range(5):
            await send(ws, {"name": "echo", "headers": {"message-id": i}})
        await until(lambda: PROBE.connects, "on_connect to start")
        await stays(lambda: not PROBE.events, 0.1, "no message before on_connect is done")
        PROBE.open("slow-auth")
        frames = [await recv(ws) for _ in range(5)]
    assert [f["headers"]["message-id"] for f in frames] == [0, 1, 2, 3, 4]
    assert all(f["body"]["identity"] == "alice" for f in frames)
    kinds = [k for k, _ in PROBE.log]
    assert kinds[:2] == ["connect", "connected"]
    assert [d for k, d in PROBE.log if k == "message"] == [0, 1, 2, 3, 4]


async def test_identity_from_on_connect_is_on_every_later_event(serve: Any) -> None:
    """An identity set by on_connect is event.identity of messages and on_disconnect."""
    runner = await serve()
    conn = await tornado_connect(ws_url(runner, "/?user=bob"))
    for _ in range(2):
        assert (await ask(conn, {"name": "echo"}))["body"]["identity"] == "bob"
    assert all(e.identity.id == "bob" for e in PROBE.events)
    cid = PROBE.connection_ids()[0]
    conn.close()
    await until(lambda: PROBE.disconnects_of(cid), "on_disconnect")
    assert PROBE.disconnects_of(cid)[0].identity.id == "bob"
    other = await tornado_connect(ws_url(runner))
    assert (await ask(other, {"name": "echo"}))["body"]["identity"] is None
    other.close()


# -- on_disconnect, exactly once, in every closing path -----------------------------------


async def _wait_disconnect_once(runner: Any, cid: str) -> None:
    await until(lambda: PROBE.disconnects_of(cid), f"on_disconnect of {cid}")
    await until(lambda: registry(runner).get(cid) is None, "the registry to drop it")
    event = PROBE.disconnects_of(cid)[0]
    assert event.name == "on_disconnect"
    assert event.request.headers["connection-id"] == cid


async def test_on_disconnect_once_when_the_client_closes(serve: Any) -> None:
    """Client close -> on_disconnect once, with connection-id."""
    runner = await serve()
    async with websockets_connect(ws_url(runner)) as ws:
        cid = await connection_id_of(ws)
    await _wait_disconnect_once(runner, cid)
    await runner.stop()
    assert len(PROBE.disconnects_of(cid)) == 1


async def test_on_disconnect_once_when_the_server_closes(serve: Any) -> None:
    """Server close via Connection.close -> the client sees the code, on_disconnect once."""
    runner = await serve()
    conn = await tornado_connect(ws_url(runner))
    cid = await connection_id_of(conn)
    registry(runner).get(cid).close(1000, "bye")
    assert await closed_with(conn) == (1000, "bye")
    await _wait_disconnect_once(runner, cid)
    await runner.stop()
    assert len(PROBE.disconnects_of(cid)) == 1


async def test_on_disconnect_once_on_1008_rejection(serve: Any) -> None:
    """A rejected connection runs on_disconnect exactly once too."""
    runner = await serve()
    conn = await tornado_connect(ws_url(runner, "/?reject=leave"))
    assert (await closed_with(conn))[0] == 1008
    (cid,) = PROBE.connection_ids()
    await _wait_disconnect_once(runner, cid)
    await runner.stop()
    assert len(PROBE.disconnects_of(cid)) == 1


async def test_on_disconnect_once_on_1009(serve: Any) -> None:
    """An oversized frame closes with 1009 and runs on_disconnect once."""
    runner = await serve(limits={"max_message_size": 1000})
    conn = await tornado_connect(ws_url(runner))
    cid = await connection_id_of(conn)
    conn.write_message("x" * 5000)
    assert (await closed_with(conn))[0] == 1009
    await _wait_disconnect_once(runner, cid)
    await runner.stop()
    assert len(PROBE.disconnects_of(cid)) == 1


async def test_on_disconnect_once_when_the_client_vanishes(serve: Any) -> None:
    """A client that drops TCP without a close frame is noticed; on_disconnect once."""
    runner = await serve()
    raw = await RawClient.connect(runner.ports["listen"], "/vanish")
    assert raw.status == 101
    await until(lambda: PROBE.connects, "on_connect")
    cid = PROBE.connection_ids()[0]
    await until(lambda: registry(runner).get(cid) is not None, "registration")
    raw.abort()
    await _wait_disconnect_once(runner, cid)
    await runner.stop()
    assert len(PROBE.disconnects_of(cid)) == 1


async def test_stop_closes_clients_with_1001_and_runs_on_disconnect(serve: Any) -> None:
    """runner.stop(): every client gets 1001 Going Away and on_disconnect runs once each."""
    runner = await serve()
    conn = await tornado_connect(ws_url(runner))
    async with websockets_connect(ws_url(runner)) as ws:
        ids = [await connection_id_of(conn), await connection_id_of(ws)]
        stopping = asyncio.ensure_future(runner.stop())
        assert (await closed_with(conn))[0] == 1001
        assert (await closed_with(ws))[0] == 1001
        await bounded(stopping, 15)
    for cid in ids:
        assert len(PROBE.disconnects_of(cid)) == 1
    assert len(registry(runner)) == 0


async def test_stop_during_on_connect_lets_it_finish_before_on_disconnect(serve: Any) -> None:
    """stop() during on_connect lets it finish before on_disconnect runs, once, with identity."""
    runner = await serve()
    conn = await tornado_connect(ws_url(runner, "/?gate=auth&user=carol"))
    await until(lambda: PROBE.connects, "on_connect to start")
    (cid,) = PROBE.connection_ids()
    stopping = asyncio.ensure_future(runner.stop())
    await stays(lambda: not PROBE.disconnects, 0.1, "no on_disconnect before on_connect is done")
    PROBE.open("auth")
    assert (await closed_with(conn))[0] == 1001
    await bounded(stopping, 15)
    assert [kind for kind, _ in PROBE.log] == ["connect", "connected", "disconnect"]
    (event,) = PROBE.disconnects_of(cid)
    assert event.identity is not None and event.identity.id == "carol"


async def test_stop_cuts_an_on_connect_that_outlives_the_drain(serve: Any) -> None:
    """stop() cuts an on_connect outliving the drain; 1001, and on_disconnect runs once."""
    runner = await serve(timeouts={"drain": 0.3})
    conn = await tornado_connect(ws_url(runner, "/?gate=never"))
    await until(lambda: PROBE.connects, "on_connect to start")
    (cid,) = PROBE.connection_ids()
    await bounded(runner.stop(), 10)
    assert (await closed_with(conn))[0] == 1001
    assert len(PROBE.disconnects_of(cid)) == 1
    assert ("connected", cid) not in PROBE.log


async def test_server_close_during_on_connect_waits_for_it(serve: Any) -> None:
    """A server close during on_connect runs on_disconnect after it, once; nothing routed."""
    runner = await serve()
    conn = await tornado_connect(ws_url(runner, "/?gate=auth2"))
    await send(conn, {"name": "echo"})
    await until(lambda: PROBE.connects, "on_connect to start")
    (cid,) = PROBE.connection_ids()
    # Not addressable by id before on_connect succeeded; reach it the way shutdown does.
    assert registry(runner).get(cid) is None
    (pending,) = list(registry(runner))
    pending.close(1000, "closed by the operator")
    await stays(lambda: not PROBE.disconnects, 0.1, "no on_disconnect before on_connect is done")
    PROBE.open("auth2")
    assert await closed_with(conn) == (1000, "closed by the operator")
    await until(lambda: PROBE.disconnects_of(cid), "on_disconnect")
    assert [kind for kind, _ in PROBE.log] == ["connect", "connected", "disconnect"]
    assert PROBE.events == []


async def test_stop_lets_events_in_flight_finish(serve: Any) -> None:
    """stop() waits for an event in flight (up to the drain timeout) and it answers."""
    runner = await serve()
    conn = await tornado_connect(ws_url(runner))
    await send(conn, {"name": "block", "payload": {"gate": "g"}, "headers": {"message-id": "b"}})
    await until(lambda: PROBE.counters["started"] == 1, "the event to start")
    stopping = asyncio.ensure_future(runner.stop())
    await stays(lambda: not stopping.done(), 0.1, "stop waits for the event")
    PROBE.open("g")
    frame = await recv(conn)
    assert frame["headers"]["message-id"] == "b" and frame["statusCode"] == 200
    assert (await closed_with(conn))[0] == 1001
    await bounded(stopping, 15)


# -- message adaptation -----------------------------------------------------------------------


async def test_message_events_get_the_connection_headers(serve: Any) -> None:
    """Message events get the connection headers; params and query keys are in event.params."""
    runner = await serve()
    async with websockets_connect(ws_url(runner), subprotocols=["p1"]) as ws:
        await ask(
            ws,
            {
                "name": "echo",
                "params": {"id": 1},
                "query": {"sort": "asc"},
                "headers": {"connection-id": "spoofed", "x-a": "b"},
            },
        )
    event = PROBE.events[-1]
    headers = event.request.headers
    cid = PROBE.connection_ids()[-1]
    assert headers["connection-id"] == cid
    mgmt = runner.ports["management"]
    assert headers["postback-url"] == f"http://127.0.0.1:{mgmt}/@connections/{cid}"
    assert callable(headers["push-function"])
    assert headers["sec-websocket-protocol"] == "p1"
    assert headers["x-a"] == "b"
    assert event.params == {"id": 1, "sort": "asc"}
    assert event.request.params == {"id": 1}
    assert event.request.query == {"sort": "asc"}


# -- frames to the client: success and every error -----------------------------------------


async def test_unknown_name_answers_501(serve: Any) -> None:
    """No route -> 501 Not Implemented., message-id echoed."""
    runner = await serve()
    async with websockets_connect(ws_url(runner)) as ws:
        frame = await ask(ws, {"name": "nope", "headers": {"message-id": "m1"}})
    assert frame["statusCode"] == 501
    assert frame["headers"]["message-id"] == "m1"
    assert frame["body"]["statusCode"] == 501
    assert frame["body"]["message"] == "Not Implemented."
    assert set(frame["body"]) == {"statusCode", "message", "details"}


async def test_raising_handler_answers_500_without_traceback(serve: Any) -> None:
    """An exception -> 500 Internal Server Error, no traceback or secret; still open."""
    runner = await serve()
    conn = await tornado_connect(ws_url(runner))
    await send(conn, {"name": "fail", "headers": {"message-id": "m2"}})
    text = await bounded(conn.read_message())
    frame = json.loads(text)
    assert frame["statusCode"] == 500
    assert frame["headers"]["message-id"] == "m2"
    assert frame["body"]["message"] == "Internal Server Error"
    assert "Traceback" not in text and "secret" not in text and "passwords" not in text
    assert (await ask(conn, {"name": "echo"}))["statusCode"] == 200, "the connection stays open"
    conn.close()


async def test_error_details_put_the_traceback_in_the_500(serve: Any) -> None:
    """With error_details on, the 500 frame's details hold the traceback."""
    runner = await serve(error_details=True)
    async with websockets_connect(ws_url(runner)) as ws:
        frame = await ask(ws, {"name": "fail", "headers": {"message-id": "m3"}})
    assert frame["statusCode"] == 500
    assert frame["headers"]["message-id"] == "m3"
    assert "Traceback" in frame["body"]["details"]
    assert "failHandler" in frame["body"]["details"]


async def test_status_code_errors_and_error_responses_keep_their_status(serve: Any) -> None:
    """status_code errors, ErrorResponses and JSONDecodeError (400) keep their status and id."""
    runner = await serve()
    async with websockets_connect(ws_url(runner)) as ws:
        teapot = await ask(ws, {"name": "teapot", "headers": {"message-id": "t"}})
        raised = await ask(ws, {"name": "conflict", "headers": {"message-id": "c"}})
        left = await ask(
            ws, {"name": "conflict", "params": {"leave": 1}, "headers": {"message-id": "l"}}
        )
        bad = await ask(ws, {"name": "badJson", "headers": {"message-id": "b"}})
    assert (teapot["statusCode"], teapot["body"]["message"]) == (418, "short and stout")
    assert (raised["statusCode"], raised["body"]["message"]) == (409, "Already there.")
    assert raised["body"]["details"] == "raised"
    assert (left["statusCode"], left["body"]["details"]) == (409, "left on the event")
    assert (bad["statusCode"], bad["body"]["message"]) == (400, "Bad Request.")
    assert [f["headers"]["message-id"] for f in (teapot, raised, left, bad)] == list("tclb")


async def test_bad_input_frames_answer_400_with_message_id(serve: Any) -> None:
    """Reserved names, wrong types and non-UTF-8 binary answer 400 frames."""
    runner = await serve()
    async with websockets_connect(ws_url(runner)) as ws:
        reserved = await ask(ws, {"name": "on_connect", "headers": {"message-id": "r"}})
        typed = await ask(ws, {"name": "echo", "params": [1], "headers": {"message-id": "p"}})
        await send(ws, b"\xff\xfe")
        binary = await recv(ws)
    assert (reserved["statusCode"], reserved["headers"]["message-id"]) == (400, "r")
    assert (typed["statusCode"], typed["headers"]["message-id"]) == (400, "p")
    assert binary["statusCode"] == 400 and "message-id" not in binary["headers"]
    assert PROBE.events == [] and len(PROBE.connects) == 1


async def test_handler_timeout_answers_504_and_the_connection_keeps_answering(serve: Any) -> None:
    """Past timeouts.handler the event answers 504 while other messages are answered."""
    runner = await serve(timeouts={"handler": 0.2})
    async with websockets_connect(ws_url(runner)) as ws:
        await send(ws, {"name": "slow", "headers": {"message-id": "s"}})
        echoed = await ask(ws, {"name": "echo", "headers": {"message-id": "e"}})
        assert echoed["headers"]["message-id"] == "e" and echoed["statusCode"] == 200
        late = await recv(ws)
        assert (late["statusCode"], late["headers"]["message-id"]) == (504, "s")
        assert late["body"]["message"] == "Gateway Timeout."
        assert (await ask(ws, {"name": "echo"}))["statusCode"] == 200
    assert PROBE.counters["slow_cancelled"] == 1


async def test_every_frame_is_strict_json_even_around_nan(serve: Any) -> None:
    """NaN in or out never yields a non-JSON frame: 501 unrouted, 500 with the message-id."""

    def strict(text: str) -> dict[str, Any]:
        def reject(constant: str) -> None:
            raise AssertionError(f"{constant} in a frame: {text}")

        frame = json.loads(text, parse_constant=reject)
        assert isinstance(frame, dict)
        return frame

    runner = await serve()
    async with websockets_connect(ws_url(runner)) as ws:
        await send(ws, '{"name": "echo", "payload": NaN, "headers": {"message-id": "n"}}')
        unrouted = strict(await bounded(ws.recv()))
        await send(ws, {"name": "nan", "headers": {"message-id": "m"}})
        failed = strict(await bounded(ws.recv()))
    assert unrouted["statusCode"] == 501
    assert (failed["statusCode"], failed["headers"]["message-id"]) == (500, "m")


@pytest.mark.parametrize("text", ["this is not json", "[1]", '"x"', "3"])
async def test_invalid_json_reaches_catchall(serve: Any, text: str) -> None:
    """Invalid or non-object JSON reaches catchall with the raw text as payload."""
    runner = await serve(CATCHALL_CONFIG)
    async with websockets_connect(ws_url(runner)) as ws:
        frame = await ask(ws, text)
    assert frame["statusCode"] == 200
    assert frame["body"] == {"catchall": text, "name": ""}


async def test_invalid_json_without_catchall_answers_501(serve: Any) -> None:
    """Without a catchall, invalid JSON answers 501."""
    runner = await serve()
    conn = await tornado_connect(ws_url(runner))
    frame = await ask(conn, "{oops")
    assert frame["statusCode"] == 501 and frame["body"]["message"] == "Not Implemented."
    conn.close()


# -- concurrency -----------------------------------------------------------------------------


async def test_max_in_flight_holds_the_next_message_and_replies_carry_their_ids(
    serve: Any,
) -> None:
    """max_in_flight=2 holds the third message; out-of-order replies carry their ids."""
    runner = await serve(limits={"max_in_flight": 2})
    async with websockets_connect(ws_url(runner)) as ws:
        for gate in ("a", "b", "c"):
            await send(
                ws, {"name": "block", "payload": {"gate": gate}, "headers": {"message-id": gate}}
            )
        await send(ws, {"name": "echo", "headers": {"message-id": "e"}})
        await until(lambda: PROBE.counters["started"] == 2, "two events to start")
        await stays(lambda: PROBE.counters["started"] == 2, 0.2, "the third waits")
        assert PROBE.events == [], "the echo behind them waits too"
        PROBE.open("b")
        first = await recv(ws)
        assert first["headers"]["message-id"] == "b"
        await until(lambda: PROBE.counters["started"] == 3, "the third to start")
        PROBE.open("c")
        second = await recv(ws)
        assert second["headers"]["message-id"] == "c"
        # the echo got the free slot and answers before "a"
        third = await recv(ws)
        assert third["headers"]["message-id"] == "e"
        PROBE.open("a")
        last = await recv(ws)
        assert (last["headers"]["message-id"], last["body"]) == ("a", {"gate": "a"})
    assert PROBE.counters["max_running"] == 2
    assert [d for k, d in PROBE.log if k == "block"] == ["a", "b", "c"]


async def test_a_message_runs_in_one_task_from_its_first_step(serve: Any) -> None:
    """A message's handlers run in one task of their own, the same after a wait."""
    runner = await serve()
    async with websockets_connect(ws_url(runner)) as ws:
        answer = await ask(ws, {"name": "task"})
        assert answer["body"] == {"task": True, "same": True}


async def test_a_handlers_own_asyncio_timeout_cuts_only_its_wait(serve: Any) -> None:
    """asyncio.timeout entered in the first step is bound to the message's task: it ends
    that wait, and the connection keeps being read and answered."""
    runner = await serve()
    async with websockets_connect(ws_url(runner)) as ws:
        own = await ask(ws, {"name": "ownTimeout", "headers": {"message-id": "t"}})
        assert (own["statusCode"], own["body"]) == (200, "my deadline passed")
        assert (await ask(ws, {"name": "echo"}))["statusCode"] == 200


async def test_a_context_variable_set_by_one_message_is_not_seen_by_the_next(
    serve: Any,
) -> None:
    """Each message runs in its own copy of the context, as a task of its own would."""
    runner = await serve()
    async with websockets_connect(ws_url(runner)) as ws:
        for payload in ("first", "second"):
            answer = await ask(ws, {"name": "context", "payload": payload})
            assert answer["body"] == {"seen": None}


async def test_a_plain_handlers_awaitable_runs_in_a_task_of_its_own(serve: Any) -> None:
    """A lone client's chain of plain functions is answered outside any task of the
    message's; an awaitable such a function returns runs as a task of its own, so an
    asyncio.timeout it enters cuts only its own wait and the connection goes on."""
    runner = await serve()
    async with websockets_connect(ws_url(runner)) as ws:
        own = await ask(ws, {"name": "plainTimeout"})
        assert (own["statusCode"], own["body"]) == (200, "my deadline passed")
        assert (await ask(ws, {"name": "echo"}))["statusCode"] == 200


async def test_the_handler_deadline_of_a_plain_chain_that_waits_answers_504(serve: Any) -> None:
    """timeouts.handler holds for a chain of plain functions that ends up waiting; the
    connection goes on."""
    runner = await serve(timeouts={"handler": 0.2})
    async with websockets_connect(ws_url(runner)) as ws:
        late = await ask(ws, {"name": "plainWait", "payload": {"gate": "never"}})
        assert late["statusCode"] == 504
        assert (await ask(ws, {"name": "echo"}))["statusCode"] == 200


# -- push -----------------------------------------------------------------------------------


async def test_push_function_sends_an_out_of_band_frame_before_the_reply(serve: Any) -> None:
    """push-function delivers its frame to the same client before the reply."""
    runner = await serve()
    async with websockets_connect(ws_url(runner)) as ws:
        await send(ws, {"name": "push", "payload": 42, "headers": {"message-id": "p"}})
        pushed = await recv(ws)
        reply = await recv(ws)
    assert pushed == {"statusCode": 200, "headers": {"x-push": "yes"}, "body": {"pushed": 42}}
    assert reply["headers"]["message-id"] == "p" and reply["body"] == {"replied": True}


async def test_push_function_raises_when_the_connection_is_gone(serve: Any) -> None:
    """After the client left, push-function raises ConnectionGone."""
    runner = await serve()
    conn = await tornado_connect(ws_url(runner))
    cid = await connection_id_of(conn)
    await send(conn, {"name": "pushLater", "payload": {"gate": "later"}})
    await until(lambda: PROBE.flags.get("push_waiting"), "the handler to wait")
    conn.close()
    await until(lambda: PROBE.disconnects_of(cid), "on_disconnect")
    PROBE.open("later")
    await until(lambda: "push_error" in PROBE.flags, "the push to fail")
    assert isinstance(PROBE.flags["push_error"], ConnectionGone)
    push = PROBE.events[-1].request.headers["push-function"]
    with pytest.raises(ConnectionGone):
        await push(Response({"x": 1}))


# -- TLS -------------------------------------------------------------------------------------


async def test_tls_and_plain_ports_serve_at_once(serve: Any, certificate: tuple[str, str]) -> None:
    """With tls.key/cert a wss:// client trusting the cert gets an echo; ws:// too."""
    key, cert = certificate
    runner = await serve(tls={"key": key, "cert": cert, "port": 0})
    assert runner.ports["tls"] != runner.ports["listen"]
    context = ssl.create_default_context(cafile=cert)
    async with websockets_connect(ws_url(runner, tls=True), ssl=context) as wss:
        frame = await ask(wss, {"name": "echo", "headers": {"message-id": "tls"}})
        assert frame["headers"]["message-id"] == "tls"
        conn = await tornado_connect(ws_url(runner, tls=True), ssl_options=context)
        assert (await ask(conn, {"name": "echo"}))["statusCode"] == 200
        conn.close()
        async with websockets_connect(ws_url(runner)) as plain:
            assert (await ask(plain, {"name": "echo"}))["statusCode"] == 200
    untrusting = ssl.create_default_context()
    with pytest.raises(ssl.SSLError):
        async with websockets_connect(ws_url(runner, tls=True), ssl=untrusting):
            pass


# -- the blocking run() -----------------------------------------------------------------------


async def test_run_blocks_serves_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    """WsRunner().run(port=..., config_path=...) serves until SIGTERM, then exits 0."""
    port = free_port()
    script = (
        "from tornado_ws_runner.runner import WsRunner\n"
        "from tornado_ws_runner.settings import RunnerSettings\n"
        "s = RunnerSettings()\n"
        "s.listen.host = '127.0.0.1'\n"
        "s.management.port = 0  # not the default 9100, which another test run may hold\n"
        f"WsRunner(s).run(port={port}, config_path={str(CONFIG)!r})\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    log = tmp_path / "runner.log"
    with log.open("wb") as output:
        proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=output)
    try:
        conn = None
        deadline = time.monotonic() + 15
        while conn is None:
            assert proc.poll() is None, log.read_text()
            try:
                conn = await tornado.websocket.websocket_connect(f"ws://127.0.0.1:{port}/")
            except (ConnectionError, OSError):
                assert time.monotonic() < deadline, "the runner never listened"
                await asyncio.sleep(0.05)
        frame = await ask(conn, {"name": "echo", "payload": "hi", "headers": {"message-id": 1}})
        assert (frame["statusCode"], frame["body"]["payload"]) == (200, "hi")
        proc.send_signal(signal.SIGTERM)
        assert (await closed_with(conn, timeout=10))[0] == 1001
        deadline = time.monotonic() + 15
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the runner did not exit"
            await asyncio.sleep(0.05)
        assert proc.returncode == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_on_disconnect_says_who_ended_the_connection(serve: Any) -> None:
    """disconnect-reason: client (it closed), server (on_connect refused it, 1008),
    management (DELETE), shutdown (the runner stopped)."""
    runner = await serve()
    by_client, client_id = await identified_client(runner)
    by_management, management_id = await identified_client(runner)
    at_shutdown, shutdown_id = await identified_client(runner)
    refused = await tornado_connect(ws_url(runner, "/?reject=raise&reason=Denied."))
    assert await closed_with(refused) == (1008, "Denied.")
    server_id = str(PROBE.connects[-1].request.headers["connection-id"])
    by_client.close()
    assert (await management(runner, "DELETE", f"/@connections/{management_id}")).code == 204

    def reasons() -> dict[str, str]:
        return {
            e.request.headers["connection-id"]: e.request.headers["disconnect-reason"]
            for e in PROBE.disconnects
        }

    await until(lambda: len(reasons()) == 3, "three connections ended")
    await runner.stop()
    await until(lambda: len(reasons()) == 4, "the fourth ended by the shutdown")
    assert reasons() == {
        client_id: "client",
        server_id: "server",
        management_id: "management",
        shutdown_id: "shutdown",
    }
    for conn in (by_management, at_shutdown):
        conn.close()
