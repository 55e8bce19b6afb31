"""The protocol from the client's side, free of I/O: messages out, frames in, and which
frames make up the reply to a message.

The connection only moves text between the socket and these functions, so the rules
are the same whichever way the text travels, and can be read in one place.
"""

from __future__ import annotations

import http.client
import itertools
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ..engine import ErrorResponse, Response
from ..ws.codec import strict_dumps

__all__ = [
    "MessageIds",
    "as_json",
    "decode_frame",
    "encode_message",
    "ends_reply",
    "error_from",
    "is_done",
    "result_of",
]


class MessageIds:
    """Message-ids unique to one connection: a random prefix, then a counter.

    The prefix is what tells a frame answering a message of this connection apart from
    a push without remembering every id ever sent: a reply arriving after its call gave
    up (timed out, cancelled, a stream left early) carries an id with this prefix that
    is no longer pending, so it is dropped instead of being taken for a push, and the
    calls that gave up cost no memory.
    """

    def __init__(self) -> None:
        self.prefix = f"{uuid.uuid4().hex[:12]}-"
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self.prefix}{next(self._counter)}"

    def ours(self, message_id: object) -> bool:
        return isinstance(message_id, str) and message_id.startswith(self.prefix)


def encode_message(
    name: str,
    message_id: str,
    payload: Any = None,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, Any] | None = None,
) -> str:
    """The JSON text of one message.

    Header names are lower-cased here, as the runner does, so that a ``Message-ID``
    among ``headers`` cannot stand beside the client's own ``message-id`` and win.
    NaN and Infinity raise ValueError: they are not JSON, and the runner would answer
    400 far from the line that put them in.
    """
    message_headers = {str(k).lower(): v for k, v in (headers or {}).items()}
    message_headers["message-id"] = message_id
    message: dict[str, Any] = {"name": name, "headers": message_headers}
    if params is not None:
        message["params"] = dict(params)
    if payload is not None:
        message["payload"] = payload
    return strict_dumps(message)


def decode_frame(data: str | bytes) -> Response | None:
    """A frame as a Response, or None for text that is not ``{statusCode, headers, body}``
    (a runner never sends that; the connection logs and drops it)."""
    try:
        frame = json.loads(data)
    except ValueError:  # UnicodeDecodeError included
        return None
    if not isinstance(frame, dict):
        return None
    status, headers = frame.get("statusCode"), frame.get("headers", {})
    if type(status) is not int or not isinstance(headers, dict):
        return None
    return Response(frame.get("body"), status, headers)


def is_done(frame: Response) -> bool:
    """The ``x-stream: done`` frame that ends a stream."""
    return frame.headers.get("x-stream") == "done"


def ends_reply(frame: Response) -> bool:
    """Whether no more frames answer the same message: every frame but a stream chunk."""
    return frame.headers.get("x-stream") != "chunk"


#: Headers that belong to one exchange, not to the response itself.
_EXCHANGE_HEADERS = frozenset({"message-id", "x-stream", "x-stream-id"})


def error_from(frame: Response) -> ErrorResponse:
    """The ErrorResponse an error frame is raised as, with the frame's body as it is (a
    handler may answer a status of 400 or more with any body) and its headers but
    those of the exchange (``message-id``, ``x-stream``, ``x-stream-id``): a handler
    that lets the error through then answers its own client with it, and a
    ``message-id`` or ``x-stream: done`` of this exchange would mislead that client."""
    body = frame.body
    message: Any = None
    details: Any = ""
    if isinstance(body, dict):
        message, details = body.get("message"), body.get("details", "")
    elif isinstance(body, str) and body:
        message = body
    if message is None:
        message = http.client.responses.get(frame.status_code, "Error")
    error = ErrorResponse(message, frame.status_code, details)
    error.headers = {k: v for k, v in frame.headers.items() if k not in _EXCHANGE_HEADERS}
    error.body = body
    return error


def result_of(frames: Sequence[Response]) -> Response:
    """What ``call`` returns for the whole reply: its one frame, or for a stream a
    Response of the chunks' bodies (a list) with the done frame's status and headers.

    Raises the ErrorResponse of an error frame (for a stream, of a failed done frame).
    """
    last = frames[-1]
    if last.status_code >= 400:
        raise error_from(last)
    if not is_done(last):
        return last
    return Response([frame.body for frame in frames[:-1]], last.status_code, dict(last.headers))


def as_json(frame: Response) -> dict[str, Any]:
    """A frame in the runner's own shape, for printing."""
    return {"statusCode": frame.status_code, "headers": frame.headers, "body": frame.body}
