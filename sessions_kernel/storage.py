"""Row storage: every SQL statement the kernel runs on a session's row.

One :class:`RowStorage` per session factory, built with it: what the
statements need (the table, its key and version columns, an ``UPDATE`` per
set of changed columns, the plugins' merge rules) is resolved once. Its
methods take the request's SQLAlchemy session; they know nothing of the
request, the cookie or events, which stay with :class:`~sessions_kernel.Session`.

* :meth:`~RowStorage.fetch`: the row by its primary key (locked on a retried attempt,
  and for a while after a lost conflict: :meth:`~RowStorage.mark_contended`);
* :meth:`~RowStorage.insert`: a new session's row, one Core ``INSERT``;
* :meth:`~RowStorage.update`: the changed columns, if nobody wrote the row since
  it was read, else merged with the other write (:meth:`~RowStorage.merge`);
* :meth:`~RowStorage.delete`, :meth:`~RowStorage.rekey`, :meth:`~RowStorage.replay`:
  logouts and held ids, which must hold even when the request's transaction aborts.

The class is built in layers, a module each: :class:`~.row_table.RowTable`
(what the statements need of the model, resolved once), :class:`~.reads.RowReads`
(the load and the memory of contended rows), :class:`~.writes.RowWrites` (the
versioned UPDATE, the merge with a concurrent write, ``max_data_size``) and,
here, :class:`RowStorage` itself: new rows, the flush, logouts and held ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import make_transient, make_transient_to_detached
from sqlalchemy.orm.attributes import instance_dict, set_committed_value
from zope.sqlalchemy import mark_changed

from .reads import MAX_CONTENDED
from .row_table import LINEAGE_CHARS
from .writes import DROPPED, WRITTEN, RowWrites, WriteOutcome

__all__ = ["DROPPED", "LINEAGE_CHARS", "MAX_CONTENDED", "WRITTEN", "RowStorage", "WriteOutcome"]


class RowStorage(RowWrites):
    """The SQL of one factory's session rows; see the module's documentation.

    Raises :class:`~sessions_kernel.ConfigurationError` for a model whose
    mapper has no version column.
    """

    def insert(self, dbsession: Any, row: Any, *, attach: bool = True) -> None:
        """INSERT a new session's row: one Core statement, not the ORM's unit of work.

        The row object was built, given the settings and columns of the
        request and handed to the plugins' ``session_renew`` and
        ``session_persist`` hooks (and to ``SessionCreated`` subscribers);
        its column values are what the INSERT writes, with the first
        version. The ORM's flush of one new object costs more than the
        statement itself. With ``attach``, the stored row then joins the
        identity map, clean, as the flush would have left it: for a
        transaction that goes on (the starter's test fixtures share one
        across requests), whose next request finds it there without a
        SELECT. Without, the commit follows: the row stays out of the
        SQLAlchemy session, holding the values stored, so the commit has
        no object to expire. A row that holds anything but column values
        (a relationship a plugin assigned) goes through ``dbsession.add``
        instead.
        """
        keys = self.insert_keys
        values = {}
        for key, value in vars(row).items():
            column = keys.get(key)
            if column is not None:
                values[column] = value
            elif key != "_sa_instance_state":
                dbsession.add(row)
                return
        values_keys = set(vars(row))
        values[self.version_column_key] = 1  # what the ORM's version counter starts at
        # autoflush on: the application's pending objects (a user the row refers to) first
        dbsession.execute(self._insert, values)
        mark_changed(dbsession)
        # the row holds what was stored: its version, and what the INSERT left NULL
        stored = instance_dict(row)
        stored[self.version_key] = 1
        for key in self.null_on_insert:
            if key not in values_keys:
                stored[key] = None
        if attach:
            # As stored, clean (make_transient_to_detached resets the attributes'
            # history), it joins the identity map: a later request in a shared
            # transaction (the starter's test fixtures) finds it there without a SELECT.
            make_transient_to_detached(row)
            dbsession.add(row)

    def flush(self, dbsession: Any, row: Any) -> None:
        """Flush what the application left pending, if anything: the end of the persist stage.

        The row the kernel's own UPDATE just wrote is marked clean
        (:func:`~.writes._clean`); should it still look "dirty" to the ORM (assigned
        attributes with no net change left), it alone is no reason to flush.
        """
        if (
            dbsession.new
            or dbsession.deleted
            or any(obj is not row or dbsession.is_modified(obj) for obj in dbsession.dirty)
        ):
            dbsession.flush()

    # -- logouts and held ids -----------------------------------------------------------
    def delete(
        self, dbsession: Any, row: Any, lineage: str | None, hold: Callable[[Any], Any]
    ) -> None:
        """DELETE the row, also when a concurrent request gave it a new id meanwhile.

        The row is expunged and deleted by its key as read. If that finds
        nothing, another request regenerated the id (or deleted the row)
        since this one read it: the session's lineage (``lineage``, or the
        first :data:`LINEAGE_CHARS` of the key), which every id of the
        session starts with, finds it by a range of the primary key. A plain
        DELETE whatever the version: a logout wins over a concurrent write.
        The lineage's DELETE is handed to ``hold`` first, before any
        statement runs: it is the one to run again if the request's
        transaction aborts (a refused DELETE included), since by the time it
        is replayed the id may have moved again.
        """
        stored_id = sa.inspect(row).identity[0]
        dbsession.expunge(row)
        lineage = lineage or stored_id[:LINEAGE_CHARS]
        pk = self.pk_column
        in_lineage = sa.and_(pk >= lineage, pk < lineage + "g", pk.startswith(lineage))
        by_lineage = sa.delete(self.table).where(in_lineage)
        hold(by_lineage)
        if not self.execute(dbsession, sa.delete(self.table).where(pk == stored_id)).rowcount:
            self.execute(dbsession, by_lineage)

    def rekey(
        self, dbsession: Any, row: Any, new_id: str, now: int, run: Callable[[Any], Any]
    ) -> None:
        """UPDATE the row's key now through ``run``, and re-key the ORM's copy to match.

        ``run`` executes the statement (the session's ``execute_logout``, so
        that it holds). What the request assigned to the row meanwhile stays
        to be written by the persist stage.

        The statement increments the stored version rather than writing the
        one this request read plus one: had a concurrent request written the
        row since it was read, the persist stage's versioned UPDATE then finds
        the version moved on and merges, instead of matching the concurrent
        write's version and overwriting it.
        """
        state = sa.inspect(row)
        stored_id = state.identity[0]
        pending = {}  # key -> (assigned, as read)
        for key in self.column_keys:
            history = state.attrs[key].history
            if key != self.pk_key and history.added:
                pending[key] = (history.added[0], history.deleted[0] if history.deleted else None)
        version = getattr(row, self.version_key)
        # the key, and what the kernel's own UPDATE would write with it: one statement
        updated = self.columns["updated"]
        run(
            sa.update(self.table)
            .where(self.pk_column == stored_id)
            .values(
                {
                    self.pk_column: new_id,
                    updated: sa.case((updated < now, now), else_=updated),
                    self.version_column: self.version_column + 1,
                }
            )
        )
        dbsession.expunge(row)
        make_transient(row)
        committed = {self.pk_key: new_id, "updated": now, self.version_key: version + 1}
        # the row as stored; what this request assigned is assigned again once it is attached
        committed.update((key, old) for key, (_, old) in pending.items())
        for key, value in committed.items():
            set_committed_value(row, key, value)
        make_transient_to_detached(row)
        dbsession.add(row)
        for key, (value, _) in pending.items():
            setattr(row, key, value)

    def replay(self, dbsession: Any, statements: Iterable[Any]) -> None:
        """Run ``statements`` in a transaction of their own (the request's was aborted).

        Once more on a fresh connection if the connection broke (the statements
        are DELETEs and key UPDATEs by key or lineage: running them twice is
        harmless), since what aborted the request was often that same break.
        """
        engine = dbsession.get_bind(self.model)
        statements = list(statements)
        for attempt in (1, 2):
            try:
                with engine.begin() as connection:
                    for statement in statements:
                        connection.execute(statement)
                return
            except sa.exc.DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
