"""The user id of a session in its own column: ``request.session.userid``.

Include :class:`UseridMixin` in the session model to activate the plugin. It
gives ``request.session`` a ``userid`` property, a Pyramid 2 security policy
(:class:`UserSessionSecurityPolicy`, installed by you) and the queries behind
a "your sessions" page (:func:`user_sessions`, :func:`invalidate_user_sessions`).

When the session passes from one user to another, its data and flash
messages are cleared (as Django's ``login()`` flushes the session), unless
``session.userid_clear_on_user_change = false``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from sessions_kernel import (
    Session,
    SessionConflictError,
    SessionError,
    Setting,
    StashKey,
    hookimpl,
)
from sessions_kernel.events import SessionMerged
from sessions_kernel.settings import boolean

from . import hookspecs
from .policy import UserSessionSecurityPolicy
from .queries import UserSession, invalidate_user_sessions, user_sessions

if TYPE_CHECKING:
    from pyramid.config import Configurator

    from sessions_kernel import SessionFactory

__all__ = [
    "SETTINGS",
    "UserSession",
    "UserSessionSecurityPolicy",
    "UseridMixin",
    "invalidate_user_sessions",
    "user_changed",
    "user_sessions",
]

COLUMN = "userid"
#: The setting that turns the clearing of the data at a change of user off.
CLEAR_ON_USER_CHANGE = "userid_clear_on_user_change"

SETTINGS = (
    Setting(
        CLEAR_ON_USER_CHANGE,
        True,
        boolean,
        "when a session passes from one user to another, clear its data and flash "
        "messages (the previous user's); false keeps them",
    ),
)

#: The user a session without a row got in this request: its row would have held it.
_UNSTORED_USER = StashKey[Any]("sessions_userid: the user of a session without a row")
#: This request cleared the stored data of the previous user (see _clear).
_CLEARED = StashKey[bool]("sessions_userid: the data was cleared at a change of user")
#: The serialized data and flash that request is about to write (see session_persist).
_WRITING = StashKey[tuple[Any, Any]]("sessions_userid: the data and flash written after a clear")
#: The user this request writes the stored row as (see session_persist).
_WRITTEN_AS = StashKey[Any]("sessions_userid: the user the row is written as")


class UseridMixin:
    """Adds the ``userid`` column: the logged-in user's id, ``NULL`` when nobody is.

    The default is a nullable, indexed integer. Override it in your model to
    match your user table, for example a UUID with a foreign key and a
    relationship loaded in the same SELECT as the session::

        class Session(UseridMixin, BaseMixin, Base):
            __tablename__ = "session"
            userid: Mapped[uuid.UUID | None] = mapped_column(
                sa.Uuid, sa.ForeignKey("user.id", ondelete="CASCADE"), index=True
            )
            user: Mapped[User | None] = relationship(lazy="joined")

    Keep the column nullable and indexed (the queries of this plugin look rows
    up by user id).
    """

    userid: Mapped[int | None] = mapped_column(sa.Integer, nullable=True, index=True)


def _python_type(session: Session) -> type | None:
    """The Python type the model's ``userid`` column holds, if its type says so."""
    try:
        column_type: sa.types.TypeEngine[Any] = sa.inspect(session.model).columns[COLUMN].type
        return column_type.python_type
    except (KeyError, NotImplementedError):
        return None


def _is_a(value: Any, expected: type) -> bool:
    # True and False are ints to Python, but never user ids
    return isinstance(value, expected) and (expected is bool or not isinstance(value, bool))


def _get_userid(self: Session) -> Any:
    """The logged-in user's id, or ``None`` when nobody is logged in.

    Setting a different value (``None`` included) gives the session a new id
    and cookie in the same request: the defence against session fixation at
    every change of privilege. From one user to another, the data and flash
    messages are cleared first, what the request stored before included (the
    previous user's; ``session.userid_clear_on_user_change = false`` keeps
    them). A login from an anonymous session keeps them (a cart). Setting
    the value it already has does nothing. ``None`` logs the user out but
    keeps the data; to drop everything, use ``invalidate()`` (what
    ``forget()`` does).
    """
    return self.get_column(COLUMN)


