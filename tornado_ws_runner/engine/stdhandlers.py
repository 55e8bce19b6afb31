"""The standard handlers of the Node packages configurapi-handler-http/-json/-ws.

Each exists under its Node name and a snake_case name. Values pass through
``event.resolve`` so ``Hi $(name)!`` and ``$($event.payload.from)`` work, and
resolution returns new objects: the configured parameters are never changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError

from .event import Event
from .responses import ErrorResponse, JsonResponse, Response

__all__ = [
    "set_json_response_handler",
    "set_response_body_handler",
    "set_response_handler",
    "set_response_header_handler",
    "set_response_status_code_handler",
    "standard_handlers",
]


def set_response_handler(
    event: Event, status_code: Any = 200, body: Any = "", headers: dict[str, Any] | None = None
) -> None:
    """Replaces the response with ``Response(body, statusCode, headers)``."""
    event.response = Response(event.resolve(body), int(status_code), event.resolve(headers or {}))


def set_response_body_handler(event: Event, body: Any = "") -> None:
    event.response.body = event.resolve(body)


def set_response_header_handler(event: Event, name: str, value: Any) -> None:
    event.response.headers[str(name)] = event.resolve(value)


def set_response_status_code_handler(event: Event, status_code: Any) -> None:
    event.response.status_code = int(status_code)


def set_json_response_handler(
    event: Event, status_code: Any = 200, body: Any = None, headers: dict[str, Any] | None = None
) -> None:
    """Replaces the response with a JSON response (sets the JSON content type)."""
    event.response = JsonResponse(
        event.resolve(body), int(status_code), event.resolve(headers or {})
    )


class _SchemaValidator:
    """``validateJsonRequestHandler``: checks the payload against schemas/<event>.json.

    Schemas are read and compiled once per event name and kept; the options list may
    hold ``'emptyPayload'`` to let an event without a payload through.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cache: dict[str, Any] = {}

    def _validator(self, name: str) -> Any:
        if name not in self.cache:
            path = self.directory / f"{name}.json"
            try:
                if path.parent != self.directory:  # a name like '../x' must not leave schemas/
                    raise FileNotFoundError(path)
                schema = json.loads(path.read_text(encoding="utf-8"))
                cls = validators.validator_for(schema, default=Draft202012Validator)
                cls.check_schema(schema)
            except FileNotFoundError:
                raise ErrorResponse(
                    "Internal Server Error", 500, f"no JSON schema for '{name}'"
                ) from None
            except (ValueError, SchemaError) as exc:
                raise ErrorResponse(
                    "Internal Server Error", 500, f"bad JSON schema for '{name}': {exc}"
                ) from None
            self.cache[name] = cls(schema)
        return self.cache[name]

    def __call__(self, event: Event, options: Any = None) -> None:
        allowed = options if isinstance(options, (list, tuple)) else [options]
        payload = event.payload
        if payload is None or payload == "":
            if "emptyPayload" in allowed:
                return
            raise ErrorResponse("Bad Request.", 400, "The request has no payload.")
        if isinstance(payload, (str, bytes)):
            try:
                payload = json.loads(payload)
            except ValueError as exc:
                raise ErrorResponse(
                    "Bad Request.", 400, f"The payload is not JSON: {exc}"
                ) from None
        errors = sorted(
            self._validator(event.name).iter_errors(payload), key=lambda e: list(e.path)
        )
        if errors:
            details = "; ".join(
                f"{'/'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in errors
            )
            raise ErrorResponse("Bad Request.", 400, details)


def standard_handlers(config_directory: Path) -> dict[str, Callable[..., Any]]:
    """The standard handlers, under their Node and snake_case names.

    The JSON validator is built per config because its schemas live beside it.
    """
    validate = _SchemaValidator(config_directory / "schemas")

    def validate_json_request_handler(event: Event, options: Any = None) -> None:
        validate(event, options)

    table: dict[str, Callable[..., Any]] = {
        "setResponseHandler": set_response_handler,
        "setResponseBodyHandler": set_response_body_handler,
        "setResponseHeaderHandler": set_response_header_handler,
        "setResponseStatusCodeHandler": set_response_status_code_handler,
        "setJsonResponseHandler": set_json_response_handler,
        "validateJsonRequestHandler": validate_json_request_handler,
    }
    for function in list(table.values()):
        table[function.__name__] = function
    return table
