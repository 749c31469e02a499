"""The request's session: a lazy ISession backed by one row of the model."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from pyramid.interfaces import ISession
from pyramid.response import Response as _HeaderMaker
from sqlalchemy.orm import make_transient, make_transient_to_detached
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from transaction.interfaces import NoTransaction
from zope.interface import implementer
from zope.sqlalchemy import mark_changed

from . import events
from .crypto import TOKEN_BYTES, decode_payload, encode_payload, session_id_for
from .errors import InconsistentDataError, SessionConflictError, SessionError
from .merge import MergeConflict, merge_mappings
from .model import KERNEL_COLUMNS
from .settings import SessionSettings

if TYPE_CHECKING:
    from pyramid.request import Request
    from pyramid.response import Response

    from .factory import SessionFactory

__all__ = ["Peek", "Session"]


@dataclass(frozen=True)
class Peek:
    """What :meth:`SessionFactory.peek <sessions_kernel.SessionFactory.peek>` found."""

    #: the stored row, only when every active plugin accepted it
    row: Any = None
    #: a read-only copy of the session's data; empty unless the session is valid
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: what listings show of the row (``SessionFactory.describe``), when valid
    info: Any = None
    #: why there is no valid session: ``"no session cookie"``, ``"no stored session"``,
    #: ``"nothing stored yet"``, or the reason a plugin rejected it (``"idle timeout"``)
    reason: str | None = None
    #: whether a stored session was found but a plugin rejected it (``reason`` says why);
    #: the next real use of the session deletes it
    rejected: bool = False

    @property
    def valid(self) -> bool:
        """Whether the request's cookie names a stored session the plugins accept."""
        return self.row is not None


# Attributes that exist only once the session was loaded; reading one loads it.
_LAZY = frozenset(
    {"row", "now", "new", "cookie_extras", "_data", "_flash", "_token", "_created", "_columns"}
)
_MISSING = object()
# transaction.Transaction.status of a transaction one can still write into
_OPEN_STATUSES = frozenset({"Active", "Doomed"})
#: Cookie extras the kernel owns (a plugin's extras have other names).
LINEAGE_EXTRA = "sessions_kernel.lineage"
UNSTORED_EXTRA = "sessions_kernel.unstored"
#: Hex digits of the row key that stay when the id is regenerated (96 bits): the lineage.
LINEAGE_CHARS = 24
#: How many cookies of the session's name one request may look up.
MAX_COOKIES_TRIED = 4
log = logging.getLogger("sessions_kernel")
# Where a pooled connection remembers its isolation level (see _refuses_concurrent_updates).
_ISOLATION_KEY = "sessions_kernel.isolation_level"
# Values that cannot change in place: handing one out cannot change the data.
_IMMUTABLE = frozenset({str, int, float, bool, type(None)})


def row_id(token: bytes, lineage: str | None = None) -> str:
    """The row key of a token: its SHA-256 (hex), led by the session's lineage if it has one.

    A session's first id is the plain SHA-256 of its first token. Its first
    :data:`LINEAGE_CHARS` hex digits are the session's *lineage*, which every
    later id keeps (``regenerate_id`` replaces only the rest, from the new
    token), so that a logout can find the session even when a concurrent
    request regenerated its id: by a range of the primary key.
    """
    digest = session_id_for(token)
    return digest if lineage is None else lineage + digest[LINEAGE_CHARS:]


def _cookie_values(header: str, name: str) -> list[str]:
    """Every value of the cookie ``name`` in a Cookie header, in the browser's order."""
    values = []
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            values.append(value.strip().strip('"'))
    return values


def _is_serialization_failure(exc: sa.exc.DBAPIError) -> bool:
    """PostgreSQL's "could not serialize access" (SQLSTATE 40001) or a deadlock (40P01)."""
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return code in ("40001", "40P01")


