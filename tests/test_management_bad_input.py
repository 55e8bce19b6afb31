"""The management port under bad input: every route with every wrong method, ids that
are long, non-ASCII, percent-encoded junk or path-traversal-shaped, bodies that claim
JSON and are not, oversized and malformed bodies, and Authorization headers of every
wrong shape. Each answer is a JSON error {statusCode, message, details} with the right
status, no traceback or file path; a Hypothesis property covers random requests.

Requests malformed at the HTTP level (request line, headers, Content-Length,
Transfer-Encoding, chunked framing) are answered by Tornado's HTTP layer itself, a bare
400 and a close: those tests pin that exact answer, raw bytes on a socket.

tests/test_management.py has the routes' normal behaviour and first error cases; these
extend them without repeating them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient
import tornado.websocket
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "management"))
sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "reliability"))

import management_harness as h
from live_runner import LiveRunner
from management_harness import async_test, body_of, raw_http, running

from tornado_ws_runner.management.rules import Problem, parse_body

TOKEN = "s3cret-token"
LEAKS = ("Traceback", 'File "', ".py")
#: Every route, the methods it takes, and a path to reach it ({id}: an open connection).
ROUTES = [
    ("/@connections", "GET"),
    ("/%40connections", "GET"),
    ("/list_@connections", "GET"),
    ("/@connections/{id}", "GET, POST, DELETE"),
    ("/post_@connection?id={id}", "POST"),
    ("/healthz", "GET"),
    ("/readyz", "GET"),
    ("/metrics", "GET"),
]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "PROPFIND", "TRACE"]
WITH_BODY = ("POST", "PUT", "PATCH")


def assert_error(answer: Any, status: int, message: str, sent: str = "") -> dict[str, Any]:
    """A JSON error {statusCode, message, details} with ``status``; nothing internal in it."""
    assert answer.code == status, (answer.code, answer.body)
    body = body_of(answer)
    assert set(body) == {"statusCode", "message", "details"}
    assert (body["statusCode"], body["message"]) == (status, message)
    assert isinstance(body["details"], str)
    assert not leaked(answer.body.decode("utf-8"), sent), answer.body
    return body


def leaked(text: str, sent: str) -> list[str]:
    """Markers of internals (a traceback, a source file) the request did not hold itself."""
    return [marker for marker in LEAKS if marker in text and marker not in sent]


BARE_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"
POST_TO = "POST /@connections/{id} HTTP/1.1"
CHUNKED = b"2\r\n{}\r\n0\r\n\r\n"  # a well-formed chunked body: "{}"


def request(line: str, *headers: str, body: bytes = b"") -> bytes:
    """A request as sent on the wire: its line, ``Host: x``, ``headers``, an empty line and
    ``body`` (CRLF line ends, Latin-1, so any byte can be written)."""
    return "\r\n".join([line, "Host: x", *headers, "", ""]).encode("latin-1") + body


def chunked(body: bytes, transfer_encoding: str = "chunked") -> bytes:
    """A POST to the open connection ({id}) with this Transfer-Encoding and body."""
    return request(POST_TO, f"Transfer-Encoding: {transfer_encoding}", body=body)


async def exchange(port: int, sent: bytes) -> bytes:
    """Sends ``sent`` as it is; everything the server sends until it closes the connection
    (a reset counts as the close: the server dropped bytes it had not read)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = b""
    try:
        writer.write(sent)
        await writer.drain()
        while chunk := await asyncio.wait_for(reader.read(65536), h.WAIT):
            received += chunk
    except ConnectionResetError:
        pass
    finally:
        writer.close()
    return received


def split_answer(data: bytes) -> tuple[int, dict[str, str], bytes, bytes]:
    """The first answer in ``data``: its status, headers (names lower-cased), body (by its
    Content-Length), and the bytes after it."""
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    return int(lines[0].split()[1]), headers, rest[:length], rest[length:]


async def nothing_was_delivered(client: h.Client) -> None:
    """The client's next frame is the answer to its own echo: no postback reached it."""
    client.send({"name": "echo", "payload": "still here"})
    assert (await client.recv())["body"] == "still here"


# -- methods and routes ------------------------------------------------------------------


@pytest.mark.parametrize(("path", "allow"), ROUTES)
@async_test
async def test_every_method_a_route_does_not_take_is_405(path: str, allow: str) -> None:
    """On every route each other method (standard or not) is 405 JSON with Allow."""
    async with running() as run:
        client = await run.client()
        url = path.format(id=await client.connection_id())
        allowed = allow.split(", ")
        for method in METHODS:
            body = b"" if method in WITH_BODY else None
            answer = await run.fetch(url, method, body)
            if method in allowed:
                assert answer.code not in (404, 405), (method, answer.code)
                continue
            assert answer.headers["Allow"] == allow, method
            if method == "HEAD":  # no body in an answer to HEAD
                assert (answer.code, answer.body) == (405, b"")
                continue
            error = assert_error(answer, 405, "Method Not Allowed.")
            assert error["details"].startswith(f"{method} is not allowed on ")


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/@connection",
        "/connections",
        "/@connections/a/b/c",
        "/healthz/extra",
        "//@connections",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2fetc%2fpasswd",
        "/static/../../etc/passwd",
        "/@connections%2fsome-id",
        "/index.html",
        "/metrics.py",
        "/%ff%fe",
        "/" + "x" * 3000,
    ],
)
@async_test
async def test_unknown_routes_are_404_json_naming_the_path(path: str) -> None:
    """Any path no route matches: 404 JSON naming the method and the path as sent."""
    async with running() as run:
        for method in ("GET", "POST", "DELETE"):
            answer = await run.fetch(path, method, b"" if method == "POST" else None)
            body = assert_error(answer, 404, "Not Found.", sent=path)
            assert body["details"] == f"No route {method} {path}."


