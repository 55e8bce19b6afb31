"""A Python Configurapi engine: config.yaml, handler chains, events and responses.

It does no I/O beyond reading its config and handler files, so it runs without a
network; the WebSocket runner feeds it events and turns its responses into frames.
"""

from .config import ApiConfig, load_api_config
from .event import Event, Request
from .identity import Identity
from .responses import ErrorResponse, JsonResponse, ListResponse, Response, StreamResponse
from .service import COMPLETE, CONTINUE, LIFECYCLE_EVENTS, Result, Service

__all__ = [
    "COMPLETE",
    "CONTINUE",
    "LIFECYCLE_EVENTS",
    "ApiConfig",
    "ErrorResponse",
    "Event",
    "Identity",
    "JsonResponse",
    "ListResponse",
    "Request",
    "Response",
    "Result",
    "Service",
    "StreamResponse",
    "load_api_config",
]
