"""A Python client of the runner's protocol, and the ``tornado-ws-runner-client`` command.

``async with connect(url) as client``, then ``await client.call(name, payload)`` for a
reply, ``client.stream(...)`` for a streamed one, ``client.pushes()`` for the frames no
call asked for. Replies are matched to calls by ``message-id``, so calls may run
concurrently on one connection. Built on Tornado's ``websocket_connect``.
"""

from ..engine import ErrorResponse, Response
from .connection import CallOptions, Client, connect
from .errors import ConnectionClosed

__all__ = ["CallOptions", "Client", "ConnectionClosed", "ErrorResponse", "Response", "connect"]