def _set_userid(self: Session, value: Any) -> None:
    expected = _python_type(self)
    if value is not None and expected is not None and not _is_a(value, expected):
        hint = (
            f"uuid.UUID({value!r})" if expected is uuid.UUID else f"{expected.__name__}({value!r})"
        )
        raise TypeError(
            f"request.session.userid = {value!r}: {self.model.__name__}.userid holds "
            f"{expected.__name__} values, got {type(value).__name__}; convert it "
            f"(e.g. {hint}) or override the userid column with the type your user ids have"
        )
    old = self.get_column(COLUMN)
    if value == old:
        return
    if old is not None and value is not None and self.settings[CLEAR_ON_USER_CHANGE]:
        _clear(self)
    self.regenerate_id()
    self.set_column(COLUMN, value)
    if self.row is None:  # until its row exists, only this request knows the user
        self.stash[_UNSTORED_USER] = value
    user_changed(self, old, value)


def _clear(session: Session) -> None:
    """Drop the previous user's data and flash messages (Django's ``flush()`` keeps no more).

    The kernel merges a write onto a concurrent one key by key, so a key a
    concurrent request of the previous user stored meanwhile, which this
    request never saw, would survive the clear: :func:`session_persist` and
    :func:`_refuse_merged_back` make such a write run again instead (and a
    write of the previous user's that merges onto the row after this one).
    """
    session.clear()
    session.clear_flash()
    if session.row is not None and not session.new:
        session.stash[_CLEARED] = True


def user_changed(session: Session, old: Any, new: Any) -> None:
    """Call the ``session_user_changed`` hook of the plugins active for ``session``'s factory.

    ``request.session.userid = other`` calls it; so does
    :meth:`UserSessionSecurityPolicy.remember` when the user logging in is
    the one already logged in, and the end of a session a user was logged
    in to (``invalidate()``, ``forget()``, an expiry). Call it yourself if
    you log users in another way.
    """
    session.hook.session_user_changed(session=session, old=old, new=new)


def _converted(value: Any, expected: type, model: str) -> Any:
    """An old store's user id as the column's type, only where nothing is lost or guessed:
    an ``int`` from its decimal text (``"42"``, not ``"042"`` or ``"4.2"``), text from an
    ``int``, a UUID from its text. ``ValueError`` otherwise (bytes, floats, booleans)."""
    converted: Any = None
    if isinstance(value, bool) or expected is bool:
        converted = None
    elif expected is int and isinstance(value, str) and value.isascii() and value.isdigit():
        converted = int(value) if str(int(value)) == value else None
    elif expected is str and isinstance(value, int):
        converted = str(value)
    elif expected is uuid.UUID and isinstance(value, str):
        try:
            converted = uuid.UUID(value)
        except ValueError:
            converted = None
    if converted is None:
        raise ValueError(
            f"its user id {value!r} ({type(value).__name__}) does not fit {model}.userid "
            f"({expected.__name__}) without a guess"
        )
    return converted


#: The range of each integer type, as the databases enforce it.
_INTEGER_BITS = ((sa.SmallInteger, 16), (sa.BigInteger, 64), (sa.Integer, 32))


def _check_fits(session: Session, value: Any) -> None:
    """``ValueError`` if the userid column cannot store ``value`` (a text longer than its
    ``String(n)``, an integer beyond its type's range): the INSERT would fail at the commit,
    on every request of that browser, where SQLite alone would store it."""
    column_type: Any = sa.inspect(session.model).columns[COLUMN].type
    model = session.model.__name__
    length = getattr(column_type, "length", None)
    if isinstance(value, str) and length is not None and len(value) > length:
        raise ValueError(
            f"its user id of {len(value)} characters does not fit {model}.userid (String({length}))"
        )
    if isinstance(value, int) and not isinstance(value, bool):
        for kind, bits in _INTEGER_BITS:
            if isinstance(column_type, kind):
                if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
                    raise ValueError(
                        f"its user id {value} does not fit {model}.userid "
                        f"({type(column_type).__name__}, {bits} bits)"
                    )
                break


@hookimpl(optionalhook=True)
def session_migrated(session: Session, old: Any) -> None:
    """sessions-migrate: the old session's user is this session's, as it was there.

    Carried over, not a login: no new id, no ``session_user_changed``. A user
    id of another type than the column's is converted where nothing is lost
    (``"42"`` to an ``int`` column, ``42`` to a text one, a UUID's text);
    any other raises ``ValueError``, and the session is not migrated.
    """
    value = old.userid
    if value is None:
        return
    expected = _python_type(session)
    if expected is not None and not _is_a(value, expected):
        value = _converted(value, expected, session.model.__name__)
    _check_fits(session, value)
    session.set_column(COLUMN, value)
    if session.row is None:
        session.stash[_UNSTORED_USER] = value


@hookimpl
def session_invalidated(session: Session, old_row: Any) -> None:
    """A session a user was logged in to ended (a logout, an expiry): the user changed too."""
    old = session.stash.pop(_UNSTORED_USER, None)
    if old_row is not None:
        old = old_row.userid
    if old is not None:
        user_changed(session, old, None)


