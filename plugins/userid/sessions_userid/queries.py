"""Queries over a user's sessions: a "your sessions" page and "log out everywhere else".

Each function takes either the current Pyramid ``request`` (the usual case:
it runs in the request's SQLAlchemy session and transaction, knows which
session is the current one, and notifies events) or a
:class:`~sessions_kernel.SessionFactory` with ``dbsession=`` (scripts, admin
tools: the caller owns the transaction; no session is current; no events).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from pyramid.interfaces import ISessionFactory

from sessions_kernel import SessionFactory, SessionInfo
from sessions_kernel.changes import record_changes
from sessions_kernel.events import SessionInvalidated
from sessions_kernel.maintenance import expired_condition

if TYPE_CHECKING:
    from pyramid.request import Request
    from sqlalchemy.orm import Session as DBSession

    from sessions_kernel import BaseMixin, Session

    from . import UseridMixin

    class _UseridModel(UseridMixin, BaseMixin):
        """What the queries read of the model: ``_check_model`` checked its ``userid``."""


__all__ = ["UserSession", "invalidate_user_sessions", "user_sessions"]


@dataclass(frozen=True)
class UserSession(SessionInfo):
    """One live session of a user, as :func:`user_sessions` lists it."""

    #: whether this is the session of the request that asked
    current: bool = False

    @property
    def short_id(self) -> str:
        """The first 8 hex digits of the row key: enough to tell a user's sessions apart."""
        return self.session_id[:8]


@dataclass
class _Context:
    factory: SessionFactory
    dbsession: DBSession
    now: int
    request: Request | None = None
    current_id: str | None = None


def _context(source: Any, userid: Any, dbsession: DBSession | None, function: str) -> _Context:
    if userid is None:
        # "userid IS NULL" would select every anonymous session
        raise ValueError(
            f"{function}(..., userid=None): a user id is required (nobody is logged in?); "
            "check request.authenticated_userid before calling it"
        )
    if isinstance(source, SessionFactory):
        if dbsession is None:
            raise TypeError(
                f"{function}(factory, ...) needs dbsession=<SQLAlchemy session>; or pass the "
                "Pyramid request instead of the factory"
            )
        _check_model(source, function)
        return _Context(source, dbsession, int(source.clock()))
    registry = getattr(source, "registry", None)
    factory = registry.queryUtility(ISessionFactory) if registry is not None else None
    if not isinstance(factory, SessionFactory):
        raise TypeError(
            f"{function}() takes the Pyramid request of an application whose session factory "
            "is sessions_kernel's (config.include('sessions_kernel')), or a SessionFactory "
            f"with dbsession=...; got {source!r}"
        )
    _check_model(factory, function)
    session = source.session
    db = dbsession if dbsession is not None else getattr(source, factory.dbsession_name)
    current = session.session_id if session.row is not None and not session.new else None
    # write the request's pending changes (a regenerated id) so SQL sees the current row's key
    db.flush()
    return _Context(factory, db, session.now, source, current)


def _check_model(factory: SessionFactory, function: str) -> None:
    if "userid" not in factory.config.column_names:
        raise TypeError(
            f"{function}(): {factory.model.__name__} has no userid column; include "
            "sessions_userid.UseridMixin among its bases"
        )


def _expired(ctx: _Context) -> sa.ColumnElement[bool] | None:
    """Rows any active plugin considers expired (``None`` when no plugin expires rows)."""
    condition = expired_condition(ctx.factory, ctx.now)
    # a condition that is NULL for a row does not expire it (as in garbage collection)
    return None if condition is None else sa.func.coalesce(condition, sa.false())


