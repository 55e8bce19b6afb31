"""engine/stepping.py without sockets: a task started eagerly runs its first step at
once as itself, a cancel that comes before its first turn still reaches the coroutine,
and an exception of the first step is reported like any task's."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from wsutil import until

from tornado_ws_runner.engine.deadline import start_eagerly


def test_a_coroutine_that_never_waits_is_done_when_start_eagerly_returns() -> None:
    """Its whole body ran inside the call, as a task; no task is left to track."""
    seen: list[Any] = []

    async def body() -> None:
        seen.append(asyncio.current_task())

    def start(loop: asyncio.AbstractEventLoop, checked: asyncio.Future[None]) -> None:
        assert start_eagerly(loop, body()) is None
        assert len(seen) == 1 and isinstance(seen[0], asyncio.Task)
        assert asyncio.current_task(loop) is None, "no task is current after the call"
        checked.set_result(None)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        checked = loop.create_future()
        loop.call_soon(start, loop, checked)
        await asyncio.wait_for(checked, 5)

    asyncio.run(main())


def test_a_cancel_before_the_first_turn_reaches_the_coroutine_where_it_waits() -> None:
    """The task is cancelled before the loop ever ran it: the coroutine, suspended in its
    first step, gets the CancelledError at its wait and its cleanup runs."""
    events: list[str] = []

    async def body(gate: asyncio.Future[None]) -> None:
        try:
            await gate
        except asyncio.CancelledError:
            events.append("cancelled at the wait")
            raise
        finally:
            events.append("cleaned up")

    def start(loop: asyncio.AbstractEventLoop, gate: asyncio.Future[None]) -> Any:
        task = start_eagerly(loop, body(gate))
        assert task is not None
        task.cancel()
        return task

    async def main() -> None:
        loop = asyncio.get_running_loop()
        gate = loop.create_future()
        started: asyncio.Future[Any] = loop.create_future()
        loop.call_soon(lambda: started.set_result(start(loop, gate)))
        task = await started
        with pytest.raises(asyncio.CancelledError):
            await task
        assert events == ["cancelled at the wait", "cleaned up"]

    asyncio.run(main())


def test_the_rest_after_a_wait_runs_in_the_same_task() -> None:
    """After its first wait the coroutine goes on in the task it started as."""
    tasks: list[Any] = []

    async def body() -> None:
        tasks.append(asyncio.current_task())
        await asyncio.sleep(0)
        tasks.append(asyncio.current_task())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        started: asyncio.Future[Any] = loop.create_future()
        loop.call_soon(lambda: started.set_result(start_eagerly(loop, body())))
        task = await started
        await task
        assert tasks == [task, task]

    asyncio.run(main())


def test_an_exception_of_the_first_step_is_reported_as_the_tasks() -> None:
    """Not raised into the caller: asyncio reports it as a task exception never retrieved."""
    reported: list[BaseException | None] = []

    async def body() -> None:
        raise LookupError("boom")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: reported.append(context.get("exception")))
        loop.call_soon(start_eagerly, loop, body())
        # The finished task is in a reference cycle with its exception: a collection
        # is what reports it.
        await until(lambda: gc.collect() >= 0 and reported, "the exception reported")
        assert [type(exc) for exc in reported] == [LookupError]

    asyncio.run(main())
