"""The session's state: what the kernel keeps of the session a request holds, beside its data.

One :class:`SessionState` per session: made whole when the request's cookie
names a stored session or a new session starts (at the first use, after a
logout or a rejection), and dropped with that session. What belongs to the
request rather than to the session lives with its part: the cookies in
:class:`~sessions_kernel.cookies.CookieTransport`, the transaction in
:class:`~sessions_kernel.binding.TransactionBinding`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .crypto import TOKEN_BYTES

if TYPE_CHECKING:
    from .session import Session

__all__ = ["SessionState", "forget_load", "made_on_first_need", "new_extras", "on_first_use"]


class SessionState:
    """The bookkeeping of one session: its token, what was stored, what this request changed.

    (A plain class rather than a dataclass: a request makes one even when it
    stores nothing, and the generated ``__init__`` costs twice as much.)
    """

    __slots__ = (
        "columns",
        "created",
        "lineage",
        "loaded_extras",
        "orig_data",
        "orig_flash",
        "settings_loaded",
        "settings_values",
        "token",
        "touched",
    )

    def __init__(
        self,
        created: int | None,
        token: bytes | None = None,
        lineage: str | None = None,
        loaded_extras: dict[str, bytes] | None = None,
    ) -> None:
        #: seconds since the epoch when the session began; ``None``: the stored row's own
        self.created = created
        #: the token the cookie carries; a new session's is drawn on first need
        self.token = token
        #: the id's lineage the cookie carries, if any (see ``cookies.row_id``)
        self.lineage = lineage
        #: the cookie extras as the request found them
        self.loaded_extras: dict[str, bytes] = {} if loaded_extras is None else loaded_extras
        #: the data and flash as stored (serialized), to compare with at persist
        self.orig_data: bytes | None = None
        self.orig_flash: bytes | None = None
        #: settings saved in this request, and the stored values those replaced
        self.settings_values: dict[str, Any] = {}
        self.settings_loaded: dict[str, Any] = {}
        #: plugin columns set with ``set_column`` before the row exists
        self.columns: dict[str, Any] = {}
        #: the data may have changed: the persist stage serializes and compares it
        self.touched = True

    def current_token(self) -> bytes:
        """The token; a new session's is drawn now (a visitor who stores nothing needs none)."""
        if self.token is None:
            self.token = os.urandom(TOKEN_BYTES)
        return self.token


class _OnFirstUse:
    """An attribute of the loaded session: reading it before the first use loads the session.

    The load sets it on the instance, which then answers without this
    descriptor. ``make`` gives its value when the load left it unset (a new
    session's cookie extras); an attribute the load could not set (the data
    of a row that failed to read) raises the load's error again.
    """

    __slots__ = ("make", "name")

    def __init__(self, make: Any = None) -> None:
        self.make = make

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, session: Any, owner: type | None = None) -> Any:
        if session is None:
            return self
        if not session._loaded:
            session._load()
        values = session.__dict__
        if self.name in values:
            return values[self.name]
        error = session._load_error
        if error is not None:  # every later use sees the same error, not an AttributeError
            raise type(error)(*error.args)
        if self.make is None:
            raise AttributeError(
                f"{type(session).__name__!r} object has no attribute {self.name!r}"
            )
        value = values[self.name] = self.make(session)
        return value


# what a first use sets on the session besides the _OnFirstUse attributes
_LOAD_PARTS = (
    "_binding",
    "_pipeline",
    "_loaded",
    "_load_error",
    "_readonly",
    "_settings",
)


def forget_load(session: Any) -> None:
    """Drop what the first use found, so that the next use is a first use again.

    For a session loaded read-only before ``request.tm`` began a transaction
    (see :func:`~sessions_kernel.pipeline.reload_in`). What lives as long as the
    object stays: the request, the stash, the SQLAlchemy session, the
    response callback already registered.
    """
    values = session.__dict__
    following = values.pop("_next", None)
    if following is not None:
        following.cancel()
    for klass in type(session).__mro__:
        for name, attr in vars(klass).items():
            if isinstance(attr, _OnFirstUse):
                values.pop(name, None)
    for name in _LOAD_PARTS:
        values.pop(name, None)


def on_first_use(make: Any = None) -> Any:
    """Declare an attribute set by the session's load (see :class:`_OnFirstUse`)."""
    return _OnFirstUse(make)


class _MadeOnFirstNeed:
    """An attribute ``make(session)`` makes when first read, then kept on the instance.

    ``functools.cached_property`` without its lock (Python < 3.12 takes one lock
    for every instance): a session belongs to one request, in one thread.
    """

    __slots__ = ("make", "name")

    def __init__(self, make: Any) -> None:
        self.make = make

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, session: Any, owner: type | None = None) -> Any:
        if session is None:
            return self
        value = session.__dict__[self.name] = self.make(session)
        return value


def made_on_first_need(make: Any) -> Any:
    """Declare an attribute ``make(session)`` makes when first read (:class:`_MadeOnFirstNeed`)."""
    return _MadeOnFirstNeed(make)


class _JoiningExtras(dict):  # type: ignore[type-arg]
    """The cookie extras of a session that has not joined the transaction yet.

    A request whose browser sent no session cookie does not join the
    request's transaction until it has something to store: a plugin that
    writes an extra (a CSRF token for a form) is such a change, so every way
    of writing this dict joins first.
    """

    __slots__ = ("_session",)

    def __init__(self, session: Session) -> None:
        super().__init__()
        self._session = session

    def _joined(self) -> dict[str, bytes]:
        """Join, then the dict to write: this one, or the one of a session loaded read-only
        and loaded again in the transaction begun since (see ``pipeline.reload_in``)."""
        session = self._session
        session._join()
        extras: dict[str, bytes] = session.cookie_extras
        return extras

    def __setitem__(self, key: str, value: bytes) -> None:
        dict.__setitem__(self._joined(), key, value)

    def __delitem__(self, key: str) -> None:
        dict.__delitem__(self._joined(), key)

    def __ior__(self, other: Any) -> Any:  # type: ignore[misc]
        target = self._joined()
        dict.update(target, other)
        return target  # what `session.cookie_extras |= ...` assigns back

    def update(self, *args: Any, **kwargs: Any) -> None:
        dict.update(self._joined(), *args, **kwargs)

    def setdefault(self, key: str, default: Any = None) -> Any:
        return dict.setdefault(self._joined(), key, default)

    def pop(self, *args: Any) -> Any:
        return dict.pop(self._joined(), *args)

    def popitem(self) -> Any:
        return dict.popitem(self._joined())

    def clear(self) -> None:
        dict.clear(self._joined())


def new_extras(session: Session) -> dict[str, bytes]:
    """A new session's cookie extras: joining on the first write until the session joined."""
    return _JoiningExtras(session) if session._binding is None else {}
