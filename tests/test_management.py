"""The management port against a real runner: every route, every error, token, metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from pathlib import Path

import pytest
import tornado.httpclient
import tornado.websocket

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "management"))

import management_harness as h
from management_harness import async_test, body_of, raw_http, running, settings, until

from tornado_ws_runner.errors import ConfigError
from tornado_ws_runner.management.app import read_management_token
from tornado_ws_runner.runtime import Phase

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TOKEN = "s3cret-token"


def assert_error(answer, status: int, message: str) -> dict:
    """An error answer: the status, JSON {statusCode, message, details}, no traceback."""
    assert answer.code == status, (answer.code, answer.body)
    body = body_of(answer)
    assert set(body) == {"statusCode", "message", "details"}
    assert (body["statusCode"], body["message"]) == (status, message)
    assert "Traceback" not in answer.body.decode()
    return body


# -- delivering to a client ---------------------------------------------------------


@async_test
async def test_post_delivers_parsed_json_with_filtered_headers():
    """POST /@connections/{id}: JSON parsed, message-id kept, transport headers dropped."""
    async with running() as run:
        client = await run.client()
        cid = await client.connection_id()
        answer = await run.fetch(
            f"/@connections/{cid}",
            "POST",
            json.dumps({"hi": 1, "list": [1, 2]}),
            headers={
                "Content-Type": "application/json",
                "Message-Id": "7",
                "X-Custom": "yes",
                "User-Agent": "curl/8.0",
                "Authorization": "Bearer not-for-the-client",
                "Accept": "*/*",
                "X-Forwarded-For": "10.0.0.1",
            },
        )
        assert answer.code == 200
        assert body_of(answer) == {"connectionId": cid, "delivered": True}
        frame = await client.recv()
        assert frame["statusCode"] == 200
        assert frame["body"] == {"hi": 1, "list": [1, 2]}
        assert frame["headers"] == {
            "message-id": "7",
            "x-custom": "yes",
            "content-type": "application/json",
        }


@async_test
async def test_post_alias_delivers_text_as_text():
    """POST /post_@connection?id=: a non-JSON body reaches the client as the same text."""
    async with running() as run:
        client = await run.client()
        cid = await client.connection_id()
        answer = await run.fetch(
            f"/post_@connection?id={cid}",
            "POST",
            "héllo {not json",
            headers={"Content-Type": "text/plain; charset=utf-8", "message-id": "t1"},
        )
        assert answer.code == 200, answer.body
        frame = await client.recv()
        assert frame["body"] == "héllo {not json"
        assert frame["headers"]["message-id"] == "t1"


@async_test
async def test_post_without_content_type_or_body_delivers_empty_text():
    """An empty body without a content type arrives as "" (text), not as null."""
    async with running() as run:
        client = await run.client()
        cid = await client.connection_id()
        answer = await run.fetch(f"/@connections/{cid}", "POST", b"", headers={"message-id": "e"})
        assert answer.code == 200
        frame = await client.recv()
        assert (frame["statusCode"], frame["body"]) == (200, "")
        assert frame["headers"]["message-id"] == "e"


@async_test
async def test_post_raw_http_exact_headers():
    """A raw HTTP/1.1 POST (as curl sends it): host, user-agent, accept are not forwarded."""
    async with running() as run:
        client = await run.client()
        cid = await client.connection_id()
        body = b'{"hi":1}'
        status, headers, _ = await raw_http(
            run.management_port,
            f"POST /@connections/{cid} HTTP/1.1\n"
            f"Host: 127.0.0.1:{run.management_port}\n"
            "User-Agent: curl/8.5.0\nAccept: */*\nmessage-id: 7\n"
            f"Content-Type: application/json\nContent-Length: {len(body)}\n"
            "Connection: close\n",
            body,
        )
        assert status == 200 and headers["content-type"] == "application/json"
        frame = await client.recv()
        assert frame == {
            "statusCode": 200,
            "headers": {"message-id": "7", "content-type": "application/json"},
            "body": {"hi": 1},
        }


# -- listing, describing, closing ------------------------------------------------------


@async_test
async def test_list_and_its_alias_name_the_open_connections():
    """GET /@connections and /list_@connections: 200, the same JSON array of ids."""
    async with running() as run:
        first, second = await run.client(), await run.client()
        ids = {await first.connection_id(), await second.connection_id()}
        listed = body_of(await run.fetch("/@connections"))
        alias = body_of(await run.fetch("/list_@connections"))
        assert isinstance(listed, list) and set(listed) == ids
        assert sorted(alias) == sorted(listed)


@async_test
async def test_describe_gives_the_connection_fields():
    """GET /@connections/{id}: id, ISO 8601 UTC times ending in Z, ip, agent, subprotocol."""
    async with running() as run:
        conn = await asyncio.wait_for(
            tornado.websocket.websocket_connect(
                tornado.httpclient.HTTPRequest(
                    f"ws://127.0.0.1:{run.runner.ports['listen']}/",
                    headers={"User-Agent": "probe/1.0"},
                ),
                subprotocols=["chat.v1", "chat.v0"],
            ),
            h.WAIT,
        )
        client = h.Client(conn)
        run.clients.append(client)
        cid = await client.connection_id()
        described = body_of(await run.fetch(f"/@connections/{cid}"))
        assert set(described) == {
            "connectionId",
            "connectedAt",
            "lastActiveAt",
            "sourceIp",
            "userAgent",
            "subprotocol",
        }
        assert described["connectionId"] == cid
        assert ISO_UTC.match(described["connectedAt"]), described
        assert ISO_UTC.match(described["lastActiveAt"]), described
        assert described["lastActiveAt"] >= described["connectedAt"]
        assert described["sourceIp"] == "127.0.0.1"
        assert described["userAgent"] == "probe/1.0"
        assert described["subprotocol"] == "chat.v1"


@async_test
async def test_delete_closes_with_1000_and_runs_on_disconnect():
    """DELETE /@connections/{id}: 204, the client sees close 1000, on_disconnect ran once."""
    async with running() as run:
        client = await run.client()
        cid = await client.connection_id()
        answer = await run.fetch(f"/@connections/{cid}", "DELETE")
        assert (answer.code, answer.body) == (204, b"")
        assert await client.closed() == (1000, "closed by management")
        await until(lambda: cid in h.DISCONNECTED, "on_disconnect of the closed connection")
        assert h.DISCONNECTED.count(cid) == 1
        assert cid not in body_of(await run.fetch("/@connections"))
        assert_error(await run.fetch(f"/@connections/{cid}", "DELETE"), 410, "Gone.")


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/@connections/{id}"),
        ("DELETE", "/@connections/{id}"),
        ("POST", "/@connections/{id}"),
        ("POST", "/post_@connection?id={id}"),
    ],
)
@async_test
async def test_unknown_connection_is_410(method, path):
    """Every per-connection route answers 410 Gone JSON for an id that is not open."""
    async with running() as run:
        answer = await run.fetch(path.format(id="no-such-id"), method, b"{}" * (method == "POST"))
        body = assert_error(answer, 410, "Gone.")
        assert "no-such-id" in body["details"]


@async_test
async def test_post_alias_without_id_is_400():
    """POST /post_@connection without ?id= is a 400 that says what is missing."""
    async with running() as run:
        body = assert_error(await run.fetch("/post_@connection", "POST", "x"), 400, "Bad Request.")
        assert "id=" in body["details"]


@async_test
async def test_post_body_claiming_json_that_is_not_is_400():
    """A body sent as application/json that does not parse answers 400; nothing is sent."""
    async with running() as run:
        client = await run.client()
        cid = await client.connection_id()
        answer = await run.fetch(
            f"/@connections/{cid}", "POST", "{oops", headers={"Content-Type": "application/json"}
        )
        body = assert_error(answer, 400, "Bad Request.")
        assert "JSON" in body["details"]
        client.send({"name": "echo", "payload": "after"})
        assert (await client.recv())["body"] == "after"  # the bad body never reached it


@async_test
async def test_unknown_route_is_404_json():
    """A path no route matches answers 404 JSON naming the method and path."""
    async with running() as run:
        body = assert_error(await run.fetch("/nope"), 404, "Not Found.")
        assert body["details"] == "No route GET /nope."
        assert_error(await run.fetch("/@connections/a/b", "POST", "x"), 404, "Not Found.")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/@connections", "GET"),
        ("DELETE", "/healthz", "GET"),
        ("POST", "/metrics", "GET"),
        ("PATCH", "/@connections/some-id", "GET, POST, DELETE"),
        ("GET", "/post_@connection?id=some-id", "POST"),
    ],
)
@async_test
async def test_wrong_method_is_405_with_allow(method, path, allow):
    """A known route with a method it does not take answers 405 JSON and an Allow header."""
    async with running() as run:
        answer = await run.fetch(path, method, b"" if method in ("PUT", "PATCH", "POST") else None)
        assert_error(answer, 405, "Method Not Allowed.")
        assert answer.headers["Allow"] == allow


@async_test
async def test_oversized_body_is_413_before_it_is_read():
    """A Content-Length over limits.max_message_size answers 413 JSON, not Tornado's 400."""
    async with running() as run:
        client = await run.client()
        cid = await client.connection_id()
        body = b"x" * (h.LIMIT + 1)
        status, headers, rest = await raw_http(
            run.management_port,
            f"POST /@connections/{cid} HTTP/1.1\nHost: x\nContent-Type: text/plain\n"
            f"Content-Length: {len(body)}\n",
            body,
        )
        assert status == 413
        assert headers["content-type"] == "application/json"
        assert headers["connection"] == "close"
        error = json.loads(rest)
        assert (error["statusCode"], error["message"]) == (413, "Payload Too Large.")
        assert str(h.LIMIT) in error["details"]
        client.send({"name": "echo", "payload": "still here"})
        assert (await client.recv())["body"] == "still here"  # nothing was delivered


