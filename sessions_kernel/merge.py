"""Three-way merge of one request's session changes onto a row another request changed.

Two requests of one browser often run at once. Each read the row at some
version; the one that writes second finds the version moved on. Instead of
overwriting the other's write (the classic lost update of server-side
sessions) or failing, the kernel re-reads the row and applies only what this
request changed, key by key, when the two changed different things. When both
changed the same key to different values, no merge is right: the request is
retried (see :class:`~sessions_kernel.SessionConflictError`).

Plugins say how their own columns merge with the ``session_merge_rules``
hook; the rules below cover the common cases.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = [
    "MISSING",
    "MergeConflict",
    "MergeRule",
    "add_both",
    "droppable",
    "earliest",
    "keep_theirs",
    "latest",
    "merge_mappings",
]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: Stands for a key absent from a mapping.
MISSING: Any = _Missing()


def merge_mappings(
    base: Mapping[str, Any], mine: Mapping[str, Any], theirs: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Apply the changes from ``base`` to ``mine`` onto ``theirs``.

    :param base: what this request read.
    :param mine: what this request wants to write.
    :param theirs: what the row holds now, written by another request.

    Returns the merged mapping, the keys this request changed (set, replaced
    or deleted), and those of them in conflict: changed by the other request too.
    Both having written the same value is still a conflict: two requests that
    each read 0 and wrote 1 meant two increments. Keys only the other request
    changed keep its values. Values are compared with ``==``, so a nested list
    or dict that a request left equal counts as unchanged.
    """
    merged = dict(theirs)
    changed, conflicts = [], []
    for key in base.keys() | mine.keys():
        before, after = base.get(key, MISSING), mine.get(key, MISSING)
        if before == after:
            continue
        changed.append(key)
        now = theirs.get(key, MISSING)
        if now != before:
            conflicts.append(key)
        elif after is MISSING:
            merged.pop(key, None)
        else:
            merged[key] = after
    return merged, sorted(changed), sorted(conflicts)


# -- plugins' merge rules ----------------------------------------------------------------------


class MergeConflict(Exception):
    """Raised by a merge rule: the two writes cannot be reconciled.

    The kernel then treats the columns as changed by both requests, as it
    does for a data key: the request fails with
    :class:`~sessions_kernel.SessionConflictError` and, with pyramid_retry,
    runs again on the newer row. The message says why (it is shown in the
    error).
    """


#: A merge rule for one column: ``rule(base, mine, theirs) -> value``, or for a group of
#: columns ``rule(base, mine, theirs) -> dict``, each argument a dict of the group's columns.
MergeRule = Callable[[Any, Any, Any], Any]


_R = TypeVar("_R", bound=MergeRule)


def droppable(rule: _R) -> _R:
    """Mark a rule for whose columns the concurrent request's value is acceptable too.

    PostgreSQL at REPEATABLE READ or SERIALIZABLE refuses an UPDATE of a row
    a concurrent transaction changed, before any rule can see both values.
    When every column a request changed has a droppable rule, the kernel
    then drops that request's write (the concurrent write stands, the
    browser keeps its cookie) instead of failing it. ``latest``,
    ``earliest`` and ``keep_theirs`` are droppable; ``add_both`` is not (a
    dropped increment is lost), so there the request fails with a retryable
    error instead.
    """
    rule.droppable = True  # type: ignore[attr-defined]
    return rule


@droppable
def latest(base: Any, mine: Any, theirs: Any) -> Any:
    """The greater of the two writes; a ``None`` loses to any value.

    For expiries a concurrent request extended: the later expiry wins.
    """
    if mine is None or theirs is None:
        return theirs if mine is None else mine
    return max(mine, theirs)


@droppable
def earliest(base: Any, mine: Any, theirs: Any) -> Any:
    """The smaller of the two writes; a ``None`` loses to any value."""
    if mine is None or theirs is None:
        return theirs if mine is None else mine
    return min(mine, theirs)


@droppable
def keep_theirs(base: Any, mine: Any, theirs: Any) -> Any:
    """The concurrent request's value stands; this request's write of the column is dropped.

    For bookkeeping where any recent value will do (the last IP address seen).
    """
    return theirs


def add_both(base: Any, mine: Any, theirs: Any) -> Any:
    """Both requests' increments: ``theirs + (mine - base)``. For counters.

    ``None`` counts as 0 on every side, so a request that reset the counter
    (to ``None``) and one that added to it merge into the reset plus the
    addition.
    """
    return (theirs or 0) + ((mine or 0) - (base or 0))
