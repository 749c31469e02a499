"""Loading a session's row: one Core SELECT, locked when the row is contended.

:class:`RowReads`, a layer of :class:`~.storage.RowStorage`, owns the load
(:meth:`~RowReads.fetch`: unlocked on the common path, ``SELECT … FOR
UPDATE`` on a retried attempt and for a while after a lost conflict), the
direct load that skips the ORM's query (:meth:`~RowReads._get`), the search
of a regenerated session by its lineage (:meth:`~RowReads.lineage_lives`)
and the process's memory of contended rows (:meth:`~RowReads.mark_contended`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.attributes import instance_dict

from .row_table import RowTable

__all__ = ["MAX_CONTENDED", "RowReads"]

#: How many contended rows a factory remembers at most (see RowReads.mark_contended).
MAX_CONTENDED = 4096

#: Relationship loading that leaves a row's own SELECT alone (anything else is eager).
_LAZY_RELATIONSHIPS = frozenset(
    {"select", "noload", "raise", "raise_on_sql", "dynamic", "write_only"}
)


class _DirectLoad(NamedTuple):
    """What :meth:`RowReads._get` needs to load a row without the ORM's query."""

    #: ``SELECT <the columns> FROM <table> WHERE <key> = :_sk_id``
    select: Any
    #: the attribute keys, in the order the select gives their columns
    keys: tuple[str, ...]
    #: the class manager's ``new_instance``: the instance, with no ``__init__`` call
    new_instance: Callable[[], Any]
    #: the identity map's key of a row id
    identity_key: Callable[[str], Any]
    #: for ``dbsession.connection``: the connection the model's bind gives
    bind_arguments: dict[str, Any]
    #: whether the model has relationships (a row built from values joins the
    #: request's SQLAlchemy session at once: they load through it)
    relationships: bool
    #: whether one is loaded eagerly (``lazy="joined"``, say): :meth:`RowReads._get`
    #: leaves such a model to the ORM; a row built from values loads it when first read
    eager: bool


