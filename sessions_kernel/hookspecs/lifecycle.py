"""The session's lifecycle hooks: its id changed, or it ended.

:func:`session_regenerated` and :func:`session_invalidated`, called between
the pipeline's stages. Part of :mod:`sessions_kernel.hookspecs`, which
re-exports every hook: import them, and refer to them, from there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import hookspec

if TYPE_CHECKING:
    from ..session import Session


@hookspec
def session_regenerated(session: Session, old_id: str, new_id: str) -> None:
    """The session was given a new id, keeping its data: forget what the old id was granted.

    :param session: the request's session; ``session.session_id`` is already
        ``new_id``.
    :param old_id: the id the session had. For a stored session the key of
        its row; for a session without a row yet (``session.new``), the id
        it would have been stored under.
    :param new_id: the new id. The row is stored under it before commit (at
        once with ``regenerate_id(hold=True)``); a new session's row is
        inserted under it.

    Called by :meth:`Session.regenerate_id()
    <sessions_kernel.Session.regenerate_id>` after the new id was assigned
    (and, for a stored session, after
    :class:`~sessions_kernel.events.SessionRegenerated` was sent): at a
    login and at every change of privilege (sessions-userid's
    ``request.session.userid = ...`` and ``remember()``, before its
    ``session_user_changed``), by ``invalidate_user_sessions(...,
    except_current=True)``, and by the application. Also for a session that
    has no row yet: its id changes all the same. Not called by
    :meth:`~sessions_kernel.Session.invalidate` (see
    :func:`session_invalidated`), nor by a peek.

    Use it for what belongs to one id rather than to the session: a
    privilege granted for a while ("sudo mode"), an id recorded in
    ``session.stash``. Assign columns (``session.set_column``) or change
    ``session.cookie_extras``; issue no SQL, and do not call
    ``regenerate_id()`` or ``invalidate()`` from here. Called during the
    view (between :func:`session_validate` and :func:`session_extend`),
    possibly more than once in a request, or from a plugin's hook. The
    return value is ignored.
    """


@hookspec
def session_invalidated(session: Session, reason: str, old_row: Any | None) -> None:
    """The session ended: its row, if it had one, was deleted, and a new, empty one began.

    :param session: the request's session, already the new one:
        ``session.new`` is true, ``session.row`` is ``None``, it holds no
        data, no plugin columns and no cookie extras. ``session.stash`` is
        kept: drop what your plugin kept there for the ended session.
    :param reason: :data:`INVALIDATED` (``"invalidated"``) when the
        application called :meth:`Session.invalidate()
        <sessions_kernel.Session.invalidate>` (a logout: sessions-userid's
        ``forget()``, ``invalidate_user_sessions()`` of the current user);
        otherwise the reason a plugin's :func:`session_validate` rejected the
        stored row for (``"idle timeout"``, ``"renewal violation"``, the
        kernel's ``"max age"``): a logout too.
    :param old_row: the ended session's row, deleted and detached from the
        database session; its columns can be read (``old_row.id``, a user
        column), not its unloaded relationships. ``None`` when the session
        had no row yet (``invalidate()`` of a new session): nothing was
        deleted.

    Called by ``invalidate()`` during the view, after
    :class:`~sessions_kernel.events.SessionInvalidated` was sent (for a
    stored session); and at the first use of a session whose stored row a
    plugin rejected, right after :func:`session_validate` and
    :class:`~sessions_kernel.events.SessionRejected`, before the view. Not
    called for a session another request deleted (the cookie then names no
    row: :class:`~sessions_kernel.events.SessionNotFound`), nor by a peek.

    The new session runs the rest of the pipeline like any new session: it
    is stored (and gets a cookie) only if something is put in it, so
    changing nothing keeps a logout a logout. Issue no SQL, and do not call
    ``regenerate_id()`` or ``invalidate()`` from here. Next, the view runs
    (or goes on); before commit, :func:`session_renew` and
    :func:`session_persist` if the new session stores anything. The return
    value is ignored.
    """
