"""Switch to sessions_kernel without logging anyone out (work in progress)."""

from __future__ import annotations

from collections.abc import Sequence

from sessions_kernel import hookimpl

__all__ = ["MigrateMixin"]


class MigrateMixin:
    """Turns the migration from an old session store on. Adds no column."""


@hookimpl
def session_mixins() -> Sequence[type]:
    return [MigrateMixin]