@implementer(ISession)
class Session(MutableMapping[str, Any]):
    """``request.session``: Pyramid's ISession, stored server-side.

    Nothing is read before the first use. The first use decrypts the cookie
    and fetches the row by its primary key (one SQL statement), runs the
    plugins' ``session_load`` and ``session_validate`` hooks, and registers
    the persist stage to run before the request's transaction commits. The
    cookie is sent only once that commit succeeded.

    Values must be serializable by the data serializer (JSON by default).
    Changes are found by comparing the serialized data with what was loaded,
    so nested mutation (``session["cart"].append(item)``) is saved without
    calling :meth:`changed`. A request that set or deleted no key and was
    handed no value that can change in place (only strings, numbers, booleans,
    ``None``) cannot have changed the data, and skips that serialization.
    """

    def __init__(self, request: Request, factory: SessionFactory) -> None:
        self.request = request
        self._factory = factory
        self._loaded = False

    def __getattr__(self, name: str) -> Any:
        if name in _LAZY:
            if not self._loaded:
                self._load()
                return getattr(self, name)
            error = self.__dict__.get("_load_error")
            if error is not None:  # every later use sees the same error, not an AttributeError
                raise type(error)(*error.args)
        if name == "_dbsession" and self._loaded:
            return self._fetch_dbsession()
        if name == "_token" and self._loaded:  # a new session's: a visitor who stores
            token = self._token = os.urandom(TOKEN_BYTES)  # nothing never needs one
            return token
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def model(self) -> type:
        """The factory's session model class."""
        return self._factory.model

    @property
    def hook(self) -> Any:
        """The factory's pluggy hook relay, to call hooks plugins offer (session_addhooks)."""
        return self._factory.hook

    def _fetch_dbsession(self) -> Any:
        """``request.<dbsession_name>``, fetched on first need and kept as ``_dbsession``.

        A request without a session cookie never needs it unless it stores
        something, so an anonymous request does not create (and register with
        the transaction) a SQLAlchemy session for nothing.
        """
        name = self._factory.dbsession_name
        try:
            dbsession = getattr(self.request, name)
        except AttributeError:
            raise self._no_dbsession_error() from None
        self._dbsession = dbsession
        return dbsession

    def _no_dbsession_error(self) -> SessionError:
        return SessionError(
            f"request.{self._factory.dbsession_name} does not exist: the session needs the "
            "SQLAlchemy session joined to the request's transaction there (see the "
            "Pyramid SQLAlchemy starter), or set session.dbsession_name"
        )

    # -- the load and validate stages --------------------------------------------
    def _load(self) -> None:
        factory = self._factory
        request = self.request
        txn = self._txn = self._transaction()
        self.now = int(factory.clock())
        name = factory.dbsession_name
        if name not in vars(request) and not hasattr(type(request), name):
            # checked without creating it: request.dbsession is made on first need
            raise self._no_dbsession_error()
        self._reset_state()
        self._use(*self._find_row())

        txn.addBeforeCommitHook(self._persist)
        txn.addAfterCommitHook(self._after_commit)
        txn.addAfterAbortHook(self._after_abort)
        request.add_response_callback(self._respond)

    def _reset_state(self) -> None:
        self._loaded = True
        self._force = False
        self._regenerated = False
        self._settings_values: dict[str, Any] = {}
        self._settings_loaded: dict[str, Any] = {}
        self._columns: dict[str, Any] = {}
        # the cookie the browser holds, to delete: set when it must go (bad cookie, unknown
        # or dropped session), with the attributes it was set with as far as they are known
        self._delete_cookie: dict[str, Any] | None = None
        self._cookies: list[tuple[str, str, dict[str, Any]]] = []
        self._committed = False
        self._stale_key = False

        self._held: list[Any] = []  # logouts that must hold (see execute_logout)
        self._held_cookies: list[tuple[str, str, dict[str, Any]]] = []
        self._peeking = False

    def _use(
        self,
        row: Any,
        token: bytes | None,
        extras: dict[str, bytes],
        unstored: dict[str, bytes] | None,
    ) -> None:
        """Run the load and validate stages over what the cookie found."""
        factory = self._factory
        request = self.request

        hook = factory.stages
        if row is None:
            self._start_new()
            if unstored is not None:  # a cookie-only session: what plugins keep in the cookie
                self.cookie_extras = unstored
            self._loaded_extras = dict(self.cookie_extras)
            hook.session_load(session=self)
        else:
            self.row, self._token, self.cookie_extras, self.new = row, token, extras, False
            self._lineage = extras.pop(LINEAGE_EXTRA, b"").decode("ascii") or None
            self._loaded_extras = dict(extras)
            self._created = None
            hook.session_load(session=self)
            reason = hook.session_validate(session=self)
            if reason:
                self._drop_row()
                self.notify(events.SessionRejected(request, row.id, reason))
                self._start_new()
                self._loaded_extras = {}
            else:
                try:
                    self._read_row(row)
                except InconsistentDataError as exc:
                    self._load_error = exc
                    raise

    def _peek(self) -> Peek:
        """See :meth:`SessionFactory.peek <sessions_kernel.SessionFactory.peek>`."""
        factory = self._factory
        self.now = int(factory.clock())
        self._reset_state()
        self._peeking = True  # no events: a peek is not the visitor's activity
        header = self.request.environ.get("HTTP_COOKIE") or ""
        if not _cookie_values(header, factory.cookie_name):
            return Peek(reason="no session cookie")
        row, token, extras, unstored = self._find_row()
        if row is None:
            why = "nothing stored yet" if unstored is not None else "no stored session"
            return Peek(reason=why)
        self.row, self._token, self.cookie_extras, self.new = row, token, extras, False
        self._lineage = extras.pop(LINEAGE_EXTRA, b"").decode("ascii") or None
        self._created = None
        factory.stages.session_load(session=self)
        reason = factory.stages.session_validate(session=self)
        if reason:
            return Peek(reason=reason, rejected=True)
        self._read_row(row)
        data = factory.data_serializer.loads(row.data)  # a copy of its own
        return Peek(row=row, data=MappingProxyType(data), info=factory.describe(row))

    def _transaction(self) -> Any:
        """The transaction of ``request.tm`` the session joins, or a SessionError saying why not.

        pyramid_tm's tween begins one for each request it handles; outside it
        (pshell, ``bootstrap``/``prepare`` scripts, tests sharing a transaction
        across requests) whoever manages ``request.tm`` must have begun one.
        """
        request = self.request
        try:
            manager = request.tm
        except AttributeError:
            raise SessionError(
                "request.session needs request.tm, the request's transaction manager: "
                "include pyramid_tm (config.include('pyramid_tm'), as the SQLAlchemy "
                "starter's models/__init__.py does)"
            ) from None
        txn = None
        if request.environ.get("tm.active") or getattr(manager, "explicit", True):
            with contextlib.suppress(NoTransaction):
                txn = manager.get()
        elif getattr(getattr(manager, "manager", manager), "_txn", True) is not None:
            # an implicit manager's get() would begin a transaction nobody commits
            txn = manager.get()
        if txn is None:
            raise SessionError(
                "request.session was first used while request.tm has no transaction "
                "begun, so nothing could store it. In pshell, call request.tm.begin() "
                "first (the starter's pshell setup does) and request.tm.commit() to "
                "store the session; in a script, use it inside 'with request.tm:'; in "
                "a tween, add the tween under pyramid_tm's (over=EXCVIEW, "
                "under='pyramid_tm.tm_tween_factory')."
            )
        return txn

    def _find_row(self) -> tuple[Any, bytes | None, dict[str, bytes], dict[str, bytes] | None]:
        """The stored session the request's cookie names: (row, token, extras, unstored).

        A browser may send several cookies of the session's name (one planted
        from a sibling subdomain, say). They are tried in the order sent, and
        the first that decrypts to a stored session is used; a cookie that
        does not decrypt, or names no row, is passed over. The browser's
        cookie is deleted only when none was good, so a bad cookie never
        logs the user out. ``unstored`` is the extras of a cookie-only
        session (nothing stored yet) when no stored one was found.
        """
        factory = self._factory
        request = self.request
        header = request.environ.get("HTTP_COOKIE")
        values = _cookie_values(header, factory.cookie_name) if header else []
        unstored = None
        bad = False
        for value in values[:MAX_COOKIES_TRIED]:
            try:
                token, extras = decode_payload(self._open_cookie(value))
            except Exception as exc:
                self.notify(events.CookieRejected(request, str(exc)))
                bad = True
                continue
            if UNSTORED_EXTRA in extras:
                if unstored is None:
                    del extras[UNSTORED_EXTRA]
                    unstored = extras
                continue
            lineage = extras.get(LINEAGE_EXTRA)
            sid = row_id(token, lineage.decode("ascii") if lineage else None)
            row = self._fetch_row(sid)
            if row is not None:
                return row, token, extras, None
            self.notify(events.SessionNotFound(request, sid))
            bad = True
        if bad and unstored is None:
            self._delete_cookie = factory.default_cookie_attributes
        return None, None, {}, unstored

    def _open_cookie(self, value: str) -> bytes:
        """The cookie's plaintext; notes a cookie made with a key that is no longer first."""
        factory = self._factory
        primary = factory.primary_serializer
        if primary is not None:
            try:
                return primary.loads(value)
            except ValueError:
                payload = factory.serializer.loads(value)
                self._stale_key = True  # an older key made it: send it again (_resend_cookie)
                return payload
        return factory.serializer.loads(value)

    def _fetch_row(self, sid: str) -> Any:
        """The row by its primary key; locked until commit on a retry or when contended.

        pyramid_retry runs a request again when it lost to a concurrent one
        (both changed one key). Loading the row locked (``SELECT … FOR
        UPDATE``; on SQLite, which locks the whole database instead, by
        taking its write lock first) means no other request can write the
        row before this attempt commits, so it cannot lose again. For a
        while after such a loss (``lock_contended_for``), every request of
        the row loads it locked, so that its writers queue instead of
        losing in turn. Otherwise, the common path, the row is read without
        a lock.
        """
        factory = self._factory
        dbsession = self._dbsession
        if self._peeking or not (
            self.request.environ.get("retry.attempt") or factory.is_contended(sid)
        ):
            return dbsession.get(factory.model, sid)
        if dbsession.get_bind(factory.model).dialect.name == "sqlite":
            keep = sa.update(factory.table).where(factory.pk_column == sid)
            self._execute(keep.values({factory.version_column: factory.version_column}))
        return dbsession.get(factory.model, sid, with_for_update=True, populate_existing=True)

    def _read_row(self, row: Any) -> None:
        ser = self._factory.data_serializer
        self._orig_data, self._orig_flash = row.data, row.flash
        try:
            data = ser.loads(row.data)
        except Exception as exc:
            raise self._inconsistent(row, "data", f"cannot be read: {exc}") from exc
        if not isinstance(data, dict):
            raise self._inconsistent(row, "data", f"holds {type(data).__name__}, not a dict")
        flash: Any = {}
        if row.flash is not None:
            try:
                flash = ser.loads(row.flash)
            except Exception as exc:
                raise self._inconsistent(row, "flash", f"cannot be read: {exc}") from exc
            if not (isinstance(flash, dict) and all(isinstance(v, list) for v in flash.values())):
                raise self._inconsistent(row, "flash", "does not map queues to lists")
        if not isinstance(row.created, int):
            raise self._inconsistent(row, "created", f"holds {row.created!r}, not seconds")
        self._data, self._flash = data, flash
        self._data_touched = False  # see _touched_by

    @staticmethod
    def _inconsistent(row: Any, column: str, problem: str) -> InconsistentDataError:
        return InconsistentDataError(
            f"session {str(row.id)[:12]}… ({type(row).__name__}): column {column!r} {problem}. "
            "Delete the row or repair the column."
        )

    def _start_new(self) -> None:
        self.row = None
        self.new = True
        self.__dict__.pop("_token", None)  # drawn on first need (see __getattr__)
        self._lineage = None
        self.cookie_extras = {}
        self._data, self._flash = {}, {}
        self._data_touched = True
        self._orig_data = self._orig_flash = None
        self._created = self.now
        self._settings_values = {}
        self._settings_loaded = {}
        self._columns = {}

    def _drop_row(self) -> None:
        # A plain DELETE by key, whatever the version: a logout wins over a concurrent write.
        row = self.row
        # the browser's cookie was set with the stored settings, not with edits of this request
        self._delete_cookie = self._cookie_attributes(as_loaded=True)
        stored_id = sa.inspect(row).identity[0]
        self._dbsession.expunge(row)
        self._delete_session(stored_id, self._lineage or stored_id[:LINEAGE_CHARS])
        self._orig_data = self._orig_flash = None

    def _delete_session(self, stored_id: str, lineage: str) -> None:
        """DELETE the row, also when a concurrent request gave it a new id meanwhile; hold it.

        The row is deleted by its key. If that finds nothing, another request
        regenerated the id (or deleted the row) since this one read it: the
        session's lineage, which every id of the session starts with, finds
        it by a range of the primary key. The lineage's DELETE is what holds
        (see :meth:`execute_logout`), since by the time it is replayed the id
        may have moved again.
        """
        factory = self._factory
        pk = factory.pk_column
        in_lineage = sa.and_(pk >= lineage, pk < lineage + "g", pk.startswith(lineage))
        by_lineage = sa.delete(factory.table).where(in_lineage)
        self._held.append(by_lineage)
        if not self._execute(sa.delete(factory.table).where(pk == stored_id)).rowcount:
            self._execute(by_lineage)

    def execute_logout(self, statement: Any) -> Any:
        """Run a statement that logs sessions out, and make it hold; return its result.

        For a ``DELETE`` of session rows (``invalidate()`` and the userid
        plugin's ``invalidate_user_sessions`` use it) or an ``UPDATE`` that
        takes ids away. It runs at once in the request's transaction. If
        that transaction then does not commit (the view raised
        ``HTTPFound(headers=forget(request))``, an exception view rendered an
        error, a conflict aborted it), the kernel runs it again in a
        transaction of its own right after the abort, and the response still
        deletes (or replaces) the browser's cookie: a logout holds, whatever
        the view did afterwards.
        """
        self._held.append(statement)
        return self._execute(statement)

    def notify(self, event: Any) -> None:
        """Send ``event`` through the request's registry, skipped when nobody subscribed.

        For the kernel's events and plugins' own (``RenewalViolation``, say).
        """
        registry = self.request.registry
        if getattr(registry, "has_listeners", True) and not self.__dict__.get("_peeking"):
            registry.notify(event)

    # -- the extend, renew and persist stages (before commit) ----------------------
    def _persist(self) -> None:
        """The before-commit hook: run the extend, renew and persist stages (once)."""
        if self.__dict__.get("_persisted"):  # already written into a shared transaction
            return
        self._persisted = True
        try:
            self._persist_stages()
        except BaseException:
            # A failing before-commit hook stops the commit, but the transaction package
            # aborts nothing itself, and pyramid_tm aborts only if no exception view
            # rendered the error. Roll back now so no connection keeps its locks.
            dbsession = self.__dict__.get("_dbsession")
            if dbsession is not None:
                dbsession.rollback()
            raise

    def _persist_stages(self) -> None:
        # Unsaved settings edits end with the request; dropping them first means every
        # hook below reads the settings in force through ``session.settings``.
        settings = self.__dict__.get("_settings")
        if settings is not None:
            settings.discard()
        factory = self._factory
        hook = factory.stages
        ser = factory.data_serializer
        row = self.row
        write = unstored = False
        # a new session that stores nothing (an anonymous visitor) serializes nothing
        touched = self._data_touched and (row is not None or self.dirty)
        try:
            data = ser.dumps(self._data) if touched else self._orig_data
            flash = ser.dumps(self._flash) if self._flash else None
        except (TypeError, ValueError) as exc:
            raise SessionError(
                f"the session holds a value {type(ser).__name__} cannot store ({exc}). "
                "Pyramid sessions hold JSON values: convert it (a datetime to an ISO "
                "string, say), or set session.data_serializer."
            ) from exc
        if data != self._orig_data or flash != self._orig_flash:
            self._check_size(data, flash)
        if row is None:
            if self.dirty:
                row = self.row = factory.model(
                    id=self.session_id,
                    created=self._created,
                    updated=self.now,
                    data=data,
                    flash=flash,
                )
                for name, value in (*self._settings_values.items(), *self._columns.items()):
                    setattr(row, name, value)
                hook.session_renew(session=self)
                hook.session_persist(session=self, row=row)
                self.notify(events.SessionCreated(self.request, row.id))
                self._insert_row(row)
                write = True
            elif self.cookie_extras != self._loaded_extras:
                # Nothing to store, but a plugin keeps something in the cookie (a CSRF
                # token for a form): a cookie-only session, no row. Its first store
                # gets a new token, so a planted cookie-only session fixes no id.
                if self.cookie_extras:
                    write = unstored = True
                else:
                    self._delete_cookie = self._delete_cookie or factory.default_cookie_attributes
        else:
            # ``updated`` records the last change of what the kernel owns (data, flash,
            # settings, id); a plugin's own write (an idle extension) sets only its columns.
            changed = self._force or self._regenerated or bool(self._settings_values)
            if data != self._orig_data:
                row.data = data
                changed = True
            if flash != self._orig_flash:
                row.flash = flash
                changed = True
            if changed:
                row.updated = self.now
            hook.session_extend(session=self)
            extras = dict(self.cookie_extras)
            hook.session_renew(session=self)
            written = False
            if self.dirty:
                hook.session_persist(session=self, row=row)
                written = self._write_row(row, extras)
            write = self._resend_cookie(written, extras)
        old = self._delete_cookie
        if write:
            value = self._cookie_value(unstored=unstored)
            attrs = self._cookie_attributes()
            if old is None and self._settings_loaded:  # this request changed stored settings
                old = self._cookie_attributes(as_loaded=True)
            # A cookie is known by its name, path and domain: a new one set elsewhere leaves
            # the old one in the browser unless it is deleted too.
            if old is not None and (old["path"], old["domain"]) != (attrs["path"], attrs["domain"]):
                self._cookies.append(("delete", "", old))
            self._cookies.append(("set", value, attrs))
        elif old is not None:
            self._cookies.append(("delete", "", old))
        dbsession = self.__dict__.get("_dbsession")  # None: this request never needed it
        if dbsession is not None and (
            dbsession.new or dbsession.deleted or self._others_dirty(dbsession, row)
        ):
            dbsession.flush()

    @staticmethod
    def _others_dirty(dbsession: Any, row: Any) -> bool:
        """Whether the flush has anything to write: the row the kernel's own UPDATE just
        wrote stays "dirty" to the ORM (assigned attributes), with no net change left."""
        return any(obj is not row or dbsession.is_modified(obj) for obj in dbsession.dirty)

    def _insert_row(self, row: Any) -> None:
        """INSERT a new session's row: one Core statement, not the ORM's unit of work.

        The row object was built, given the settings and columns of this
        request and handed to the plugins' ``session_renew`` and
        ``session_persist`` hooks (and to ``SessionCreated`` subscribers) as
        before; its column values are what the INSERT writes, with the first
        version. The ORM's flush of one new object costs more than the
        statement itself. The stored row then joins the identity map, clean,
        as the flush would have left it. A row that holds
        anything but column values (a relationship a plugin assigned) goes
        through ``dbsession.add`` as before.
        """
        factory = self._factory
        keys = factory.insert_keys
        values = {}
        for key, value in vars(row).items():
            column = keys.get(key)
            if column is not None:
                values[column] = value
            elif key != "_sa_instance_state":
                self._dbsession.add(row)
                return
        values_keys = set(vars(row))
        values[factory.version_column_key] = 1  # what the ORM's version counter starts at
        dbsession = self._dbsession
        # autoflush on: the application's pending objects (a user the row refers to) first
        dbsession.execute(factory.table.insert(), values)
        mark_changed(dbsession)
        # The row, as stored, joins the identity map: a later request in a shared
        # transaction (the starter's test fixtures) finds it there without a SELECT.
        set_committed_value(row, factory.version_key, 1)
        for key in factory.null_on_insert:  # what the INSERT left NULL, known without a SELECT
            if key not in values_keys:
                set_committed_value(row, key, None)
        make_transient_to_detached(row)
        dbsession.add(row)

    def _resend_cookie(self, written: bool, extras: dict[str, bytes]) -> bool:
        """Whether a stored session's cookie must be sent again, its row written or not.

        The browser's cookie holds the token and the plugins' extras, under
        the attributes it was set with. It is sent again only when one of
        them changed: a new id (``regenerate_id``), extras a plugin changed
        (a renewal offer), settings saved in this request (they may change
        the attributes), a cookie made with a key that is no longer the first
        (key rotation), or :meth:`changed`; or, when the row was written
        and the cookie has a ``Max-Age``, so that the browser's expiry slides
        with the session's activity. A write of the data (or of a plugin's
        column only, an idle extension) sends no ``Set-Cookie`` otherwise:
        the browser's cookie is the same.
        """
        if self._delete_cookie is not None:  # the row vanished meanwhile (see _write_row)
            return extras != self.cookie_extras
        if self._regenerated or self._force or self._settings_loaded or self._stale_key:
            return True
        if self.cookie_extras != self._loaded_extras:
            return True
        return written and self._setting("cookie_max_age") is not None

    def _check_size(self, data: bytes, flash: bytes | None) -> None:
        """Refuse data over ``max_data_size`` before any SQL: nothing stored, nothing cut."""
        size = len(data) + len(flash or b"")
        limit = self._factory.max_data_size
        if limit is not None and size > limit:
            raise SessionError(
                f"the session's data is {size} bytes serialized, over session.max_data_size "
                f"= {limit}; nothing was stored and the stored data is unchanged. Keep large "
                "values in a table of your own and a key to them in the session, or raise "
                "session.max_data_size."
            )

    def _write_row(self, row: Any, extras: dict[str, bytes]) -> bool:
        """UPDATE the changed columns if nobody wrote the row since we read it, else merge.

        ``extras`` is the cookie as the browser holds it, restored if this
        request's write is dropped. Returns whether the row was written.
        """
        factory = self._factory
        state = sa.inspect(row)
        changes: dict[str, tuple[Any, Any]] = {}
        for key in factory.column_keys:
            history = state.attrs[key].history
            if history.added:
                changes[key] = (history.added[0], history.deleted[0] if history.deleted else None)
        if not changes:
            return True
        stored_id = state.identity[0]
        version = getattr(row, factory.version_key)
        values = {key: new for key, (new, _) in changes.items()}
        if factory.droppable_columns.issuperset(changes) and self._refuses_concurrent_updates():
            # Only plugins' bookkeeping changed (an idle extension, say), and this database
            # refuses a write over a concurrent one before any rule could merge them. Try it
            # under a savepoint; refused, the concurrent write stands and the browser keeps
            # its cookie, as if this request had come first (see merge.droppable).
            savepoint = self._dbsession.connection().begin_nested()
            try:
                written = self._update(stored_id, version, values)
            except sa.exc.DBAPIError as exc:
                savepoint.rollback()
                if not _is_serialization_failure(exc):
                    raise
                for key, (_, old) in changes.items():
                    set_committed_value(row, key, old)
                self.cookie_extras = extras
                return False
            savepoint.commit()
        else:
            written = self._update(stored_id, version, values)
        if not written:
            merged = self._merge(row, stored_id, changes)
            if merged is None:
                self._dbsession.expunge(row)
                # the browser's cookie was set with the stored settings, as in _drop_row
                self._delete_cookie = self._cookie_attributes(as_loaded=True)
                self.notify(events.SessionNotFound(self.request, stored_id))
                return False
            values, version = merged
        for key, value in values.items():
            set_committed_value(row, key, value)
        set_committed_value(row, factory.version_key, version + 1)
        if factory.pk_key in values:  # regenerated: the identity map still has the old key
            self._dbsession.expunge(row)
        return True

    def _refuses_concurrent_updates(self) -> bool:
        """Whether the database fails an UPDATE of a row a concurrent transaction changed.

        PostgreSQL does at REPEATABLE READ and SERIALIZABLE. The level is asked
        once per pooled connection (unless set per connection through
        execution options).
        """
        connection = self._dbsession.connection()
        if connection.dialect.name != "postgresql":
            return False
        level = connection.get_execution_options().get("isolation_level")
        if level is None:
            level = connection.info.get(_ISOLATION_KEY)
            if level is None:
                level = connection.info[_ISOLATION_KEY] = connection.get_isolation_level()
        return level in ("REPEATABLE READ", "SERIALIZABLE")

    def _update(self, stored_id: str, version: int, values: dict[str, Any]) -> bool:
        statement, params = self._factory.versioned_update(stored_id, version, values)
        dbsession = self._dbsession
        with dbsession.no_autoflush:  # the ORM must not write the row itself first
            result = dbsession.execute(statement, params)
        mark_changed(dbsession)  # see _execute
        return result.rowcount == 1

    def _execute(self, statement: Any) -> Any:
        """Run the kernel's own UPDATE or DELETE in the request's transaction."""
        dbsession = self._dbsession
        with dbsession.no_autoflush:  # the ORM must not write the row itself first
            result = dbsession.execute(statement)
        # zope.sqlalchemy commits only sessions it saw change; SQL it did not run
        # through the ORM's unit of work has to say so, or it is rolled back.
        mark_changed(dbsession)
        return result

    def _merge(
        self, row: Any, stored_id: str, changes: dict[str, tuple[Any, Any]]
    ) -> tuple[dict[str, Any], int] | None:
        """Re-read the row another request wrote, apply our changes onto it, write it.

        The data and the flash queues merge key by key (:func:`merge_mappings`);
        ``updated`` takes the later time; a plugin's column merges by the rule
        its plugin declared (``session_merge_rules``); any other column both
        requests changed is a conflict.
        """
        factory = self._factory
        ser = factory.data_serializer
        query = sa.select(factory.table).where(factory.pk_column == stored_id).with_for_update()
        with self._dbsession.no_autoflush:
            fresh = self._dbsession.execute(query).mappings().one_or_none()
        if fresh is None:
            return None
        values: dict[str, Any] = {}
        conflicts: list[str] = []
        merged_keys: list[str] = []
        reasons: list[str] = []
        groups_done: set[tuple[str, ...]] = set()
        for key, (new, old) in changes.items():
            theirs = fresh[factory.columns[key]]
            if key == "data":
                base = ser.loads(self._orig_data) if self._orig_data is not None else {}
                data, changed, clash = merge_mappings(base, self._data, ser.loads(theirs))
                values[key] = ser.dumps(data)
                merged_keys += changed
                conflicts += clash
            elif key == "flash":
                base = ser.loads(self._orig_flash) if self._orig_flash is not None else {}
                now = ser.loads(theirs) if theirs is not None else {}
                flash, changed, clash = merge_mappings(base, self._flash, now)
                values[key] = ser.dumps(flash) if flash else None
                merged_keys += [f"flash:{queue}" for queue in changed]
                conflicts += [f"flash:{queue}" for queue in clash]
            elif key == "updated":
                values[key] = max(new, theirs)
            elif key in factory.merge_rules:
                group, rule = factory.merge_rules[key]
                if group in groups_done:
                    continue
                groups_done.add(group)
                mine = {name: getattr(row, name) for name in group}
                base = {name: changes[name][1] if name in changes else mine[name] for name in group}
                current = {name: fresh[factory.columns[name]] for name in group}
                try:
                    if current == base:  # the other request left the group alone
                        result = mine
                    elif len(group) == 1:
                        result = {key: rule(old, new, theirs)}
                    else:
                        result = rule(base, mine, current)
                except MergeConflict as exc:
                    conflicts += group
                    reasons.append(str(exc))
                    continue
                for name in group:
                    if result[name] != current[name]:
                        values[name] = result[name]
                merged_keys += [name for name in group if name in changes]
            elif theirs == old or key == factory.pk_key:
                values[key] = new
                merged_keys.append(key)
            else:
                conflicts.append(key)
        version = fresh[factory.version_column]
        if conflicts:
            factory.mark_contended(stored_id)
            why = f" ({'; '.join(reasons)})" if reasons else ""
            raise SessionConflictError(
                f"session {stored_id[:12]}…: this request and a concurrent one both changed "
                f"{', '.join(map(repr, conflicts))}{why}. Include pyramid_retry "
                "(config.include('pyramid_retry'), retry.attempts >= 2) to run the request "
                "again on the newer session; nothing was overwritten."
            )
        if not self._update(stored_id, version, values):
            factory.mark_contended(stored_id)
            raise SessionConflictError(
                f"session {stored_id[:12]}… changed again while its changes were merged; "
                "retry the request (pyramid_retry does it for you)"
            )
        self.notify(events.SessionMerged(self.request, stored_id, tuple(merged_keys)))
        return values, version

    @property
    def dirty(self) -> bool:
        """Whether this request will write the session's row (so far)."""
        row = self.row
        if row is None:
            return bool(
                self._data or self._flash or self._force or self._settings_values or self._columns
            )
        # a regenerated id must be written and sent even if an autoflush already wrote it
        if self.new or self._force or self._regenerated:
            return True
        # no attribute assigned since the load (the common read): nothing to compare
        return instance_state(row).modified and self._dbsession.is_modified(row)

    def _after_commit(self, status: bool) -> None:
        self._committed = status
        if not status:
            self._replay_logouts()

    def _after_abort(self) -> None:
        self._replay_logouts()

    def _replay_logouts(self) -> None:
        """The request's transaction did not commit: run its logouts again, in one of their own.

        Then the response still deletes (or, for a held regenerate, replaces)
        the browser's cookie, and a retried attempt of the request
        (pyramid_retry reuses the environ) sees the cookie the response sends.
        """
        held, self._held = self._held, []
        if not held:
            return
        factory = self._factory
        try:
            engine = self._dbsession.get_bind(factory.model)
            with engine.begin() as connection:
                for statement in held:
                    connection.execute(statement)
        except Exception:
            log.exception(
                "a logout of session %s… could not be replayed after its request's "
                "transaction was aborted; the session may still be valid",
                self.session_id[:12],
            )
            return
        self._cookies = list(self._held_cookies)
        self._committed = True  # what the response says is now what the database holds
        # A retried attempt (pyramid_retry reuses the environ) must present the new id;
        # a deleted session's cookie it presents finds no row, and is deleted then.
        environ = self.request.environ
        name = factory.cookie_name
        for action, value, _ in self._cookies:
            if action == "set":
                header = environ.get("HTTP_COOKIE", "")
                kept = [p for p in header.split(";") if p.partition("=")[0].strip() != name]
                environ["HTTP_COOKIE"] = ";".join([*kept, f" {name}={value}"]).strip()

    def _respond(self, request: Request, response: Response) -> None:
        headers = response.headers
        if "Vary" not in headers:
            response.headerlist.append(("Vary", "Cookie"))
        else:
            vary = response.vary or ()
            if "Cookie" not in vary:
                response.vary = (*vary, "Cookie")
        if not (self._committed or self._in_shared_transaction()) or not self._cookies:
            return
        # A shared cache must never store a response that sets or deletes the cookie.
        if "Cache-Control" not in headers:
            response.headerlist.append(("Cache-Control", "private"))
        else:
            cache = response.cache_control
            if not (cache.private or cache.no_store):
                cache.public = False
                cache.private = True
        factory = self._factory
        sent = headers.getall("Set-Cookie")
        for action, value, attrs in self._cookies:
            if action == "set":
                response.headerlist.append(("Set-Cookie", factory.cookie_header(value, attrs)))
            else:
                header = self._deletion_header(attrs)
                if header not in sent:  # forget() may have returned it already
                    response.headerlist.append(("Set-Cookie", header))

    def _deletion_header(self, attrs: dict[str, Any]) -> str:
        """The Set-Cookie value that deletes the cookie set with ``attrs``.

        Same path and domain, or the browser keeps the cookie; same Secure,
        or it refuses the deletion of a __Host-/__Secure- cookie.
        """
        response = _HeaderMaker()
        response.set_cookie(self._factory.cookie_name, None, **{**attrs, "max_age": None})
        return response.headers["Set-Cookie"]

    def _cookie_value(self, *, unstored: bool = False) -> str:
        """The cookie's value: the token and the extras, with the kernel's own, encrypted."""
        extras = dict(self.cookie_extras)
        if self._lineage is not None:
            extras[LINEAGE_EXTRA] = self._lineage.encode("ascii")
        if unstored:
            extras[UNSTORED_EXTRA] = b""
        return self._factory.serializer.dumps(encode_payload(self._token, extras))

    def _in_shared_transaction(self) -> bool:
        """Write the session into a transaction this request does not own; True if done.

        pyramid_tm's tween clears ``tm.active`` before it commits or aborts, so
        a response that still finds it set comes from a request whose
        transaction is someone else's: the starter's test fixtures put
        ``tm.active`` and ``tm.manager`` in the environ and share one
        transaction across requests. The stages run now, into that transaction
        (flushed, so the next request in it sees the row), and the cookie is
        sent; committing or aborting is the owner's business. As pyramid_tm
        would abort, a response an exception view rendered writes nothing.
        """
        request = self.request
        if not request.environ.get("tm.active"):
            return False
        if self._txn.status not in _OPEN_STATUSES:  # committed, or its commit failed
            return False
        if getattr(request, "exc_info", None) is not None:
            return False  # an exception view answered: pyramid_tm would have aborted
        self._persist()
        return True

    def _cookie_attributes(self, as_loaded: bool = False) -> dict[str, Any]:
        """The cookie's attributes from the settings in force, after the plugins' hook.

        With ``as_loaded``, from the settings as this request found them (the row's
        stored values), ignoring changes saved in this request: the attributes the
        browser's cookie was set with.
        """

        static = self._factory.static_cookie_attributes
        if static is not None:  # nothing per session or per request changes them
            return dict(static)

        def setting(name: str) -> Any:
            return self._setting(name, as_loaded)

        attrs = {
            "max_age": setting("cookie_max_age"),
            "path": setting("cookie_path"),
            "domain": setting("cookie_domain"),
            "secure": setting("cookie_secure"),
            "httponly": setting("cookie_httponly"),
            "samesite": setting("cookie_samesite"),
        }
        self._factory.stages.session_cookie_attributes(session=self, attributes=attrs)
        return attrs

    # -- settings ---------------------------------------------------------------------
    @property
    def settings(self) -> SessionSettings:
        """The settings in force for this session; see :class:`SessionSettings`."""
        try:
            return self.__dict__["_settings"]
        except KeyError:
            settings = self.__dict__["_settings"] = SessionSettings(self)
            return settings

    def _setting(self, name: str, as_loaded: bool = False) -> Any:
        """The value in force: saved in this request, else the row's own, else the global.

        ``as_loaded`` ignores what was saved in this request (the stored value).
        """
        if not self._loaded:
            self._load()
        if not as_loaded:
            value = self._settings_values.get(name, _MISSING)
            if value is not _MISSING:
                return value
        if self.row is not None and name in self._factory.config.configurable:
            value = self._settings_loaded.get(name, _MISSING) if as_loaded else _MISSING
            if value is _MISSING:
                value = getattr(self.row, name)
            if value is not None:
                return value
        return self._factory.config.values[name]

    def _apply_settings(self, values: dict[str, Any]) -> None:
        self._settings_values.update(values)
        if self.row is not None:
            for name, value in values.items():
                self._settings_loaded.setdefault(name, getattr(self.row, name))
                setattr(self.row, name, value)

    # -- plugins' own columns -------------------------------------------------------------
    def get_column(self, name: str) -> Any:
        """The value of a plugin's column of this session's row, also before the row exists.

        A new session (no row yet) answers what :meth:`set_column` assigned, or
        ``None``. Raises :class:`SessionError` for a name that is not a plugin's
        column of the model (see :meth:`set_column`).
        """
        self._check_column(name)
        if self.row is not None:
            return getattr(self.row, name)
        return self._columns.get(name)

    def set_column(self, name: str, value: Any) -> None:
        """Assign a plugin's column of this session's row; it is written before commit.

        For plugins that keep a value in a column of their own and offer it
        through :func:`~sessions_kernel.hookspecs.session_attributes`. With a row
        this is ``setattr(session.row, name, value)``: an UPDATE of that column
        only, and ``updated`` is left alone. A new session keeps the value and
        is inserted with it even if it holds no data, so a value a later request
        must see is stored; assigning ``None`` to a new session withdraws the
        value. :meth:`invalidate` drops what was assigned before it;
        :meth:`regenerate_id` keeps it.

        Raises :class:`SessionError` for a name that is not a mapped column of
        the model, or that the kernel owns (the :class:`BaseMixin` columns and
        runtime-configurable settings, which go through ``session.settings``).
        """
        self._check_column(name)
        if self.row is not None:
            setattr(self.row, name, value)
        elif value is None:
            self._columns.pop(name, None)
        else:
            self._columns[name] = value

    def _check_column(self, name: str) -> None:
        config = self._factory.config
        if name not in config.column_names or name in KERNEL_COLUMNS:
            raise SessionError(
                f"{config.model.__name__} has no plugin column {name!r}: add the mixin that "
                "declares it to the model's bases (the kernel's own columns "
                f"{', '.join(sorted(KERNEL_COLUMNS))} are not set this way)"
            )
        if name in config.configurable:
            raise SessionError(
                f"{name!r} is a runtime setting of {config.model.__name__}: change it "
                "through request.session.settings"
            )

    # -- ISession -----------------------------------------------------------------------
    @property
    def created(self) -> int:
        """Seconds since the epoch when the session was created."""
        return self.row.created if self.row is not None and not self.new else self._created

    def changed(self) -> None:
        """Mark the session as changed (never needed for data; kept for ISession)."""
        if not self._loaded:
            self._load()
        self._force = True

    def invalidate(self) -> None:
        """Delete the stored session and its cookie; later use starts a new session.

        The logout holds: if the request then fails or raises (a redirect
        with ``headers=forget(request)``), the row is deleted all the same and
        the response deletes the cookie (see :meth:`execute_logout`). No copy
        of the cookie works afterwards, not even one whose id a concurrent
        request regenerated meanwhile.
        """
        if self.row is not None and not self.new:
            sid = self.row.id
            self._drop_row()
            self._held_cookies = [("delete", "", self._delete_cookie)]
            self.notify(events.SessionInvalidated(self.request, sid))
        self._start_new()
        self._force = self._regenerated = False

    def regenerate_id(self, *, hold: bool = False) -> None:
        """Give the session a new id and cookie, keeping its data; the old id stops working.

        Call it at login and at every change of privilege (OWASP session
        fixation defence). The row keeps its data under its new key: one
        UPDATE of the primary key, no copy, and
        :class:`~sessions_kernel.events.SessionRegenerated` is sent. On a
        session that has no row yet only the token changes (no event: no
        stored id was replaced); its row is inserted under the new id.

        With ``hold=True`` (a logout of every other copy of the cookie, as
        ``invalidate_user_sessions(..., except_current=True)`` does) the new
        id is written at once and holds like :meth:`execute_logout`: if the
        request then fails, the old id is gone all the same and the response
        sends the new cookie.
        """
        old = self.row.id if self.row is not None and not self.new else None
        self._token = os.urandom(TOKEN_BYTES)
        self._regenerated = True
        if old is None:
            return
        self._lineage = self._lineage or old[:LINEAGE_CHARS]
        new = self.row.id = row_id(self._token, self._lineage)
        if hold:
            self._move_row(new)
            attrs = self._cookie_attributes(as_loaded=True)
            self._held_cookies = [("set", self._cookie_value(), attrs)]
        self.notify(events.SessionRegenerated(self.request, old, new))

    def _move_row(self, new: str) -> None:
        """UPDATE the row's key now, held, and re-key the ORM's copy of the row to match."""
        factory, dbsession, row = self._factory, self._dbsession, self.row
        state = sa.inspect(row)
        stored_id = state.identity[0]
        pending = {
            key: state.attrs[key].history.added[0]
            for key in factory.column_keys
            if key != factory.pk_key and state.attrs[key].history.added
        }
        # the key, and what the kernel's own UPDATE would write with it: one statement
        committed = {
            factory.pk_key: new,
            "updated": self.now,
            factory.version_key: getattr(row, factory.version_key) + 1,
        }
        columns = {factory.columns[key]: value for key, value in committed.items()}
        self.execute_logout(
            sa.update(factory.table).where(factory.pk_column == stored_id).values(columns)
        )
        dbsession.expunge(row)
        make_transient(row)
        for key, value in committed.items():
            set_committed_value(row, key, value)
        make_transient_to_detached(row)
        dbsession.add(row)
        for key, value in pending.items():  # what this request assigned stays to be written
            setattr(row, key, value)

    @property
    def session_id(self) -> str:
        """The row key of this session (derived from the token): safe to log, not a secret."""
        return row_id(self._token, self._lineage)

    def logout_headers(self) -> list[tuple[str, str]]:
        """``Set-Cookie`` headers deleting the browser's session cookie, for ``forget()``.

        A security policy's ``forget(request)`` returns these after
        :meth:`invalidate`, as cookie-based policies do, so that a view that
        raises ``HTTPFound(headers=forget(request))`` deletes the cookie in
        the response it sends. (The kernel deletes it anyway; it does not
        send the same header twice.)
        """
        if not self._loaded:
            self._load()
        attrs = self._delete_cookie or self._factory.default_cookie_attributes
        return [("Set-Cookie", self._deletion_header(attrs))]

    # flash messages, kept apart from the data (clear() leaves them)
    def flash(self, msg: Any, queue: str = "", allow_duplicate: bool = True) -> None:
        messages = self._flash.setdefault(queue, [])
        if allow_duplicate or msg not in messages:
            messages.append(msg)

    def pop_flash(self, queue: str = "") -> list[Any]:
        return self._flash.pop(queue, [])

    def peek_flash(self, queue: str = "") -> list[Any]:
        return list(self._flash.get(queue, []))

    # the dict API. Every way to set, delete or hand out a value that can change in
    # place sets _data_touched, so that the persist stage serializes and compares.
    def _touched_by(self, value: Any) -> Any:
        if type(value) not in _IMMUTABLE:
            self._data_touched = True
        return value

    def __getitem__(self, key: str) -> Any:
        return self._touched_by(self._data[key])

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key] = value
        self._data_touched = True

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self._data_touched = True

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: str, default: Any = None) -> Any:
        value = self._data.get(key, _MISSING)
        return default if value is _MISSING else self._touched_by(value)

    def keys(self):  # type: ignore[override]
        return self._data.keys()

    def values(self):  # type: ignore[override]
        view = self._data.values()  # loads the session first
        self._data_touched = True
        return view

    def items(self):  # type: ignore[override]
        view = self._data.items()  # loads the session first
        self._data_touched = True
        return view

    def clear(self) -> None:
        self._data.clear()
        self._data_touched = True

    def __repr__(self) -> str:
        if not self._loaded:
            return f"<{type(self).__name__} (not loaded)>"
        sid = "new" if self.new else self.row.id[:12] + "…"
        return f"<{type(self).__name__} {sid} {self._data!r}>"
