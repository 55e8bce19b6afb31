"""Keep-alive pings for every connection from one task, instead of a task per connection.

Tornado pings each connection from a task of its own: per idle connection a task, two
coroutines, a timer and a Future (bench/memory.py shows them). Here one task pings every
open connection each ``interval`` seconds and, ``timeout`` seconds after that round,
closes those that have sent no pong since it (close code 1000, reason ``ping timed
out``, as Tornado's own keep-alive does). A pong is seen through ``Connection.pong_at``,
which the WebSocket handler sets.

Pings go out ``BATCH`` connections per loop turn, so a round over 10,000 connections
does not hold the loop while other clients wait. A ping is written like any control
frame, outside the send-buffer bound (sender.py): a client that stops reading
is left to the send timeout's sweep.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress

from tornado.websocket import WebSocketClosedError

from .connection import Connection
from .registry import Registry

__all__ = ["BATCH", "KeepAlive"]

#: connections pinged per loop turn.
BATCH = 512


class KeepAlive:
    """Pings ``registry``'s connections every ``interval`` seconds (the first round one
    interval after start); a connection silent ``timeout`` seconds after its ping is
    closed. A timeout longer than the interval spaces the rounds by the timeout."""

    def __init__(self, registry: Registry, interval: float, timeout: float) -> None:
        self.registry = registry
        self.interval = interval  # seconds between the starts of two rounds
        self.timeout = timeout  # seconds a connection has to answer a round's ping
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            await asyncio.sleep(max(0.0, started + max(self.interval, self.timeout) - loop.time()))
            started = loop.time()
            pinged = await self._ping_all()
            await asyncio.sleep(max(0.0, started + self.timeout - loop.time()))
            for connection in pinged:
                if not connection.closing and connection.pong_at < started:
                    connection.close(1000, "ping timed out")

    async def _ping_all(self) -> list[Connection]:
        pinged: list[Connection] = []
        for count, connection in enumerate(self.registry, 1):
            if connection.closing:
                continue
            try:
                connection.socket.ping()
            except WebSocketClosedError:
                continue
            pinged.append(connection)
            if count % BATCH == 0:
                await asyncio.sleep(0)
        return pinged