# -- malformed connection ids -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_id", "decoded"),
    [
        ("a" * 3000, "a" * 3000),
        ("%C3%A9t%C3%A9-%E2%9C%93-%F0%9F%98%80", "été-✓-😀"),
        ("..%2f..%2fetc%2fpasswd", "../../etc/passwd"),
        ("%2e%2e", ".."),
        ("%zz%", "%zz%"),
        ("%00", "\x00"),
        ("%22%3Cscript%3Ealert(1)%3C%2Fscript%3E", '"<script>alert(1)</script>'),
        ("%20", " "),
        ("null", "null"),
    ],
)
@async_test
async def test_malformed_ids_are_410_json_on_every_connection_route(
    raw_id: str, decoded: str
) -> None:
    """Long, non-ASCII, traversal-shaped or junk ids: 410 JSON naming the decoded id."""
    async with running() as run:
        client = await run.client()
        for method, path in (
            ("GET", f"/@connections/{raw_id}"),
            ("DELETE", f"/@connections/{raw_id}"),
            ("POST", f"/@connections/{raw_id}"),
            ("POST", f"/post_@connection?id={raw_id}"),
        ):
            answer = await run.fetch(path, method, b"{}" if method == "POST" else None)
            if "?id=" in path and not decoded.strip(" \x00"):
                # Tornado strips control characters and spaces from query arguments:
                # an id of only those is no id at all.
                body = assert_error(answer, 400, "Bad Request.")
                assert "id=" in body["details"]
                continue
            body = assert_error(answer, 410, "Gone.", sent=decoded)
            assert body["details"] == f"No open connection '{decoded}'.", method
        await nothing_was_delivered(client)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/@connections/%ff%fe"),
        ("DELETE", "/@connections/ok%C3"),
        ("POST", "/@connections/%ed%a0%80"),  # a UTF-8-encoded surrogate: not UTF-8
        ("POST", "/post_@connection?id=%ff"),
    ],
)
@async_test
async def test_ids_that_are_not_utf8_are_400_saying_so(method: str, path: str) -> None:
    """A percent-encoded id that is not UTF-8: 400 JSON whose details say what is wrong."""
    async with running() as run:
        answer = await run.fetch(path, method, b"x" if method == "POST" else None)
        body = assert_error(answer, 400, "Bad Request.")
        assert "UTF-8" in body["details"], body


@async_test
async def test_raw_non_ascii_bytes_in_the_path_get_a_json_answer() -> None:
    """Bytes over 0x7F sent raw in the request line (not percent-encoded): a JSON 410."""
    async with running() as run:
        status, headers, rest = await raw_http(
            run.management_port,
            "GET /@connections/\u00e9t\u00e9 HTTP/1.1\nHost: x\nConnection: close\n",
        )
        assert status == 410 and headers["content-type"] == "application/json"
        assert json.loads(rest)["message"] == "Gone."


# -- bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "says"),
    [
        (b"", "application/json", "not valid JSON"),
        (b"NaN", "application/json", "not valid JSON"),
        (b"[1, Infinity]", "application/json", "not valid JSON"),
        (b'{"big": 1e400}', "application/json", "not valid JSON"),
        (b"[" * 3000, "application/json", "not valid JSON"),
        (b"{} trailing", "application/json", "not valid JSON"),
        (b"{oops", "application/problem+json", "not valid JSON"),
        (b"\xff\xfe{}", "application/json", "not valid utf-8"),
        (b"{}", "application/json; charset=bogus", "Unknown charset"),
        (b"{}", "text/plain; charset=zlib", "Unknown charset"),  # a codec, not a charset
        (b"xn--zz", "text/plain; charset=idna", "not valid idna"),
        (b"abc-99999999", "text/plain; charset=punycode", "not valid punycode"),
        (b"\x00\xd8", "text/plain; charset=utf-16", "not valid utf-16"),
    ],
)
@async_test
async def test_bodies_that_are_not_what_they_claim_are_400(
    body: bytes, content_type: str, says: str
) -> None:
    """Not JSON, not in its charset, or an unknown charset: 400 JSON; nothing delivered."""
    async with running() as run:
        client = await run.client()
        cid = await client.connection_id()
        for path in (f"/@connections/{cid}", f"/post_@connection?id={cid}"):
            answer = await run.fetch(path, "POST", body, headers={"Content-Type": content_type})
            error = assert_error(answer, 400, "Bad Request.")
            assert says in error["details"], error
        await nothing_was_delivered(client)


