"""Property-based tests of the WebSocket protocol: whatever a client sends, the server
answers it with one well-formed frame or closes that one connection with the documented
code, and every other client keeps being served.

Two levels: ``codec.parse_message`` without sockets (it never raises, and whatever
it returns encodes to valid UTF-8 JSON), and a live runner (tests/fixtures/reliability)
fed arbitrary text, bytes, JSON of every shape and type, nesting far past the parser's
recursion limit, and frames at and just over ``limits.max_message_size``. A second,
well-behaved client stays connected throughout and must get its echo after every
example. Hypothesis shares one runner across a property's examples (module fixture).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tornado.websocket
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from tornado.iostream import StreamClosedError
from wsutil import (
    RawClient,
    ask,
    bounded,
    send,
    tornado_connect,
    until,
    websockets_connect,
    ws_url,
)

from tornado_ws_runner import ErrorResponse, Request, Response
from tornado_ws_runner.ws import codec

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "reliability"))

from live_runner import SECRET, LiveRunner

LIMIT = 128 * 1024  # limits.max_message_size of the live runner, bytes
CONN = {
    "connection-id": "c-1",
    "postback-url": "http://127.0.0.1:9100/@connections/c-1",
    "push-function": object(),
    "sec-websocket-protocol": None,
}
#: What a frame must never hold unless the client itself sent it.
LEAKS = ("Traceback", 'File "', ".py", "secret detail", "/srv/app")

PROPERTY = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SANS_IO = settings(max_examples=200, deadline=None)


# -- what the server must answer: the contract's rules, written out independently ----------


def _reject_constant(constant: str) -> Any:
    raise ValueError(constant)


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(text)
    return value


@dataclass
class Expected:
    """The one frame a message must get: its status, the message-id echoed (if any)
    and, for a 200, the exact body."""

    status: int
    message_id: Any = None
    body: Any = None
    bad_input: bool = False  # answered by the protocol (400) before any handler ran


def predict(data: str | bytes) -> Expected:
    """CONTRACT.md section 3, for the fixture API (echo, fail, badJson, nan, catchall)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            return Expected(400, bad_input=True)
    try:
        # NaN, Infinity and numbers too large for a float are not JSON a frame can
        # carry back: such text is handled like any text that is not JSON.
        message = json.loads(data, parse_constant=_reject_constant, parse_float=_finite)
    except (ValueError, RecursionError):
        message = None
    if not isinstance(message, dict):
        return Expected(200, None, {"catchall": data, "name": ""})
    headers = message.get("headers")
    if headers is not None and not isinstance(headers, dict):
        return Expected(400, bad_input=True)
    message_id = {k.lower(): v for k, v in (headers or {}).items()}.get("message-id")
    name = message.get("name")
    if name is None or name == "":
        name = message.get("action")
    bad = (
        (name is not None and not isinstance(name, str))
        or name in codec.RESERVED_NAMES
        or any(
            message.get(key) is not None and not isinstance(message.get(key), dict)
            for key in ("params", "query")
        )
    )
    if bad:
        return Expected(400, message_id, bad_input=True)
    payload = message.get("payload")
    if name == "echo":
        return Expected(200, message_id, {"name": "echo", "payload": payload})
    if name in ("fail", "nan"):
        return Expected(500, message_id)
    if name == "badJson":
        return Expected(400, message_id)
    return Expected(200, message_id, {"catchall": payload, "name": name or ""})


def strict_frame(text: str) -> dict[str, Any]:
    """A frame: strict JSON (no NaN), an object of exactly statusCode, headers, body."""
    frame = json.loads(text, parse_constant=_reject_constant)
    assert isinstance(frame, dict) and set(frame) == {"statusCode", "headers", "body"}, text
    assert isinstance(frame["statusCode"], int) and 100 <= frame["statusCode"] <= 599
    assert isinstance(frame["headers"], dict)
    return frame


