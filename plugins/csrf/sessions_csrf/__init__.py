"""CSRF tokens kept in a column of the session table, for Pyramid's CSRF machinery.

Add :class:`CSRFMixin` to the session model and install the storage policy::

    from sessions_csrf import ColumnCSRFStoragePolicy
    config.set_csrf_storage_policy(ColumnCSRFStoragePolicy())

(or ``config.include("sessions_csrf")``, which does the same and checks the
model at start-up). Pyramid's :func:`pyramid.csrf.check_csrf_token`, views with
``require_csrf`` (or ``config.set_default_csrf_options(require_csrf=True)``)
and ``get_csrf_token()`` in templates then use the token stored here.

A token is created only when something asks for it. Asked for on a session
that has no row yet (a visitor's login form), it travels in the encrypted
session cookie and no row is written, so anonymous page views cannot fill the
table; the session's first INSERT carries it into the column.
``regenerate_id()`` keeps the token; ``invalidate()`` drops it with the row.
A login (``remember()``) or any change of ``request.session.userid`` replaces
it (the ``session_user_changed`` hook of sessions-userid): a token handed out
before the login, in the column or in the cookie, is refused after it. A
logout that ends the session (``forget()``) leaves no token behind.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from pyramid.interfaces import PHASE3_CONFIG, ICSRFStoragePolicy, ISessionFactory
from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column
from zope.interface import implementer

from sessions_kernel import ConfigurationError, Session, SessionFactory, hookimpl

if TYPE_CHECKING:
    from pyramid.config import Configurator
    from pyramid.request import Request

    class _CSRFSession(Session):
        """A session whose model includes CSRFMixin: the API ``session_attributes`` adds."""

        csrf_token: str | None
        get_csrf_token: Callable[[], str]
        new_csrf_token: Callable[[], str]


__all__ = ["TOKEN_BYTES", "CSRFMixin", "ColumnCSRFStoragePolicy", "includeme"]

#: Random bytes in a token (256 bits); the token is their URL-safe base64 (43 characters).
TOKEN_BYTES = 32
COLUMN = "csrf_token"
#: The cookie extra that carries the token of a session with no row yet.
EXTRA = "csrf"


class CSRFMixin:
    """Model mixin: the session's CSRF token in a ``csrf_token`` column.

    ``NULL`` until a token is first asked for. List it before ``BaseMixin``::

        class Session(CSRFMixin, BaseMixin, Base):
            __tablename__ = "session"

    With this mixin, ``request.session`` has ``csrf_token`` (the stored token
    or ``None``; reading it never creates one), ``get_csrf_token()`` (the token,
    created if there is none) and ``new_csrf_token()`` (a fresh token that
    replaces the old one).
    """

    csrf_token: Mapped[str | None] = mapped_column(String(64), nullable=True)


# -- request.session's API (added to the factory's session class only) ------------------


def _csrf_token(session: Session) -> str | None:
    """The session's CSRF token, or ``None`` if none was asked for; never creates one."""
    token: str | None = session.get_column(COLUMN)
    if token is None and session.row is None:
        carried = session.cookie_extras.get(EXTRA)
        token = carried.decode("ascii") if carried else None
    return token


def _new_csrf_token(session: Session) -> str:
    """A new random token (256 bits from :mod:`secrets`), replacing any old one.

    A session with a row stores it in the ``csrf_token`` column (an UPDATE of
    that column at the end of the request). A session without one (a visitor
    who stored nothing yet, rendering a login form) carries it in the
    encrypted session cookie instead and writes no row; the session's first
    INSERT moves it into the column. Forms rendered with the old token stop
    passing the check.
    """
    token = secrets.token_urlsafe(TOKEN_BYTES)
    if session.row is None:
        session.cookie_extras[EXTRA] = token.encode("ascii")
    else:
        session.set_column(COLUMN, token)
    return token


def _get_csrf_token(session: Session) -> str:
    """The stored token, or a new one (see ``new_csrf_token``) if there is none."""
    return _csrf_token(session) or _new_csrf_token(session)


def _ready(session_class: type) -> bool:
    """Whether sessions of this class carry this plugin's API (the model activated it)."""
    return getattr(session_class, "new_csrf_token", None) is _new_csrf_token


def _not_ready_message(model: Any) -> str:
    name = getattr(model, "__name__", repr(model))
    return (
        f"ColumnCSRFStoragePolicy keeps CSRF tokens in the csrf_token column of the session "
        f"table, but the session model {name} does not include sessions_csrf.CSRFMixin (or "
        f"SESSIONS_KERNEL_LOAD_PLUGINS leaves out the 'csrf' plugin). Add CSRFMixin to the "
        f"bases of {name} and a nullable csrf_token column to its table, or install "
        "pyramid.csrf.SessionCSRFStoragePolicy instead."
    )


def _not_kernel_message(what: object) -> str:
    return (
        f"ColumnCSRFStoragePolicy keeps CSRF tokens in the session table, but the session "
        f"factory is not a sessions_kernel one ({type(what).__name__}). "
        "Use config.include('sessions_kernel') with a model that includes "
        "sessions_csrf.CSRFMixin, or install pyramid.csrf.SessionCSRFStoragePolicy instead."
    )