@pytest.mark.parametrize(
    ("body", "content_type", "delivered"),
    [
        (b'"\\ud800 lone"', "application/json", "\ud800 lone"),
        (b'{"\\udfff": ["\\ud83d"]}', "application/json", {"\udfff": ["\ud83d"]}),
        (b"\\ud800", "text/plain; charset=unicode_escape", "\ud800"),
        (b"+2AA-", "text/plain; charset=utf-7", "\ud800"),
        (b"1e308", "application/json", 1e308),
    ],
)
@async_test
async def test_bodies_holding_lone_surrogates_are_delivered_as_valid_json(
    body: bytes, content_type: str, delivered: Any
) -> None:
    """A body whose text holds lone surrogates reaches the client as valid UTF-8 JSON."""
    async with running() as run:
        client = await run.client()
        cid = await client.connection_id()
        answer = await run.fetch(
            f"/@connections/{cid}", "POST", body, headers={"Content-Type": content_type}
        )
        assert answer.code == 200, answer.body
        text = await asyncio.wait_for(client.conn.read_message(), h.WAIT)
        assert isinstance(text, str)
        text.encode("utf-8")  # what was on the wire was UTF-8
        assert json.loads(text)["body"] == delivered


@pytest.mark.parametrize("path", ["/healthz", "/@connections", "/nope", "/@connections/x"])
@async_test
async def test_an_oversized_body_on_any_route_is_413_json(path: str) -> None:
    """A body over the limit on any route, even one that takes none: 413 JSON, closed."""
    async with running() as run:
        status, headers, rest = await raw_http(
            run.management_port,
            f"POST {path} HTTP/1.1\nHost: x\nContent-Length: {10**20}\n",
            b"x" * 64,
        )
        assert (status, headers["connection"]) == (413, "close")
        error = json.loads(rest)
        assert (error["statusCode"], error["message"]) == (413, "Payload Too Large.")
        assert str(10**20) in error["details"]


@async_test
async def test_a_body_one_byte_over_the_limit_via_the_alias_is_413() -> None:
    """The POST alias refuses limit+1 bytes with 413 JSON and the client gets nothing."""
    async with running() as run:
        client = await run.client()
        cid = await client.connection_id()
        answer = await run.fetch(f"/post_@connection?id={cid}", "POST", b"x" * (h.LIMIT + 1))
        error = assert_error(answer, 413, "Payload Too Large.")
        assert str(h.LIMIT) in error["details"]
        await nothing_was_delivered(client)


@pytest.mark.parametrize("length", ["abc", "-1", "1, 2", "0x10", "1e3"])
@async_test
async def test_a_malformed_content_length_is_refused_and_the_port_keeps_serving(
    length: str,
) -> None:
    """A non-numeric Content-Length: Tornado's bare 400 and a close, no traceback."""
    # Tornado's HTTP parser refuses it before any route runs, so the answer is not JSON.
    async with running() as run:
        client = await run.client()
        cid = await client.connection_id()
        status, _, rest = await raw_http(
            run.management_port,
            f"POST /@connections/{cid} HTTP/1.1\nHost: x\nContent-Length: {length}\n",
            b"x",
        )
        assert status == 400
        assert not leaked(rest.decode("latin-1"), "")
        await nothing_was_delivered(client)
        assert (await run.fetch("/healthz")).code == 200


@async_test
async def test_a_header_block_over_tornados_limit_is_dropped_and_the_port_keeps_serving() -> None:
    """A request line of 70 KB (over limits.max_header_size): closed without an answer
    (a reset, as the server leaves the rest unread), no traceback."""
    async with running() as run:
        sent = f"GET /{'a' * 70_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        assert await exchange(run.management_port, sent) == b""
        assert (await run.fetch("/healthz")).code == 200


@pytest.mark.parametrize("value", ["\u00b2", "\u00b9", "1" * 5000])
@async_test
async def test_a_content_length_tornado_cannot_read_gets_its_bare_400_never_a_500(
    caplog: pytest.LogCaptureFixture, value: str
) -> None:
    """A Latin-1 digit (str.isdigit() says yes, int() and Tornado say no) or more digits
    than int() converts: Tornado's bare 400 like any other malformed Content-Length,
    not a 500 from the size check; nothing is logged as an error."""
    async with running() as run:
        client = await run.client()
        cid = await client.connection_id()
        path = POST_TO.replace("{id}", cid)
        sent = request(path, f"Content-Length: {value}", body=b"{}")
        with caplog.at_level(logging.INFO):
            assert await exchange(run.management_port, sent) == BARE_400
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
        await nothing_was_delivered(client)
        assert (await run.fetch("/healthz")).code == 200


