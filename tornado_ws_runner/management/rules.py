"""The management API's rules without I/O: what a POST body becomes in the frame a
client gets, which request headers go along, and the shape of every error answer.

Kept apart from the RequestHandlers (management.py) so the rules are tested without a
server, as codec.py keeps the WebSocket rules.
"""

from __future__ import annotations

import codecs
import http
import re
from typing import Any

import tornado.httputil
import tornado.web

from ..ws import codec

__all__ = [
    "FILTERED_HEADERS",
    "JSON_TYPE",
    "Problem",
    "declared_length",
    "forwarded_headers",
    "message",
    "parse_body",
]

JSON_TYPE = "application/json"
#: HTTP transport, hop-by-hop, proxy and credential headers: never forwarded to a client.
FILTERED_HEADERS = frozenset(
    {
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "authorization",
        "connection",
        "content-length",
        "cookie",
        "expect",
        "forwarded",
        "host",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "via",
        "x-real-ip",
    }
)
_FILTERED_PREFIXES = ("proxy-", "x-forwarded-")
_DIGITS = re.compile(r"[0-9]+")
_LIST_SEPARATOR = re.compile(r",[ \t]*")


#: Phrases that changed between Python versions (413 was "Request Entity Too Large").
_PHRASES = {413: "Payload Too Large"}


def _phrase(status: int) -> str:
    try:
        return _PHRASES.get(status) or http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def message(status: int) -> str:
    return _phrase(status) + "."


class Problem(tornado.web.HTTPError):
    """An expected error answer: its status, a short message and the details."""

    def __init__(
        self, status: int, details: str = "", headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status, reason=_phrase(status))
        self.details = details
        self.headers = headers or {}


def declared_length(content_length: str) -> int | None:
    """The body size a ``Content-Length`` value declares, read as Tornado's HTTP layer
    reads it: ASCII digits, or a list of identical such values (a repeated header, as
    proxies join them, ``5, 5``).

    ``None`` for a value Tornado refuses (``abc``, ``-1``, ``1, 2``, the Latin-1 digit
    ``²``, more digits than ``int()`` converts), which Tornado answers with its own bare
    400 once ``prepare()`` is done.
    """
    values = _LIST_SEPARATOR.split(content_length)
    if any(value != values[0] for value in values) or not _DIGITS.fullmatch(values[0]):
        return None
    try:
        return int(values[0])
    except ValueError:  # past int()'s digit limit, where Tornado fails too
        return None


def forwarded_headers(headers: tornado.httputil.HTTPHeaders) -> dict[str, str]:
    """The request's headers, lower-cased, less the transport headers; repeats joined."""
    forwarded: dict[str, str] = {}
    for name in headers:
        key = name.lower()
        if key in FILTERED_HEADERS or key.startswith(_FILTERED_PREFIXES):
            continue
        forwarded[key] = ", ".join(headers.get_list(name))
    return forwarded


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON_TYPE or (media.startswith("application/") and media.endswith("+json"))


def _charset(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        name, _, value = part.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"'):
            return value.strip().strip('"')
    return "utf-8"


def parse_body(body: bytes, content_type: str) -> Any:
    """The body a POST delivers: parsed JSON when the content type says JSON, else text.

    Raises ``Problem(400)`` for a body that claims JSON and is not, or text that is not
    in its declared charset (UTF-8 by default). An empty text body is ``""``.
    """
    charset = _charset(content_type)
    try:
        codecs.lookup(charset)
        text = body.decode(charset)
    except LookupError:
        raise Problem(400, f"Unknown charset '{charset}'.") from None
    except UnicodeError:  # idna and punycode fail with a bare UnicodeError
        raise Problem(400, f"The body is not valid {charset} text.") from None
    if not _is_json(content_type):
        return text
    try:
        # NaN, Infinity and 1e400 would reach the client as frames that are not JSON.
        return codec.loads(text)
    except (ValueError, RecursionError) as exc:
        raise Problem(400, f"The body is not valid JSON: {exc}") from None
