"""What the WebSocket and management handlers share, handed to them via ``initialize()``."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .engine import Service
from .metrics import Metrics
from .settings import RunnerSettings
from .ws.registry import Registry
from .ws.sender import SendWatch

if TYPE_CHECKING:
    from .cluster.node import ClusterNode

__all__ = ["Phase", "RunnerState"]


class Phase(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass
class RunnerState:
    """The live parts of one runner; ``service`` is swapped whole on reload."""

    settings: RunnerSettings
    service: Service
    registry: Registry
    #: The send bounds and the connections with frames not yet flushed (ws/sender.py).
    watch: SendWatch
    metrics: Metrics
    #: The loop it runs on, named once: asyncio's module-level calls look it up each time.
    loop: asyncio.AbstractEventLoop
    phase: Phase = Phase.STARTING
    #: This daemon as a node of a cluster (cluster/node.py); None when cluster mode is off.
    cluster: ClusterNode | None = None
    #: Every event, on_connect and on_disconnect task, held (asyncio keeps only weak
    #: references) so shutdown can wait for them. An event's task leaves the set as it
    #: ends (ws/handler.py), the others through ``track``'s done callback.
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    #: The WebSocketHandlers whose socket is open (shutdown waits for them to close).
    sockets: set[Any] = field(default_factory=set)
    #: Set once ``sockets`` is empty, while shutdown waits for that.
    sockets_closed: asyncio.Event | None = None

    def socket_closed(self, handler: Any) -> None:
        """A handler's socket is closed; Tornado calls on_close once for each."""
        self.sockets.discard(handler)
        if not self.sockets and self.sockets_closed is not None:
            self.sockets_closed.set()

    async def wait_sockets_closed(self, timeout: float) -> bool:
        """True once every open socket has closed, False after ``timeout`` seconds."""
        if not self.sockets:
            return True
        self.sockets_closed = asyncio.Event()
        try:
            await asyncio.wait_for(self.sockets_closed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def track(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task