def loads_deep(text: str) -> Any:
    """json.loads on a thread of its own: a frame nested nearly as deep as the server's
    parser allows may be deeper than this test's stack leaves room for."""
    result: list[Any] = []
    failure: list[BaseException] = []

    def parse() -> None:
        try:
            result.append(json.loads(text, parse_constant=_reject_constant))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=parse)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def leaked(text: str, sent: str | bytes) -> list[str]:
    """The markers of internals in ``text`` that the client did not send itself."""
    own = sent.decode("utf-8", "replace") if isinstance(sent, bytes) else sent
    return [marker for marker in LEAKS if marker in text and marker not in own]


def assert_answer(sent: str | bytes, text: str, expected: Expected) -> None:
    """The frame ``text`` is the one ``expected``, with no internals leaked."""
    frame = strict_frame(text)
    if currently_in_test_context():  # for --hypothesis-show-statistics
        event(f"answered {frame['statusCode']}")
    assert frame["statusCode"] == expected.status, (frame, expected)
    if expected.message_id is None:
        assert "message-id" not in frame["headers"], frame
    else:
        assert frame["headers"]["message-id"] == expected.message_id, frame
    if expected.status >= 400:
        assert set(frame["body"]) == {"statusCode", "message", "details"}, frame
        assert frame["body"]["statusCode"] == expected.status
    else:
        assert frame["body"] == expected.body
    assert not leaked(text, sent), text


# -- the live runner and its well-behaved witness ------------------------------------------


class Witness:
    """A client connected all along; after every example its echo must come back."""

    def __init__(self, conn: tornado.websocket.WebSocketClientConnection) -> None:
        self.conn = conn
        self.checks = 0

    async def check(self) -> None:
        self.checks += 1
        mid = f"witness-{self.checks}"
        message = {"name": "echo", "payload": {"n": self.checks}, "headers": {"message-id": mid}}
        frame = await ask(self.conn, message)
        assert frame == {
            "statusCode": 200,
            "headers": {"message-id": mid},
            "body": {"name": "echo", "payload": {"n": self.checks}},
        }


@dataclass
class Live:
    runner: LiveRunner
    witness: Witness

    def after_example(self) -> None:
        """The witness is still served and nothing was logged as an error."""
        self.runner.call(self.witness.check())
        assert self.runner.take_errors() == []

    @property
    def url(self) -> str:
        return ws_url(self.runner.runner, "/fuzz")


@pytest.fixture(scope="module")
def live() -> Any:
    """One runner for the whole module, with a witness client connected throughout."""
    with LiveRunner(limits={"max_message_size": LIMIT}) as runner:

        async def connect() -> Witness:
            return Witness(await tornado_connect(ws_url(runner.runner, "/witness")))

        witness = runner.call(connect())
        yield Live(runner, witness)

        async def close() -> None:
            witness.conn.close()
            while await bounded(witness.conn.read_message()) is not None:
                pass

        runner.call(close())
        assert witness.checks > 0
    assert runner.take_errors() == []


@dataclass
class Outcome:
    text: str | None = None  # the answer, or None when the server closed instead
    close_code: int | None = None


async def exchange(url: str, data: str | bytes) -> Outcome:
    """Sends ``data`` on a fresh connection: its one answer, or how the server closed it.

    After an answer, a sentinel echo on the same connection must come back next: the
    input got exactly one frame, and the connection still works.
    """
    conn = await tornado_connect(url)
    try:
        # The server may close while the frame is still being written (over the limit).
        with contextlib.suppress(StreamClosedError, tornado.websocket.WebSocketClosedError):
            await send(conn, data)
        text = await bounded(conn.read_message())
        if text is None:
            return Outcome(close_code=conn.close_code)
        assert isinstance(text, str)
        sentinel = {"name": "echo", "payload": "sentinel", "headers": {"message-id": "sentinel"}}
        after = await ask(conn, sentinel)
        assert after["headers"]["message-id"] == "sentinel", ("a second frame", after)
        return Outcome(text=text)
    finally:
        conn.close()


def answer_of(live: Live, data: str | bytes) -> str:
    """The one frame the server answered ``data`` with (it must not close)."""
    outcome = live.runner.call(exchange(live.url, data))
    assert outcome.text is not None, f"closed with {outcome.close_code} instead of answering"
    return outcome.text


# -- strategies -----------------------------------------------------------------------------

