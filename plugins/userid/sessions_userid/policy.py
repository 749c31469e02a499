"""A Pyramid 2 security policy whose identity is the session's ``userid``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyramid.authorization import ACLHelper, Authenticated, Everyone
from pyramid.interfaces import ISecurityPolicy
from pyramid.request import RequestLocalCache
from zope.interface import implementer

if TYPE_CHECKING:
    from pyramid.request import Request

    from sessions_kernel import Session

__all__ = ["UserSessionSecurityPolicy"]

IdentityCallback = Callable[[Any, "Request"], Any]


@implementer(ISecurityPolicy)
class UserSessionSecurityPolicy:
    """Authenticates from ``request.session.userid``; authorizes with ACLs.

    Install it yourself (it is not registered by ``config.include``)::

        from sessions_userid import UserSessionSecurityPolicy
        config.set_security_policy(UserSessionSecurityPolicy(callback=load_user))

    :param callback: optional ``callback(userid, request)`` returning the
        identity (your user object) for a logged-in userid, or ``None`` when
        that user may not be authenticated (deleted, disabled). Called at most
        once per request and userid. Without it the identity is the userid.

    The session model must include :class:`sessions_userid.UseridMixin`.
    """

    def __init__(self, callback: IdentityCallback | None = None) -> None:
        if callback is not None and not callable(callback):
            raise TypeError(
                f"UserSessionSecurityPolicy(callback={callback!r}): expected a function "
                "callback(userid, request) returning the user or None"
            )
        self.callback = callback
        self.acl = ACLHelper()
        self._cache = RequestLocalCache()

    # -- authentication ------------------------------------------------------------
    def _userid(self, request: Request) -> Any:
        session = request.session
        if not isinstance(getattr(type(session), "userid", None), property):
            raise TypeError(
                "UserSessionSecurityPolicy reads request.session.userid, which this "
                "application's sessions lack: include sessions_userid.UseridMixin among the "
                "bases of your session model (and config.include('sessions_kernel'))"
            )
        return session.userid

    def identity(self, request: Request) -> Any:
        """The logged-in user: the callback's answer for the session's userid (or the userid).

        ``None`` when nobody is logged in or the callback returned ``None``.
        """
        userid = self._userid(request)
        if userid is None:
            return None
        if self.callback is None:
            return userid
        cached = self._cache.get(request)
        if cached is RequestLocalCache.NO_VALUE or cached[0] != userid:
            cached = (userid, self.callback(userid, request))
            self._cache.set(request, cached)
        return cached[1]

    def authenticated_userid(self, request: Request) -> Any:
        """The session's userid if :meth:`identity` accepts it, else ``None``."""
        if self.identity(request) is None:
            return None
        return self._userid(request)

    def remember(self, request: Request, userid: Any, **kw: Any) -> list[tuple[str, str]]:
        """Log ``userid`` in: store it in the session and give the session a new id.

        The id is renewed even when the same user logs in again (a login is
        an authentication event), and the plugins' ``session_user_changed``
        hook runs at every login (a CSRF token of the session is replaced).
        The data is kept when nobody, or this same user, was logged in; when
        another user was, it is cleared first, flash messages included
        (unless ``session.userid_clear_on_user_change = false``). Returns no
        headers: the session sends its cookie itself once the transaction
        commits.
        """
        if userid is None:
            raise ValueError(
                "remember(request, None): a userid is required; call forget(request) to log out"
            )
        session = request.session
        previous = self._userid(request)
        session.userid = userid
        if previous == userid:  # else setting userid did both
            from . import user_changed

            session.regenerate_id()
            user_changed(session, previous, userid)
        self._cache.clear(request)
        return []

    def forget(self, request: Request, **kw: Any) -> list[tuple[str, str]]:
        """Log out: invalidate the session (its row, data and cookie).

        Returns the ``Set-Cookie`` header that deletes the browser's cookie,
        for ``HTTPFound(location, headers=forget(request))``. The logout holds
        even when the view then raises that redirect (which aborts the
        transaction): the row is deleted all the same, and no copy of the
        cookie works afterwards.
        """
        session: Session = request.session
        session.invalidate()
        self._cache.clear(request)
        return session.logout_headers()

    # -- authorization ---------------------------------------------------------------
    def effective_principals(self, request: Request) -> list[Any]:
        """``[Everyone]``, plus ``Authenticated`` and the userid for an authenticated request.

        Override in a subclass to add groups or roles (from the identity, say).
        """
        principals: list[Any] = [Everyone]
        userid = self.authenticated_userid(request)
        if userid is not None:
            principals += [Authenticated, userid]
        return principals

    def permits(self, request: Request, context: Any, permission: str) -> Any:
        """Whether the context's ACL (and its lineage's) grants ``permission``.

        Returns Pyramid's ``ACLAllowed``/``ACLDenied`` (truthy/falsy, with the
        reason), as Pyramid's own policies do.
        """
        return self.acl.permits(context, self.effective_principals(request), permission)
