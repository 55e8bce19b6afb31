"""A bounded buffer of frames between the connection's one reader and a consumer."""

from __future__ import annotations

import asyncio
from collections import deque

from ..engine import Response

__all__ = ["Inbox"]


class Inbox:
    """Frames waiting for one consumer, at most ``capacity`` of them.

    Two ways in, for two kinds of consumer. ``put`` waits for room: a reply's frames
    must not be lost, and while the reader waits it stops reading the socket, so a
    stream the program consumes slowly slows the server's producer down instead of
    growing this process. ``put_dropping_oldest`` never waits: pushes may have no
    consumer at all, and must not stall the replies behind them.

    ``end`` lets the consumer read what is buffered, then ``get`` answers None; what
    ``put`` is given after it is dropped, and a reader waiting for room goes on at once
    (the consumer is gone, or the connection is).
    """

    def __init__(self, capacity: int) -> None:
        self._frames: deque[Response] = deque()
        self._capacity = capacity
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._ended = False

    async def put(self, frame: Response) -> None:
        while len(self._frames) >= self._capacity and not self._ended:
            self._room.clear()
            await self._room.wait()
        if not self._ended:
            self._frames.append(frame)
            self._arrived.set()

    def put_dropping_oldest(self, frame: Response) -> bool:
        """Buffers ``frame``; True when the oldest frame made way for it."""
        dropped = len(self._frames) >= self._capacity
        if dropped:
            self._frames.popleft()
        self._frames.append(frame)
        self._arrived.set()
        return dropped

    async def get(self) -> Response | None:
        while not self._frames:
            if self._ended:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        self._room.set()
        return self._frames.popleft()

    def end(self) -> None:
        self._ended = True
        self._arrived.set()
        self._room.set()