@pytest.mark.parametrize(
    "lengths",
    [[f"{h.LIMIT + 1}", f"{h.LIMIT + 1}"], [f"{h.LIMIT + 1}, {h.LIMIT + 1}"]],
    ids=["two-headers", "one-list"],
)
@async_test
async def test_a_repeated_content_length_over_the_limit_is_413_json(lengths: list[str]) -> None:
    """Content-Length sent twice with one value (or as a list of one value), as Tornado
    reads it: over the limit it is the same 413 JSON as a single header; within the
    limit the body is delivered."""
    async with running() as run:
        client = await run.client()
        cid = await client.connection_id()
        path = POST_TO.replace("{id}", cid)
        headers = [f"Content-Length: {value}" for value in lengths]
        data = await exchange(run.management_port, request(path, *headers, body=b"x" * 64))
        status, answer_headers, body, rest = split_answer(data)
        assert (status, answer_headers["connection"], rest) == (413, "close", b"")
        error = json.loads(body)
        assert (error["statusCode"], error["message"]) == (413, "Payload Too Large.")
        assert error["details"] == f"The body is {h.LIMIT + 1} bytes; the limit is {h.LIMIT} bytes."
        await nothing_was_delivered(client)
        within = [v.replace(str(h.LIMIT + 1), "2") for v in headers]
        sent = request(path, *within, "Content-Type: application/json", "Connection: close")
        status, _, body, _ = split_answer(await exchange(run.management_port, sent + b"{}"))
        assert (status, json.loads(body)["delivered"]) == (200, True)
        assert (await client.recv())["body"] == {}


@pytest.mark.parametrize(
    ("token", "sent", "status"),
    [
        (TOKEN, request("GET /@connections HTTP/1.1"), 401),
        (TOKEN, request("POST /@connections/x HTTP/1.1", "Content-Length: 2", body=b"{}"), 401),
        (None, request("PROPFIND /healthz HTTP/1.1"), 405),
        (None, request("PROPFIND /healthz HTTP/1.1", "Content-Length: 2", body=b"{}"), 405),
        (None, request("GET /@connections/%ff HTTP/1.1"), 400),
        (None, request("POST /@connections/%ff HTTP/1.1", "Content-Length: 2", body=b"{}"), 400),
        # the runner's checks need only the headers: they answer even when Tornado would
        # refuse the body's framing next
        (TOKEN, request("POST /@connections/x HTTP/1.1", "Transfer-Encoding: gzip"), 401),
        (
            None,
            request(
                "POST /@connections/x HTTP/1.1",
                "Transfer-Encoding: chunked",
                f"Content-Length: {h.LIMIT + 1}",
                body=CHUNKED,
            ),
            413,
        ),
    ],
    ids=[
        "401",
        "401-with-body",
        "405-unknown-method",
        "405-with-body",
        "400-id",
        "400-id-with-body",
        "401-before-bad-framing",
        "413-before-bad-framing",
    ],
)
@async_test
async def test_an_answer_before_the_request_is_read_says_connection_close(
    token: str | None, sent: bytes, status: int
) -> None:
    """A refusal from the token check or the size check, a method Tornado refuses, an id
    not UTF-8: answered before the request is read to its end, after which Tornado closes
    the connection, body or not. The answer says Connection: close, and a request
    pipelined behind it gets nothing."""
    async with running(h.settings(token=token)) as run:
        pipelined = request("GET /healthz HTTP/1.1", f"Authorization: Bearer {TOKEN}")
        data = await exchange(run.management_port, sent + pipelined)
        code, headers, body, rest = split_answer(data)
        assert (code, headers["connection"], rest) == (status, "close", b"")
        error = json.loads(body)
        assert set(error) == {"statusCode", "message", "details"} and error["statusCode"] == status
        assert (await run.fetch("/healthz")).code == 200


# -- what Tornado's HTTP layer answers itself ------------------------------------------------


