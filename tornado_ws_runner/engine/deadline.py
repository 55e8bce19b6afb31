"""Running a coroutine up to its first suspension now, and the rest only if there is one.

Most handler chains never wait for anything: they finish in their first step. Whatever
must be armed for a chain that waits (the handler deadline, a timer on the loop) is then
armed only by the chains that do, from where they stopped, in the same task, so
``asyncio.current_task()`` and anything bound to it stay right (``first_step``).

One level up, a message's task is started the same way (``start_eagerly``): its first
step runs at once, as that task, so a message that never waits is answered without the
loop turn a new task waits for (one message on one connection was answered ~20% later
for that turn alone; docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextvars
from asyncio.tasks import _enter_task, _leave_task
from collections.abc import Coroutine
from typing import Any

__all__ = ["Suspended", "first_step", "start_eagerly"]


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


def start_eagerly(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
) -> asyncio.Task[None] | None:
    """A task for ``coro`` whose first step runs now, as that task; None if it finished.

    During the step ``asyncio.current_task()`` is the task that will run the rest, so an
    ``asyncio.timeout`` or a stream registered there is bound to the right task (Python
    3.12's ``eager_start``, done with the ``_enter_task``/``_leave_task`` it uses). The
    step runs in a copy of the current context, as a task's would. The task of a
    finished step only ends in its first turn (or raises what the step raised, logged
    like any task's). Callers must not run inside a task: one loop has one current task.
    """
    rest = Suspended(coro)
    context = contextvars.copy_context()
    task: asyncio.Task[None] = loop.create_task(rest, context=context)
    _enter_task(loop, task)
    try:
        suspended = context.run(rest.step)
    finally:
        _leave_task(loop, task)
    return task if suspended else None