def user_sessions(
    source: Request | SessionFactory, userid: Any, *, dbsession: DBSession | None = None
) -> list[UserSession]:
    """The live sessions of ``userid``, most recently active first.

    :param source: the current request, or a session factory (then pass
        ``dbsession``).
    :param userid: the user's id, as stored in ``userid``; ``None`` is refused
        (:class:`ValueError`), it would match every anonymous session.

    Rows the active plugins consider expired are left out twice over: in SQL
    through their ``session_expired_conditions`` (global settings), and again
    through ``session_expires_at`` (each row's own settings), so a session
    listed is one that would still be accepted. Each entry is
    :meth:`SessionFactory.describe <sessions_kernel.SessionFactory.describe>`
    of the row, with ``current`` set for the request's own session.

    Costs one SELECT (plus the current session's own SELECT if it was not
    loaded yet). Reading through the request flushes its pending changes first.
    """
    ctx = _context(source, userid, dbsession, "user_sessions")
    model = cast("type[_UseridModel]", ctx.factory.model)
    stmt = sa.select(model).where(model.userid == userid)
    expired = _expired(ctx)
    if expired is not None:
        stmt = stmt.where(sa.not_(expired))
    listed = []
    for row in ctx.dbsession.scalars(stmt).unique():
        info = ctx.factory.describe(row)
        if info.expires is not None and info.expires <= ctx.now:
            continue
        listed.append(
            UserSession(
                session_id=info.session_id,
                created=info.created,
                last_active=info.last_active,
                expires=info.expires,
                details=info.details,
                current=info.session_id == ctx.current_id,
            )
        )
    listed.sort(key=lambda s: (s.last_active, s.created, s.session_id), reverse=True)
    return listed


def invalidate_user_sessions(
    source: Request | SessionFactory,
    userid: Any,
    *,
    except_current: bool = False,
    dbsession: DBSession | None = None,
) -> int:
    """Delete every session of ``userid`` (expired or not); return how many were deleted.

    :param except_current: keep the request's own session ("log out
        everywhere else"). Its id is regenerated in the same request, keeping
        its data, so that a stolen copy of the *current* cookie is locked out
        too (as Django does on a password change). Without it, the request's
        own session is invalidated too if it belongs to ``userid`` (its
        cookie is deleted).

    The other sessions go in one statement, ``DELETE ... WHERE userid = :u
    AND id <> :current``, so a session whose id a concurrent request
    regenerates meanwhile is deleted all the same; the count is the
    statement's own. Through a request, the logout holds
    (:meth:`~sessions_kernel.Session.execute_logout`): if the view then
    raises (a redirect), the rows are deleted and the current id replaced
    all the same. :class:`~sessions_kernel.events.SessionInvalidated` is
    notified for every row deleted, as ``invalidate()`` does, where the
    database reports the deleted ids (``DELETE ... RETURNING``: PostgreSQL,
    SQLite, MariaDB).
    """
    ctx = _context(source, userid, dbsession, "invalidate_user_sessions")
    if except_current and ctx.request is None:
        raise TypeError(
            "invalidate_user_sessions(factory, ..., except_current=True): only a request has "
            "a current session; pass the request"
        )
    model = cast("type[_UseridModel]", ctx.factory.model)
    request = ctx.request
    session: Session | None = request.session if request is not None else None
    current = ctx.current_id
    # (with except_current there is a request, checked above, so a session)
    if except_current and current is not None and session is not None and session.userid == userid:
        session.regenerate_id(hold=True)  # a copy of the current cookie stops working too
        current = session.session_id
    statement = sa.delete(model).where(model.userid == userid)
    if current is not None:
        statement = statement.where(model.id != current)
    dialect = ctx.dbsession.get_bind(model).dialect
    executed = statement.returning(model.id) if dialect.delete_returning else statement
    if session is not None:
        result = session.execute_logout(executed)
    else:
        result = ctx.dbsession.execute(executed)
    ids: Sequence[str] = result.scalars().all() if dialect.delete_returning else ()
    deleted = len(ids) if dialect.delete_returning else result.rowcount
    if session is None and deleted:  # outside a request: told once the dbsession commits
        if dialect.delete_returning:
            record_changes(ctx.factory, ctx.dbsession, deleted=ids)
        else:
            record_changes(ctx.factory, ctx.dbsession, everything=True)
    if session is not None:  # there is a request
        for session_id in ids:
            session.notify(SessionInvalidated(request, session_id))
        if not except_current and session.userid == userid:
            # also a login made in this request; invalidate() notifies and deletes the cookie
            deleted += ctx.current_id is not None
            session.invalidate()
    return deleted
