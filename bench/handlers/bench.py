"""Handlers of the bench service (bench/config.yaml): the same two as the Node peer's
handlers.js in the shared bench, so both engines do the same work per message."""

from __future__ import annotations

from tornado_ws_runner import Response, StreamResponse


def echoHandler(event):
    """The payload back, status 200."""
    event.response = Response(event.payload, 200, {})


def _chunks(count, size):
    body = "x" * size
    for _ in range(count):
        yield body


def streamHandler(event):
    """``payload.chunks`` chunks of ``payload.size`` characters, one frame each."""
    payload = event.payload or {}
    count = int(payload.get("chunks") or 1)
    size = int(payload.get("size") or 1)
    event.response = StreamResponse(_chunks(count, size))