#: (id, bytes sent, Tornado's answer) for requests its HTTP layer refuses before any route
#: runs: a bare 400 and a close, or (one case) a close without an answer. {id}: an open
#: connection, which must receive nothing.
TORNADO_ANSWERS = [
    ("no-version", b"GET /healthz\r\nHost: x\r\n\r\n", BARE_400),
    ("http-2.0", request("GET /healthz HTTP/2.0"), BARE_400),
    ("http-0.9", request("GET /healthz HTTP/0.9"), BARE_400),
    ("lower-case-version", request("GET /healthz http/1.1"), BARE_400),
    ("two-spaces", request("GET  /healthz HTTP/1.1"), BARE_400),
    ("tab-separator", request("GET\t/healthz HTTP/1.1"), BARE_400),
    ("method-not-a-token", request("G(T /healthz HTTP/1.1"), BARE_400),
    ("space-in-target", request("GET /heal thz HTTP/1.1"), BARE_400),
    ("nul-in-target", request("GET /healthz\x00 HTTP/1.1"), BARE_400),
    ("empty-line-first", b"\r\n\r\n" + request("GET /healthz HTTP/1.1"), BARE_400),
    ("bare-cr-line-ends", b"GET /healthz HTTP/1.1\rHost: x\r\r\n\r\n", BARE_400),
    ("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", BARE_400),
    ("no-host", b"GET /healthz HTTP/1.1\r\n\r\n", BARE_400),
    ("host-with-space", b"GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n", BARE_400),
    ("host-with-slash", b"GET /healthz HTTP/1.1\r\nHost: a/b\r\n\r\n", BARE_400),
    ("two-hosts", request("GET /healthz HTTP/1.1", "Host: y"), BARE_400),
    ("no-colon", request("GET /healthz HTTP/1.1", "NoColon"), BARE_400),
    ("folded-line", request("GET /healthz HTTP/1.1", "X-A: 1", " 2"), BARE_400),
    ("space-before-colon", request("GET /healthz HTTP/1.1", "X-A : 1"), BARE_400),
    ("empty-name", request("GET /healthz HTTP/1.1", ": 1"), BARE_400),
    ("control-char-in-value", request("GET /healthz HTTP/1.1", "X-A: a\x01b"), BARE_400),
    ("1001-query-fields", request(f"GET /healthz?{'&'.join(['a=1'] * 1001)} HTTP/1.1"), BARE_400),
    *[
        (f"content-length-{name}", request(POST_TO, f"Content-Length: {v}", body=b"{}"), BARE_400)
        for name, v in [
            ("abc", "abc"),
            ("negative", "-1"),
            ("plus", "+2"),
            ("hex", "0x2"),
            ("two-numbers", "2 2"),
            ("empty", ""),
            ("unequal-list", "1, 2"),
            ("trailing-comma", "2,"),
        ]
    ],
    (
        "content-length-twice-unequal",
        request(POST_TO, "Content-Length: 2", "Content-Length: 3", body=b"{}"),
        BARE_400,
    ),
    *[
        (f"transfer-encoding-{v.replace(', ', '-')}", chunked(CHUNKED, v), BARE_400)
        for v in ["gzip", "identity", "chunked, gzip", "gzip, chunked"]
    ],
    (
        "transfer-encoding-twice",
        request(POST_TO, *["Transfer-Encoding: chunked"] * 2, body=CHUNKED),
        BARE_400,
    ),
    (
        "transfer-encoding-and-content-length",
        request(POST_TO, "Transfer-Encoding: chunked", "Content-Length: 12", body=CHUNKED),
        BARE_400,
    ),
    ("chunk-size-not-hex", chunked(b"zz\r\n{}\r\n0\r\n\r\n"), BARE_400),
    ("chunk-size-negative", chunked(b"-2\r\n{}\r\n0\r\n\r\n"), BARE_400),
    ("chunk-size-and-space", chunked(b"2 \r\n{}\r\n0\r\n\r\n"), BARE_400),
    ("chunk-extension", chunked(b"2;x=y\r\n{}\r\n0\r\n\r\n"), BARE_400),
    ("trailer-field", chunked(b"2\r\n{}\r\n0\r\nX-T: 1\r\n\r\n"), BARE_400),
    ("chunk-without-crlf", chunked(b"2\r\n{}XX0\r\n\r\n"), BARE_400),
    ("last-chunk-without-crlf", chunked(b"2\r\n{}\r\n0\r\nXX"), BARE_400),
    ("chunk-size-line-over-64-bytes", chunked(b"0" * 70 + b"2\r\n{}\r\n0\r\n\r\n"), b""),
]


@pytest.mark.parametrize(
    ("sent", "answer"),
    [case[1:] for case in TORNADO_ANSWERS],
    ids=[case[0] for case in TORNADO_ANSWERS],
)
@async_test
async def test_malformed_http_gets_tornados_own_answer_and_the_port_keeps_serving(
    caplog: pytest.LogCaptureFixture, sent: bytes, answer: bytes
) -> None:
    """Exactly ``HTTP/1.1 400 Bad Request`` with no headers and no body, then the
    connection closes (or, for a chunk-size line over 64 bytes, just the close); no
    route runs, nothing reaches the client, nothing is logged as an error, and the port
    keeps serving."""
    async with running() as run:
        client = await run.client()
        cid = await client.connection_id()
        sent = sent.replace(b"{id}", cid.encode())
        with caplog.at_level(logging.INFO):
            assert await exchange(run.management_port, sent) == answer
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
        await nothing_was_delivered(client)
        assert (await run.fetch("/healthz")).code == 200


@pytest.mark.parametrize(
    ("sent", "status"),
    [
        (b"GET /healthz HTTP/1.1\nHost: x\nConnection: close\n\n", 200),
        (b"\r\n" + request("GET /healthz HTTP/1.1", "Connection: close"), 200),
        (request("GET /healthz HTTP/1.2"), 200),
        (b"GET /healthz HTTP/1.0\r\n\r\n", 200),
        (b"GET /healthz HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n", 200),
        (request("GET /healthz HTTP/1.1", "X-A: \xff", "Connection: close"), 200),
        (
            request("GET /healthz HTTP/1.1", "Upgrade: websocket", "Connection: Upgrade")
            + request("GET /healthz HTTP/1.1", "Connection: close"),
            200,
        ),
        (request("get /healthz HTTP/1.1", "Connection: close"), 405),
        (request("GET http://x/healthz HTTP/1.1", "Connection: close"), 404),
    ],
    ids=[
        "lf-line-ends",
        "one-crlf-first",
        "http-1.2",
        "http-1.0-without-host",
        "empty-host",
        "latin-1-value",
        "upgrade-ignored",
        "lower-case-method",
        "absolute-form",
    ],
)
@async_test
async def test_odd_requests_tornado_lets_through_reach_the_routes(sent: bytes, status: int) -> None:
    """Forms Tornado accepts get the route's answer: lines ended by LF alone, one empty
    line first, any HTTP/1.x, HTTP/1.0 without Host, an empty Host, Latin-1 bytes in a
    value, an Upgrade header (ignored). A lower-case method is another method (405), and
    an absolute URL is routed as a path (404)."""
    async with running() as run:
        code, headers, body, _ = split_answer(await exchange(run.management_port, sent))
        assert code == status
        if status == 200:
            assert json.loads(body) == {"status": "ok"}
        else:
            assert headers["content-type"] == "application/json"
            assert json.loads(body)["statusCode"] == status