no_surrogates = st.characters(blacklist_categories=("Cs",))
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
names = st.one_of(
    st.sampled_from(
        [
            *("echo", "fail", "badJson", "nan", "nope", "", "ECHO", "on_connect"),
            *("on_disconnect", "catchall", "on_error", "on_start", "$(payload)", "echo\x00"),
        ]
    ),
    st.text(max_size=16),
    json_values,
)
message_ids = st.one_of(
    st.text(max_size=16),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    json_values,
)
header_names = st.one_of(
    st.sampled_from(
        ["message-id", "Message-ID", "MESSAGE-ID", "connection-id", "push-function", "x-a"]
    ),
    st.text(max_size=12),
)
header_objects = st.tuples(
    st.dictionaries(header_names, json_values, max_size=4),
    st.none() | st.fixed_dictionaries({"message-id": message_ids}),
).map(lambda pair: {**pair[0], **(pair[1] or {})})
objects_or_not = st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=3)
messages = st.tuples(
    st.fixed_dictionaries(
        {},
        optional={
            "name": names,
            "action": names,
            "headers": header_objects | json_values,
            "params": objects_or_not | json_values,
            "query": objects_or_not | json_values,
            "payload": json_values,
        },
    ),
    st.dictionaries(st.text(max_size=8), json_values, max_size=2),
).map(lambda pair: {**pair[1], **pair[0]})


def serialize(message: dict[str, Any], ascii_only: bool) -> str:
    """JSON text a real client could send (lone surrogates only as \\u escapes)."""
    text = json.dumps(message, ensure_ascii=ascii_only)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(message)
    return text


def wire(text: str, binary: bool) -> str | bytes:
    return text.encode("utf-8") if binary else text


# -- sans-I/O: parse_message never raises -----------------------------------------------------


def check_parsed(data: str | bytes) -> tuple[Request | ErrorResponse, Any]:
    """parse_message's result is a (Request | ErrorResponse, message-id) pair whose
    frames encode to valid UTF-8 JSON that reads back to the same values."""
    request, message_id = codec.parse_message(data, CONN)
    assert isinstance(request, (Request, ErrorResponse))
    if isinstance(request, ErrorResponse):
        assert request.status_code == 400
        frame = strict_frame(codec.encode(request, message_id).encode("utf-8").decode())
        assert set(frame["body"]) == {"statusCode", "message", "details"}
    else:
        echo = Response({"name": request.name, "payload": request.payload}, 200)
        frame = strict_frame(codec.encode(echo, message_id).encode("utf-8").decode())
        assert frame["body"] == {"name": request.name, "payload": request.payload}
    if message_id is not None:
        assert frame["headers"]["message-id"] == message_id
    return request, message_id


@SANS_IO
@given(st.text())
@example("\ud800")
@example('{"name": "x", "payload": "\\udfff", "headers": {"message-id": "\\ud800"}}')
@example('{"headers": {"message-id": 1e400}}')
def test_parse_message_never_raises_on_any_text(text: str) -> None:
    """parse_message turns any text (lone surrogates too) into a request or a 400."""
    check_parsed(text)


@SANS_IO
@given(st.binary())
@example(b"\xff\xfe")
@example(b"\xed\xa0\x80")  # a surrogate encoded as UTF-8: not UTF-8
def test_parse_message_never_raises_on_any_bytes(data: bytes) -> None:
    """parse_message turns any binary frame into a request or a 400."""
    request, message_id = check_parsed(data)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        assert isinstance(request, ErrorResponse) and message_id is None


@SANS_IO
@given(messages, st.booleans())
def test_parse_message_follows_the_rules_for_any_json_object(
    message: dict[str, Any], ascii_only: bool
) -> None:
    """Any JSON object, any types: a 400 exactly where the contract says, else the request."""
    text = serialize(message, ascii_only)
    expected = predict(text)
    request, message_id = check_parsed(text)
    assert message_id == expected.message_id
    if expected.bad_input:
        assert isinstance(request, ErrorResponse) and request.status_code == 400
    else:
        assert isinstance(request, Request)
        assert request.payload == message.get("payload")
        assert all(key == key.lower() for key in request.headers)
        for key, value in CONN.items():
            assert request.headers[key] is value


