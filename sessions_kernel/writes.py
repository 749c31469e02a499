"""Writing a stored session's changes: the versioned UPDATE, and the merge when it loses.

:class:`RowWrites`, a layer of :class:`~.storage.RowStorage`, owns
:meth:`~RowWrites.update`: the changed columns are written by one
``UPDATE … WHERE id = … AND version = …`` (:meth:`~RowWrites.versioned_update`);
when a concurrent request wrote the row since it was read, :meth:`~RowWrites.merge`
re-reads it (by its lineage, should a concurrent login have given it a new
id), applies this request's changes onto it with the rules of
:mod:`.merge` and the plugins' ``session_merge_rules``, and writes it, or
refuses the request (:class:`~sessions_kernel.SessionConflictError`). Also
the limit of ``max_data_size`` (:meth:`~RowWrites.check_size`) and what
:meth:`~RowWrites.update` answers, :class:`WriteOutcome`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm.attributes import set_committed_value
from zope.sqlalchemy import mark_changed

from .errors import SessionConflictError, SessionError, SessionTooLargeError
from .merge import MergeConflict, merge_mappings
from .reads import RowReads
from .row_table import LINEAGE_CHARS

__all__ = ["DROPPED", "WRITTEN", "RowWrites", "WriteOutcome"]

# Where a pooled connection remembers its isolation level (see refuses_concurrent_updates).
_ISOLATION_KEY = "sessions_kernel.isolation_level"


def _is_serialization_failure(exc: sa.exc.DBAPIError) -> bool:
    """PostgreSQL's "could not serialize access" (SQLSTATE 40001) or a deadlock (40P01)."""
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return code in ("40001", "40P01")


class _GiveWay(Exception):
    """From :meth:`RowWrites.merge`: drop this write; the row moved to ``args[0]``."""


class WriteOutcome(NamedTuple):
    """What :meth:`RowWrites.update` did with the changes of a stored row."""

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


class RowWrites(RowReads):
    """The writes of a stored row's changes (see the module's documentation)."""

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
