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
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import make_transient, make_transient_to_detached
from sqlalchemy.orm.attributes import instance_dict, set_committed_value
from zope.sqlalchemy import mark_changed

from .errors import ConfigurationError, SessionConflictError, SessionError, SessionTooLargeError
from .merge import MergeConflict, MergeRule, merge_mappings

__all__ = ["DROPPED", "LINEAGE_CHARS", "MAX_CONTENDED", "WRITTEN", "RowStorage", "WriteOutcome"]

#: Hex digits of the row key that stay when the id is regenerated (96 bits): the lineage.
LINEAGE_CHARS = 24
#: How many contended rows a factory remembers at most (see RowStorage.mark_contended).
MAX_CONTENDED = 4096
# Where a pooled connection remembers its isolation level (see refuses_concurrent_updates).
_ISOLATION_KEY = "sessions_kernel.isolation_level"


def _is_serialization_failure(exc: sa.exc.DBAPIError) -> bool:
    """PostgreSQL's "could not serialize access" (SQLSTATE 40001) or a deadlock (40P01)."""
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return code in ("40001", "40P01")


class _GiveWay(Exception):
    """From :meth:`RowStorage.merge`: drop this write; the row moved to ``args[0]``."""


class WriteOutcome(NamedTuple):
    """What :meth:`RowStorage.update` did with the changes of a stored row."""

    #: whether this request's changes are stored
    written: bool
    #: the row's key as it was read (set when the row was gone or merged)
    stored_id: str | None = None
    #: whether the row was gone: a concurrent request deleted it
    gone: bool = False
    #: what this request changed, applied onto a concurrent write; ``None``: no merge
    merged: tuple[str, ...] | None = None
    #: the row's key now, when a concurrent request gave the session a new id meanwhile
    #: (this request's changes were merged onto it, its own new id, if any, dropped)
    moved_to: str | None = None


#: Stored as they were, or nothing to store.
WRITTEN = WriteOutcome(True)
#: Refused over a concurrent write of droppable columns only, which stands.
DROPPED = WriteOutcome(False)


def _clean(state: Any, dbsession: Any) -> None:
    """Tell the ORM the row holds what is stored, once the kernel's own UPDATE wrote it.

    Plugins assign the row's attributes, which marks it modified; the kernel
    writes them itself (a versioned Core UPDATE) and records each written
    value as committed. Left marked, the row would make the commit run a
    flush of the whole unit of work that finds nothing to write. Cleared
    only when every assigned attribute was written or holds its stored value
    again (nothing else pending).
    """
    if not state.modified:
        return
    attrs = state.attrs
    if not any(attrs[key].history.has_changes() for key in state.committed_state):
        # InstanceState._commit_all: what the ORM itself does after a flush
        state._commit_all(state.dict, dbsession.identity_map)


#: Relationship loading that leaves a row's own SELECT alone (anything else is eager).
_LAZY_RELATIONSHIPS = frozenset(
    {"select", "noload", "raise", "raise_on_sql", "dynamic", "write_only"}
)


class _DirectLoad(NamedTuple):
    """What :meth:`RowStorage._get` needs to load a row without the ORM's query."""

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