@SANS_IO
@given(
    st.recursive(json_scalars, lambda c: st.lists(c) | st.dictionaries(st.text(), c), max_leaves=30)
)
def test_parse_message_on_any_json_value(value: Any) -> None:
    """JSON that is not an object becomes an unnamed request carrying the raw text."""
    text = json.dumps(value)
    request, message_id = check_parsed(text)
    if not isinstance(value, dict):
        assert isinstance(request, Request) and request.name is None
        assert request.payload == text and message_id is None


# -- live: arbitrary input, one answer each, the witness served throughout ------------------


@PROPERTY
@given(st.text(alphabet=no_surrogates, max_size=300), st.booleans())
@example("", False)
@example("null", True)
@example("{}", False)
def test_any_text_gets_one_well_formed_answer(live: Live, text: str, binary: bool) -> None:
    """Arbitrary text, as a text or a binary frame: the frame the contract prescribes."""
    data = wire(text, binary)
    assert_answer(data, answer_of(live, data), predict(data))
    live.after_example()


@PROPERTY
@given(st.binary(max_size=300))
@example(b"\xff\xfe")
@example(b"\x00")
@example(b'{"name": "echo", "headers": {"message-id": "m"}}\xff')
def test_any_bytes_get_one_well_formed_answer(live: Live, data: bytes) -> None:
    """Arbitrary binary frames: UTF-8 ones are messages, others a 400 without message-id."""
    assert_answer(data, answer_of(live, data), predict(data))
    live.after_example()


def _frame(opcode: int, fin: bool, rsv: int, payload: bytes) -> bytes:
    frame = RawClient.frame(payload, opcode=opcode, fin=fin)
    return bytes([frame[0] | rsv << 4]) + frame[1:]


#: Bytes a client may write after the handshake: whole frames of any opcode, flags and
#: size (valid or not), cut anywhere, mixed with arbitrary bytes.
raw_wire = st.lists(
    st.one_of(
        st.builds(
            _frame,
            st.integers(0, 15),
            st.booleans(),
            st.integers(0, 7),
            st.binary(max_size=300) | st.just(b'{"name": "echo"}'),
        ),
        st.binary(max_size=40),
    ),
    max_size=6,
).map(b"".join)


@PROPERTY
@given(raw_wire, st.integers(0, 400))
@example(_frame(0x1, True, 0, b'{"name": "echo"}'), 400)
@example(_frame(0x1, False, 0, b"{") + _frame(0x9, True, 0, b"") + _frame(0x0, True, 0, b"}"), 0)
@example(b"\x81\xff" + (2**63).to_bytes(8, "big"), 400)
@example(b"\x81\xff" + (2**63).to_bytes(8, "big"), 3)
@example(_frame(0x1, True, 0, b"x" * 200), 3)
def test_any_bytes_on_the_wire_close_at_most_that_connection(
    live: Live, data: bytes, cut: int
) -> None:
    """Whatever bytes follow the handshake, written in two parts: the server answers,
    waits or drops that connection, logs no error, and lets go of it once the client
    leaves; the witness is served throughout."""
    registry = live.runner.runner.state.registry

    async def feed() -> None:
        raw = await RawClient.connect(live.runner.ports["listen"], "/wire")
        assert raw.status == 101
        await raw.send_bytes(data[:cut])
        await raw.send_bytes(data[cut:])
        raw.writer.write_eof()
        await bounded(raw.reader.read())  # answers, if any, until the server closes
        raw.abort()
        await until(lambda: len(registry) == 1, "only the witness registered")

    live.runner.call(feed())
    live.after_example()


@PROPERTY
@given(messages, st.booleans(), st.booleans())
@example({"name": "echo", "payload": "\ud800", "headers": {"message-id": "s"}}, True, False)
@example({"name": "nope\udfff", "headers": {"message-id": "\ud800"}}, True, True)
@example({"name": 5, "headers": {"message-id": 7}}, True, False)
@example({"name": "echo", "headers": [1, 2]}, True, False)
def test_any_json_object_gets_the_prescribed_answer(
    live: Live, message: dict[str, Any], ascii_only: bool, binary: bool
) -> None:
    """Wrong types for name/action/headers/params/query, any payload: the right frame."""
    assume(message.get("name") != "failingStream" and message.get("action") != "failingStream")
    data = wire(serialize(message, ascii_only), binary)
    assert_answer(data, answer_of(live, data), predict(data))
    live.after_example()