class RowReads(RowTable):
    """The loads of one factory's session rows (see the module's documentation)."""

    def fetch(self, dbsession: Any, sid: str, *, retried: bool = False, peek: bool = False) -> Any:
        """The row by its key (``None`` if there is none); locked on a retry or when contended.

        pyramid_retry runs a request again when it lost to a concurrent one
        (both changed one key). Loading the row locked (``SELECT … FOR
        UPDATE``; on SQLite, which locks the whole database instead, by
        taking its write lock first) means no other request can write the
        row before this attempt commits, so it cannot lose again: a
        ``retried`` attempt loads locked. For a while after such a loss
        (``lock_contended_for``, :meth:`mark_contended`), every request of
        the row loads it locked, so that its writers queue instead of
        losing in turn. Otherwise, the common path, and always for a
        ``peek``, the row is read without a lock.
        """
        model = self.model
        if peek or not (retried or self.is_contended(sid)):
            return self._get(dbsession, sid)
        if dbsession.get_bind(model).dialect.name == "sqlite":
            keep = sa.update(self.table).where(self.pk_column == sid)
            self.execute(dbsession, keep.values({self.version_column: self.version_column}))
        return dbsession.get(model, sid, with_for_update=True, populate_existing=True)

    def lineage_lives(self, dbsession: Any, lineage: str) -> bool:
        """Whether a row of the session whose ids start with ``lineage`` exists.

        For a cookie whose id names no row: a session regenerated since (a
        login) still lives under another id of its lineage.
        """
        pk = self.pk_column
        in_lineage = sa.and_(pk >= lineage, pk < lineage + "g", pk.startswith(lineage))
        with dbsession.no_autoflush:
            found = dbsession.execute(sa.select(pk).where(in_lineage).limit(1)).first()
        return found is not None

    def _get(self, dbsession: Any, sid: str) -> Any:
        """What ``dbsession.get(model, sid)`` returns, for less: one Core SELECT.

        For a plain model (:meth:`_direct_load`), the row is made from the
        selected values the way the ORM's own loading makes it: an instance
        of the model without calling ``__init__``, its columns set, attached
        to ``dbsession`` as persistent and unmodified (relationships load
        lazily, as usual). That skips the ORM's query machinery, which costs
        more than the statement (a third of a read, ``benchmarks/README.md``).
        A row the identity map already holds comes from ``get`` itself, and so
        does any model this cannot load exactly, and any row of a SQLAlchemy
        session listening for ``loaded_as_persistent``. Like ``get``, it
        flushes what the application left pending first, unless autoflush is
        off. The SELECT runs on the session's connection, so ORM-level
        ``do_orm_execute`` listeners do not see it (engine events do).
        """
        load = self._direct
        if load is None:
            load = self._direct = self._direct_load()
        if (
            not load
            or load.eager  # the ORM's load joins (or selects) the related rows too
            or dbsession.identity_map.get(load.identity_key(sid)) is not None
            or dbsession.dispatch.loaded_as_persistent  # an event the ORM's loading sends
        ):
            return dbsession.get(self.model, sid)
        if dbsession.autoflush:
            dbsession.flush()  # nothing to do (the common case) costs a check
        connection = dbsession.connection(bind_arguments=load.bind_arguments)
        values = connection.execute(load.select, {"_sk_id": sid}).first()
        if values is None:
            return None
        row = load.new_instance()
        instance_dict(row).update(zip(load.keys, values, strict=True))
        make_transient_to_detached(row)  # persistent and clean once added
        dbsession.add(row)
        return row

    def row_from_values(
        self,
        sid: str,
        values: Mapping[str, Any],
        dbsession: Any | None,
        need_dbsession: Callable[[], Any],
    ) -> Any:
        """The stored row built from committed column values, without SQL, or ``None``.

        For a row a plugin served (``session_row_lookup``): the model's
        instance is made as :meth:`_get` makes a loaded one, persistent and
        unmodified. It is added to ``dbsession`` when one is given (the
        request already has its SQLAlchemy session, or the model has
        relationships, which load through it); otherwise it stays detached
        until the request needs its SQLAlchemy session (:meth:`attach`), so a
        read served this way takes no connection and begins no transaction.
        ``None`` when only the ORM can load this model (see
        :meth:`_direct_load`; a relationship loaded eagerly is not loaded here,
        but lazily when first read), or when ``dbsession`` already holds the row or
        listens for ``loaded_as_persistent``: the kernel then loads it itself.
        """
        load = self._direct
        if load is None:
            load = self._direct = self._direct_load()
        if not load:
            return None
        if dbsession is None and load.relationships:
            dbsession = need_dbsession()
        if dbsession is not None and (
            dbsession.identity_map.get(load.identity_key(sid)) is not None
            or dbsession.dispatch.loaded_as_persistent
        ):
            return None
        try:
            row_values = [(key, values[key]) for key in load.keys]
        except KeyError as exc:
            raise TypeError(
                f"session_row_lookup returned the values of row {sid[:12]}… without the "
                f"column attribute {exc.args[0]!r}: return every column attribute of "
                f"{self.model.__name__}, the version included"
            ) from None
        if values[self.pk_key] != sid:
            raise TypeError(f"session_row_lookup returned another row's values for {sid[:12]}…")
        row = load.new_instance()
        instance_dict(row).update(row_values)
        make_transient_to_detached(row)
        if dbsession is not None:
            dbsession.add(row)
        return row

    @property
    def servable(self) -> bool:
        """Whether a row of this model can be built from column values (``session_row_lookup``)."""
        load = self._direct
        if load is None:
            load = self._direct = self._direct_load()
        return bool(load)

    def stored_values(self, row: Any) -> dict[str, Any] | None:
        """The row's column values as the kernel's own statement just stored them (every
        column attribute, the version included), or ``None`` if the row does not hold
        them all (a row the ORM is to insert)."""
        held = instance_dict(row)
        try:
            return {key: held[key] for key in self.columns}
        except KeyError:
            return None

    def holds(self, dbsession: Any, sid: str) -> bool:
        """Whether ``dbsession``'s identity map holds the row ``sid`` (only for a model
        that is :attr:`servable`)."""
        load = self._direct
        if not load:
            return False
        return dbsession.identity_map.get(load.identity_key(sid)) is not None

    def read_values(self, connection: Any, sid: str) -> dict[str, Any] | None:
        """The row's column values by attribute key, read on ``connection``; ``None``: no row.

        One ``SELECT``: what :func:`~sessions_kernel.hookspecs.session_row_lookup`
        returns, for a plugin that fills what it serves from the database
        (on a connection of its own, never the request's transaction). Only
        for a model that is :attr:`servable`.
        """
        load = self._direct
        if load is None:
            load = self._direct = self._direct_load()
        if not load:
            raise TypeError(
                f"{self.model.__name__} cannot be built from column values (see "
                "session_row_lookup): a plain model maps one table's columns only"
            )
        values = connection.execute(load.select, {"_sk_id": sid}).first()
        return None if values is None else dict(zip(load.keys, values, strict=True))

    def attach(self, dbsession: Any, row: Any) -> None:
        """Add a detached row built from values (:meth:`row_from_values`) to ``dbsession``.

        Called when the request first needs its SQLAlchemy session for the
        session (a write, a logout). Should the application have loaded the
        same row itself meanwhile, its copy leaves the SQLAlchemy session and
        the session's row takes its place: the pipeline's writes are made
        through the row it read.
        """
        state = sa.inspect(row)
        if not state.detached:
            return
        existing = dbsession.identity_map.get(state.key)
        if existing is not None and existing is not row:
            dbsession.expunge(existing)
        dbsession.add(row)

    def _direct_load(self) -> _DirectLoad | Literal[False]:
        """How :meth:`_get` loads a row itself, or ``False`` when only the ORM can.

        Decided at the first load, once the mappers are configured: the model
        must map its one table, column attributes only (none deferred, none
        an expression), with no inheritance and no ``load`` listener
        (``@reconstructor``), which the ORM's loading would call. A model
        with a relationship loaded eagerly is built from values (a served
        row, whose relationship loads when first read) but :meth:`_get`
        leaves its load to the ORM (``eager``).
        """
        mapper: Any = sa.inspect(self.model)
        table = self.table
        plain = (
            mapper.inherits is None
            and mapper.polymorphic_on is None
            and mapper.persist_selectable is table
            and not mapper.class_manager.dispatch.load
            and all(
                len(prop.columns) == 1
                and not prop.deferred
                and getattr(prop.columns[0], "table", None) is table
                for prop in mapper.column_attrs
            )
        )
        if not plain:
            return False
        keys = tuple(self.columns)  # every column attribute, in the mapper's order
        select = sa.select(*self.columns.values())
        return _DirectLoad(
            select=select.where(self.pk_column == sa.bindparam("_sk_id")),
            keys=keys,
            new_instance=mapper.class_manager.new_instance,
            identity_key=lambda sid: mapper.identity_key_from_primary_key((sid,)),
            bind_arguments={"mapper": mapper},
            relationships=bool(mapper.relationships),
            eager=not all(rel.lazy in _LAZY_RELATIONSHIPS for rel in mapper.relationships),
        )

    def mark_contended(self, row_id: str) -> None:
        """Have every request of this process load the row locked for a while.

        Called when a request lost to a concurrent one and has to run again.
        For ``lock_contended_for`` seconds, the row's loads take its lock
        (``SELECT … FOR UPDATE``), so its writers queue instead of each
        running, losing and running again: under contention that is fewer
        attempts, and more requests per second. The memory is this
        process's own, and bounded: the oldest rows are forgotten first.
        """
        if not self.lock_contended_for:
            return
        with self._contended_lock:
            contended = self._contended
            contended.pop(row_id, None)
            contended[row_id] = self.clock() + self.lock_contended_for
            while len(contended) > MAX_CONTENDED:
                del contended[next(iter(contended))]

    def is_contended(self, row_id: str) -> bool:
        """Whether the row is to load locked (:meth:`mark_contended`)."""
        until = self._contended.get(row_id)
        if until is None:
            return False
        if until > self.clock():
            return True
        with self._contended_lock:
            if self._contended.get(row_id) == until:
                del self._contended[row_id]
        return False