class RowStorage:
    """The SQL of one factory's session rows; see the module's documentation.

    Raises :class:`~sessions_kernel.ConfigurationError` for a model whose
    mapper has no version column.
    """

    def __init__(
        self,
        model: type,
        data_serializer: Any,
        merge_rules: Mapping[str, tuple[tuple[str, ...], MergeRule]],
        *,
        clock: Callable[[], float],
        lock_contended_for: int = 0,
        max_data_size: int | None = None,
        setting_columns: Iterable[str] = (),
    ) -> None:
        mapper: Any = sa.inspect(model)
        if mapper.version_id_col is None:
            raise ConfigurationError(
                f"{model.__name__} declares __mapper_args__ without the version column "
                "the kernel uses to notice concurrent writes; include "
                '"version_id_col": cls.__table__.c.version in it'
            )
        self.model = model
        self.data_serializer = data_serializer
        self.table = mapper.local_table
        self.pk_column = mapper.primary_key[0]
        self.version_column = mapper.version_id_col
        #: attribute key -> column
        self.columns = {prop.key: prop.columns[0] for prop in mapper.column_attrs}
        self.pk_key = mapper.get_property_by_column(self.pk_column).key
        self.version_key = mapper.get_property_by_column(self.version_column).key
        self.column_keys = tuple(k for k in self.columns if k != self.version_key)
        # what a new row's own INSERT needs: attribute key -> the column's key in the table
        self.insert_keys = {key: column.key for key, column in self.columns.items()}
        self.version_column_key = self.version_column.key
        #: columns a new row's INSERT leaves NULL when not given (no default of any kind)
        self.null_on_insert = tuple(
            key
            for key, column in self.columns.items()
            if column.default is None and column.server_default is None and key != self.pk_key
        )
        #: column -> (its group, the rule): how plugins' columns merge (``session_merge_rules``)
        self.merge_rules = merge_rules
        #: columns whose write may give way to a concurrent one (``merge.droppable``)
        self.droppable_columns = frozenset(
            name for name, (_, rule) in merge_rules.items() if getattr(rule, "droppable", 0)
        )
        self._insert = self.table.insert()
        # the UPDATE statements, per tuple of changed columns (versioned_update)
        self._updates: dict[tuple[str, ...], Any] = {}
        self.clock = clock
        #: seconds a row that lost a conflict loads locked (see mark_contended)
        self.lock_contended_for = lock_contended_for
        #: bytes the serialized data and flash may take together (``None``: no limit)
        self.max_data_size = max_data_size
        #: columns of runtime-configurable settings, valid only together (see merge)
        self.setting_columns = frozenset(setting_columns)
        # row id -> until when its requests load it locked (see mark_contended)
        self._contended: dict[str, float] = {}
        self._contended_lock = threading.Lock()
        # how _get loads a row without the ORM's query (decided at the first load)
        self._direct: _DirectLoad | Literal[False] | None = None

    def check_size(self, data: bytes | None, flash: bytes | None, *, merged: bool = False) -> None:
        """Refuse to store data and flash over ``max_data_size`` (:class:`SessionTooLargeError`).

        Called with what is about to be stored: one request's data before any
        SQL, and the merged data of two requests before the merge's UPDATE
        (``merged``). Only a write of the data or flash is checked, so a
        session stored over the limit stays readable, takes any other write
        (an idle extension, a logout), and any write of its data that brings
        it under the limit.
        """
        limit = self.max_data_size
        size = len(data or b"") + len(flash or b"")
        if limit is None or size <= limit:
            return
        if merged:
            what = (
                f"merged with a concurrent request's write, the session's data would be "
                f"{size} bytes serialized, over session.max_data_size = {limit}; nothing of "
                "this request was stored and the concurrent write stands."
            )
        else:
            what = (
                f"the session's data would be {size} bytes serialized, over "
                f"session.max_data_size = {limit}; nothing was stored and the stored data "
                "is unchanged."
            )
        raise SessionTooLargeError(
            f"{what} Keep large values in a table of your own and a key to them in the "
            "session, delete keys you no longer need (a session stored over the limit takes "
            "any write that brings it under), or raise session.max_data_size."
        )

    # -- reading ----------------------------------------------------------------------
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

    def _direct_load(self) -> _DirectLoad | Literal[False]:
        """How :meth:`_get` loads a row itself, or ``False`` when only the ORM can.

        Decided at the first load, once the mappers are configured: the model
        must map its one table, column attributes only (none deferred, none
        an expression), with no inheritance, no relationship loaded eagerly,
        and no ``load`` listener (``@reconstructor``), which the ORM's loading
        would call.
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
            and all(rel.lazy in _LAZY_RELATIONSHIPS for rel in mapper.relationships)
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

    # -- writing ----------------------------------------------------------------------
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

    def update(
        self,
        dbsession: Any,
        row: Any,
        *,
        orig_data: bytes | None,
        orig_flash: bytes | None,
        data: Mapping[str, Any],
        flash: Mapping[str, list[Any]],
        lineage: str | None = None,
    ) -> WriteOutcome:
        """UPDATE the changed columns if nobody wrote the row since it was read, else merge.

        ``orig_data``/``orig_flash`` are the serialized data and flash as
        read, ``data``/``flash`` what the request holds now: the base and
        "mine" of a merge (:meth:`merge`); ``lineage`` the session's (the
        first :data:`LINEAGE_CHARS` of the key by default). Returns
        :data:`WRITTEN`, :data:`DROPPED` (the database refused a write of
        droppable columns over a concurrent one, which stands; the row's
        columns are reset to what was read), or an outcome with ``gone`` (the
        row was deleted meanwhile; it is expunged) or ``merged`` (and
        ``moved_to``, when a concurrent request regenerated the id
        meanwhile: the merge found the row by its lineage; the row is
        expunged).
        """
        state = sa.inspect(row)
        changes: dict[str, tuple[Any, Any]] = {}
        for key in self.column_keys:
            history = state.attrs[key].history
            if history.added:
                changes[key] = (history.added[0], history.deleted[0] if history.deleted else None)
        if not changes:
            return WRITTEN
        stored_id = state.identity[0]
        version = getattr(row, self.version_key)
        values = {key: new for key, (new, _) in changes.items()}
        if self.droppable_columns.issuperset(changes) and self.refuses_concurrent_updates(
            dbsession
        ):
            # Only plugins' bookkeeping changed (an idle extension, say), and this database
            # refuses a write over a concurrent one before any rule could merge them. Try it
            # under a savepoint; refused, the concurrent write stands and the browser keeps
            # its cookie, as if this request had come first (see merge.droppable).
            savepoint = dbsession.connection().begin_nested()
            try:
                written = self._update(dbsession, stored_id, version, values)
            except sa.exc.DBAPIError as exc:
                savepoint.rollback()
                if not _is_serialization_failure(exc):
                    raise
                for key, (_, old) in changes.items():
                    set_committed_value(row, key, old)
                _clean(state, dbsession)
                return DROPPED
            savepoint.commit()
        else:
            written = self._update(dbsession, stored_id, version, values)
        outcome = WRITTEN
        if not written:
            base = (orig_data, orig_flash)
            lineage = lineage or stored_id[:LINEAGE_CHARS]
            try:
                merged = self.merge(
                    dbsession, row, stored_id, changes, base, (data, flash), lineage
                )
            except _GiveWay as moved:
                dbsession.expunge(row)
                return WriteOutcome(False, stored_id, moved_to=moved.args[0])
            if merged is None:
                dbsession.expunge(row)
                return WriteOutcome(False, stored_id, gone=True)
            values, version, keys = merged
            now_id = values[self.pk_key]  # ours, our own new one, or a concurrent new one
            own = (stored_id, changes[self.pk_key][0] if self.pk_key in changes else stored_id)
            outcome = WriteOutcome(
                True, stored_id, merged=keys, moved_to=None if now_id in own else now_id
            )
        # The row now holds what is stored: after a merge, every column as the merge left
        # it (a rule's answer may be the other request's value, which this request's own
        # assignment must not overwrite at the commit's flush).
        for key, value in values.items():
            set_committed_value(row, key, value)
        set_committed_value(row, self.version_key, version + 1)
        if self.pk_key in changes or outcome.moved_to:  # the identity map has the old key
            dbsession.expunge(row)
        else:
            _clean(state, dbsession)
        return outcome

    def merge(
        self,
        dbsession: Any,
        row: Any,
        stored_id: str,
        changes: Mapping[str, tuple[Any, Any]],
        base: tuple[bytes | None, bytes | None],
        mine: tuple[Mapping[str, Any], Mapping[str, list[Any]]],
        lineage: str | None = None,
    ) -> tuple[dict[str, Any], int, tuple[str, ...]] | None:
        """Re-read the row another request wrote, apply our changes onto it, write it.

        ``changes`` maps each changed column to (new, old); ``base`` is the
        serialized data and flash as read, ``mine`` the data and flash now.
        The data and the flash queues merge key by key (:func:`merge_mappings`);
        ``updated`` takes the later time; a plugin's column merges by the rule
        its plugin declared (``session_merge_rules``); any other column both
        requests changed is a conflict (:class:`SessionConflictError`).
        Returns the values of every column as now stored (the columns
        written and, for the rest, the other request's), the version they
        were written over and what this request changed, or ``None`` when the
        row is gone.

        A row not found under ``stored_id`` may have been given a new id by a
        concurrent request (a login's ``regenerate_id``): every id of a
        session starts with its ``lineage``, so the row is looked for by it.
        Found, the changes merge onto it under its new id; a new id of this
        request's own is dropped (the concurrent one stands: it is the cookie
        the browser was sent). Only a row deleted meanwhile (a logout) is gone.
        """
        ser = self.data_serializer
        query = sa.select(self.table).where(self.pk_column == stored_id).with_for_update()
        with dbsession.no_autoflush:
            fresh = dbsession.execute(query).mappings().one_or_none()
            if fresh is None and lineage:
                pk = self.pk_column
                in_lineage = sa.and_(pk >= lineage, pk < lineage + "g", pk.startswith(lineage))
                moved = sa.select(self.table).where(in_lineage).with_for_update()
                fresh = dbsession.execute(moved).mappings().one_or_none()
        if fresh is None:
            return None
        moved = fresh[self.pk_column] != stored_id
        if moved:  # merge onto its new id, not ours
            stored_id = fresh[self.pk_column]
            changes = {key: change for key, change in changes.items() if key != self.pk_key}
        orig_data, orig_flash = base
        my_data, my_flash = mine
        values: dict[str, Any] = {}
        conflicts: list[str] = []
        merged_keys: list[str] = []
        reasons: list[str] = []
        groups_done: set[tuple[str, ...]] = set()
        for key, (new, old) in changes.items():
            theirs = fresh[self.columns[key]]
            if key == "data":
                base_data = ser.loads(orig_data) if orig_data is not None else {}
                data, changed, clash = merge_mappings(base_data, my_data, ser.loads(theirs))
                values[key] = ser.dumps(data)
                merged_keys += changed
                conflicts += clash
            elif key == "flash":
                base_flash = ser.loads(orig_flash) if orig_flash is not None else {}
                now = ser.loads(theirs) if theirs is not None else {}
                flash, changed, clash = merge_mappings(base_flash, my_flash, now)
                values[key] = ser.dumps(flash) if flash else None
                merged_keys += [f"flash:{queue}" for queue in changed]
                conflicts += [f"flash:{queue}" for queue in clash]
            elif key == "updated":
                values[key] = max(new, theirs)
            elif key in self.merge_rules:
                group, rule = self.merge_rules[key]
                if group in groups_done:
                    continue
                groups_done.add(group)
                current_mine = {name: getattr(row, name) for name in group}
                group_base = {
                    name: changes[name][1] if name in changes else current_mine[name]
                    for name in group
                }
                current = {name: fresh[self.columns[name]] for name in group}
                try:
                    if current == group_base:  # the other request left the group alone
                        result = current_mine
                    elif len(group) == 1:
                        result = {key: rule(old, new, theirs)}
                    else:
                        result = rule(group_base, current_mine, current)
                except MergeConflict as exc:
                    conflicts += group
                    reasons.append(str(exc))
                    continue
                if len(group) > 1 and not (
                    isinstance(result, Mapping) and set(group) <= result.keys()
                ):
                    raise TypeError(
                        f"the merge rule {getattr(rule, '__qualname__', rule)!r} of the columns "
                        f"{', '.join(group)} returned {result!r}: a rule of a group of "
                        "columns returns a dict with every column of the group"
                    )
                for name in group:
                    if result[name] != current[name]:
                        values[name] = result[name]
                merged_keys += [name for name in group if name in changes]
            elif theirs == old or key == self.pk_key:
                values[key] = new
                merged_keys.append(key)
            else:
                conflicts.append(key)
        version = fresh[self.version_column]
        settings = self.setting_columns
        if settings.intersection(changes):
            # Each request's settings were checked together (session_check_settings), but
            # not this request's with the other's: two valid edits can make an invalid
            # pair (a renewal period under its retry interval). Run again on the newer row.
            theirs_too = sorted(
                name
                for name in settings.difference(changes)
                if fresh[self.columns[name]] != getattr(row, name)
            )
            if theirs_too:
                conflicts += theirs_too
                reasons.append("settings are checked together")
        if not conflicts and ("data" in changes or "flash" in changes):
            # the limit holds on what is stored: both requests' data together
            data_column, flash_column = self.columns["data"], self.columns["flash"]
            self.check_size(
                values.get("data", fresh[data_column]),
                values.get("flash", fresh[flash_column]),
                merged=True,
            )
        if conflicts:
            why = f" ({'; '.join(reasons)})" if reasons else ""
            if moved and not {"data", "flash"} & changes.keys():
                # only plugins' bookkeeping (an idle extension, a CSRF token sealed again):
                # the login's write stands, and this request's gives way (see update)
                raise _GiveWay(stored_id)
            if moved:  # run again, the request would present the old id: a new session
                raise SessionError(
                    f"session {stored_id[:12]}…: a concurrent request gave it a new id (a "
                    f"login) and changed {', '.join(map(repr, conflicts))}{why}, as this "
                    "request did. Run again, this request would find no session under its "
                    "old id and replace the browser's new cookie, so it is refused: nothing "
                    "of it was stored, and the browser keeps the new cookie."
                )
            self.mark_contended(stored_id)
            raise SessionConflictError(
                f"session {stored_id[:12]}…: this request and a concurrent one both changed "
                f"{', '.join(map(repr, conflicts))}{why}. Include pyramid_retry "
                "(config.include('pyramid_retry'), retry.attempts >= 2) to run the request "
                "again on the newer session; nothing was overwritten."
            )
        if not self._update(dbsession, stored_id, version, values):
            self.mark_contended(stored_id)
            raise SessionConflictError(
                f"session {stored_id[:12]}… changed again while its changes were merged; "
                "retry the request (pyramid_retry does it for you)"
            )
        stored = {key: fresh[self.columns[key]] for key in self.column_keys}
        stored.update(values)
        return stored, version, tuple(merged_keys)

    def refuses_concurrent_updates(self, dbsession: Any) -> bool:
        """Whether the database fails an UPDATE of a row a concurrent transaction changed.

        PostgreSQL does at REPEATABLE READ and SERIALIZABLE. The level is asked
        once per pooled connection (unless set per connection through
        execution options).
        """
        connection = dbsession.connection()
        if connection.dialect.name != "postgresql":
            return False
        level = connection.get_execution_options().get("isolation_level")
        if level is None:
            level = connection.info.get(_ISOLATION_KEY)
            if level is None:
                level = connection.info[_ISOLATION_KEY] = connection.get_isolation_level()
        return level in ("REPEATABLE READ", "SERIALIZABLE")

    def versioned_update(
        self, stored_id: str, version: int, values: Mapping[str, Any]
    ) -> tuple[Any, dict[str, Any]]:
        """The UPDATE of a row read at ``version``, and its parameters.

        ``UPDATE … SET <values>, version = version + 1 WHERE id = … AND version = …``;
        one statement per set of columns, built once with bound parameters and
        kept, instead of a new statement on every write.
        """
        keys = tuple(values)
        statement = self._updates.get(keys)
        if statement is None:
            bind = sa.bindparam
            changes: dict[Any, Any] = {
                self.columns[key]: bind(f"_sk_v{i}") for i, key in enumerate(keys)
            }
            statement = (
                sa.update(self.table)
                .where(self.pk_column == bind("_sk_id"), self.version_column == bind("_sk_ver"))
                .values(changes)
                .values({self.version_column: bind("_sk_next")})
            )
            if len(self._updates) < 256:
                self._updates[keys] = statement
        params = {f"_sk_v{i}": value for i, value in enumerate(values.values())}
        params.update(_sk_id=stored_id, _sk_ver=version, _sk_next=version + 1)
        return statement, params

    def _update(
        self, dbsession: Any, stored_id: str, version: int, values: Mapping[str, Any]
    ) -> bool:
        statement, params = self.versioned_update(stored_id, version, values)
        with dbsession.no_autoflush:  # the ORM must not write the row itself first
            result = dbsession.execute(statement, params)
        mark_changed(dbsession)  # see execute
        return bool(result.rowcount == 1)

    def execute(self, dbsession: Any, statement: Any) -> Any:
        """Run one of the kernel's own UPDATE or DELETE statements in the request's transaction."""
        with dbsession.no_autoflush:  # the ORM must not write the row itself first
            result = dbsession.execute(statement)
        # zope.sqlalchemy commits only sessions it saw change; SQL it did not run
        # through the ORM's unit of work has to say so, or it is rolled back.
        mark_changed(dbsession)
        return result

    def flush(self, dbsession: Any, row: Any) -> None:
        """Flush what the application left pending, if anything: the end of the persist stage.

        The row the kernel's own UPDATE just wrote is marked clean
        (:func:`_clean`); should it still look "dirty" to the ORM (assigned
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