# -- the storage policy -------------------------------------------------------------------


@implementer(ICSRFStoragePolicy)
class ColumnCSRFStoragePolicy:
    """Pyramid's ``ICSRFStoragePolicy`` over the ``csrf_token`` column of the session.

    Install it with ``config.set_csrf_storage_policy(ColumnCSRFStoragePolicy())``.
    Unlike Pyramid's session policy, :meth:`check_csrf_token` never creates a
    token: a check on a session without one fails and stores nothing, so
    forged requests cannot fill the session table.

    Every method raises :class:`~pyramid.exceptions.ConfigurationError` when
    the request's session does not come from a ``sessions_kernel`` factory
    whose model includes :class:`CSRFMixin`.
    """

    def new_csrf_token(self, request: Request) -> str:
        """Store a new token in the request's session and return it."""
        return self._session(request).new_csrf_token()

    def get_csrf_token(self, request: Request) -> str:
        """The session's token, created (and stored with the session) if it has none."""
        return self._session(request).get_csrf_token()

    def check_csrf_token(self, request: Request, supplied_token: str | bytes | None) -> bool:
        """Whether ``supplied_token`` equals the stored token, compared in constant time.

        ``False`` when the session has no token or nothing was supplied. Reads
        the session (one SELECT when it has a cookie) and writes nothing.
        """
        expected = self._session(request).csrf_token
        if isinstance(supplied_token, str):
            # surrogatepass: any str encodes; the token itself is ASCII
            supplied = supplied_token.encode("utf-8", "surrogatepass")
        elif isinstance(supplied_token, bytes):
            supplied = supplied_token
        else:
            return False
        if not expected or not supplied:
            return False
        return hmac.compare_digest(expected.encode("utf-8"), supplied)

    @staticmethod
    def _session(request: Request) -> _CSRFSession:
        try:
            session = request.session
        except AttributeError as exc:
            raise ConfigurationError(
                f"ColumnCSRFStoragePolicy keeps CSRF tokens in the session, but the request "
                f"has none ({exc}). Add config.include('sessions_kernel') with a model that "
                "includes sessions_csrf.CSRFMixin."
            ) from None
        if not isinstance(session, Session):
            raise ConfigurationError(_not_kernel_message(session))
        if not _ready(type(session)):
            factory = request.registry.queryUtility(ISessionFactory)
            raise ConfigurationError(_not_ready_message(getattr(factory, "model", None)))
        return cast("_CSRFSession", session)  # _ready: its class has the plugin's API

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def includeme(config: Configurator) -> None:
    """``config.include("sessions_csrf")``: install :class:`ColumnCSRFStoragePolicy`.

    Does what ``config.set_csrf_storage_policy(ColumnCSRFStoragePolicy())``
    does, and at ``config.commit()`` checks that the session factory is a
    ``sessions_kernel`` one whose model includes :class:`CSRFMixin`, raising
    :class:`~pyramid.exceptions.ConfigurationError` otherwise, instead of
    failing at the first request that uses a token.
    """
    policy = ColumnCSRFStoragePolicy()
    config.set_csrf_storage_policy(policy)
    registry = config.registry

    def check() -> None:
        if registry.queryUtility(ICSRFStoragePolicy) is not policy:
            return  # another policy was installed after this one: not ours to check
        factory = registry.queryUtility(ISessionFactory)
        if factory is None:
            raise ConfigurationError(
                "sessions_csrf keeps CSRF tokens in the session, but no session factory is "
                "set: add config.include('sessions_kernel') with a model that includes "
                "sessions_csrf.CSRFMixin"
            )
        if not isinstance(factory, SessionFactory):
            raise ConfigurationError(_not_kernel_message(factory))
        if not _ready(factory.session_class):
            raise ConfigurationError(_not_ready_message(factory.model))

    # after the session factory and the policy are registered (both at PHASE3_CONFIG)
    config.action(None, check, order=PHASE3_CONFIG + 1)


# -- hooks ----------------------------------------------------------------------------------


@hookimpl
def session_mixins() -> Sequence[type]:
    return [CSRFMixin]


@hookimpl(optionalhook=True)
def session_user_changed(session: Session, new: Any) -> None:
    """A login, a change of user or a logout (sessions-userid): issue a new token.

    A token the visitor (or someone who watched them) held before the change
    of privilege passes no check after it. A logout that ended the session
    (``forget()``, an expiry) left a new, empty session: it holds no token to
    replace, and none is made, so that the logout stores nothing and sets no
    cookie. Optional: this plugin works without sessions-userid.
    """
    if new is None and session.new and _csrf_token(session) is None:
        return
    _new_csrf_token(session)


@hookimpl
def session_attributes() -> Mapping[str, Any]:
    return {
        "csrf_token": property(_csrf_token, doc=_csrf_token.__doc__),
        "get_csrf_token": _get_csrf_token,
        "new_csrf_token": _new_csrf_token,
    }


@hookimpl
def session_persist(session: Session, row: Any) -> None:
    """The first INSERT: the token the cookie carried moves into the column."""
    if session.new:
        carried = session.cookie_extras.pop(EXTRA, None)
        if carried is not None and row.csrf_token is None:
            row.csrf_token = carried.decode("ascii")
