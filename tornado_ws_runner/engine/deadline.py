"""The handler deadline, armed only by the chains that wait.

Most handler chains never wait for anything: they finish in their first step, and a
deadline (a timer on the loop) would be armed and cancelled for nothing. ``first_step``
runs a coroutine up to its first suspension; only a chain that suspended goes on under
the deadline, from where it stopped, in the task that drives it, so
``asyncio.current_task()`` and anything bound to it stay right.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

__all__ = ["Suspended", "first_step"]


class Suspended(Coroutine[Any, Any, None]):
    """The rest of a coroutine whose first step runs apart (``step``, or ``first_step``).

    It is a coroutine itself, to await or to hand to a task, and does what the coroutine
    would have done from where it stopped: the value the first step yielded goes to
    whoever drives this, and what the driver sends or throws back (a cancellation
    included, even one that comes before the driver's first turn) goes into the
    coroutine. A first step that finished or raised leaves nothing to run: the first
    turn ends, or raises that exception.
    """

    __slots__ = ("_coro", "_error", "_fresh", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, None], yielded: Any = None) -> None:
        self._coro: Coroutine[Any, Any, None] | None = coro
        self._yielded = yielded
        self._error: BaseException | None = None
        self._fresh = True

    def step(self) -> bool:
        """Runs the first step: True if the coroutine suspended."""
        assert self._coro is not None
        try:
            self._yielded = self._coro.send(None)
        except StopIteration:
            self._coro = None
        except BaseException as exc:  # raised again by the first turn, as a task would
            self._coro, self._error = None, exc
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        else:
            return True
        return False

    def send(self, value: Any) -> Any:
        if self._fresh:
            self._fresh = False
            if self._error is not None:
                raise self._error
            if self._coro is None:
                raise StopIteration
            return self._yielded
        assert self._coro is not None
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self._fresh = False
        if self._coro is None:
            raise typ if val is None else val
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)

    def close(self) -> None:
        if self._coro is not None:
            self._coro.close()

    def __next__(self) -> Any:
        return self.send(None)

    def __iter__(self) -> Suspended:
        return self

    def __await__(self) -> Any:
        return self


def first_step(coro: Coroutine[Any, Any, None]) -> Suspended | None:
    """Runs ``coro`` until it suspends: None if it finished, else the rest to await.

    An exception of the first step propagates from here, as it would from ``await``.
    """
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    return Suspended(coro, yielded)
