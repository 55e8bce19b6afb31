"""``join_group`` and ``leave_group``: a handler puts its event's connection in a group,
which the management API then addresses as one (``/@groups/{group}``).

A handler runs in its connection's context: the client port binds the runner there
when the connection opens (``bind``), once, so a message costs nothing for it.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from ..errors import ConnectionGone
from ..runtime import RunnerState

__all__ = ["bind", "join_group", "leave_group"]

_runtime: ContextVar[RunnerState] = ContextVar("tornado_ws_runner_runtime")


def bind(state: RunnerState) -> None:
    """The runner whose connection's events run in this context (and tasks made in it)."""
    _runtime.set(state)


def _connection_of(event: Any) -> tuple[RunnerState, str]:
    state = _runtime.get(None)
    if state is None:
        raise RuntimeError("join_group and leave_group work in the handlers of a runner's events")
    return state, str(event.request.headers.get("connection-id"))


async def join_group(event: Any, name: str) -> None:
    """Adds the event's connection to group ``name`` until it leaves it or closes;
    raises ConnectionGone when the connection is already closed."""
    state, connection_id = _connection_of(event)
    if not state.registry.join(str(name), connection_id):
        raise ConnectionGone(connection_id)
    if state.cluster is not None:
        await state.cluster.join(str(name), connection_id)


async def leave_group(event: Any, name: str) -> None:
    """Takes the event's connection out of group ``name`` (nothing if it was not in it)."""
    state, connection_id = _connection_of(event)
    state.registry.leave(str(name), connection_id)
    if state.cluster is not None:
        await state.cluster.leave(str(name), connection_id)
