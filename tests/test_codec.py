"""protocol.py without sockets: client frames in, frames out (CONTRACT.md section 3)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tornado_ws_runner import ErrorResponse, Request, Response
from tornado_ws_runner.ws import codec as p

CONN = {
    "connection-id": "c-1",
    "postback-url": "http://127.0.0.1:9100/@connections/c-1",
    "push-function": object(),
    "sec-websocket-protocol": "proto-a",
}


def parse(data: Any) -> tuple[Any, Any]:
    return p.parse_message(data if isinstance(data, (str, bytes)) else json.dumps(data), CONN)


def assert_bad(result: tuple[Any, Any], message_id: Any = None) -> ErrorResponse:
    response, mid = result
    assert isinstance(response, ErrorResponse), response
    assert response.status_code == 400
    assert mid == message_id
    return response


def test_name_is_taken_from_name_else_action() -> None:
    """The event name is `name`, else `action`."""
    assert parse({"name": "getData", "action": "other"})[0].name == "getData"
    assert parse({"action": "doIt"})[0].name == "doIt"
    assert parse({"payload": 1})[0].name is None


def test_header_names_are_lower_cased_and_connection_headers_laid_over() -> None:
    """Header names are lower-cased; the connection's own headers cannot be spoofed."""
    request, mid = parse(
        {"name": "x", "headers": {"Message-ID": "abc", "X-Thing": 1, "Connection-Id": "fake"}}
    )
    assert mid == "abc"
    assert request.headers["message-id"] == "abc"
    assert request.headers["x-thing"] == 1
    for key, value in CONN.items():
        assert request.headers[key] is value
    assert all(k == k.lower() for k in request.headers)


def test_params_query_and_payload_are_carried() -> None:
    """params, query and payload reach the request as sent."""
    request, _ = parse(
        {"name": "x", "params": {"id": 123}, "query": {"q": "s"}, "payload": {"foo": "bar"}}
    )
    assert request.params == {"id": 123}
    assert request.query == {"q": "s"}
    assert request.payload == {"foo": "bar"}


def test_payload_absent_is_none() -> None:
    """request.payload is set only when payload is present."""
    request, _ = parse({"name": "x"})
    assert request.payload is None
    assert request.params == {} and request.query == {}


@pytest.mark.parametrize("text", ["not json", "{", "[1]", '"x"', "3", "null", "true"])
def test_invalid_or_non_object_json_is_an_unnamed_request_with_the_raw_payload(text: str) -> None:
    """Invalid or non-object JSON becomes an unnamed request with the raw text as payload."""
    request, mid = parse(text)
    assert isinstance(request, Request)
    assert request.name is None
    assert request.payload == text
    assert mid is None
    assert request.headers["connection-id"] == "c-1"


def test_utf8_binary_is_a_message_and_other_binary_is_400() -> None:
    """A binary frame holding UTF-8 is parsed like text; non-UTF-8 binary answers 400."""
    request, _ = parse(json.dumps({"name": "héllo"}).encode("utf-8"))
    assert request.name == "héllo"
    assert_bad(parse(b"\xff\xfe\x00garbage"))


@pytest.mark.parametrize(
    "message",
    [
        {"name": 5},
        {"name": ["x"]},
        {"name": {"a": 1}},
        {"name": False},
        {"name": 0},
        {"action": 7},
        {"name": "x", "params": [1]},
        {"name": "x", "params": "id=1"},
        {"name": "x", "query": 3},
        {"name": "x", "query": ["a"]},
    ],
)
def test_wrong_types_answer_400_with_the_message_id(message: dict[str, Any]) -> None:
    """A wrong type for name/action/params/query is a 400 that echoes the message-id."""
    message = {**message, "headers": {"message-id": "m-7"}}
    bad = assert_bad(parse(message), "m-7")
    assert bad.body["statusCode"] == 400
    assert bad.body["message"] == "Bad Request."
    assert bad.body["details"]


@pytest.mark.parametrize("headers", [[1], "message-id: x", 5])
def test_wrong_type_for_headers_answers_400(headers: Any) -> None:
    """Headers that are not an object answer 400 (no message-id can be known)."""
    assert_bad(parse({"name": "x", "headers": headers}))


@pytest.mark.parametrize(
    "name",
    [
        "on_connect",
        "on_disconnect",
        "on_start",
        "on_first_request",
        "on_before_request",
        "on_success",
        "on_error",
        "on_after_request",
        "catchall",
    ],
)
def test_reserved_lifecycle_names_answer_400(name: str) -> None:
    """A client may not raise a lifecycle event by name (or by action)."""
    assert_bad(parse({"name": name, "headers": {"message-id": 1}}), 1)
    assert_bad(parse({"action": name}))


def test_encode_frame_shape_with_message_id() -> None:
    """encode gives {statusCode, headers, body} with the response headers plus message-id."""
    response = Response({"id": 123}, 201, {"x-a": "b"})
    frame = json.loads(p.encode(response, "abc-123"))
    assert frame == {
        "statusCode": 201,
        "headers": {"x-a": "b", "message-id": "abc-123"},
        "body": {"id": 123},
    }
    assert response.headers == {"x-a": "b"}, "encoding must not change the response"
    assert "message-id" not in json.loads(p.encode(Response("t"), None))["headers"]


