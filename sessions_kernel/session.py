"""``request.session``: the ISession object users and plugins see.

:class:`Session` is Pyramid's ISession (the dict API and flash) and the API
plugins use in their hooks (declared on the class). Its state is in parts,
each declared with its class and made whole at the session's first use: the
session's own (:class:`~sessions_kernel.state.SessionState`), the cookies
(:class:`~sessions_kernel.cookies.CookieTransport`), the transaction
(:class:`~sessions_kernel.binding.TransactionBinding`) and the stages
(:class:`~sessions_kernel.pipeline.Pipeline`).
"""

from __future__ import annotations

import os
from collections.abc import ItemsView, Iterator, KeysView, MutableMapping, ValuesView
from typing import TYPE_CHECKING, Any

from pyramid.interfaces import ISession
from sqlalchemy.orm.attributes import instance_state
from zope.interface import implementer

from . import events
from .binding import TransactionBinding
from .cookies import UNSTORED_EXTRA, CookieTransport, make_private, row_id, vary_on_cookie
from .crypto import TOKEN_BYTES, SecretKeys
from .deprecation import declared_names, instance_state_warning
from .errors import SessionError
from .hookspecs import INVALIDATED
from .pipeline import Pipeline, fetch_dbsession, first_use, join, start_new
from .settings import SessionSettings
from .stash import Stash
from .state import SessionState, made_on_first_need, new_extras, on_first_use
from .storage import LINEAGE_CHARS

if TYPE_CHECKING:
    from pyramid.request import Request
    from pyramid.response import Response

    from .factory import SessionFactory

__all__ = ["PLUGIN_ATTRIBUTES", "RESERVED_ATTRIBUTES", "UNSTORED_EXTRA", "Session", "row_id"]

