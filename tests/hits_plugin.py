"""A third-party-style plugin with merge rules of its own (used by tests, not shipped).

Every request that uses the session counts a hit and records the path it
asked for, also read-only requests: exactly the kind of bookkeeping that two
parallel page loads both write. ``hits`` merges by adding both requests'
increments; the last path and its time merge as one group, the later visit
winning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from sessions_kernel import hookimpl
from sessions_kernel.merge import MergeRule, add_both


class HitsMixin:
    hits: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    last_path: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    last_seen: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)


def later_visit(
    base: Mapping[str, Any], mine: Mapping[str, Any], theirs: Mapping[str, Any]
) -> Mapping[str, Any]:
    """The visit seen last wins, path and time together; on a tie, the other request's."""
    return mine if (mine["last_seen"] or 0) > (theirs["last_seen"] or 0) else theirs


@hookimpl
def session_mixins() -> list[type]:
    return [HitsMixin]


@hookimpl
def session_merge_rules(model: type) -> dict[Any, MergeRule]:
    assert issubclass(model, HitsMixin)
    return {"hits": add_both, ("last_path", "last_seen"): later_visit}


@hookimpl
def session_extend(session: Any) -> None:
    row = session.row
    row.hits = (row.hits or 0) + 1
    if row.last_path != session.request.path:
        row.last_path = session.request.path
    if row.last_seen != session.now:
        row.last_seen = session.now
