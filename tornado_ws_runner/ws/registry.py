"""The open connections by id."""

from __future__ import annotations

from collections.abc import Iterator

from .connection import Connection

__all__ = ["Registry"]


class Registry:
    """id -> Connection for the open connections, accepted or still in on_connect."""

    def __init__(self) -> None:
        self._connections: dict[str, Connection] = {}

    def add(self, connection: Connection) -> None:
        self._connections[connection.id] = connection

    def remove(self, connection: Connection) -> None:
        self._connections.pop(connection.id, None)

    def get(self, connection_id: str) -> Connection | None:
        """An accepted connection: one still in on_connect is not yet addressable."""
        connection = self._connections.get(connection_id)
        return connection if connection is not None and connection.accepted else None

    def ids(self) -> list[str]:
        """The accepted connections' ids (len() and iteration count all open ones)."""
        return [cid for cid, connection in self._connections.items() if connection.accepted]

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._connections.values()))
