"""What committed: the session rows a transaction changed, told to the plugins that listen.

The kernel records, per transaction and factory, which rows its statements
changed (:class:`ChangeLog`), and once the transaction committed hands the
record to :func:`~sessions_kernel.hookspecs.session_rows_changed` as a frozen
:class:`RowChanges`. Garbage collection and the logouts the kernel runs again
after an abort announce theirs the same way, after their own commits.
Nothing is recorded while no plugin implements the hook.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import object_session

if TYPE_CHECKING:
    from .factory import SessionFactory

__all__ = ["ChangeLog", "RowChanges", "record_changes", "watch_orm_writes"]

log = logging.getLogger("sessions_kernel")


@dataclass(frozen=True)
class RowChanges:
    """The session rows one committed transaction changed (see ``session_rows_changed``).

    Each row is named by its primary key. A row may appear more than once
    (written, then re-keyed); an observer that only needs to know *which*
    rows to forget uses :meth:`covers`.
    """

    #: rows inserted or updated, by their key after the change
    written: frozenset[str] = frozenset()
    #: rows deleted, by their key as read
    deleted: frozenset[str] = frozenset()
    #: (old key, new key) of rows given a new id (``regenerate_id``)
    rekeyed: tuple[tuple[str, str], ...] = ()
    #: every row whose key starts with one of these lineages may have been deleted or
    #: re-keyed (a logout that found its row under a newer id of its session)
    lineages: frozenset[str] = frozenset()
    #: any row may have changed: a statement the kernel cannot see into ran
    #: (``Session.execute_logout`` of a plugin's own, "log out everywhere else")
    everything: bool = False
    #: who changed them: ``"request"``, ``"replay"`` (logouts run again after an abort)
    #: or ``"gc"`` (:func:`~sessions_kernel.maintenance.collect_garbage`, ``psessions gc``)
    source: str = "request"
    #: the column values (by attribute key, the version included) that the kernel's
    #: own INSERT or UPDATE committed, of rows in ``written`` whose values it knows:
    #: what a cache may keep (not for rows written by a merge onto another id, nor by
    #: the application's own ORM flushes)
    rows: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False)
    #: ``time.monotonic()`` when the transaction recorded its first change, before it
    #: committed: every change of these rows committed after it is told later (by a
    #: later announcement, or another process's notification)
    recorded_at: float = field(default=0.0, compare=False)

    def covers(self, row_id: str) -> bool:
        """Whether the row with key ``row_id`` may have changed."""
        if self.everything or row_id in self.written or row_id in self.deleted:
            return True
        if any(row_id in pair for pair in self.rekeyed):
            return True
        return any(row_id.startswith(lineage) for lineage in self.lineages)


@dataclass(eq=False)
class ChangeLog:
    """What one transaction changed of one factory's rows so far (see :class:`RowChanges`)."""

    factory: SessionFactory
    written: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)
    rekeyed: list[tuple[str, str]] = field(default_factory=list)
    lineages: set[str] = field(default_factory=set)
    everything: bool = False
    rows: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    recorded_at: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, txn: Any, factory: SessionFactory) -> ChangeLog:
        """The log of ``txn`` for ``factory``: one per transaction, shared by every request
        in it (the starter's test fixtures share one), announced once it committed."""
        try:
            log: ChangeLog = txn.data(factory)
        except KeyError:
            log = cls(factory)
            txn.set_data(factory, log)
            txn.addAfterCommitHook(log._after_commit)
        return log

    @classmethod
    def find(cls, txn: Any, factory: SessionFactory) -> ChangeLog | None:
        """The log of ``txn`` for ``factory`` if something was recorded in it, else ``None``."""
        try:
            log: ChangeLog = txn.data(factory)
        except KeyError:
            return None
        return log

    def record(
        self,
        *,
        written: Iterable[str] = (),
        deleted: Iterable[str] = (),
        rekeyed: tuple[str, str] | None = None,
        lineage: str | None = None,
        everything: bool = False,
        values: Mapping[str, Any] | None = None,
    ) -> None:
        """Note changed rows; ``values``: the columns the kernel wrote of the one written."""
        if values is not None:
            (row_id,) = written
            self.rows[row_id] = values
        self.written.update(written)
        self.deleted.update(deleted)
        if rekeyed is not None:
            self.rekeyed.append(rekeyed)
        if lineage is not None:
            self.lineages.add(lineage)
        self.everything = self.everything or everything

    def covers(self, row_id: str) -> bool:
        """Whether this transaction changed (or may have changed) the row ``row_id``."""
        if self.everything or row_id in self.written or row_id in self.deleted:
            return True
        if any(row_id in pair for pair in self.rekeyed):
            return True
        return any(row_id.startswith(lineage) for lineage in self.lineages)

    def freeze(self, source: str = "request") -> RowChanges:
        return RowChanges(
            written=frozenset(self.written),
            deleted=frozenset(self.deleted),
            rekeyed=tuple(self.rekeyed),
            lineages=frozenset(self.lineages),
            everything=self.everything,
            source=source,
            rows={key: value for key, value in self.rows.items() if key in self.written},
            recorded_at=self.recorded_at,
        )

    def announce(self, source: str = "request") -> None:
        """Hand what was recorded to ``session_rows_changed``: the changes are committed.

        An exception a plugin raises there is logged, not raised: the commit
        stands, and the request's response (a logout's deleted cookie
        included) and the transaction's other after-commit or after-abort
        hooks (other sessions' logouts run again) must go on.
        """
        if self.written or self.deleted or self.rekeyed or self.lineages or self.everything:
            try:
                self.factory.announce(self.freeze(source))
            except Exception:
                log.exception(
                    "a session_rows_changed implementation raised after the commit "
                    "(source %r), which stands",
                    source,
                )

    def _after_commit(self, status: bool) -> None:
        if status:
            self.announce()