_MISSING = object()
# Values that cannot change in place: handing one out cannot change the data.
_IMMUTABLE = frozenset({str, int, float, bool, type(None)})


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
    row: Any = on_first_use()
    #: The time of this request in whole seconds, read once from the factory's clock.
    #: Plugins never read the time any other way (tests move that clock).
    now: int = on_first_use()
    #: ``True`` until the session has a row in the database.
    new: bool = on_first_use()
    #: Small byte strings the cookie carries beside the token, keyed by a name the
    #: plugin picks (names starting with ``sessions_kernel.`` are the kernel's).
    #: Changing it makes the kernel send the cookie again.
    cookie_extras: dict[str, bytes] = on_first_use(new_extras)
    #: Per-request state of plugins (:class:`~sessions_kernel.Stash`): a value one
    #: hook computes and a later hook of the same request reads, under a
    #: :class:`~sessions_kernel.StashKey` of the plugin's own. Created on first use;
    #: reading it never loads the session. It lives as long as this object:
    #: ``invalidate()`` and a rejection leave it alone.
    stash: Stash = made_on_first_need(lambda session: Stash())

    # the parts, made whole at the first use (see the modules' docstrings)
    _state: SessionState = on_first_use()
    _cookies: CookieTransport = on_first_use(CookieTransport.without_cookies)
    _binding: TransactionBinding | None = None  # until the session joins the transaction
    _pipeline: Pipeline | None = None  # made when it joins
    _data: dict[str, Any] = on_first_use()
    _flash: dict[str, list[Any]] = on_first_use()
    # what this request asked for (invalidate() withdraws the first two)
    _force = False  # changed() was called: write even if nothing else changed
    _regenerated = False  # regenerate_id() gave the session a new id
    _keep_cookie = False  # keep_cookie(): the browser's cookie stays as it is
    _loaded = False  # whether the first use happened (the load stage ran)
    _load_error: Exception | None = None  # the stored row could not be read
    _peeking = False  # loaded by SessionFactory.peek: events say so (event.peek)
    _settings: SessionSettings  # made by the settings property at its first use
    _readonly = False  # loaded with no transaction (after the commit): a change joins one
    _next: Any = None  # a read-only load's NextTransaction: a begin() loads it again
    _responding = False  # _respond is registered as a response callback
    _responded = False  # _respond ran (see factory.respond_late)

    def __init__(self, request: Request, factory: SessionFactory) -> None:
        self.request = request
        self._factory = factory

    if TYPE_CHECKING:  # plugins' attributes (session_attributes) are added to a subclass

        def __getattr__(self, name: str) -> Any: ...

    def __setattr__(self, name: str, value: Any) -> None:
        # an attribute of no one's API (0.1's per-request state): warn, once per name
        if name not in declared_names(type(self)):
            instance_state_warning(self, name)
        object.__setattr__(self, name, value)

    @property
    def factory(self) -> SessionFactory:
        """The :class:`~sessions_kernel.SessionFactory` this session belongs to (its
        settings in force, ``factory.config.values``; per-factory state of a plugin's)."""
        return self._factory

    @property
    def model(self) -> type:
        """The factory's session model class."""
        return self._factory.model

    @property
    def hook(self) -> Any:
        """The factory's pluggy hook relay, to call hooks plugins offer (session_addhooks)."""
        return self._factory.hook

    _dbsession: Any = made_on_first_need(fetch_dbsession)

    # -- the first use, joining, the response ---------------------------------------------
    _load = first_use  # the first use: the load and validate stages (pipeline.first_use)
    _join = join  # the first change of a session that had no cookie (pipeline.join)

    def _check_open(self) -> None:
        if self._binding is not None:
            self._binding.check_open()
        elif self._readonly:  # a stored session loaded with no transaction: join one, or raise
            self._join()

    def _respond(self, request: Request, response: Response) -> None:
        self._responded = True
        binding = self._binding
        if binding is None:  # never joined: nothing changed, nothing to send
            vary_on_cookie(response)
            if self._readonly and self.row is not None:  # it shows a stored session
                make_private(response)
            return
        binding.respond(response)

    _start_new = start_new  # a new, empty session (pipeline.start_new)

    # -- what plugins use -----------------------------------------------------------------
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
        assert self._binding is not None
        return self._binding.execute_logout(statement)

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
            if self._peeking:
                object.__setattr__(event, "peek", True)  # see SessionEvent.peek
            registry.notify(event)

    @property
    def settings(self) -> SessionSettings:
        """The settings in force for this session; see :class:`SessionSettings`."""
        settings: SessionSettings | None = self.__dict__.get("_settings")
        if settings is None:
            settings = self.__dict__["_settings"] = SessionSettings(self)
        return settings

    def get_column(self, name: str) -> Any:
        """The value of a plugin's column of this session's row, also before the row exists.

        A new session (no row yet) answers what :meth:`set_column` assigned, or
        ``None``. Raises :class:`SessionError` for a name that is not a plugin's
        column of the model (see :meth:`set_column`).
        """
        self._factory.config.check_plugin_column(name)
        if self.row is not None:
            return getattr(self.row, name)
        return self._state.columns.get(name)

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
        self._factory.config.check_plugin_column(name)
        self._join()
        if self.row is not None:
            setattr(self.row, name, value)
        elif value is None:
            self._state.columns.pop(name, None)
        else:
            self._state.columns[name] = value

    @property
    def dirty(self) -> bool:
        """Whether this request will write the session's row (so far)."""
        row, state = self.row, self._state
        if row is None:
            return bool(
                self._data or self._flash or self._force or state.settings_values or state.columns
            )
        # a regenerated id must be written and sent even if an autoflush already wrote it
        if self.new or self._force or self._regenerated:
            return True
        # no attribute assigned since the load (the common read): nothing to compare
        return instance_state(row).modified and self._dbsession.is_modified(row)

    # -- ISession -----------------------------------------------------------------------
    @property
    def created(self) -> int:
        """Seconds since the epoch when the session was created."""
        if self.row is not None and not self.new:
            created: int = self.row.created
            return created
        assert self._state.created is not None  # a new session's: set when it began
        return self._state.created

    @created.setter
    def created(self, value: int) -> None:
        """A new session's start, moved back: for a plugin that continues a session kept
        elsewhere (sessions-migrate), so that limits counted from the start (an absolute
        timeout, ``max_age``) count from the first one. Only for a session without a row,
        and never later than now."""
        if self.row is not None or not self.new:
            raise SessionError("the creation time of a stored session cannot be changed")
        if isinstance(value, bool) or not isinstance(value, int) or value > self.now:
            raise SessionError(
                f"session.created = {value!r}: expected whole seconds since the epoch, no "
                f"later than now ({self.now})"
            )
        self._state.created = value

    def changed(self) -> None:
        """Mark the session as changed (never needed for data; kept for ISession)."""
        self._join()  # loads the session first
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
            assert self._pipeline is not None  # a stored session joined at its load
            self._pipeline.drop_row()
            cookies = self._cookies
            cookies.held = [("delete", "", cookies.delete or {})]
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
        row = self.row
        stored = row is not None and not self.new
        # a session without a row: the id it would have been stored under
        old = row.id if stored else self.session_id
        state = self._state
        token = state.token = os.urandom(TOKEN_BYTES)
        self._regenerated = True
        if stored:
            lineage = state.lineage = state.lineage or old[:LINEAGE_CHARS]
            new = row.id = row_id(token, lineage)
            if hold:
                assert self._pipeline is not None  # a stored session joined at its load
                self._pipeline.hold_new_id(old, new, token, lineage)
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
        return row_id(self._state.current_token(), self._state.lineage)

    def logout_headers(self) -> list[tuple[str, str]]:
        """``Set-Cookie`` headers deleting the browser's session cookie, for ``forget()``.

        A security policy's ``forget(request)`` returns these after
        :meth:`invalidate`, as cookie-based policies do, so that a view that
        raises ``HTTPFound(headers=forget(request))`` deletes the cookie in
        the response it sends. (The kernel deletes it anyway; it does not
        send the same header twice.)
        """
        cookies = self._cookies  # loads the session first
        attrs = cookies.delete or cookies.as_sent(self._factory.default_cookie_attributes)
        return [("Set-Cookie", cookies.deletion_header(attrs))]

    # flash messages, kept apart from the data (clear() leaves them)
    def flash(self, msg: Any, queue: str = "", allow_duplicate: bool = True) -> None:
        self._join()  # loads the session first
        messages = self._flash.setdefault(queue, [])
        if allow_duplicate or msg not in messages:
            messages.append(msg)

    def pop_flash(self, queue: str = "") -> list[Any]:
        if queue in self._flash:  # loads the session first
            self._check_open()
        return self._flash.pop(queue, [])  # a reload (see pipeline.reload_in) made it anew

    def clear_flash(self) -> None:
        """Drop the messages of every flash queue (``clear()`` leaves them)."""
        if self._flash:  # loads the session first
            self._check_open()
            self._flash.clear()

    def peek_flash(self, queue: str = "") -> list[Any]:
        return list(self._flash.get(queue, []))

    # the dict API. Every way to set, delete or hand out a value that can change in
    # place marks the state touched, so that the persist stage serializes and compares.
    def _touched_by(self, value: Any) -> Any:
        if type(value) not in _IMMUTABLE:
            self._state.touched = True
            binding = self._binding
            if binding is not None and binding.sealed:  # pshell: a change in place is lost
                binding.guard_later()
        return value

    def __getitem__(self, key: str) -> Any:
        if not self._loaded:  # the first use (cheaper than through the descriptor)
            self._load()
        return self._touched_by(self._data[key])

    def __setitem__(self, key: str, value: Any) -> None:
        self._join()  # loads the session first
        self._data[key] = value
        self._state.touched = True

    def __delitem__(self, key: str) -> None:
        if not self._loaded:  # the first use
            self._load()
        self._check_open()  # may load it again (see pipeline.reload_in): self._data after it
        del self._data[key]  # a new session that never joined has no key to delete
        self._state.touched = True

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        if not self._loaded:  # the first use (cheaper than through the descriptor)
            self._load()
        return key in self._data

    def get(self, key: str, default: Any = None) -> Any:
        if not self._loaded:  # the first use (cheaper than through the descriptor)
            self._load()
        value = self._data.get(key, _MISSING)
        return default if value is _MISSING else self._touched_by(value)

    def keys(self) -> KeysView[str]:
        return self._data.keys()

    def values(self) -> ValuesView[Any]:
        view = self._data.values()  # loads the session first
        self._touched_by(view)
        return view

    def items(self) -> ItemsView[str, Any]:
        view = self._data.items()  # loads the session first
        self._touched_by(view)
        return view

    def clear(self) -> None:
        if not self._loaded:  # the first use
            self._load()
        self._check_open()
        self._data.clear()
        self._state.touched = True

    def __repr__(self) -> str:
        if not self._loaded:
            return f"<{type(self).__name__} (not loaded)>"
        sid = "new" if self.new else self.row.id[:12] + "…"
        data = self.__dict__.get("_data")  # not read yet while plugins validate the row
        shown = "(data not read yet)" if data is None else repr(data)
        return f"<{type(self).__name__} {sid} {shown}>"


#: The attributes plugins rely on (declared on :class:`Session`).
PLUGIN_ATTRIBUTES = ("cookie_extras", "new", "now", "request", "row", "stash")
#: What the kernel reserves of ``request.session``: the attributes plugins rely on and
#: the names of its own API. A plugin's ``session_attributes`` hook may claim none of
#: them (nor a name starting with ``_``).
RESERVED_ATTRIBUTES = frozenset(PLUGIN_ATTRIBUTES) | frozenset(dir(Session))
