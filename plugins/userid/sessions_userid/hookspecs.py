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

    :param session: the request's session; ``session.userid`` is already ``new``.
        After a login or a change of user the session already has a new id
        (``regenerate_id()``, whose ``session_regenerated`` hook came first)
        and, after a change from one user to another, no data and no flash
        messages (unless ``session.userid_clear_on_user_change = false``);
        after a logout that ended the session it is the new, empty session
        that followed (the kernel's ``session_invalidated`` came first).
    :param old: the user id before (``None``: nobody was logged in).
    :param new: the user id now (``None``: logged out).

    Called at every change of the session's user, whichever way it happens:

    * a login: :meth:`UserSessionSecurityPolicy.remember()
      <sessions_userid.UserSessionSecurityPolicy.remember>`, or
      ``request.session.userid = user`` on an anonymous session; also when
      the user already logged in logs in again (``old == new``: a new
      authentication);
    * a change of user: ``request.session.userid = other``;
    * a logout that keeps the data: ``request.session.userid = None``;
    * a logout that ends the session: ``invalidate()`` (what ``forget()``
      does, and ``invalidate_user_sessions()`` for the request's own
      session), or a plugin's ``session_validate`` rejecting the stored
      session of a logged-in user (an idle or absolute timeout, a renewal
      violation), at the first use of the session. ``new`` is ``None``.

    Sessions of the user that ``invalidate_user_sessions()`` deletes besides
    the request's own are not the request's session: they are reported as
    :class:`~sessions_kernel.events.SessionInvalidated` events only.

    Use it to rotate secrets an attacker may have learnt before the change
    of privilege (the CSRF plugin issues a new token here, so a token
    handed out before the login is refused after it), or to record a
    sign-in (the example plugin ``sessions-device`` records the device).
    Called during the view, or at the first use of the session for a
    rejection; before commit. Issue no SQL: assign columns
    (``session.set_column``). The return value is ignored.
    """