@async_test
async def test_oversized_body_with_expect_100_is_refused_without_sending_it():
    """With Expect: 100-continue the 413 comes before the client sends any body byte."""
    async with running() as run:
        status, _, rest = await raw_http(
            run.management_port,
            "POST /@connections/any HTTP/1.1\nHost: x\nExpect: 100-continue\n"
            f"Content-Length: {10 * h.LIMIT}\n",
        )
        assert status == 413
        assert json.loads(rest)["statusCode"] == 413


@async_test
async def test_oversized_chunked_body_is_413():
    """A chunked body is counted as it arrives and refused with 413 once over the limit."""
    async with running() as run:
        client = await run.client()
        cid = await client.connection_id()
        piece = b"y" * 1000
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(6)) + b"0\r\n\r\n"
        status, _, rest = await raw_http(
            run.management_port,
            f"POST /@connections/{cid} HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n",
            chunks,
        )
        assert status == 413
        assert json.loads(rest)["message"] == "Payload Too Large."


@async_test
async def test_body_at_the_limit_is_delivered():
    """A body of exactly limits.max_message_size bytes is still delivered."""
    async with running() as run:
        client = await run.client()
        cid = await client.connection_id()
        text = "z" * h.LIMIT
        assert (await run.fetch(f"/@connections/{cid}", "POST", text)).code == 200
        assert (await client.recv())["body"] == text


