"""Where an answer ends: the stop-id set and the first stop (both engines)."""

from __future__ import annotations

from collections.abc import Iterable


def stop_ids(*groups: Iterable[int | None] | None) -> tuple[int, ...]:
    """The sorted union of the given id groups (None groups and ids dropped)."""
    return tuple(sorted({t for g in groups if g for t in g if t is not None}))


def first_stop(ids: list[int], stops: Iterable[int]) -> int | None:
    """Index of the first stop id in ``ids``; None when there is none."""
    stops = set(stops)
    return next((i for i, t in enumerate(ids) if t in stops), None)
