"""The hook sessions-migrate offers other plugins: carry what they keep of an old session.

Registered through ``session_addhooks``; implement it with
``@hookimpl(optionalhook=True)`` so that a plugin works without
sessions-migrate installed or active (sessions-userid and sessions-csrf do).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sessions_kernel import hookspec

if TYPE_CHECKING:
    from sessions_kernel import Session

    from .source import OldSession


@hookspec
def session_migrated(session: Session, old: OldSession) -> None:
    """An old store's session is becoming this new session: take what your plugin keeps of it.

    :param session: the request's session, new (``session.row`` is ``None``;
        its row is inserted before commit). Its data and flash messages are
        the old session's already.
    :param old: the old session, decoded (:class:`~sessions_migrate.source.OldSession`):
        ``old.userid``, ``old.csrf_token``, ``old.created``, ``old.settings``.

    Called once per migrated session, during the first use of
    ``request.session`` (in the load stage: the view has not run yet), or
    by ``psessions migrate``. Set your columns (``session.set_column``),
    cookie extras or ``session.stash``, as a carried-over value, not as a
    new event: a user carried over is not a login (no new id, no
    ``session_user_changed``). Raise :class:`ValueError` (of which
    :class:`~sessions_migrate.source.Unrepresentable` is one, so a plugin
    need not import this one) when the value cannot be carried (a user id
    of the wrong type): what was carried is dropped, the old session is
    left where it is, the reason is logged, and the request goes on with a
    new, empty session. Issue no SQL. The return value is ignored.
    """
