"""The open connections by id, and the groups they are in (one node's; a closed
connection leaves all its groups)."""

from __future__ import annotations

from collections.abc import Iterator

from .connection import Connection

__all__ = ["Registry"]


class Registry:
    """id -> Connection for the open connections, accepted or still in on_connect."""

    def __init__(self) -> None:
        self._connections: dict[str, Connection] = {}
        #: group name -> its members' ids, in the order they joined (a dict as an ordered set)
        self._groups: dict[str, dict[str, None]] = {}

    def add(self, connection: Connection) -> None:
        self._connections[connection.id] = connection

    def remove(self, connection: Connection) -> None:
        self._connections.pop(connection.id, None)
        for group in list(connection.groups or ()):
            self.leave(group, connection.id)

    def join(self, group: str, connection_id: str) -> bool:
        """Adds an open connection (one in on_connect too) to ``group``; False when no
        such connection is open."""
        connection = self._connections.get(connection_id)
        if connection is None or connection.closing:
            return False
        self._groups.setdefault(group, {})[connection_id] = None
        if connection.groups is None:
            connection.groups = set()
        connection.groups.add(group)
        return True

    def leave(self, group: str, connection_id: str) -> None:
        members = self._groups.get(group)
        if members is not None:
            members.pop(connection_id, None)
            if not members:
                del self._groups[group]
        connection = self._connections.get(connection_id)
        if connection is not None and connection.groups:
            connection.groups.discard(group)

    def members(self, group: str) -> list[str]:
        """The ids in ``group``, in the order they joined; [] for an unknown group."""
        return list(self._groups.get(group, ()))

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