def record_changes(factory: SessionFactory, dbsession: Any, **changes: Any) -> None:
    """Tell ``session_rows_changed`` of rows ``dbsession`` changes, once it commits.

    For statements on ``factory``'s table run outside a request, on a
    SQLAlchemy session of this process (a script's "log out everywhere", an
    admin tool): ``changes`` are :meth:`ChangeLog.record`'s (``deleted=ids``,
    ``everything=True`` when the ids are not known). They are announced when
    ``dbsession`` commits, forgotten if it rolls back. Nothing is done while
    no plugin observes (:attr:`SessionFactory.observed
    <sessions_kernel.SessionFactory.observed>`). The application's own ORM
    flushes of the rows are recorded this way by themselves
    (:func:`watch_orm_writes`).
    """
    if not factory.observed:
        return
    key = f"sessions_kernel.changes.{id(factory)}"
    log = dbsession.info.get(key)
    if log is None:
        log = dbsession.info[key] = ChangeLog(factory)
        if not dbsession.info.get(f"{key}.listening"):
            dbsession.info[f"{key}.listening"] = True

            def committed(dbsession: Any) -> None:
                found = dbsession.info.pop(key, None)
                if found is not None:
                    found.announce()

            def rolled_back(dbsession: Any, *args: Any) -> None:
                dbsession.info.pop(key, None)

            sa.event.listen(dbsession, "after_commit", committed)
            sa.event.listen(dbsession, "after_rollback", rolled_back)
    log.record(**changes)


def watch_orm_writes(factory: SessionFactory) -> None:
    """Record what the application's own ORM flushes change of ``factory``'s rows.

    A column the application assigned on ``session.row`` that an autoflush
    wrote before the kernel's persist stage (a query in the view), a row it
    deleted with ``dbsession.delete(row)``: the mapper's ``after_update`` and
    ``after_delete`` events note the row (:func:`record_changes`) in the
    flushing SQLAlchemy session, which announces them when it commits. Bulk
    statements (``update(Model)``, Core) are not seen: they are the
    application's own SQL (a plugin that runs such a statement outside a
    request calls :func:`record_changes`).
    """
    ref = weakref.ref(factory)

    def flushed(target: Any, **changes: Any) -> None:
        factory = ref()
        dbsession = object_session(target)
        if factory is not None and dbsession is not None:
            record_changes(factory, dbsession, **changes)

    def updated(mapper: Any, connection: Any, target: Any) -> None:
        dbsession = object_session(target)
        # called for every instance flushed as dirty, also when no UPDATE was needed
        if dbsession is None or not dbsession.is_modified(target, include_collections=False):
            return
        identity = sa.inspect(target).identity
        flushed(target, written={target.id, *(identity or ())})

    def deleted(mapper: Any, connection: Any, target: Any) -> None:
        identity = sa.inspect(target).identity
        flushed(target, deleted={target.id, *(identity or ())})

    sa.event.listen(factory.model, "after_update", updated)
    sa.event.listen(factory.model, "after_delete", deleted)
