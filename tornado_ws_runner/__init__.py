"""tornado-ws-runner: Configurapi-style WebSocket APIs served by a Tornado daemon."""

from ._version import __version__
from .engine import (
    COMPLETE,
    CONTINUE,
    ErrorResponse,
    Event,
    Identity,
    JsonResponse,
    ListResponse,
    Request,
    Response,
    Result,
    Service,
    StreamResponse,
)
from .errors import ConfigError
from .management.postback import ws_postback_function, wsPostbackFunction
from .runner import WsRunner
from .ws.groups import join_group, leave_group

__all__ = [
    "COMPLETE",
    "CONTINUE",
    "ConfigError",
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
    "WsRunner",
    "__version__",
    "join_group",
    "leave_group",
    "wsPostbackFunction",
    "ws_postback_function",
]