@pytest.mark.parametrize(
    ("expect", "interim"),
    [("100-continue", True), ("100-Continue", False), ("100-continue, x", False), ("x", False)],
    ids=["100-continue", "other-case", "in-a-list", "unknown"],
)
@async_test
async def test_only_an_exact_expect_100_continue_gets_an_interim_100(
    expect: str, interim: bool
) -> None:
    """Tornado sends ``100 (Continue)`` for ``Expect: 100-continue`` spelled exactly so;
    any other Expect (other case, a list, an unknown expectation) gets no interim answer
    and no 417: the route answers once the body has come."""
    async with running() as run:
        client = await run.client()
        cid = await client.connection_id()
        sent = request(
            POST_TO.replace("{id}", cid),
            f"Expect: {expect}",
            "Content-Length: 2",
            "Content-Type: application/json",
            "Connection: close",
            body=b"{}",
        )
        data = await exchange(run.management_port, sent)
        continued = data.startswith(b"HTTP/1.1 100 (Continue)\r\n\r\n")
        assert continued == interim
        status, _, body, _ = split_answer(data.removeprefix(b"HTTP/1.1 100 (Continue)\r\n\r\n"))
        assert (status, json.loads(body)["delivered"]) == (200, True)
        assert (await client.recv())["body"] == {}


# -- Authorization ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "error"),
    [
        ("Bearer", "missing"),
        ("Bearer ", "missing"),
        ("Bearer     ", "missing"),
        ("", "missing"),
        (TOKEN, "missing"),  # no scheme
        (f"Token {TOKEN}", "missing"),
        (f"Basic {base64.b64encode(f'admin:{TOKEN}'.encode()).decode()}", "missing"),
        (f"Bearer\t{TOKEN}", "missing"),  # the scheme and token are separated by spaces
        (f"Bearer {TOKEN.upper()}", "invalid"),
        (f"Bearer {TOKEN[:-1]}", "invalid"),
        (f"Bearer {TOKEN}x", "invalid"),
        (f"Bearer {TOKEN} {TOKEN}", "invalid"),
        (f"Bearer {TOKEN[:5]} {TOKEN[5:]}", "invalid"),
        (f"Bearer {TOKEN},Bearer {TOKEN}", "invalid"),
        ("Bearer ünïcødé", "invalid"),
    ],
)
@async_test
async def test_wrong_authorization_headers_are_401(authorization: str, error: str) -> None:
    """Malformed or wrong Authorization: 401 JSON, WWW-Authenticate, no credentials echoed."""
    async with running(h.settings(token=TOKEN)) as run:
        answer = await run.fetch("/@connections", headers={"Authorization": authorization})
        body = assert_error(answer, 401, "Unauthorized.")
        challenge = answer.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="tornado-ws-runner"')
        assert ('error="invalid_token"' in challenge) == (error == "invalid")
        assert TOKEN not in answer.body.decode() and TOKEN.upper() not in answer.body.decode()
        assert body["details"] in (
            "Send the management token as 'Authorization: Bearer <token>'.",
            "The bearer token is not valid.",
        )


