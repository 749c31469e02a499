"""The request's session: a lazy ISession backed by one row of the model."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import (
    Callable,
    ItemsView,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    Sequence,
    ValuesView,
)
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from pyramid.interfaces import ISession
from pyramid.response import Response as _HeaderMaker
from sqlalchemy.orm.attributes import instance_state
from transaction.interfaces import NoTransaction
from zope.interface import implementer

from . import events
from .crypto import TOKEN_BYTES, SecretKeys, decode_payload, encode_payload, session_id_for
from .errors import InconsistentDataError, SessionError
from .hookspecs import INVALIDATED
from .model import KERNEL_COLUMNS
from .settings import SessionSettings
from .stash import Stash
from .storage import LINEAGE_CHARS

if TYPE_CHECKING:
    from pyramid.request import Request
    from pyramid.response import Response

    from .factory import SessionFactory

__all__ = ["RESERVED_ATTRIBUTES", "Peek", "Session"]


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
    {
        "row",
        "now",
        "new",
        "cookie_extras",
        "_data",
        "_flash",
        "_token",
        "_created",
        "_columns",
        "_txn",
    }
)
_MISSING = object()


def _no_implementation(**kwargs: Any) -> None:
    """What a request stage is while no plugin implements its hook (``RequestHooks``)."""
    return None


#: A session's request state, made on first use (``Session.__getattr__``): a visitor
#: who stores nothing never needs most of it. Name -> what makes its initial value.
_STATE: dict[str, Callable[[], Any]] = {
    "_force": bool,  # changed() was called: write even if nothing else changed
    "_regenerated": bool,
    "_settings_values": dict,  # settings saved in this request
    "_settings_loaded": dict,  # the stored values those replaced
    "_columns": dict,  # plugin columns set with set_column before the row exists
    # the cookie the browser holds, to delete: set when it must go (bad cookie, unknown
    # or dropped session), with the attributes it was set with as far as they are known
    "_delete_cookie": lambda: None,
    "_cookies": list,  # the Set-Cookie headers to send: (action, value, attributes)
    "_committed": bool,
    "_stale_key": bool,  # the cookie was made with a key that is no longer first
    "_keep_cookie": bool,  # keep_cookie() was called: the browser's cookie stays as it is
    "_renamed": bool,  # the browser sent its cookie under cookie_previous_name
    # the cookies sent cannot be told apart (planted ones?), or one is older than a cookie
    # the browser holds by now: this response sets and deletes none, but after a login
    "_hold_cookies": bool,
    "_held": list,  # logouts that must hold (see execute_logout)
    "_logout_failed": bool,  # a held logout could not be run again: the response says so
    "_held_cookies": list,
    "_peeking": bool,
    "_sharing": bool,  # written into a transaction that goes on (_in_shared_transaction)
    "_lineage": lambda: None,  # the id's lineage the cookie carries, if any
    "_orig_data": lambda: None,  # the data and flash as stored (serialized)
    "_orig_flash": lambda: None,
    "_loaded_extras": dict,  # the cookie extras as the request found them
}
#: The state of one session (not of the request): dropped when a new one starts.
_SESSION_STATE = (
    "_token",  # a new session's is drawn on first need
    "_lineage",
    "_orig_data",
    "_orig_flash",
    "_loaded_extras",
    "_settings_values",
    "_settings_loaded",
    "_columns",
)
# transaction.Transaction.status of a transaction one can still write into
_OPEN_STATUSES = frozenset({"Active", "Doomed"})
#: Cookie extras the kernel owns (a plugin's extras have other names).
LINEAGE_EXTRA = "sessions_kernel.lineage"
UNSTORED_EXTRA = "sessions_kernel.unstored"
#: How many cookies of the session's name one request tries; a request that sends more
#: gets a new session, and none of them is deleted.
MAX_COOKIES_TRIED = 4
log = logging.getLogger("sessions_kernel")
# Values that cannot change in place: handing one out cannot change the data.
_IMMUTABLE = frozenset({str, int, float, bool, type(None)})


def _literal_sql(statement: Any, dialect: Any) -> str:
    """A statement with its values in it, for a log line (its text alone if that fails)."""
    try:
        return str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    except Exception:
        return str(statement)


def _make_private(response: Any) -> None:
    """Keep shared caches from storing ``response`` (it sets a cookie, or shows a session).

    ``Vary: Cookie`` alone is not enough: many caches ignore it. A bare
    ``private`` or a ``no-store`` of the application's is kept; anything else
    (``public``, a ``private`` that names only some headers) becomes ``private``.
    """
    headers = response.headers
    if "Cache-Control" not in headers:
        response.headerlist.append(("Cache-Control", "private"))
        return
    cache = response.cache_control
    if cache.private == "*" or cache.no_store is True:
        return
    cache.public = False
    cache.private = True


def _private_response(request: Any, response: Any) -> None:
    """A response callback: the page shows a session (see :meth:`Session._peek`)."""
    _make_private(response)
    vary = response.vary or ()
    if "Cookie" not in vary:
        response.vary = (*vary, "Cookie")


def _logout_unavailable(response: Any) -> None:
    """Turn the response into a 503: a logout did not hold, and must not look as if it had.

    The browser keeps its cookie, so that the user can log out again once the
    database answers (``Retry-After``); a redirect's ``Location`` is dropped.
    """
    response.status = "503 Service Unavailable"
    response.content_type = "text/plain"
    response.charset = "utf-8"
    response.text = (
        "The logout could not be completed: the database did not answer. "
        "You are still logged in; please try again in a moment.\n"
    )
    dropped = {"location", "set-cookie", "cache-control", "retry-after"}
    response.headerlist[:] = [h for h in response.headerlist if h[0].lower() not in dropped]
    response.headerlist += [("Retry-After", "5"), ("Cache-Control", "no-store")]


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
    """Every value of the cookie ``name`` in a Cookie header, in the browser's order.

    Pairs are separated by ``;`` (and by ``,``, with which some servers join two
    Cookie header lines); a value may be wrapped in one pair of double quotes.
    """
    values = []
    for part in header.replace(",", ";").split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) > 1 and value[0] == value[-1] == '"':
                value = value[1:-1]
            values.append(value)
    return values


class _JoiningExtras(dict):  # type: ignore[type-arg]
    """The cookie extras of a session that has not joined the transaction yet.

    A request whose browser sent no session cookie does not join the
    request's transaction until it has something to store (see
    :meth:`Session._join`): a plugin that writes an extra (a CSRF token for a
    form) is such a change, so every way of writing this dict joins first.
    """

    __slots__ = ("_session",)

    def __init__(self, session: Session) -> None:
        super().__init__()
        self._session = session

    def _join(self) -> None:
        self._session._join()

    def __setitem__(self, key: str, value: bytes) -> None:
        self._join()
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._join()
        super().__delitem__(key)

    def __ior__(self, other: Any) -> _JoiningExtras:  # type: ignore[misc]
        self._join()
        super().update(other)
        return self

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._join()
        super().update(*args, **kwargs)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._join()
        return super().setdefault(key, default)

    def pop(self, *args: Any) -> Any:
        self._join()
        return super().pop(*args)

    def popitem(self) -> Any:
        self._join()
        return super().popitem()

    def clear(self) -> None:
        self._join()
        super().clear()


@implementer(ISession)
class Session(MutableMapping[str, Any]):
    """``request.session``: Pyramid's ISession, stored server-side.

    Nothing is read before the first use. The first use decrypts the cookie
    and fetches the row by its primary key (one SQL statement), runs the
    plugins' ``session_load`` and ``session_validate`` hooks, and registers
    the persist stage to run before the request's transaction commits. A
    request that sent no session cookie registers it only at its first
    change, so a visitor who stores nothing costs no transaction hook. The
    cookie is sent only once that commit succeeded.

    Values must be serializable by the data serializer (JSON by default).
    Changes are found by comparing the serialized data with what was loaded,
    so nested mutation (``session["cart"].append(item)``) is saved without
    calling :meth:`changed`. A request that set or deleted no key and was
    handed no value that can change in place (only strings, numbers, booleans,
    ``None``) cannot have changed the data, and skips that serialization.

    Plugins read and write the attributes below in their hooks. Their names,
    and every name of the class's own API, are reserved: a plugin's
    ``session_attributes`` hook that claims one is a start-up error.
    """

    #: The Pyramid request this session belongs to.
    request: Request
    #: The stored session's row (an instance of the model), or ``None`` while the
    #: session has none yet (a new session gets its row before commit, if it stores
    #: anything).
    row: Any
    #: The time of this request in whole seconds, read once from the factory's clock.
    #: Plugins never read the time any other way (tests move that clock).
    now: int
    #: ``True`` until the session has a row in the database.
    new: bool
    #: Small byte strings the cookie carries beside the token, keyed by a name the
    #: plugin picks (names starting with ``sessions_kernel.`` are the kernel's).
    #: Changing it makes the kernel send the cookie again.
    cookie_extras: dict[str, bytes]
    #: Per-request state of plugins (:class:`~sessions_kernel.Stash`): a value one
    #: hook computes and a later hook of the same request reads, under a
    #: :class:`~sessions_kernel.StashKey` of the plugin's own. Created on first use;
    #: reading it never loads the session. It lives as long as this object:
    #: ``invalidate()`` and a rejection leave it alone.
    stash: Stash

    # request state, made on first use (_STATE)
    _force: bool
    _regenerated: bool
    _settings_values: dict[str, Any]
    _settings_loaded: dict[str, Any]
    _columns: dict[str, Any]
    _delete_cookie: dict[str, Any] | None
    _cookies: list[tuple[str, str, dict[str, Any]]]
    _committed: bool
    _stale_key: bool
    _keep_cookie: bool
    _renamed: bool
    _hold_cookies: bool
    _held: list[Any]
    _logout_failed: bool
    _held_cookies: list[tuple[str, str, dict[str, Any]]]
    _peeking: bool
    _sharing: bool
    _lineage: str | None
    _orig_data: bytes | None
    _orig_flash: bytes | None
    _loaded_extras: dict[str, bytes]
    _presented: Sequence[str]  # the session cookies the browser sent

    #: whether the first use happened (the load stage ran)
    _loaded = False

    def __init__(self, request: Request, factory: SessionFactory) -> None:
        self.request = request
        self._factory = factory

    def __getattr__(self, name: str) -> Any:
        if name in _LAZY:
            if not self._loaded:
                self._load()
                return getattr(self, name)
            error = self.__dict__.get("_load_error")
            if error is not None:  # every later use sees the same error, not an AttributeError
                raise type(error)(*error.args)
        if self._loaded:  # what is made on first use once the session is loaded
            make = _STATE.get(name)
            if make is not None:  # request state (see _STATE)
                value = self.__dict__[name] = make()
                return value
            if name == "cookie_extras":  # a new session's
                extras = self.cookie_extras = _JoiningExtras(self) if self._txn is None else {}
                return extras
            if name == "_dbsession":
                return self._fetch_dbsession()
            if name == "_token":  # a new session's: a visitor who stores nothing never
                token = self._token = os.urandom(TOKEN_BYTES)  # needs one
                return token
        if name == "stash":  # made on first use: most requests never need one
            stash = self.stash = Stash()
            return stash
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

    # -- the pipeline ---------------------------------------------------------------------
    def _protocol(self, *, loaded: bool = False) -> Iterator[None]:
        """The pipeline of one request's session: every stage, in its order.

        The one place to read what the kernel does with a session, and when
        (compare pytest's ``runtestprotocol``). :meth:`_load` starts it at
        the first use of ``request.session``: it runs the load and validate
        stages, then pauses at ``yield`` while the application uses the
        session. The before-commit hook of the request's transaction
        (:meth:`_persist`) resumes it for the extend, renew and persist
        stages. The cookie it decides is sent by :meth:`_respond`, once the
        commit succeeded. The SQL is :class:`~sessions_kernel.storage.RowStorage`'s.

        A request that sent no session cookie has nothing to load or
        validate: :meth:`_load` starts its new session itself, and the
        pipeline starts only at the session's first change (:meth:`_join`),
        ``loaded``.
        """
        stages = self._factory.stages
        if not loaded:
            # load: the cookie decrypted and authenticated, the row fetched by its key
            self._take(*self._find_row())
            stages.session_load(session=self)
        # validate: each plugin may reject a stored row; a rejected row is deleted
        if self.row is not None:
            reason = stages.session_validate(session=self)
            if reason:
                self._reject(reason)
            else:
                self._read_row(self.row)

        yield  # the application uses the session; then its transaction is about to commit

        data, flash = self._settle()
        row = self.row
        unstored = False
        if row is None:
            if self.dirty:  # a new session that holds something gets its row: no extend
                row = self._new_row(data, flash)
                # renew: plugins put their first secrets in the cookie
                stages.session_renew(session=self)
                # persist: plugins' columns set, then the INSERT
                stages.session_persist(session=self, row=row)
                self._insert_row(row)
                send = True
            else:  # nothing to store: no row, at most a cookie-only session
                send = unstored = self._cookie_only()
        else:
            self._apply_changes(row, data, flash)
            # extend: plugins decide whether an otherwise unchanged session needs a write
            stages.session_extend(session=self)
            # renew: plugins rotate secrets the cookie carries
            extras = dict(self.cookie_extras)
            stages.session_renew(session=self)
            # persist: plugins' columns set, then the changed columns written (or merged)
            written = False
            if self.dirty:
                stages.session_persist(session=self, row=row)
                written = self._write_row(row, extras)
            send = self._resend_cookie(written, extras)
        # the cookie to set or delete; _respond sends it once the transaction committed
        self._decide_cookie(send, unstored)
        self._seal()
        self._flush()

    def _load(self) -> None:
        """The first use: what the session needs checked, then the pipeline up to the view.

        A request whose browser sent no session cookie (a visitor's first
        page, an anonymous one) reads nothing and joins the request's
        transaction only when it first has something to store (:meth:`_join`):
        until then it costs no transaction hooks and no persist stage, and a
        request that stores nothing never joins.
        """
        factory = self._factory
        request = self.request
        header = request.environ.get("HTTP_COOKIE")
        presented = self._presented = self._session_cookies(header) if header else ()
        self._txn = self._transaction() if presented else None
        self.now = int(factory.clock())
        name = factory.dbsession_name
        if name not in vars(request) and not hasattr(type(request), name):
            # checked without creating it: request.dbsession is made on first need
            raise self._no_dbsession_error()
        self._loaded = True  # the request state is made on first use (see _STATE)
        if presented:
            pipeline = self._pipeline = self._protocol()
            next(pipeline)  # load and validate
            request.add_response_callback(self._respond)
            self._join_transaction(self._txn)
        else:
            # the load stage of a request that sent no session cookie: a new, empty session,
            # nothing to decrypt, fetch or validate; the pipeline starts at its first change
            self._start_new(fresh=True)
            load = factory.stages.session_load
            if load is not _no_implementation:  # most requests: nobody implements it
                load(session=self)
            request.add_response_callback(self._respond)

    def _join(self) -> None:
        """Join the request's transaction, at the first change of a session that had no cookie.

        Raises :class:`SessionError` if ``request.tm`` has no transaction
        begun (pshell without ``request.tm.begin()``): nothing could store
        the change; and once the session was written (:meth:`_seal`).
        """
        self._check_open()
        if self._txn is None:
            txn = self._txn = self._transaction()
            if "_pipeline" not in self.__dict__:  # loaded without a cookie (see _load)
                pipeline = self._pipeline = self._protocol(loaded=True)
                next(pipeline)
            self._join_transaction(txn)

    def _seal(self) -> None:
        """The session was written for this request: a later change would not be stored.

        From the row's write (or the decision not to write) until the request
        ends, every change raises :class:`SessionError`, instead of being
        lost (the data, the flash) or written past the merge rules by the
        ORM's flush at commit (a plugin's column).
        """
        self._sealed = True

    def _check_open(self) -> None:
        if "_sealed" in self.__dict__:
            raise SessionError(
                "request.session was already written for this request (before its transaction "
                "committed), so this change would not be stored. Change the session in the view "
                "or in a hook before session_persist, not in a SessionMerged subscriber or a "
                "response callback; in pshell, change it before "
                "request.tm.commit(), or make a new request for the next change."
            )

    def _join_transaction(self, txn: Any) -> None:
        txn.addBeforeCommitHook(self._persist)
        txn.addAfterCommitHook(self._after_commit)
        txn.addAfterAbortHook(self._after_abort)

    def _persist(self) -> None:
        """The before-commit hook: the pipeline's extend, renew and persist stages (once)."""
        if self.__dict__.get("_persisted"):  # already written into a shared transaction
            return
        self._persisted = True
        try:
            next(self._pipeline, None)
        except BaseException:
            # A failing before-commit hook stops the commit, but the transaction package
            # aborts nothing itself, and pyramid_tm aborts only if no exception view
            # rendered the error. Roll back now so no connection keeps its locks.
            dbsession = self.__dict__.get("_dbsession")
            if dbsession is not None:
                dbsession.rollback()
            raise

    # -- the load and validate stages ------------------------------------------------------
    def _take(
        self,
        row: Any,
        token: bytes | None,
        extras: dict[str, bytes],
        unstored: dict[str, bytes] | None,
    ) -> None:
        """What the cookie found becomes the session: its stored row, or a new session."""
        if row is None:
            self._start_new(fresh=True)
            if unstored is not None:  # a cookie-only session: what plugins keep in the cookie
                self.cookie_extras = unstored
                self._loaded_extras = dict(unstored)
        else:
            assert token is not None  # a stored row was found by its token
            self.row, self._token, self.cookie_extras, self.new = row, token, extras, False
            self._lineage = extras.pop(LINEAGE_EXTRA, b"").decode("ascii") or None
            self._loaded_extras = dict(extras)
            self._created: int | None = None  # the row's own (see created)

    def _reject(self, reason: str) -> None:
        """A plugin rejected the stored row: delete it, and start a new, empty session."""
        old_row = self.row
        self._drop_row()
        self.notify(events.SessionRejected(self.request, old_row.id, reason))
        self._start_new()  # its extras as loaded are empty again too
        self._factory.stages.session_invalidated(session=self, reason=reason, old_row=old_row)

    def _peek(self) -> Peek:
        """See :meth:`SessionFactory.peek <sessions_kernel.SessionFactory.peek>`."""
        factory = self._factory
        self.now = int(factory.clock())
        self._loaded = True  # the request state is made on first use (see _STATE)
        self._peeking = True  # its events say so (event.peek): not the visitor's activity
        header = self.request.environ.get("HTTP_COOKIE") or ""
        self._txn = None  # a peek never writes
        self._presented = self._session_cookies(header)
        if not self._presented:
            return Peek(reason="no session cookie")
        row, token, extras, unstored = self._find_row()
        if row is None:
            why = "nothing stored yet" if unstored is not None else "no stored session"
            return Peek(reason=why)
        # what the page shows of the session is the visitor's own: no shared cache stores it
        self.request.add_response_callback(_private_response)
        self._take(row, token, extras, None)
        factory.stages.session_load(session=self)
        reason = factory.stages.session_validate(session=self)
        if reason:  # reported as a real request would, and left for it to act on
            self.notify(events.SessionRejected(self.request, row.id, reason))
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
                f"request.session was {'changed' if self._loaded else 'first used'} while "
                "request.tm has no transaction begun, so nothing could store it. In "
                "pshell, call request.tm.begin() first (the starter's pshell setup does) "
                "and request.tm.commit() to store the session; in a script, use it "
                "inside 'with request.tm:'; in "
                "a tween, add the tween under pyramid_tm's (over=EXCVIEW, "
                "under='pyramid_tm.tm_tween_factory')."
            )
        return txn

    def _find_row(self) -> tuple[Any, bytes | None, dict[str, bytes], dict[str, bytes] | None]:
        """The stored session the request's cookie names: (row, token, extras, unstored).

        A browser may send several cookies of the session's name: one planted
        from a sibling subdomain or with a longer path is sent before the
        user's own. Every one is tried; a cookie that does not decrypt, or
        names no row, is passed over. The request fails closed, with a new
        empty session and without deleting any cookie, when the cookies open
        two different stored sessions (a planted live session must not put
        the user in the attacker's account), or when more were sent than
        :data:`MAX_COOKIES_TRIED` (an untried one may be the user's own). The
        browser's cookie is deleted only when every cookie was tried and none
        was good, so a planted cookie never logs the user out. ``unstored``
        is the extras of a cookie-only session (nothing stored yet) when no
        stored one was found.
        """
        factory = self._factory
        request = self.request
        values = self._presented
        if len(values) > MAX_COOKIES_TRIED:
            self._hold_cookies = True
            self.notify(
                events.CookieRejected(
                    request,
                    f"{len(values)} cookies named {factory.cookie_name!r}, more than the "
                    f"{MAX_COOKIES_TRIED} tried: none is used, none is deleted",
                )
            )
            return None, None, {}, None
        found: tuple[Any, bytes, dict[str, bytes]] | None = None
        unstored = None
        bad = False
        for value in values:
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
            if found is not None and found[0].id == sid:
                continue  # the same session twice (an old path's cookie, say)
            row = self._fetch_row(sid)
            if row is None:
                self.notify(events.SessionNotFound(request, sid))
                bad = True
                storage = factory.storage
                if storage.lineage_lives(self._dbsession, sid[:LINEAGE_CHARS]):
                    # An id a login (regenerate_id) replaced since this request was sent: the
                    # browser holds the new cookie by now, which this response must not replace.
                    self._hold_cookies = True
            elif found is None:
                found = (row, token, extras)
            else:  # two live sessions: which is the user's cannot be told
                return self._fail_closed("of two different stored sessions")
        if found is not None:
            if unstored is not None:  # a session with nothing stored beside a stored one
                return self._fail_closed("of a stored session and of one with nothing stored")
            return (*found, None)
        if self._hold_cookies:
            return None, None, {}, None
        if bad and unstored is None:
            self._delete_cookie = self._as_sent(factory.default_cookie_attributes)
        return None, None, {}, unstored

    def _fail_closed(self, what: str) -> tuple[None, None, dict[str, bytes], None]:
        """Cookies that cannot be told apart (a planted one?): a new empty session, and a
        response that sets and deletes no cookie (either might be the user's), but after a
        login (``regenerate_id``)."""
        self._hold_cookies = True
        self.notify(
            events.CookieRejected(
                self.request,
                f"cookies named {self._factory.cookie_name!r} {what}: none is used, "
                "none is deleted",
            )
        )
        return None, None, {}, None

    def _session_cookies(self, header: str) -> list[str]:
        """The values of the session's cookies in a Cookie header, in the browser's order.

        Those named ``cookie_name``; if there are none, those named
        ``cookie_previous_name`` (the name before a rename), read until
        the browser holds one of the new name (see :meth:`_as_sent`).
        """
        factory = self._factory
        values = _cookie_values(header, factory.cookie_name)
        previous = factory.previous_cookie_name
        if not values and previous is not None:
            values = _cookie_values(header, previous)
            self._renamed = bool(values)
        return values

    def _as_sent(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """The attributes of the browser's cookie, with its name if it is the previous one."""
        return {**attrs, "name": self._factory.previous_cookie_name} if self._renamed else attrs

    def _open_cookie(self, value: str) -> bytes:
        """The cookie's plaintext; notes a cookie made with a key that is no longer first."""
        factory = self._factory
        previous = factory.previous_serializer
        if self._renamed and previous is not None:  # bound to its name; sent again renamed
            plaintext: bytes = previous.loads(value)
            return plaintext
        primary = factory.primary_serializer
        if primary is not None:
            try:
                plaintext = primary.loads(value)
                return plaintext
            except ValueError:
                payload = factory.serializer.loads(value)
                self._stale_key = True  # an older key made it: send it again (_resend_cookie)
                return payload
        return factory.serializer.loads(value)

    def _fetch_row(self, sid: str) -> Any:
        """The row by its primary key; locked until commit on a retried attempt or while
        contended, never for a peek (see :meth:`RowStorage.fetch
        <sessions_kernel.storage.RowStorage.fetch>`)."""
        retried = bool(self.request.environ.get("retry.attempt"))
        storage = self._factory.storage
        return storage.fetch(self._dbsession, sid, retried=retried, peek=self._peeking)

    def _read_row(self, row: Any) -> None:
        """The stored data and flash, checked; an inconsistent row is an error every later
        use of the session repeats (InconsistentDataError)."""
        try:
            self._data, self._flash = self._decode(row)
        except InconsistentDataError as exc:
            self._load_error = exc
            raise
        self._orig_data, self._orig_flash = row.data, row.flash
        self._data_touched = False  # see _touched_by

    def _decode(self, row: Any) -> tuple[dict[str, Any], dict[str, list[Any]]]:
        ser = self._factory.data_serializer
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
        return data, flash

    @staticmethod
    def _inconsistent(row: Any, column: str, problem: str) -> InconsistentDataError:
        return InconsistentDataError(
            f"session {str(row.id)[:12]}… ({type(row).__name__}): column {column!r} {problem}. "
            "Delete the row or repair the column."
        )

    def _start_new(self, *, fresh: bool = False) -> None:
        """A new, empty session: at load (``fresh``), or after a logout or a rejection."""
        self.row = None
        self.new = True
        if not fresh:
            state = self.__dict__
            for name in _SESSION_STATE:  # back to their defaults, made again on first use
                state.pop(name, None)
            state.pop("cookie_extras", None)  # made empty on first use (see __getattr__)
        self._data, self._flash = {}, {}
        self._data_touched = True
        self._created = self.now

    def _drop_row(self) -> None:
        """DELETE the row (by its lineage if its id moved meanwhile), and make it hold."""
        # the browser's cookie was set with the stored settings, not with edits of this request
        self._delete_cookie = self._as_sent(self._cookie_attributes(as_loaded=True))
        storage = self._factory.storage
        storage.delete(self._dbsession, self.row, self._lineage, self._held.append)
        self._orig_data = self._orig_flash = None

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
        self._join()
        self._held.append(statement)
        return self._factory.storage.execute(self._dbsession, statement)

    def derived_keys(self, label: bytes, length: int = 32) -> SecretKeys:
        """Keys for a plugin's own cryptography: :meth:`SessionFactory.derived_keys
        <sessions_kernel.SessionFactory.derived_keys>` of this session's factory."""
        return self._factory.derived_keys(label, length)

    def notify(self, event: Any) -> None:
        """Send ``event`` through the request's registry, skipped when nobody subscribed.

        For the kernel's events and plugins' own (``RenewalViolation``, say).
        """
        registry = self.request.registry
        if getattr(registry, "has_listeners", True):
            if self.__dict__.get("_peeking"):
                object.__setattr__(event, "peek", True)  # see SessionEvent.peek
            registry.notify(event)

    # -- the extend, renew and persist stages (before commit) ------------------------------
    def _settle(self) -> tuple[bytes | None, bytes | None]:
        """The data and flash as they are to be stored: serialized (only if they may have
        changed) and within ``max_data_size``; unsaved settings edits dropped first."""
        # Unsaved settings edits end with the request; dropping them first means every
        # hook that follows reads the settings in force through ``session.settings``.
        settings = self.__dict__.get("_settings")
        if settings is not None:
            settings.discard()
        ser = self._factory.data_serializer
        # a new session that stores nothing (an anonymous visitor) serializes nothing
        touched = self._data_touched and (self.row is not None or self.dirty)
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
            self._factory.storage.check_size(data, flash)  # before any SQL
        return data, flash

    def _new_row(self, data: bytes | None, flash: bytes | None) -> Any:
        """A new session's row, with the settings and plugin columns of this request."""
        row = self.row = self._factory.model(
            id=self.session_id,
            created=self._created,
            updated=self.now,
            data=data,
            flash=flash,
        )
        for name, value in (*self._settings_values.items(), *self._columns.items()):
            setattr(row, name, value)
        return row

    def _insert_row(self, row: Any) -> None:
        self.notify(events.SessionCreated(self.request, row.id))
        # the row joins the identity map only for a transaction that goes on after this
        self._factory.storage.insert(self._dbsession, row, attach=self._sharing)
        self._seal()

    def _cookie_only(self) -> bool:
        """A session with nothing to store: whether a cookie-only session is to be sent.

        A plugin may keep something in the cookie (a CSRF token for a form)
        with no row. Its first store gets a new token, so a planted
        cookie-only session fixes no id. When the extras were emptied, the
        browser's cookie is deleted.
        """
        if self.cookie_extras == self._loaded_extras:
            return False
        if self.cookie_extras:
            return True
        self._delete_cookie = self._delete_cookie or self._as_sent(
            self._factory.default_cookie_attributes
        )
        return False

    def _apply_changes(self, row: Any, data: bytes | None, flash: bytes | None) -> None:
        """Assign a stored row what this request changed of the data and flash.

        ``updated`` records the last change of what the kernel owns (data,
        flash, settings, id); a plugin's own write (an idle extension) sets
        only its columns.
        """
        changed = self._force or self._regenerated or bool(self._settings_values)
        if data != self._orig_data:
            row.data = data
            changed = True
        if flash != self._orig_flash:
            row.flash = flash
            changed = True
        if changed:
            row.updated = self.now

    def _decide_cookie(self, send: bool, unstored: bool) -> None:
        """The cookie to set (``send``), or the browser's to delete, once committed."""
        if self._hold_cookies and not self._regenerated:
            return  # see _fail_closed: the browser's cookies stay as they are
        old = self._delete_cookie
        if send:
            value = self._cookie_value(unstored=unstored)
            attrs = self._cookie_attributes()
            if old is None and (self._settings_loaded or self._renamed):  # not where it was
                old = self._as_sent(self._cookie_attributes(as_loaded=True))
            # A cookie is known by its name, path and domain: a new one set elsewhere leaves
            # the old one in the browser unless it is deleted too.
            where = (None, attrs["path"], attrs["domain"])
            if old is not None and (old.get("name"), old["path"], old["domain"]) != where:
                self._cookies.append(("delete", "", old))
            self._cookies.append(("set", value, attrs))
        elif old is not None:
            self._cookies.append(("delete", "", old))

    def _flush(self) -> None:
        dbsession = self.__dict__.get("_dbsession")  # None: this request never needed it
        if dbsession is not None:
            self._factory.storage.flush(dbsession, self.row)

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
        if self._keep_cookie and not self._regenerated:
            return False
        if self._regenerated or self._force or self._settings_loaded or self._stale_key:
            return True
        if self._renamed:  # under cookie_previous_name: sent again under the current one
            return True
        if self.cookie_extras != self._loaded_extras:
            return True
        return written and self._setting("cookie_max_age") is not None

    def _write_row(self, row: Any, extras: dict[str, bytes]) -> bool:
        """UPDATE the changed columns, merged with a concurrent write if needed.

        ``extras`` is the cookie as the browser holds it, restored if this
        request's write is dropped. Returns whether the row was written.
        """
        outcome = self._factory.storage.update(
            self._dbsession,
            row,
            orig_data=self._orig_data,
            orig_flash=self._orig_flash,
            data=self._data,
            flash=self._flash,
            lineage=self._lineage,
        )
        self._seal()  # a SessionMerged subscriber's change would not be stored
        stored_id = outcome.stored_id or ""
        if outcome.moved_to is not None:
            # A concurrent request (a login) gave the session a new id and sent the browser
            # its cookie: this request's changes were merged onto it, and its own cookie,
            # with the old id (or a new id of its own that was dropped), must not replace it.
            self._regenerated = False
            self._keep_cookie = True
        if outcome.merged is not None:
            self._read_row(row)  # what is stored now: the other request's changes too
            self.notify(events.SessionMerged(self.request, stored_id, outcome.merged))
        elif outcome.gone:
            # the browser's cookie was set with the stored settings, as in _drop_row
            self._delete_cookie = self._as_sent(self._cookie_attributes(as_loaded=True))
            self.notify(events.SessionNotFound(self.request, stored_id))
        elif not outcome.written:  # dropped: the concurrent write stands, and the cookie
            self.cookie_extras = extras
        return outcome.written

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
            factory.storage.replay(self._dbsession, held)
        except Exception:
            # The sessions it was to end are still valid: say which, by the statements
            # (row keys and lineages are hashes, safe to log), not by this session's new id.
            dialect = self._dbsession.get_bind(factory.model).dialect
            log.exception(
                "a logout could not be run again after its request's transaction was "
                "aborted; these sessions stay valid until it runs (every id of a session "
                "starts with its lineage, the first 24 hex digits): %s",
                "; ".join(_literal_sql(statement, dialect) for statement in held),
            )
            self._logout_failed = True
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
        if self.__dict__.get("_logout_failed"):  # see _replay_logouts (no state made)
            _logout_unavailable(response)
            return
        headerlist = response.headerlist
        for name, _ in headerlist:  # a few headers: cheaper than webob's header views
            if name.lower() == "vary":
                vary = response.vary or ()
                if "Cookie" not in vary:
                    response.vary = (*vary, "Cookie")
                break
        else:
            headerlist.append(("Vary", "Cookie"))
        if self._txn is None:  # never joined: nothing changed, nothing to send
            return
        # (in a transaction shared across requests, this runs the persist stage first)
        sending = (self._committed or self._in_shared_transaction()) and bool(self._cookies)
        if not (sending or self.row is not None):
            return
        _make_private(response)
        if not sending:
            return
        headers = response.headers
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

        Same name, path and domain, or the browser keeps the cookie; same
        Secure, or it refuses the deletion of a __Host-/__Secure- cookie.
        ``attrs`` may name a cookie other than ``cookie_name`` (:meth:`_as_sent`).
        """
        response = _HeaderMaker()
        attrs = {**attrs, "max_age": None}
        name = attrs.pop("name", None) or self._factory.cookie_name
        response.set_cookie(name, None, **attrs)
        header: str = response.headers["Set-Cookie"]
        return header

    def _cookie_value(self, *, unstored: bool = False) -> str:
        """The cookie's value: the token and the extras, with the kernel's own, encrypted."""
        extras = dict(self.cookie_extras)
        if self._lineage is not None:
            extras[LINEAGE_EXTRA] = self._lineage.encode("ascii")
        if unstored:
            extras[UNSTORED_EXTRA] = b""
        try:
            value: str = self._factory.serializer.dumps(encode_payload(self._token, extras))
        except ValueError as exc:  # extras the cookie cannot carry: stop before the commit
            raise SessionError(
                f"the session's cookie cannot be made: {exc}. Nothing was stored; keep "
                "large values in the session's row (a plugin's column), not in the cookie."
            ) from exc
        return value

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
        if self._txn is None or self._txn.status not in _OPEN_STATUSES:  # committed, or failed
            return False
        if getattr(request, "exc_info", None) is not None:
            return False  # an exception view answered: pyramid_tm would have aborted
        self._sharing = True
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
            settings: SessionSettings = self.__dict__["_settings"]
            return settings
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
        self._join()
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
        self._join()
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
        if self.row is not None and not self.new:
            created: int = self.row.created
            return created
        assert self._created is not None  # a new session's: set when it began
        return self._created

    def changed(self) -> None:
        """Mark the session as changed (never needed for data; kept for ISession)."""
        if not self._loaded:
            self._load()
        self._join()
        self._force = True

    def invalidate(self) -> None:
        """Delete the stored session and its cookie; later use starts a new session.

        The logout holds: if the request then fails or raises (a redirect
        with ``headers=forget(request)``), the row is deleted all the same and
        the response deletes the cookie (see :meth:`execute_logout`). No copy
        of the cookie works afterwards, not even one whose id a concurrent
        request regenerated meanwhile.

        The plugins' ``session_invalidated`` hook is called once the new
        session began, with the reason ``"invalidated"`` and the deleted row.
        """
        self._check_open()
        old_row = None
        if self.row is not None and not self.new:
            old_row = self.row
            self._drop_row()
            self._held_cookies = [("delete", "", self._delete_cookie or {})]
            self.notify(events.SessionInvalidated(self.request, old_row.id))
        self._start_new()
        self._force = self._regenerated = False
        self._factory.stages.session_invalidated(session=self, reason=INVALIDATED, old_row=old_row)

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

        The plugins' ``session_regenerated`` hook is called with the old and
        the new id, also on a session that has no row yet.
        """
        self._check_open()
        stored = self.row is not None and not self.new
        # a session without a row: the id it would have been stored under
        old = self.row.id if stored else self.session_id
        self._token = os.urandom(TOKEN_BYTES)
        self._regenerated = True
        if stored:
            self._lineage = self._lineage or old[:LINEAGE_CHARS]
            new = self.row.id = row_id(self._token, self._lineage)
            if hold:
                storage = self._factory.storage
                storage.rekey(self._dbsession, self.row, new, self.now, self.execute_logout)
                attrs = self._cookie_attributes(as_loaded=True)
                self._held_cookies = [("set", self._cookie_value(), attrs)]
            self.notify(events.SessionRegenerated(self.request, old, new))
        else:
            new = self.session_id
        self._factory.stages.session_regenerated(session=self, old_id=old, new_id=new)

    def keep_cookie(self) -> None:
        """Send no ``Set-Cookie`` of this session in this response: the browser's stays.

        For a plugin that knows this request's cookie is older than the one
        the browser holds by now (a request sent before the browser stored a
        newer cookie): sending it again, or one derived from it, would
        replace the newer one. The stored session is written as usual; only
        the cookie is left alone, even where the kernel would send it again
        (a sliding ``cookie_max_age``, extras a plugin changed, a key
        rotation). A new id (:meth:`regenerate_id`) and a logout
        (:meth:`invalidate`, a rejection) still set or delete the cookie.
        """
        self._keep_cookie = True

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
        attrs = self._delete_cookie or self._as_sent(self._factory.default_cookie_attributes)
        return [("Set-Cookie", self._deletion_header(attrs))]

    # flash messages, kept apart from the data (clear() leaves them)
    def flash(self, msg: Any, queue: str = "", allow_duplicate: bool = True) -> None:
        flashes = self._flash  # loads the session first
        self._join()
        messages = flashes.setdefault(queue, [])
        if allow_duplicate or msg not in messages:
            messages.append(msg)

    def pop_flash(self, queue: str = "") -> list[Any]:
        flashes = self._flash  # loads the session first
        if queue in flashes:
            self._check_open()
        return flashes.pop(queue, [])

    def clear_flash(self) -> None:
        """Drop the messages of every flash queue (``clear()`` leaves them)."""
        flashes = self._flash  # loads the session first
        if flashes:
            self._check_open()
            flashes.clear()

    def peek_flash(self, queue: str = "") -> list[Any]:
        return list(self._flash.get(queue, []))

    # the dict API. Every way to set, delete or hand out a value that can change in
    # place sets _data_touched, so that the persist stage serializes and compares.
    def _touched_by(self, value: Any) -> Any:
        if type(value) not in _IMMUTABLE:
            self._data_touched = True
        return value

    def __getitem__(self, key: str) -> Any:
        if not self._loaded:  # the first use (cheaper than through __getattr__)
            self._load()
        return self._touched_by(self._data[key])

    def __setitem__(self, key: str, value: Any) -> None:
        data = self._data  # loads the session first
        self._join()
        data[key] = value
        self._data_touched = True

    def __delitem__(self, key: str) -> None:
        data = self._data  # loads the session first
        self._check_open()
        del data[key]  # a new session that never joined has no key to delete
        self._data_touched = True

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        if not self._loaded:  # the first use (cheaper than through __getattr__)
            self._load()
        return key in self._data

    def get(self, key: str, default: Any = None) -> Any:
        if not self._loaded:  # the first use (cheaper than through __getattr__)
            self._load()
        value = self._data.get(key, _MISSING)
        return default if value is _MISSING else self._touched_by(value)

    def keys(self) -> KeysView[str]:
        return self._data.keys()

    def values(self) -> ValuesView[Any]:
        view = self._data.values()  # loads the session first
        self._data_touched = True
        return view

    def items(self) -> ItemsView[str, Any]:
        view = self._data.items()  # loads the session first
        self._data_touched = True
        return view

    def clear(self) -> None:
        data = self._data  # loads the session first
        self._check_open()
        data.clear()
        self._data_touched = True

    def __repr__(self) -> str:
        if not self._loaded:
            return f"<{type(self).__name__} (not loaded)>"
        sid = "new" if self.new else self.row.id[:12] + "…"
        data = self.__dict__.get("_data")  # not read yet while plugins validate the row
        shown = "(data not read yet)" if data is None else repr(data)
        return f"<{type(self).__name__} {sid} {shown}>"


#: What the kernel reserves of ``request.session``: the attributes plugins rely on
#: (declared on :class:`Session`) and the names of its own API. A plugin's
#: ``session_attributes`` hook may claim none of them (nor a name starting with ``_``).
RESERVED_ATTRIBUTES = frozenset(Session.__annotations__) | frozenset(dir(Session))