@async_test
async def test_unexpected_failure_is_500_json_and_logged_with_traceback(caplog, monkeypatch):
    """An exception in a route answers 500 JSON without traceback; the log has it."""
    async with running() as run:

        def broken() -> list[str]:
            raise RuntimeError("registry exploded")

        monkeypatch.setattr(run.state.registry, "ids", broken)
        with caplog.at_level(logging.ERROR, logger="tornado_ws_runner.management"):
            answer = await run.fetch("/@connections")
        body = assert_error(answer, 500, "Internal Server Error.")
        assert "exploded" not in json.dumps(body)
        records = [r for r in caplog.records if r.name == "tornado_ws_runner.management"]
        assert any(r.exc_info and "registry exploded" in str(r.exc_info[1]) for r in records)


# -- the token -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/@connections"),
        ("GET", "/list_@connections"),
        ("GET", "/@connections/x"),
        ("DELETE", "/@connections/x"),
        ("POST", "/@connections/x"),
        ("POST", "/post_@connection?id=x"),
        ("GET", "/metrics"),
        ("GET", "/unknown-route"),
    ],
)
@async_test
async def test_token_guards_every_route(method, path):
    """With a token, a missing or wrong bearer token is 401 JSON with WWW-Authenticate."""
    async with running(settings(token=TOKEN)) as run:
        body = b"{}" if method == "POST" else None
        missing = await run.fetch(path, method, body)
        assert_error(missing, 401, "Unauthorized.")
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = await run.fetch(path, method, body, token="not-it")
        assert_error(wrong, 401, "Unauthorized.")
        assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
        basic = await run.fetch(path, method, body, headers={"Authorization": f"Basic {TOKEN}"})
        assert_error(basic, 401, "Unauthorized.")
        right = await run.fetch(path, method, body, token=TOKEN)
        assert right.code != 401


@async_test
async def test_token_from_token_file_is_required(tmp_path):
    """management.token_file: its first line is the token."""
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file\nignored second line\n")
    async with running(settings(token_file=str(token_file))) as run:
        assert_error(await run.fetch("/@connections"), 401, "Unauthorized.")
        assert_error(await run.fetch("/@connections", token="ignored"), 401, "Unauthorized.")
        assert body_of(await run.fetch("/@connections", token="from-the-file")) == []


@pytest.mark.parametrize(
    ("content", "problem"),
    [("", "holds no token"), ("\n  \n", "holds no token"), (None, "cannot read")],
)
def test_token_file_without_a_token_is_a_config_error(tmp_path, content, problem):
    """An empty or unreadable token_file is a configuration error, never an open port."""
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    with pytest.raises(ConfigError, match=r"management\.token_file") as caught:
        read_management_token(settings(token_file=str(token_file)))
    assert problem in str(caught.value)