@pytest.mark.parametrize(
    "authorization",
    [f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer   {TOKEN}", f"Bearer {TOKEN}   "],
)
@async_test
async def test_the_bearer_scheme_is_case_insensitive_and_spaces_around_the_token_are_ok(
    authorization: str,
) -> None:
    """RFC 7235/6750: any case of 'Bearer', 1*SP before the token, which must match exactly."""
    async with running(h.settings(token=TOKEN)) as run:
        answer = await run.fetch("/@connections", headers={"Authorization": authorization})
        assert (answer.code, body_of(answer)) == (200, [])


@async_test
async def test_two_authorization_headers_are_refused() -> None:
    """Two Authorization headers (one right, one wrong) are ambiguous: 401."""
    async with running(h.settings(token=TOKEN)) as run:
        status, headers, rest = await raw_http(
            run.management_port,
            "GET /@connections HTTP/1.1\nHost: x\nConnection: close\n"
            f"Authorization: Bearer {TOKEN}\nAuthorization: Bearer wrong\n",
        )
        assert status == 401 and headers["content-type"] == "application/json"
        assert json.loads(rest)["statusCode"] == 401


# -- a property over random requests ---------------------------------------------------------

URL_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@%"
SEGMENTS = [
    "@connections",
    "%40connections",
    "list_@connections",
    "post_@connection",
    "healthz",
    "readyz",
    "metrics",
    "{id}",
    "..",
    "%2e%2e",
    "..%2f..%2fetc%2fpasswd",
    "%2f",
    "%ff%fe",
    "%00",
    "%zz",
    "%C3%A9",
    "",
    "x.py",
]
printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
route_paths = st.sampled_from(
    [route.split("?")[0] for route, _ in ROUTES] + ["/@connections/{id}/"] * 3
)
paths = st.one_of(
    # the routes themselves, mostly with the open connection's id
    route_paths,
    route_paths,
    # a connection route with a junk id
    st.one_of(st.sampled_from(SEGMENTS), st.text(alphabet=URL_CHARS, min_size=1, max_size=30)).map(
        lambda junk: "/@connections/" + junk
    ),
    # anything
    st.lists(
        st.one_of(st.sampled_from(SEGMENTS), st.text(alphabet=URL_CHARS, max_size=20)),
        min_size=1,
        max_size=4,
    ).map(lambda segments: "/" + "/".join(segments)),
)
queries = st.one_of(
    st.just(""),
    st.sampled_from(["?id={id}", "?id=", "?id=%ff", "?id=nope", "?x=1&id={id}&id=other"]),
    st.text(alphabet=URL_CHARS + "=&", max_size=20).map(lambda q: "?" + q),
)
GOOD = f"Bearer {TOKEN}"
bad_authorizations = st.one_of(
    st.none(),
    st.sampled_from(
        [
            *("Bearer", "Bearer ", f"bearer {TOKEN}", f"Basic {TOKEN}", f"Bearer {TOKEN}x"),
            *(f"Bearer {TOKEN.upper()}", f"Bearer  {TOKEN}  ", TOKEN),
        ]
    ),
    printable,
)
#: Three requests in four carry the right token, so most reach the routes themselves.
authorizations = st.sampled_from([GOOD, GOOD, GOOD, None]).flatmap(
    lambda good: st.just(good) if good else bad_authorizations
)
methods = st.one_of(st.sampled_from(["GET", "POST", "DELETE"]), st.sampled_from(METHODS))
content_types = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=latin-1",
            "application/json; charset=bogus",
            "application/vnd.x+json",
            "text/plain",
            "text/plain; charset=utf-16",
            "text/plain; charset=idna",
            "text/plain; charset=utf-7",
            "application/x-www-form-urlencoded",
        ]
    ),
    printable,
)
BODIES = [b"{}", b"NaN", b"[1e400]", b'{"a": Infinity}', b'"\\ud800"', b"{oops", b"[" * 3000]
BODIES += [b'{"hi": 1}', b"\xff\xfe", b"+2AA-", b"xn--zz", b""]
bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(BODIES),
    st.integers(min_value=h.LIMIT - 2, max_value=h.LIMIT + 2).map(lambda n: b"x" * n),
)
#: JSON a client might post, as text (lone surrogates as \\u escapes).
json_texts = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=10,
).map(lambda value: json.dumps(value).encode())
extra_headers = st.dictionaries(
    st.sampled_from(["message-id", "x-junk", "accept", "x-forwarded-for", "cookie", "origin"]),
    printable,
    max_size=3,
)
KNOWN_STATUSES = {200, 204, 400, 401, 404, 405, 410, 413}
DESCRIBE = {"connectionId", "connectedAt", "lastActiveAt", "sourceIp", "userAgent", "subprotocol"}


@dataclass
class Target:
    """An open client of the live runner; every frame it gets must be strict JSON."""

    url: str
    conn: tornado.websocket.WebSocketClientConnection | None = None
    cid: str = ""
    frames: int = 0
    last: str = ""
    bad_frames: list[str] = field(default_factory=list)
    readers: list[asyncio.Future[None]] = field(default_factory=list)

    async def ensure_open(self) -> None:
        """Connects (again, after a DELETE closed it) and starts reading its frames."""
        if self.conn is not None and self.conn.close_code is None:
            return
        self.conn = conn = await tornado.websocket.websocket_connect(self.url)
        conn.write_message(json.dumps({"name": "whoami"}))
        frame = json.loads(await asyncio.wait_for(conn.read_message(), h.WAIT))
        self.cid = frame["body"]["connectionId"]
        self.readers.append(asyncio.ensure_future(self.read(conn)))

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        await asyncio.wait_for(asyncio.gather(*self.readers), h.WAIT)

    async def read(self, conn: tornado.websocket.WebSocketClientConnection) -> None:
        while (text := await conn.read_message()) is not None:
            assert isinstance(text, str)
            try:
                frame = json.loads(text, parse_constant=lambda c: 1 / 0)
                assert set(frame) == {"statusCode", "headers", "body"}
            except Exception:
                self.bad_frames.append(text)
            self.last = text
            self.frames += 1

    async def settled(self, answer: tornado.httpclient.HTTPResponse, frames_before: int) -> None:
        """Waits for what an answer implies: a delivered frame read, a DELETE's close seen."""
        if answer.code == 200 and b'"delivered":true' in answer.body:
            await h.until(lambda: self.frames > frames_before, "the delivered frame")
        if answer.code == 204 and self.conn is not None:
            conn = self.conn
            await h.until(lambda: conn.close_code is not None, "the close of a DELETE")


