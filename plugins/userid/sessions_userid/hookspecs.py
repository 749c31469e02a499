"""Hooks the userid plugin offers other plugins (added through ``session_addhooks``).

Implement them in your plugin with ``@sessions_kernel.hookimpl(optionalhook=True)``,
so that the plugin also works where ``sessions-userid`` is not installed or
the model does not include :class:`~sessions_userid.UseridMixin`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sessions_kernel import hookspec

if TYPE_CHECKING:
    from sessions_kernel import Session


@hookspec
def session_user_changed(session: Session, old: Any, new: Any) -> None:
    """The session's user changed, or a user logged in again: renew what belongs to the old one.

    :param session: the request's session; ``session.userid`` is already ``new``
        and the session already has a new id (``regenerate_id()``).
    :param old: the user id before (``None``: nobody was logged in).
    :param new: the user id now (``None``: logged out, the data kept).

    Called when ``request.session.userid`` is set to a different value, and at
    every :meth:`UserSessionSecurityPolicy.remember()
    <sessions_userid.UserSessionSecurityPolicy.remember>`, also when the user
    already logged in logs in again (``old == new``: a new authentication).
    Not called by ``invalidate()`` (``forget()``), which drops the whole
    session. Use it to rotate secrets an attacker may have learnt before the
    change of privilege: the CSRF plugin issues a new token here, so a token
    handed out before the login is refused after it. Called during the view,
    before commit; the return value is ignored.
    """
