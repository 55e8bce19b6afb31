"""Who is behind an event: an id and claims ``{type, value, scope}``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["Identity"]


def _as_list(value: Any) -> list[Any]:
    return list(dict.fromkeys(value)) if isinstance(value, (list, tuple, set)) else [value]


class Identity:
    """An authenticated principal; ``scope`` of a claim may be one value or a list."""

    def __init__(self, id: Any = None, claims: Iterable[dict[str, Any]] = ()) -> None:
        self.id = id
        self.issuer: str | None = None
        self.name: str | None = None
        self.email: str | None = None
        self._index: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
        self.claims = list(claims)

    @property
    def claims(self) -> list[dict[str, Any]]:
        return self._claims

    @claims.setter
    def claims(self, value: Iterable[dict[str, Any]]) -> None:
        self._claims = list(value)
        self._index = {}
        for claim in self._claims:
            for scope in _as_list(claim.get("scope")):
                self._index[(claim.get("type"), claim.get("value"), scope)] = claim

    def has_claim(self, type: Any, values: Any = None, scopes: Any = None) -> bool:
        """True when a claim of ``type`` has any of ``values`` in any of ``scopes``."""
        return any(
            (type, value, scope) in self._index
            for value in _as_list(values)
            for scope in _as_list(scopes)
        )

    def get_claim(self, type: Any, value: Any = None, scope: Any = None) -> dict[str, Any] | None:
        return self._index.get((type, value, scope))

    def get_claims(self, type: Any, value: Any = None, scope: Any = None) -> list[dict[str, Any]]:
        return [
            claim
            for claim in self._claims
            if claim.get("type") == type
            and claim.get("value") == value
            and scope in _as_list(claim.get("scope"))
        ]

    hasClaim = has_claim
    getClaim = get_claim
    getClaims = get_claims

    def __repr__(self) -> str:
        return f"Identity({self.id!r}, claims={len(self._claims)})"