@async_test
async def test_probes_need_no_token():
    """/healthz and /readyz answer without the token even when one is set."""
    async with running(settings(token=TOKEN)) as run:
        health = await run.fetch("/healthz")
        assert (health.code, body_of(health)) == (200, {"status": "ok"})
        ready = await run.fetch("/readyz")
        assert (ready.code, body_of(ready)) == (200, {"status": "ready"})


@async_test
async def test_token_protected_delivery_works_with_the_token():
    """With a token, a POST carrying it is delivered, and the token is not forwarded."""
    async with running(settings(token=TOKEN)) as run:
        client = await run.client()
        cid = await client.connection_id()
        answer = await run.fetch(f"/@connections/{cid}", "POST", "hi", token=TOKEN)
        assert answer.code == 200
        frame = await client.recv()
        assert frame["body"] == "hi" and "authorization" not in frame["headers"]


# -- probes and metrics ------------------------------------------------------------------


@async_test
async def test_readyz_follows_the_phase():
    """/readyz: 200 while serving, 503 JSON once the runner is draining."""
    async with running() as run:
        assert (await run.fetch("/readyz")).code == 200
        run.state.phase = Phase.DRAINING
        body = assert_error(await run.fetch("/readyz"), 503, "Service Unavailable.")
        assert body["details"] == "The runner is draining."
        assert (await run.fetch("/healthz")).code == 200  # alive while draining
        run.state.phase = Phase.READY


@async_test
async def test_readyz_is_503_during_a_real_drain():
    """While stop() waits for an event in flight, /readyz answers 503."""
    async with running() as run:
        client = await run.client()
        client.send({"name": "wait", "headers": {"message-id": "w"}})
        await until(h.WAITING.is_set, "the wait handler to start")
        stopping = asyncio.ensure_future(run.runner.stop())
        await until(
            lambda: run.state.phase is Phase.DRAINING, "stop() to begin draining", timeout=2
        )
        assert (await run.fetch("/readyz")).code == 503
        h.GATE.set()
        frame = await client.recv()
        assert (frame["body"], frame["headers"]["message-id"]) == ("released", "w")
        await stopping


@async_test
async def test_metrics_count_traffic():
    """/metrics is Prometheus text whose counters grow with connections, events, postbacks."""
    async with running() as run:
        answer = await run.fetch("/metrics")
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        before = await run.metrics()
        for outcome in ("delivered", "gone", "bad_request", "too_large"):  # exported at 0
            assert before[("twr_postbacks_total", (("outcome", outcome),))] == 0

        client = await run.client()
        cid = await client.connection_id()
        client.send({"name": "echo", "payload": 1})
        await client.recv()
        await run.fetch(f"/@connections/{cid}", "POST", "hi")
        await client.recv()
        await run.fetch("/@connections/gone-id", "POST", "hi")
        await run.fetch(f"/@connections/{cid}", "POST", "{", {"Content-Type": "application/json"})
        await raw_http(
            run.management_port,
            f"POST /@connections/{cid} HTTP/1.1\nHost: x\nContent-Length: {h.LIMIT + 1}\n",
            b"x" * (h.LIMIT + 1),
        )
        after = await run.metrics()

        def grew(name: str, by: float, **labels: str) -> None:
            key = (name, tuple(sorted(labels.items())))
            assert after.get(key, 0) - before.get(key, 0) == by, (key, after.get(key))

        grew("twr_connections_opened_total", 1)
        grew("twr_connections_open", 1)
        grew("twr_messages_in_total", 2)
        grew("twr_messages_out_total", 3)  # whoami, echo, the postback
        grew("twr_events_total", 1, event="echo", status="200")
        grew("twr_events_total", 1, event="whoami", status="200")
        grew("twr_handler_duration_seconds_count", 1, event="echo")
        grew("twr_handler_duration_seconds_bucket", 1, event="echo", le="+Inf")
        grew("twr_handler_duration_seconds_bucket", 1, event="echo", le="10.0")
        grew("twr_postbacks_total", 1, outcome="delivered")
        grew("twr_postbacks_total", 1, outcome="gone")
        grew("twr_postbacks_total", 1, outcome="bad_request")
        grew("twr_postbacks_total", 1, outcome="too_large")


@async_test
async def test_access_log_goes_to_the_management_logger_at_debug(caplog):
    """Tornado's per-request log line goes to tornado_ws_runner.management at DEBUG."""
    async with running() as run:
        with caplog.at_level(logging.DEBUG, logger="tornado_ws_runner.management"):
            await run.fetch("/healthz")
        lines = [
            r
            for r in caplog.records
            if r.name == "tornado_ws_runner.management" and "/healthz" in r.getMessage()
        ]
        assert lines and lines[0].levelno == logging.DEBUG
        assert lines[0].getMessage().startswith("200 GET /healthz")
