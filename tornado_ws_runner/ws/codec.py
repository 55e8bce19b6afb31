"""The configurapi-runner-ws protocol rules, free of I/O.

Message text in -> ``Request`` (or a 400 ``ErrorResponse`` for input that cannot be
an event); ``Response`` in -> frame text. The WebSocket handler only moves text
between the socket and these functions, so every rule here is tested without sockets.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from ..engine import LIFECYCLE_EVENTS, ErrorResponse, Request, Response

__all__ = [
    "CONNECTION_EVENTS",
    "ENCODE_ERRORS",
    "RESERVED_NAMES",
    "UNECHOABLE",
    "connect_request",
    "disconnect_request",
    "dumps",
    "encode",
    "error_frame",
    "loads",
    "parse_message",
    "reply",
    "stream_chunk",
    "stream_done",
    "stream_id",
    "strict_dumps",
]

CONNECTION_EVENTS = frozenset({"on_connect", "on_disconnect"})
#: Names the runner or the engine raise themselves; a client message may not use them.
RESERVED_NAMES = LIFECYCLE_EVENTS | CONNECTION_EVENTS


def _encoder(allow_nan: bool) -> Callable[[Any], str]:
    """A compact JSON encoder (UTF-8 text as it is, ``str()`` for other objects).

    JSONEncoder.encode builds a new C encoder and a closure on every call, a good part
    of its cost for a small reply; this builds the C encoder once. Without circular
    reference markers, a response that contains itself fails with RecursionError (a
    ValueError with JSONEncoder), answered as an error all the same.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no _json accelerator (not CPython): the standard route
        return json.JSONEncoder(
            ensure_ascii=False, separators=(",", ":"), default=str, allow_nan=allow_nan
        ).encode
    iterencode = make(
        None, str, json.encoder.encode_basestring, None, ":", ",", False, False, allow_nan
    )

    def encode(value: Any) -> str:
        return "".join(iterencode(value, 0))

    return encode


_encode = _encoder(allow_nan=True)
#: For frames to clients: NaN and Infinity are not JSON, so they raise ValueError here
#: (answered as an error) instead of reaching a client's JSON parser.
_strict_encode = _encoder(allow_nan=False)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _utf8_safe(text: str) -> str:
    """JSON text that encodes to UTF-8: a lone surrogate (which a client can send as a
    ``"\\ud800"`` escape) is written back as that escape instead of failing the send.
    ``isascii`` is O(1) in CPython; the dumps functions test it before calling, since
    most frames are ASCII."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")  # C speed; a regex scan for surrogates costs several times more
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text


def dumps(value: Any) -> str:
    text = _encode(value)
    return text if text.isascii() else _utf8_safe(text)


def strict_dumps(value: Any) -> str:
    text = _strict_encode(value)
    return text if text.isascii() else _utf8_safe(text)


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    """A JSON number as a float; one too large for a float (1e400) is, like NaN, not JSON
    a frame could carry back."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is out of range")
    return value


#: Built once: json.loads with an option builds a new decoder on every call.
_decoder = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)
_decode, _raw_decode = _decoder.decode, _decoder.raw_decode


def loads(text: str) -> Any:
    """Strict JSON: NaN, Infinity and numbers that overflow a float raise ValueError.

    ``raw_decode`` first: a message is one JSON value with nothing around it, and
    ``decode`` would scan for whitespace on both sides of it; anything else (leading or
    trailing whitespace, more text, not JSON) is left to ``decode``, which accepts or
    rejects it as ``json.loads`` does.
    """
    try:
        value, end = _raw_decode(text)
    except ValueError:
        return _decode(text)
    return value if end == len(text) else _decode(text)


def _bad(message_id: Any, details: str) -> tuple[ErrorResponse, Any]:
    return ErrorResponse("Bad Request.", 400, details), message_id


def parse_message(
    data: str | bytes, connection_headers: Mapping[str, Any]
) -> tuple[Request | ErrorResponse, Any]:
    """One client frame -> (the request, or a 400 answer; the message-id to echo).

    Text that is not JSON, or JSON that is not an object, becomes a request with no
    name whose payload is the raw text, so it reaches ``catchall`` (else 501).
    ``connection_headers`` (connection-id, postback-url, push-function,
    sec-websocket-protocol) are laid over the message's own headers.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            return _bad(None, "A binary frame must hold UTF-8 text.")
    try:
        message = loads(data)
    except (ValueError, RecursionError):
        message = None
    if not isinstance(message, dict):
        return Request(None, headers=dict(connection_headers), payload=data), None
    raw_headers = message.get("headers")
    if raw_headers is None:
        headers: dict[str, Any] = {}
    elif isinstance(raw_headers, dict):
        headers = {str(k).lower(): v for k, v in raw_headers.items()}
    else:
        return _bad(None, "'headers' must be an object.")
    message_id = headers.get("message-id")
    name = message.get("name")
    if name is None or name == "":
        name = message.get("action")
    if name is not None and not isinstance(name, str):
        return _bad(message_id, "'name' must be a string.")
    if name in RESERVED_NAMES:
        return _bad(message_id, f"'{name}' is raised by the runner and cannot be sent.")
    params, query = message.get("params"), message.get("query")
    if params is not None and not isinstance(params, dict):
        return _bad(message_id, "'params' must be an object.")
    if query is not None and not isinstance(query, dict):
        return _bad(message_id, "'query' must be an object.")
    headers.update(connection_headers)
    request = Request(
        name or None, headers=headers, params=params, query=query, payload=message.get("payload")
    )
    return request, message_id


def connect_request(
    name: str,
    upgrade_headers: Mapping[str, str],
    query: Mapping[str, Any],
    path: str,
    connection_headers: Mapping[str, Any],
) -> Request:
    """The request of ``on_connect``: the upgrade's headers, query and path."""
    headers = {k.lower(): v for k, v in upgrade_headers.items()}
    headers.update(connection_headers)
    return Request(name, headers=headers, query=dict(query), path=path)


