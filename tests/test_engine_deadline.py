"""engine/deadline.py without sockets: a coroutine's first step runs at once, and the
rest, awaited later, goes on where it stopped, in the awaiting task, cancellations and
exceptions included."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tornado_ws_runner.engine.deadline import first_step


def test_a_coroutine_that_never_waits_is_done_after_its_first_step() -> None:
    """Nothing is left to await: first_step returns None, the body has run."""
    seen: list[str] = []

    async def body() -> None:
        seen.append("ran")

    async def main() -> None:
        assert first_step(body()) is None
        assert seen == ["ran"]

    asyncio.run(main())


def test_the_rest_after_a_wait_runs_in_the_awaiting_task() -> None:
    """The first step runs in the caller's task; the rest in the task that awaits it."""
    tasks: list[Any] = []

    async def body() -> None:
        tasks.append(asyncio.current_task())
        await asyncio.sleep(0)
        tasks.append(asyncio.current_task())

    async def main() -> None:
        rest = first_step(body())
        assert rest is not None and len(tasks) == 1
        await rest
        assert tasks == [asyncio.current_task()] * 2

    asyncio.run(main())


def test_a_cancel_before_the_rest_is_driven_reaches_the_coroutine_where_it_waits() -> None:
    """A task holding the rest is cancelled before its first turn: the coroutine gets the
    CancelledError at its wait, and its cleanup runs."""
    events: list[str] = []

    async def body(gate: asyncio.Future[None]) -> None:
        try:
            await gate
        except asyncio.CancelledError:
            events.append("cancelled at the wait")
            raise
        finally:
            events.append("cleaned up")

    async def main() -> None:
        gate = asyncio.get_running_loop().create_future()
        rest = first_step(body(gate))
        assert rest is not None
        task = asyncio.ensure_future(rest)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert events == ["cancelled at the wait", "cleaned up"]

    asyncio.run(main())


def test_an_exception_of_the_first_step_propagates_from_first_step() -> None:
    """As it would from ``await``."""

    async def body() -> None:
        raise LookupError("boom")

    async def main() -> None:
        with pytest.raises(LookupError):
            first_step(body())

    asyncio.run(main())


def test_an_exception_after_the_wait_reaches_whoever_awaits_the_rest() -> None:
    async def body() -> None:
        await asyncio.sleep(0)
        raise LookupError("late")

    async def main() -> None:
        rest = first_step(body())
        assert rest is not None
        with pytest.raises(LookupError, match="late"):
            await rest

    asyncio.run(main())
