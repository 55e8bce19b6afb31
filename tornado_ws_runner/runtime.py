"""What the WebSocket and management handlers share, handed to them via ``initialize()``."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from typing import Any

from .engine import Service
from .metrics import Metrics
from .settings import RunnerSettings
from .ws.registry import Registry

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
    metrics: Metrics
    #: The loop it runs on, named once: asyncio's module-level calls look it up each time.
    loop: asyncio.AbstractEventLoop
    phase: Phase = Phase.STARTING
    #: Every event and on_disconnect task, so shutdown can wait for them.
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    #: A message was started eagerly in this turn of the loop (see ``eager_turn``).
    eager_taken: bool = False

    def eager_turn(self) -> bool:
        """True for the first message started in this turn of the loop, then False.

        Only that one runs its first step at once (ws.py, ``_start``); the others of
        the turn get ordinary tasks. One message at a time is answered a loop turn
        sooner (+20% replies/s on one connection), while under load the replies of a
        turn are still written together after its reads: starting every message at
        once cost 28% more CPU per reply with 50 busy connections (docs/performance.md).
        """
        if self.eager_taken:
            return False
        self.eager_taken = True
        self.loop.call_soon(self._end_eager_turn)
        return True

    def _end_eager_turn(self) -> None:
        self.eager_taken = False

    def track(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task
