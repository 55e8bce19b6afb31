"""The event a handler chain works on, the request it came from, and ``$(...)`` resolution."""

from __future__ import annotations

import json
import os
import re
import uuid
from typing import Any

import inflection

from .identity import Identity
from .responses import Response

__all__ = ["Event", "Request", "lookup_path"]

_REFERENCE = re.compile(r"\$\(([^)]*)\)")
_INDEX = re.compile(r"\[([^\]]*)\]")
_VERSION = re.compile(r"^v\d+(\.\d+)*$")
_MISSING = object()


class Request:
    """What arrived: a WebSocket message or an HTTP request, already decoded."""

    __slots__ = ("headers", "method", "name", "params", "path", "payload", "query")

    def __init__(
        self,
        name: str | None = None,
        method: str = "",
        headers: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
        payload: Any = None,
        path: str = "",
    ) -> None:
        self.name = name
        self.method = method.lower()
        self.headers: dict[str, Any] = {} if headers is None else headers
        self.params: dict[str, Any] = {} if params is None else params
        self.query: dict[str, Any] = {} if query is None else query
        self.payload = payload
        self.path = path


class Event:
    """One unit of work through the pipeline.

    The name is the request's name; a request without one (an HTTP request) takes the
    name derived from its method and path by the Configurapi rules. ``params`` is a new
    dict (the request's params plus the query's keys), so handlers may change it freely.
    """

    # __dict__ last: the named fields stay slots, and a handler may still add its own
    # attributes (event.user = ...) as Node handlers do; the dict exists only if used.
    __slots__ = (
        "__dict__",
        "_correlation_id",
        "_id",
        "_response",
        "identity",
        "method",
        "name",
        "params",
        "payload",
        "request",
        "version",
    )

    def __init__(self, request: Request, identity: Identity | None = None) -> None:
        self._id: str | None = None
        query = request.query
        self._correlation_id: str | None
        if "correlationid" in query:
            self._correlation_id = str(query["correlationid"])
        elif "correlation-id" in request.headers:
            self._correlation_id = str(request.headers["correlation-id"])
        else:
            self._correlation_id = None
        self.request = request
        self.method = request.method
        self.version: str | None = None
        self.payload = request.payload
        self._response: Response | None = None
        self.identity = identity
        self.params = dict(request.params)
        if request.name or not request.path.strip("/"):
            self.name = request.name or ""
        else:
            self.name = self._name_from_path(request.path)
        if query:
            self.params.update(query)

    @property
    def response(self) -> Response:
        """What the chain answers; an empty 200 until a handler sets one (made when first
        asked for: most handlers set their own)."""
        if self._response is None:
            self._response = Response()
        return self._response

    @response.setter
    def response(self, value: Response) -> None:
        self._response = value

    @property
    def id(self) -> str:
        """A UUID v4, made when first asked for: most events never need one."""
        if self._id is None:
            self._id = str(uuid.uuid4())
        return self._id

    @property
    def correlation_id(self) -> str:
        """The query's ``correlationid``, else the ``correlation-id`` header, else the id."""
        return self._correlation_id if self._correlation_id is not None else self.id

    @correlation_id.setter
    def correlation_id(self, value: str) -> None:
        self._correlation_id = value

    @property
    def correlationId(self) -> str:  # the Node engine's name
        return self.correlation_id

    def _name_from_path(self, path: str) -> str:
        """``GET /v1/users/bob/phones`` -> ``list_v1_user_phones``, ids into params."""
        segments = [s for s in path.split("/") if s]
        if segments and _VERSION.match(segments[0]):
            self.version = segments.pop(0)
        parts: list[str] = []
        for i in range(0, len(segments), 2):
            resource = segments[i]
            resource_id = segments[i + 1] if i + 1 < len(segments) else ""
            singular = inflection.singularize(resource)
            if not resource_id and self.method == "get":
                self.method = "list"
            else:
                resource = singular
            if resource_id:
                self.params[singular] = resource_id
            parts.append(resource)
        prefix = f"{self.method}_{self.version}" if self.version else self.method
        return "_".join([prefix, *parts])

    def resolve(self, value: Any) -> Any:
        """Returns ``value`` with every ``$(...)`` reference replaced; never mutates it.

        A string that is exactly one reference becomes the referenced value itself (a
        dict stays a dict); a reference inside longer text is formatted into it.
        Unresolvable references are left as written.
        """
        if isinstance(value, str):
            if "$(" not in value:
                return value
            whole = _REFERENCE.fullmatch(value)
            if whole:
                found = self._lookup(whole.group(1))
                return value if found is _MISSING else found
            return _REFERENCE.sub(self._substitute, value)
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.resolve(v) for v in value]
        return value

    def _substitute(self, match: re.Match[str]) -> str:
        found = self._lookup(match.group(1))
        if found is _MISSING:
            return match.group(0)
        return found if isinstance(found, str) else _format(found)

    def _lookup(self, key: str) -> Any:
        if key.startswith("$env."):
            return os.environ.get(key[5:], _MISSING)
        if key == "$event.payload":
            return _MISSING if self.payload is None else self.payload
        if key.startswith("$event.payload."):
            return lookup_path(self.payload, key[15:])
        if key in self.params and self.params[key] is not None:
            return self.params[key]
        head, dot, rest = key.partition(".")
        if dot and head in self.params:
            return lookup_path(self.params[head], rest)
        return _MISSING

    def __repr__(self) -> str:
        return f"Event({self.name!r}, id={self.id})"


def lookup_path(value: Any, path: str) -> Any:
    """Follows ``a.b[0].c`` into nested mappings and lists; a dead end gives ``_MISSING``."""
    for part in _INDEX.sub(r".\1", path).strip(".").split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif (
            isinstance(value, list)
            and part.lstrip("-").isdigit()
            and -len(value) <= int(part) < len(value)
        ):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _format(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), default=str)
    if value is True or value is False:
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)
