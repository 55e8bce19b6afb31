"""``ws_postback_function``: the Node runner's ``wsPostbackFunction``, on Tornado's client.

A handler (or any process) posts a response to a ``postback-url``; the management port
delivers it to that client as a frame. Inside the runner, a handler can also use the
event's ``push-function`` header, which sends without going through HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import tornado.httpclient
from tornado.simple_httpclient import HTTPTimeoutError

from ..engine.responses import ErrorResponse, Response, StreamResponse
from ..ws.codec import dumps

__all__ = ["DEFAULT_TIMEOUT", "wsPostbackFunction", "ws_postback_function"]

#: Seconds a postback may take. A frame for a slow client may wait for its send buffer
#: (up to the runner's send timeout, 30 s by default) before the answer comes.
DEFAULT_TIMEOUT = 60.0
#: Headers the HTTP client sets itself from the request it sends.
_OWN_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "host"})


def _unwrap(response: Any) -> tuple[Any, dict[str, str]]:
    """(body, HTTP headers): a response object gives its body and its headers."""
    if isinstance(response, StreamResponse):
        raise TypeError("a StreamResponse cannot be posted back; post each chunk instead")
    if isinstance(response, Response):
        body, headers = response.body, response.headers
    elif (
        isinstance(response, Mapping)
        and response.get("statusCode")
        and isinstance(response.get("headers"), Mapping)
    ):
        body, headers = response.get("body"), response["headers"]
    else:
        body, headers = response, {}
    return body, {
        str(k): str(v)
        for k, v in (headers or {}).items()
        if v is not None and str(k).lower() not in _OWN_HEADERS
    }


def _encode(body: Any, headers: dict[str, str]) -> bytes:
    """A str goes as text, bytes as they are, anything else as JSON."""
    has_type = any(k.lower() == "content-type" for k in headers)
    if isinstance(body, bytes):
        if not has_type:
            headers["Content-Type"] = "application/octet-stream"
        return body
    if isinstance(body, str):
        if not has_type:
            headers["Content-Type"] = "text/plain; charset=utf-8"
        return body.encode("utf-8")
    if not has_type:
        headers["Content-Type"] = "application/json"
    return dumps(body).encode("utf-8")


def _error_body(answer: tornado.httpclient.HTTPResponse) -> Any:
    """The answer's body: parsed JSON when its content type says JSON, else text."""
    raw = answer.body or b""
    text = raw.decode("utf-8", "replace")
    if "json" in answer.headers.get("Content-Type", "").lower():
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


async def ws_postback_function(
    endpoint: str,
    response: Any,
    *,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """POSTs ``response`` to ``endpoint`` (a ``postback-url``) and returns once delivered.

    ``response`` is a ``Response`` or a dict ``{statusCode, headers, body}``, which is
    unwrapped to its body with its headers sent as HTTP headers, or a bare body. A str
    body goes as text, bytes as they are, any other body as JSON (``application/json``
    unless the headers name a content type). ``token`` adds ``Authorization: Bearer <token>`` for a
    management port that requires one.

    Raises ``ErrorResponse``: for an answer of 400 or more, with that status and the
    answer's body (parsed JSON when it is JSON, else text) as its message, as the Node
    function does; 502 when the endpoint cannot be reached, 504 when it does not answer
    within ``timeout`` seconds.
    """
    body, headers = _unwrap(response)
    data = _encode(body, headers)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = tornado.httpclient.HTTPRequest(
        endpoint,
        method="POST",
        headers=headers,
        body=data,
        request_timeout=timeout,
        connect_timeout=timeout,
        follow_redirects=False,
    )
    try:
        answer = await tornado.httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
    except tornado.httpclient.HTTPClientError as exc:  # 599: a timeout or a lost connection
        status = 504 if isinstance(exc, HTTPTimeoutError) else 502
        raise ErrorResponse(
            "Bad Gateway." if status == 502 else "Gateway Timeout.",
            status,
            f"postback to {endpoint} failed: {exc.message or exc}",
        ) from exc
    except OSError as exc:  # refused, reset, unknown host (StreamClosedError is one too)
        raise ErrorResponse(
            "Bad Gateway.", 502, f"postback to {endpoint} failed: {exc.strerror or exc}"
        ) from exc
    if answer.code >= 400:
        raise ErrorResponse(_error_body(answer), answer.code)


#: The Node name, for handlers ported from configurapi-runner-ws.
wsPostbackFunction = ws_postback_function