def test_error_frame_shape() -> None:
    """An error frame's body is {statusCode, message, details}, message-id echoed."""
    frame = json.loads(p.error_frame(501, "Not Implemented.", "no route", "m1"))
    assert frame["statusCode"] == 501
    assert frame["headers"]["message-id"] == "m1"
    assert frame["body"] == {
        "statusCode": 501,
        "message": "Not Implemented.",
        "details": "no route",
    }


def test_stream_chunk_and_done_frame_shapes() -> None:
    """Chunks carry x-stream: chunk and the stream id; done carries x-stream: done, 200."""
    response = Response(None, 200, {"x-kind": "k"})
    sid = p.stream_id()
    chunk = json.loads(p.stream_chunk(response, {"i": 1}, sid, "m"))
    assert chunk == {
        "statusCode": 200,
        "headers": {"x-kind": "k", "message-id": "m", "x-stream": "chunk", "x-stream-id": sid},
        "body": {"i": 1},
    }
    done = json.loads(p.stream_done(response, sid, "m"))
    assert done["statusCode"] == 200
    assert done["headers"]["x-stream"] == "done"
    assert done["headers"]["x-stream-id"] == sid
    assert done["headers"]["message-id"] == "m"
    assert done["body"] is None
    assert p.stream_id() != sid


def test_stream_done_carries_the_producer_error() -> None:
    """A failed stream ends with the error's status and body in the done frame."""
    error = ErrorResponse("Producer conflict.", 409, "mid-stream")
    done = json.loads(p.stream_done(Response(None), "s", "m", error))
    assert done["statusCode"] == 409
    assert done["body"] == {
        "statusCode": 409,
        "message": "Producer conflict.",
        "details": "mid-stream",
    }
    assert done["headers"]["x-stream"] == "done" and done["headers"]["message-id"] == "m"


def test_connect_request_lower_cases_upgrade_headers_and_keeps_query_and_path() -> None:
    """on_connect's request: upgrade headers lower-cased plus the connection headers."""
    request = p.connect_request(
        "on_connect", {"X-Token": "t", "Host": "h"}, {"x": "1"}, "/a/b", CONN
    )
    assert request.name == "on_connect"
    assert request.headers["x-token"] == "t" and request.headers["host"] == "h"
    assert request.headers["connection-id"] == "c-1"
    assert request.query == {"x": "1"} and request.path == "/a/b"
    assert p.disconnect_request(CONN).headers["connection-id"] == "c-1"


def test_frames_are_compact_utf8_json() -> None:
    """Frames keep non-ASCII text as is and fall back to str() for odd values."""
    frame = p.encode(Response({"s": "é", "o": object}), None)
    assert "é" in frame
    assert json.loads(frame)["body"]["o"].startswith("<class")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json_on_the_way_in(constant: str) -> None:
    """A frame using NaN/Infinity is not JSON: it becomes an unnamed raw-text request."""
    text = '{"name": "echo", "payload": ' + constant + "}"
    request, _ = parse(text)
    assert request.name is None and request.payload == text


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_frames_are_never_invalid_json_on_the_way_out(value: float) -> None:
    """A response, chunk or push holding NaN/Infinity raises ValueError, never bad JSON."""
    with pytest.raises(ValueError):
        p.encode(Response({"mean": value}), "m")
    with pytest.raises(ValueError):
        p.stream_chunk(Response(None), value, "s", "m")
    with pytest.raises(ValueError):
        p.strict_dumps({"body": value})


def reference_frame(status: int, headers: dict[str, Any], body: Any) -> str:
    """The frame as the JSON encoder writes it, long text bodies included."""
    return p.strict_dumps({"statusCode": status, "headers": headers, "body": body})


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(min_size=0, max_size=200),
    at=st.integers(min_value=0, max_value=p.LONG_TEXT),
    length=st.sampled_from([p.LONG_TEXT - 1, p.LONG_TEXT, 3 * p.LONG_TEXT]),
)
def test_long_text_bodies_are_written_exactly_as_the_encoder_writes_them(
    text: str, at: int, length: int
) -> None:
    """Long text bodies take a shortcut; it writes byte for byte what the encoder would,
    whatever the text holds (quotes, backslashes, control characters, lone surrogates)."""
    pad = "a" * max(0, length - len(text))
    body = pad[:at] + text + pad[at:]
    response = Response(body, 200, {"x": "y"})
    assert p.encode(response, "m") == reference_frame(200, {"x": "y", "message-id": "m"}, body)
    chunk = p.stream_chunk(response, body, "s", "m")
    headers = {"x": "y", "message-id": "m", "x-stream": "chunk", "x-stream-id": "s"}
    assert chunk == reference_frame(200, headers, body)
    chunk.encode("utf-8")  # always sendable: lone surrogates are escaped
