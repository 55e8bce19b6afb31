"""What a handler leaves on ``event.response``: the response classes of Configurapi."""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable
from typing import Any

__all__ = [
    "ErrorResponse",
    "JsonResponse",
    "ListResponse",
    "Response",
    "StreamResponse",
]

JSON_CONTENT_TYPE = "application/json"


class Response:
    """A status, headers and a body; Node's ``statusCode`` is kept as an alias.

    No ``__slots__``: ErrorResponse is both a Response and an Exception, and two
    slotted bases cannot share one instance layout.
    """

    def __init__(
        self, body: Any = "", status_code: int = 200, headers: dict[str, Any] | None = None
    ) -> None:
        self.body = body
        self.status_code = status_code
        self.headers: dict[str, Any] = {} if headers is None else headers

    @property
    def statusCode(self) -> int:
        return self.status_code

    @statusCode.setter
    def statusCode(self, value: int) -> None:
        self.status_code = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status_code}, body={self.body!r})"


class ErrorResponse(Response, Exception):
    """A failed answer; it may be raised or left on ``event.response``.

    The body is ``{statusCode, message, details}``. Built from an exception it takes
    the exception's message and keeps the exception (``error``) so the service can add
    a traceback to ``details`` when the operator turned error details on; it never
    does so by itself, because tracebacks must not reach clients by default.
    """

    message: Any
    details: Any

    def __init__(
        self,
        error: Any = "Internal Server Error",
        status_code: int = 500,
        details: Any = "",
        headers: dict[str, Any] | None = None,
    ) -> None:
        Exception.__init__(self, error)
        Response.__init__(
            self, None, status_code, {"Content-Type": JSON_CONTENT_TYPE, **(headers or {})}
        )
        self.error: BaseException | None = None
        if isinstance(error, ErrorResponse):
            message, details, self.status_code = error.message, error.details, error.status_code
            self.error = error.error
        elif isinstance(error, BaseException):
            message = str(error) or type(error).__name__
            self.error = error
        else:
            message = error
        self.message = message
        self.details = details
        self._refresh_body()

    def _refresh_body(self) -> None:
        self.body = {
            "statusCode": self.status_code,
            "message": self.message,
            "details": self.details,
        }

    def with_details(self, details: Any) -> ErrorResponse:
        """Sets ``details`` and keeps the body in step with it."""
        self.details = details
        self._refresh_body()
        return self

    def __str__(self) -> str:
        return f"{self.status_code} {self.message}"


class JsonResponse(Response):
    """A response whose body is JSON, with the JSON content type."""

    def __init__(
        self, body: Any = None, status_code: int = 200, headers: dict[str, Any] | None = None
    ) -> None:
        super().__init__(body, status_code, {"Content-Type": JSON_CONTENT_TYPE, **(headers or {})})


class ListResponse(JsonResponse):
    """A page of a collection; ``Content-Range: items first-last/total`` tells which page."""

    def __init__(
        self,
        collection: Iterable[Any] = (),
        start: int = 0,
        total: int | None = None,
        status_code: int = 200,
        headers: dict[str, Any] | None = None,
    ) -> None:
        items = list(collection)
        total = len(items) + start if total is None else total
        last = start + len(items) - 1 if items else start
        headers = {"Content-Range": f"items {start}-{last}/{total}", **(headers or {})}
        super().__init__(items, status_code, headers)


class StreamResponse(Response):
    """A response delivered in chunks: the body is an iterable or async iterable.

    The runner sends one frame per chunk and asks for the next chunk only after the
    previous frame was handed to the socket, so a slow client slows the producer down
    instead of growing the server's memory.
    """

    def __init__(
        self,
        body: Iterable[Any] | AsyncIterable[Any],
        status_code: int = 200,
        headers: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(body, status_code, headers)