@PROPERTY
@given(
    st.dictionaries(header_names, json_values, max_size=6),
    st.one_of(
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
        st.lists(json_scalars, max_size=3),
        st.dictionaries(st.text(max_size=5), json_scalars, max_size=3),
        st.none(),
        st.booleans(),
    ),
    st.sampled_from(["message-id", "Message-Id", "MESSAGE-ID"]),
)
@example({}, 0, "message-id")
@example({"x-a": None, "x-b": [1, {"c": None}]}, 1.5, "Message-Id")
def test_header_values_of_any_type(
    live: Live, headers: dict[str, Any], message_id: Any, key: str
) -> None:
    """Header values that are numbers, lists, objects or null: echo answers, id echoed."""
    message = {"name": "echo", "payload": 1, "headers": {**headers, key: message_id}}
    data = serialize(message, True)
    expected = predict(data)
    assert expected.status == 200
    assert_answer(data, answer_of(live, data), expected)
    live.after_example()


@settings(PROPERTY, max_examples=30)
@given(
    st.integers(min_value=10_000, max_value=60_000),
    st.sampled_from([("[", "]", ""), ('{"a":', "}", "1"), ('{"":[', "]}", "")]),
    st.booleans(),
    st.booleans(),
)
@example(20_000, ("[", "]", ""), False, False)
def test_json_nested_far_past_the_recursion_limit(
    live: Live, depth: int, shape: tuple[str, str, str], closed: bool, binary: bool
) -> None:
    """Nesting of 10k+ levels (closed or not) is text that is not JSON: catchall gets it."""
    opener, closer, inner = shape
    depth = min(depth, (LIMIT - 64) // (len(opener) + len(closer)))
    text = opener * depth + (inner + closer * depth if closed else "")
    data = wire(text, binary)
    expected = predict(data)
    assert expected == Expected(200, None, {"catchall": text, "name": ""})
    assert_answer(data, answer_of(live, data), expected)
    live.after_example()


@settings(PROPERTY, max_examples=30)
@given(
    st.integers(min_value=10_000, max_value=60_000),
    st.sampled_from(["payload", "params", "headers"]),
)
def test_a_message_with_a_value_nested_10k_levels_deep(live: Live, depth: int, key: str) -> None:
    """A well-formed message holding a 10k+ levels deep value: answered, not crashed."""
    depth = min(depth, (LIMIT - 200) // 2)
    deep = "[" * depth + "]" * depth
    if key == "headers":
        text = '{"name": "echo", "headers": {"message-id": "deep", "x": ' + deep + "}}"
    else:
        text = '{"name": "echo", "headers": {"message-id": "deep"}, "' + key + '": ' + deep + "}"
    assert_answer(text, answer_of(live, text), predict(text))
    live.after_example()


@pytest.mark.parametrize("depth", [900, 950, 970, 980, 990, 1000, 1010, 1100])
@pytest.mark.parametrize("where", ["payload", "message-id"])
def test_nesting_around_the_recursion_limit(live: Live, depth: int, where: str) -> None:
    """Depths where parsing or encoding may just fail: one well-formed frame, never a 1011."""
    value = "[" * depth + "]" * depth
    if where == "payload":
        text = '{"name": "echo", "payload": ' + value + ', "headers": {"message-id": "d"}}'
    else:
        text = '{"name": "echo", "headers": {"message-id": ' + value + "}}"
    frame = loads_deep(answer_of(live, text))
    assert set(frame) == {"statusCode", "headers", "body"}
    # Parsed and echoed (200), too deep to parse (catchall gets the text, 200), or
    # parsed but too deep to encode back (500): never silence or a dropped connection.
    assert frame["statusCode"] in (200, 500), frame
    if frame["statusCode"] == 500:
        assert frame["body"]["message"] == "Internal Server Error"
    live.after_example()


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "echo", "headers": {"message-id": 1e400}}',
        '{"name": "echo", "headers": {"message-id": -1e400}, "payload": 1}',
        '{"name": "echo", "payload": 1e400, "headers": {"message-id": "p"}}',
        '{"name": "echo", "params": {"x": 1e999}, "headers": {"message-id": "q"}}',
        '{"name": 1e400, "headers": {"message-id": "r"}}',
        '{"name": "echo", "payload": NaN, "headers": {"message-id": "n"}}',
        '{"name": "echo", "payload": -Infinity}',
        "Infinity",
        "1e400",
        '{"name": "echo", "headers": {"message-id": 1e308}, "payload": 1e-400}',
        '{"name": "echo", "headers": {"message-id": %s}}' % ("9" * 5000),
        '{"name": "echo", "headers": {"message-id": %s}}' % ("9" * 4000),
    ],
)
def test_numbers_a_frame_cannot_carry_back(live: Live, text: str) -> None:
    """NaN, Infinity, floats that overflow and huge integers: one well-formed answer."""
    assert_answer(text, answer_of(live, text), predict(text))
    live.after_example()