@pytest.fixture(scope="module")
def live() -> Any:
    """One runner (with a token) for every example, and a client to post to."""
    with LiveRunner(h.settings(token=TOKEN)) as runner:
        target = Target(f"ws://127.0.0.1:{runner.ports['listen']}/")
        runner.call(target.ensure_open())
        yield runner, target
        runner.call(target.close())


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    method=methods,
    path=paths,
    query=queries,
    authorization=authorizations,
    content_type=content_types,
    body=bodies,
    headers=extra_headers,
)
@example("POST", "/@connections/{id}", "", GOOD, "application/json", b"NaN", {})
@example("POST", "/@connections/{id}", "", GOOD, "application/json", b'"\\ud800"', {})
@example("POST", "/@connections/{id}", "", GOOD, "text/plain; charset=idna", b"xn--zz", {})
@example("DELETE", "/@connections/{id}", "", GOOD, None, b"", {})
@example("GET", "/@connections/%ff", "", GOOD, None, b"", {})
def test_random_requests_get_known_statuses_and_json_without_internals(
    live: Any,
    method: str,
    path: str,
    query: str,
    authorization: str | None,
    content_type: str | None,
    body: bytes,
    headers: dict[str, str],
) -> None:
    """Random requests: known status, documented JSON shape, no internals, strict frames."""
    runner, target = live
    runner.call(target.ensure_open())
    url = (path + query).replace("{id}", target.cid)
    request_headers = dict(headers)
    if authorization is not None:
        request_headers["Authorization"] = authorization
    if content_type is not None:
        request_headers["Content-Type"] = content_type
    frames_before = target.frames

    async def fetch() -> tornado.httpclient.HTTPResponse:
        client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
        try:
            request = tornado.httpclient.HTTPRequest(
                f"http://127.0.0.1:{runner.ports['management']}{url}",
                method=method,
                headers=request_headers,
                body=body if method in WITH_BODY else None,
                allow_nonstandard_methods=True,
                request_timeout=h.WAIT,
            )
            return await client.fetch(request, raise_error=False)
        finally:
            client.close()

    answer = runner.call(fetch())
    event(f"{method} -> {answer.code}" + (" (id)" if "{id}" in path + query else ""))
    sent = url + json.dumps(request_headers) + body.decode("latin-1")
    assert answer.code in KNOWN_STATUSES, (answer.code, answer.body)
    text = answer.body.decode("utf-8")
    assert not leaked(text, sent), text
    if answer.code == 401:
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    if answer.code == 405:
        assert answer.headers["Allow"]
    if method == "HEAD" or answer.code == 204:
        assert answer.body == b""
    elif answer.code == 200 and answer.headers["Content-Type"].startswith("text/plain"):
        assert url.startswith("/metrics")
    else:
        assert answer.headers["Content-Type"] == "application/json", answer.headers
        value = json.loads(text, parse_constant=lambda c: 1 / 0)
        if answer.code >= 400:
            assert set(value) == {"statusCode", "message", "details"}
            assert value["statusCode"] == answer.code
            assert isinstance(value["message"], str) and isinstance(value["details"], str)
        else:
            assert (
                (isinstance(value, list) and all(isinstance(i, str) for i in value))
                or value in ({"status": "ok"}, {"status": "ready"})
                or (isinstance(value, dict) and set(value) == DESCRIBE)
                or value == {"connectionId": target.cid, "delivered": True}
            ), value
    runner.call(target.settled(answer, frames_before))
    assert target.bad_frames == []
    assert runner.take_errors() == []


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    alias=st.booleans(),
    content_type=content_types,
    body=st.one_of(st.binary(max_size=300), st.sampled_from(BODIES), json_texts),
    headers=extra_headers,
)
@example(False, "application/json", b'{"s": "\\ud800", "n": 1e308}', {"message-id": "7"})
@example(True, "text/plain; charset=utf-7", b"+2AA-", {})
def test_random_postbacks_deliver_strict_json_or_answer_400(
    live: Any, alias: bool, content_type: str | None, body: bytes, headers: dict[str, str]
) -> None:
    """Any body and content type posted: 400, or the client gets exactly that body, strict JSON."""
    runner, target = live
    runner.call(target.ensure_open())
    path = f"/post_@connection?id={target.cid}" if alias else f"/@connections/{target.cid}"
    request_headers = {**headers, "Authorization": GOOD}
    if content_type is not None:
        request_headers["Content-Type"] = content_type
    frames_before = target.frames

    async def post() -> tornado.httpclient.HTTPResponse:
        client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
        try:
            request = tornado.httpclient.HTTPRequest(
                f"http://127.0.0.1:{runner.ports['management']}{path}",
                method="POST",
                headers=request_headers,
                body=body,
                request_timeout=h.WAIT,
            )
            return await client.fetch(request, raise_error=False)
        finally:
            client.close()

    answer = runner.call(post())
    event(f"POST -> {answer.code}")
    assert answer.code in (200, 400), (answer.code, answer.body)
    if answer.code == 400:
        assert set(json.loads(answer.body)) == {"statusCode", "message", "details"}
        with pytest.raises(Problem):
            parse_body(body, content_type or "")
    else:
        runner.call(target.settled(answer, frames_before))
        frame = json.loads(target.last)
        expected = parse_body(body, content_type or "")
        assert frame["body"] == expected
        if "message-id" in headers:
            assert frame["headers"]["message-id"] == headers["message-id"].strip()
    assert target.bad_frames == []
    assert runner.take_errors() == []
