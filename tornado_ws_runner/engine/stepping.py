"""Running a coroutine up to its first suspension now, and the rest only if there is one.

Most handler chains never wait for anything: they finish in their first step. Whatever
must be armed for a chain that waits (the handler deadline, a timer on the loop) is then
armed only by the chains that do, from where they stopped, in the same task, so
``asyncio.current_task()`` and anything bound to it stay right.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["Suspended", "first_step"]


class Suspended:
    """A coroutine stopped at its first suspension; awaiting this runs the rest.

    It does what ``await coro`` would have done from there: each value the coroutine
    yields goes to the awaiting task, and what the task sends or throws back (a
    cancellation included) goes into the coroutine.
    """

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, None], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, None]:
        coro, value = self._coro, self._yielded
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    value = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = coro.send(sent)
                except StopIteration:
                    return


def first_step(coro: Coroutine[Any, Any, None]) -> Suspended | None:
    """Runs ``coro`` until it suspends: None if it finished, else the rest to await.

    An exception of the first step propagates from here, as it would from ``await``.
    """
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    return Suspended(coro, yielded)