# -- live: the size limit ---------------------------------------------------------------------


def message_of_size(size: int, wide: bool) -> str:
    """An echo message of exactly ``size`` UTF-8 bytes (with 2-byte characters if ``wide``)."""
    empty = '{"name":"echo","headers":{"message-id":"big"},"payload":""}'
    room = size - len(empty)
    filler = "é" * (room // 2) + "x" * (room % 2) if wide else "x" * room
    text = empty.replace('""}', f'"{filler}"}}')
    assert len(text.encode("utf-8")) == size
    return text


@settings(PROPERTY, max_examples=40)
@given(st.integers(min_value=-64, max_value=64), st.booleans(), st.booleans())
@example(0, False, False)
@example(1, False, False)
@example(0, True, True)
@example(1, True, True)
def test_frames_at_and_just_over_the_size_limit(
    live: Live, delta: int, wide: bool, binary: bool
) -> None:
    """Up to max_message_size bytes: echoed in full; one byte more: that client gets 1009."""
    text = message_of_size(LIMIT + delta, wide)
    data = wire(text, binary)
    outcome = live.runner.call(exchange(live.url, data))
    if delta <= 0:
        assert outcome.text is not None, f"closed with {outcome.close_code}"
        assert_answer(data, outcome.text, predict(data))
    else:
        assert (outcome.text, outcome.close_code) == (None, 1009)
    live.after_example()


@pytest.mark.parametrize("delta", [0, 1])
def test_fragmented_message_counts_against_the_limit(live: Live, delta: int) -> None:
    """A message sent in fragments is limited as a whole: at the limit answered, over 1009."""
    text = message_of_size(LIMIT + delta, False)
    pieces = [text[i : i + LIMIT // 4] for i in range(0, len(text), LIMIT // 4)]
    assert len(pieces) > 1

    async def fragmented() -> tuple[str | None, int | None]:
        from websockets.exceptions import ConnectionClosed

        async with websockets_connect(live.url, max_size=None) as ws:
            await ws.send(iter(pieces))
            try:
                answer = await bounded(ws.recv())
            except ConnectionClosed as exc:
                assert exc.rcvd is not None
                return None, exc.rcvd.code
            return str(answer), None

    answer, code = live.runner.call(fragmented())
    if delta <= 0:
        assert answer is not None, code
        assert strict_frame(answer)["body"]["payload"] == json.loads(text)["payload"]
    else:
        assert (answer, code) == (None, 1009)
    live.after_example()


def test_failing_handlers_never_close_or_leak(live: Live) -> None:
    """fail, badJson and nan answer 500/400/500 frames with the message-id, nothing more."""
    for name, status in (("fail", 500), ("badJson", 400), ("nan", 500)):
        text = json.dumps({"name": name, "headers": {"message-id": name}})
        answer = answer_of(live, text)
        assert_answer(text, answer, predict(text))
        assert strict_frame(answer)["statusCode"] == status
        assert SECRET not in answer
    live.after_example()
