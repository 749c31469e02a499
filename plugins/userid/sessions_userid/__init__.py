"""The user id of a session in its own column: ``request.session.userid``.

Include :class:`UseridMixin` in the session model to activate the plugin. It
gives ``request.session`` a ``userid`` property, a Pyramid 2 security policy
(:class:`UserSessionSecurityPolicy`, installed by you) and the queries behind
a "your sessions" page (:func:`user_sessions`, :func:`invalidate_user_sessions`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from sessions_kernel import Session, StashKey, hookimpl

from . import hookspecs
from .policy import UserSessionSecurityPolicy
from .queries import UserSession, invalidate_user_sessions, user_sessions

__all__ = [
    "UserSession",
    "UserSessionSecurityPolicy",
    "UseridMixin",
    "invalidate_user_sessions",
    "user_changed",
    "user_sessions",
]

COLUMN = "userid"
#: The user a session without a row got in this request: its row would have held it.
_UNSTORED_USER = StashKey[Any]("sessions_userid: the user of a session without a row")


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
    and cookie in the same request, keeping its data: the defence against
    session fixation at every change of privilege. Setting the value it
    already has does nothing. ``None`` logs the user out but keeps the data;
    to drop everything, use ``invalidate()`` (what ``forget()`` does).
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
    self.regenerate_id()
    self.set_column(COLUMN, value)
    if self.row is None:  # until its row exists, only this request knows the user
        self.stash[_UNSTORED_USER] = value
    user_changed(self, old, value)


def user_changed(session: Session, old: Any, new: Any) -> None:
    """Call the ``session_user_changed`` hook of the plugins active for ``session``'s factory.

    ``request.session.userid = other`` calls it; so does
    :meth:`UserSessionSecurityPolicy.remember` when the user logging in is
    the one already logged in, and the end of a session a user was logged
    in to (``invalidate()``, ``forget()``, an expiry). Call it yourself if
    you log users in another way.
    """
    session.hook.session_user_changed(session=session, old=old, new=new)


@hookimpl
def session_invalidated(session: Session, old_row: Any) -> None:
    """A session a user was logged in to ended (a logout, an expiry): the user changed too."""
    old = session.stash.pop(_UNSTORED_USER, None)
    if old_row is not None:
        old = old_row.userid
    if old is not None:
        user_changed(session, old, None)


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
