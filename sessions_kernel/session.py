"""The request's session: a lazy ISession backed by one row of the model."""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from pyramid.interfaces import ISession
from zope.interface import implementer

from . import events
from .crypto import TOKEN_BYTES, decode_payload, encode_payload, session_id_for
from .errors import InconsistentDataError, SessionError
from .settings import SessionSettings

if TYPE_CHECKING:
    from pyramid.request import Request
    from pyramid.response import Response

    from .factory import SessionFactory

__all__ = ["Session"]

# Attributes that exist only once the session was loaded; reading one loads it.
_LAZY = frozenset({"row", "now", "new", "cookie_extras", "_data", "_flash", "_token", "_created"})
_MISSING = object()
# Values that cannot change in place: handing one out cannot change the data.
_IMMUTABLE = frozenset({str, int, float, bool, type(None)})


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
        if name in _LAZY and not self._loaded:
            self._load()
            return getattr(self, name)
        if name == "_dbsession" and self._loaded:
            return self._fetch_dbsession()
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

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
        if not request.environ.get("tm.active"):
            raise SessionError(
                "request.session was first used outside the request's transaction. "
                "Sessions are stored in the request's transaction: include pyramid_tm "
                "(config.include('pyramid_tm')) and use the session in views or in "
                "tweens under pyramid_tm."
            )
        self.now = int(factory.clock())
        name = factory.dbsession_name
        if name not in vars(request) and not hasattr(type(request), name):
            # checked without creating it: request.dbsession is made on first need
            raise self._no_dbsession_error()
        self._loaded = True
        self._force = False
        self._regenerated = False
        self._settings_values: dict[str, Any] = {}
        self._delete_cookie: dict[str, Any] | None = None
        self._cookie: tuple[str, str, dict[str, Any]] | None = None
        self._committed = False

        row, token, extras = None, None, {}
        value = request.cookies.get(factory.cookie_name)
        if value is not None:
            try:
                token, extras = decode_payload(factory.serializer.loads(value))
            except Exception as exc:
                self._notify(events.CookieRejected(request, str(exc)))
                self._delete_cookie = factory.default_cookie_attributes
            else:
                sid = session_id_for(token)
                row = self._dbsession.get(factory.model, sid)
                if row is None:
                    self._notify(events.SessionNotFound(request, sid))
                    self._delete_cookie = factory.default_cookie_attributes

        hook = factory.stages
        if row is None:
            self._start_new()
            hook.session_load(session=self)
        else:
            self.row, self._token, self.cookie_extras, self.new = row, token, extras, False
            self._created = None
            hook.session_load(session=self)
            reason = hook.session_validate(session=self)
            if reason:
                self._drop_row()
                self._notify(events.SessionRejected(request, row.id, reason))
                self._start_new()
            else:
                self._read_row(row)

        txn = request.tm.get()
        txn.addBeforeCommitHook(self._persist)
        txn.addAfterCommitHook(self._after_commit)
        request.add_response_callback(self._respond)

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
        self._token = os.urandom(TOKEN_BYTES)
        self.cookie_extras = {}
        self._data, self._flash = {}, {}
        self._data_touched = True
        self._orig_data = self._orig_flash = None
        self._created = self.now
        self._settings_values = {}

    def _drop_row(self) -> None:
        row = self.row
        self._delete_cookie = self._cookie_attributes()
        self._dbsession.delete(row)
        self._orig_data = self._orig_flash = None

    def _notify(self, event: events.SessionEvent) -> None:
        registry = self.request.registry
        if getattr(registry, "has_listeners", True):
            registry.notify(event)

    # -- the extend, renew and persist stages (before commit) ----------------------
    def _persist(self) -> None:
        factory = self._factory
        hook = factory.stages
        ser = factory.data_serializer
        row = self.row
        write = False
        try:
            data = ser.dumps(self._data) if self._data_touched else self._orig_data
            flash = ser.dumps(self._flash) if self._flash else None
        except (TypeError, ValueError) as exc:
            raise SessionError(
                f"the session holds a value {type(ser).__name__} cannot store ({exc}). "
                "Pyramid sessions hold JSON values: convert it (a datetime to an ISO "
                "string, say), or set session.data_serializer."
            ) from exc
        if row is None:
            if self._data or self._flash or self._force:
                row = self.row = factory.model(
                    id=session_id_for(self._token),
                    created=self._created,
                    updated=self.now,
                    data=data,
                    flash=flash,
                )
                for name, value in self._settings_values.items():
                    setattr(row, name, value)
                hook.session_renew(session=self)
                hook.session_persist(session=self, row=row)
                self._dbsession.add(row)
                self._notify(events.SessionCreated(self.request, row.id))
                write = True
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
            if self.dirty:
                hook.session_persist(session=self, row=row)
                write = True
            write = write or extras != self.cookie_extras
        if write:
            value = factory.serializer.dumps(encode_payload(self._token, self.cookie_extras))
            self._cookie = ("set", value, self._cookie_attributes())
        elif self._delete_cookie is not None:
            self._cookie = ("delete", "", self._delete_cookie)
        dbsession = self.__dict__.get("_dbsession")  # None: this request never needed it
        if dbsession is not None and (dbsession.new or dbsession.dirty or dbsession.deleted):
            dbsession.flush()

    @property
    def dirty(self) -> bool:
        """Whether this request will write the session's row (so far)."""
        row = self.row
        if row is None:
            return bool(self._data or self._flash or self._force)
        return self.new or self._force or self._dbsession.is_modified(row)

    def _after_commit(self, status: bool) -> None:
        self._committed = status

    def _respond(self, request: Request, response: Response) -> None:
        vary = response.vary or ()
        if "Cookie" not in vary:
            response.vary = (*vary, "Cookie")
        if self._committed and self._cookie is not None:
            action, value, attrs = self._cookie
            name = self._factory.cookie_name
            if action == "set":
                response.set_cookie(name, value, **attrs)
            else:
                response.delete_cookie(name, path=attrs["path"], domain=attrs["domain"])

    def _cookie_attributes(self) -> dict[str, Any]:
        setting = self._setting
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

    def _setting(self, name: str) -> Any:
        if not self._loaded:
            self._load()
        value = self._settings_values.get(name, _MISSING)
        if value is not _MISSING:
            return value
        if self.row is not None and name in self._factory.config.configurable:
            value = getattr(self.row, name)
            if value is not None:
                return value
        return self._factory.config.values[name]

    def _apply_settings(self, values: dict[str, Any]) -> None:
        self._settings_values.update(values)
        if self.row is not None:
            for name, value in values.items():
                setattr(self.row, name, value)

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
        """Delete the stored session and its cookie; later use starts a new session."""
        if self.row is not None and not self.new:
            sid = self.row.id
            self._drop_row()
            self._notify(events.SessionInvalidated(self.request, sid))
        self._start_new()
        self._force = self._regenerated = False

    def regenerate_id(self) -> None:
        """Give the session a new id and cookie, keeping its data; the old id stops working.

        Call it at login and at every change of privilege (OWASP session
        fixation defence). The row keeps its data under its new key: one
        UPDATE of the primary key, no copy.
        """
        old = self.row.id if self.row is not None and not self.new else None
        self._token = os.urandom(TOKEN_BYTES)
        self._regenerated = True
        if old is not None:
            self.row.id = session_id_for(self._token)
            self._notify(events.SessionRegenerated(self.request, old, self.row.id))

    @property
    def session_id(self) -> str:
        """The row key of this session (SHA-256 of the token): safe to log, not a secret."""
        return session_id_for(self._token)

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
