"""Three-way merge of one request's session changes onto a row another request changed.

Two requests of one browser often run at once. Each read the row at some
version; the one that writes second finds the version moved on. Instead of
overwriting the other's write (the classic lost update of server-side
sessions) or failing, the kernel re-reads the row and applies only what this
request changed, key by key, when the two changed different things. When both
changed the same key to different values, no merge is right: the request is
retried (see :class:`~sessions_kernel.SessionConflictError`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["MISSING", "merge_mappings"]


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