def disconnect_request(connection_headers: Mapping[str, Any]) -> Request:
    return Request("on_disconnect", headers=dict(connection_headers))


def _headers(response: Response, message_id: Any) -> dict[str, Any]:
    headers = dict(response.headers) if response.headers else {}
    if message_id is not None:
        headers["message-id"] = message_id
    return headers


#: Strings this long or longer are checked for characters JSON must escape (below).
LONG_TEXT = 1024
_ESCAPED = (*(chr(c) for c in range(0x20)), '"', "\\")


def _frame(status: int, headers: dict[str, Any], body: Any) -> str:
    """``{"statusCode","headers","body"}`` as JSON text.

    A long text body with nothing to escape is quoted as it is: the C encoder escapes
    character by character, while finding that there is nothing to escape is one ``in``
    per special character, each a memchr. The text is the encoder's, byte for byte
    (tests/test_codec.py).
    """
    if type(body) is str and len(body) >= LONG_TEXT and not _needs_escaping(body):
        head = strict_dumps({"statusCode": status, "headers": headers})
        return _utf8_safe(f'{head[:-1]},"body":"{body}"}}')
    return strict_dumps({"statusCode": status, "headers": headers, "body": body})


def _needs_escaping(text: str) -> bool:
    return any(c in text for c in _ESCAPED)


def encode(response: Response, message_id: Any) -> str:
    """The frame for a whole response: ``{"statusCode","headers","body"}``.

    Raises one of ``ENCODE_ERRORS`` for a response (or message-id) that is not JSON.
    """
    return _frame(response.status_code, _headers(response, message_id), response.body)


#: What the encoder raises for a value that cannot be JSON text: not serialisable, NaN
#: or infinite, a container holding itself, or nesting past the interpreter's depth.
ENCODE_ERRORS = (TypeError, ValueError, RecursionError)
UNECHOABLE = "The message-id cannot be sent back as JSON."


def _unechoable() -> ErrorResponse:
    return ErrorResponse("Bad Request.", 400, UNECHOABLE)


def reply(
    response: Response, message_id: Any, error_for: Callable[[Exception], ErrorResponse]
) -> str:
    """The one frame that answers a message, whatever ``response`` holds.

    A response that cannot be encoded is answered with ``error_for``'s error for the
    reason; when even that fails, the message-id is what cannot be sent back (nested
    past the encoder's depth), and the answer is a 400 without it.
    """
    try:
        return encode(response, message_id)
    except ENCODE_ERRORS as exc:
        error = error_for(exc)
    try:
        return encode(error, message_id)
    except ENCODE_ERRORS:
        return encode(_unechoable(), None)


def error_frame(status: int, message: str, details: Any, message_id: Any) -> str:
    return encode(ErrorResponse(message, status, details), message_id)


def stream_id() -> str:
    return str(uuid.uuid4())


def stream_chunk(response: Response, chunk: Any, sid: str, message_id: Any) -> str:
    headers = _headers(response, message_id)
    headers["x-stream"] = "chunk"
    headers["x-stream-id"] = sid
    return _frame(response.status_code, headers, chunk)


def stream_done(
    response: Response, sid: str, message_id: Any, error: ErrorResponse | None = None
) -> str:
    """The one frame that ends a stream: 200, or the producer's error and its body; a
    400 without the message-id when that cannot be sent back (see ``reply``)."""
    try:
        return _stream_done(response, sid, message_id, error)
    except ENCODE_ERRORS:
        return _stream_done(response, sid, None, _unechoable())


def _stream_done(response: Response, sid: str, message_id: Any, error: ErrorResponse | None) -> str:
    source = error if error is not None else response
    headers = _headers(source, message_id)
    headers["x-stream"] = "done"
    headers["x-stream-id"] = sid
    status = error.status_code if error is not None else 200
    return strict_dumps(
        {
            "statusCode": status,
            "headers": headers,
            "body": error.body if error is not None else None,
        }
    )