@hookimpl
def session_persist(session: Session, row: Any) -> None:
    """Note the user this request writes the row as, and after a clear what it writes.

    :func:`_refuse_merged_back` compares them with what a merge stored.
    """
    if session.new or not session.settings[CLEAR_ON_USER_CHANGE]:
        return
    stash = session.stash
    stash[_WRITTEN_AS] = row.userid
    if _CLEARED in stash:
        stash[_WRITING] = (row.data, row.flash)


def _refuse_merged_back(factory: SessionFactory, event: SessionMerged) -> None:
    """Refuse a merge that would put one user's data in another user's session.

    A ``SessionMerged`` subscriber: a concurrent request wrote the row after
    this one read it, and the kernel merged this request's write onto it key
    by key. Two such merges would carry the previous user's data past the
    clear at a change of user:

    * this request changed the user (and cleared the data): a key or flash
      queue only the other request (of the previous user) wrote is kept;
    * this request was the previous user's, and the other one changed the
      user meanwhile: this request's keys land in the new user's session
      (a kernel that finds a regenerated row by its lineage merges onto it).

    Either way raise :class:`~sessions_kernel.SessionConflictError`: nothing
    is stored, and with pyramid_retry the request runs again on the newer
    row (where the first clears that key too, and the second finds its
    session gone). A merge that brings nothing of the kind (the other
    request only extended the idle expiry, say) stands.
    """
    session = event.request.session
    if not isinstance(session, Session) or session.row is None:
        return
    stash = session.stash
    written_as = stash.get(_WRITTEN_AS, None)
    row = session.row
    if written_as is not None and row.userid != written_as:
        why = (
            "its user changed while this request ran (another user logged in, or the "
            "user logged out), and this request's changes, made for the previous user, "
            "would have been merged into a session that is no longer theirs"
        )
    else:
        writing = stash.get(_WRITING, None)
        if writing is None:
            return
        loads = factory.data_serializer.loads

        def decoded(data: Any, flash: Any) -> tuple[Any, Any]:
            return loads(data), (loads(flash) if flash is not None else {})

        if decoded(row.data, row.flash) == decoded(*writing):
            return
        why = (
            "its user changed in this request, which cleared the previous user's data, "
            "while a concurrent request wrote data this request did not see; it would have "
            "stayed in the new user's session"
        )
    if row.id != session.session_id:
        # merged onto an id a concurrent login gave the session: run again, this request
        # would present its old id and start a new session, replacing the login's cookie
        raise SessionError(f"session {event.session_id[:12]}…: {why}; nothing was stored.")
    raise SessionConflictError(
        f"session {event.session_id[:12]}…: {why}. Include pyramid_retry "
        "(config.include('pyramid_retry')) to run the request again on the newer session; "
        "nothing was stored."
    )


@hookimpl
def session_includeme(config: Configurator, factory: SessionFactory) -> None:
    if factory.config.values[CLEAR_ON_USER_CHANGE]:
        config.add_subscriber(partial(_refuse_merged_back, factory), SessionMerged)


@hookimpl
def session_settings() -> tuple[Setting, ...]:
    return SETTINGS


@hookimpl
def session_addhooks(pluginmanager: Any) -> None:
    pluginmanager.add_hookspecs(hookspecs)


@hookimpl
def session_mixins() -> list[type]:
    return [UseridMixin]


@hookimpl
def session_attributes() -> dict[str, Any]:
    return {"userid": property(_get_userid, _set_userid, doc=_get_userid.__doc__)}


@hookimpl
def session_indexes(model: type) -> Sequence[str]:
    # user_sessions() and invalidate_user_sessions() select rows by user id
    return [COLUMN]


# -- deploy checks (``psessions CONFIG check``) --------------------------------------------

if TYPE_CHECKING:
    from sessions_kernel.deploy import Finding


@hookimpl
def session_deploy_checks(model: Any, active: bool) -> list[Finding]:
    """``userid.foreign_key``: the ``userid`` column has no foreign key to the users."""
    from sessions_kernel.deploy import Finding

    if not active or sa.inspect(model).columns[COLUMN].foreign_keys:
        return []
    name = model.__name__
    return [
        Finding(
            "userid.foreign_key",
            f"{name}.userid",
            f"{name}.userid has no foreign key to your users: a deleted user's sessions stay "
            "logged in under that id, and a user given that id later inherits them",
            "redeclare userid with sa.ForeignKey(User.id, ondelete='CASCADE') (see the "
            "sessions-userid README's section on the mixin)",
        )
    ]
