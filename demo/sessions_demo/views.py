"""The demo's pages: sign-up and login, the live session page, "your sessions".

Every POST is checked against the session's CSRF token
(``set_default_csrf_options(require_csrf=True)`` with the csrf plugin's
``ColumnCSRFStoragePolicy``); every action ends with a flash message and a
redirect. ``/status.json``, which the session page polls, reads the session's
row without loading ``request.session``: a poll is not activity, so it neither
extends the idle timeout nor takes part in the renewal of the cookie's id.
"""

from __future__ import annotations

import time
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pyramid.csrf import new_csrf_token
from pyramid.exceptions import BadCSRFToken
from pyramid.httpexceptions import HTTPSeeOther
from pyramid.interfaces import ISessionFactory
from pyramid.security import forget, remember
from sessions_userid import invalidate_user_sessions, user_sessions

from sessions_kernel import SessionFactory, SettingsError
from sessions_kernel.events import SessionRejected
from sessions_kernel.maintenance import plugin_report

from .models import Session, User

TEMPLATES = "sessions_demo:templates/"
_hasher = PasswordHasher()  # Argon2id with the library's (RFC 9106) parameters
# verified against when the name is unknown, so that a login costs the same either way
_DUMMY_HASH = _hasher.hash("not a password of anyone")
MIN_PASSWORD = 8


def format_clock(seconds: int | None) -> str:
    """A template filter: seconds since the epoch as ``HH:MM:SS UTC``."""
    if seconds is None:
        return ""
    return time.strftime("%H:%M:%S UTC", time.gmtime(seconds))


def _factory(request: Any) -> SessionFactory:
    return request.registry.getUtility(ISessionFactory)


def _now(request: Any) -> int:
    return int(_factory(request).clock())


def _see(request: Any, route: str) -> HTTPSeeOther:
    return HTTPSeeOther(location=request.route_url(route))


def _page(request: Any, **values: Any) -> dict[str, Any]:
    """What every template gets: the flash queues and the logged-in user."""
    session = request.session
    return {
        "user": request.identity,
        "messages": session.pop_flash(),
        "errors": session.pop_flash("error"),
        "ended": request.environ.get("demo.session_ended"),
        **values,
    }


def remember_rejection(event: SessionRejected) -> None:
    """Keep why a stored session was refused (idle timeout, ...) to tell the visitor."""
    event.request.environ["demo.session_ended"] = event.reason


# -- sign-up, login, logout ---------------------------------------------------------------
def home(request: Any) -> Any:
    if request.identity is not None:
        return _see(request, "session")
    return _page(request, options=request.registry.settings)


def _log_in(request: Any, user: User) -> None:
    remember(request, user.id)  # sets the session's userid: a new session id
    new_csrf_token(request)  # a token known before login must not work after it
    if request.POST.get("remember"):
        # a persistent cookie for this session only: the cookie_settings plugin's column
        with request.session.settings as settings:
            settings.cookie_max_age = int(request.registry.settings["demo.remember_max_age"])


def signup(request: Any) -> Any:
    name = request.POST.get("name", "").strip()
    password = request.POST.get("password", "")
    if not 1 <= len(name) <= 64:
        request.session.flash("Choose a name of 1 to 64 characters.", "error")
        return _see(request, "home")
    if len(password) < MIN_PASSWORD:
        request.session.flash(f"Choose a password of at least {MIN_PASSWORD} characters.", "error")
        return _see(request, "home")
    db = request.dbsession
    if db.query(User.id).filter_by(name=name).first() is not None:
        request.session.flash(f"The name {name!r} is taken; log in or choose another.", "error")
        return _see(request, "home")
    user = User(name=name, password_hash=_hasher.hash(password), created=_now(request))
    db.add(user)
    db.flush()
    _log_in(request, user)
    request.session.flash(f"Welcome, {name}: your account exists and you are logged in.")
    return _see(request, "session")


def login(request: Any) -> Any:
    name = request.POST.get("name", "").strip()
    password = request.POST.get("password", "")
    user = request.dbsession.query(User).filter_by(name=name).one_or_none()
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        user = None
    if user is None:
        request.session.flash("Wrong name or password.", "error")
        return _see(request, "home")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    _log_in(request, user)
    remembered = " (remembered by this browser)" if request.POST.get("remember") else ""
    request.session.flash(f"Logged in as {user.name}{remembered}.")
    return _see(request, "session")


def logout(request: Any) -> Any:
    forget(request)  # deletes the session's row and cookie
    request.session.flash("Logged out: the session's row and cookie are gone.")
    return _see(request, "home")


# -- the session page -------------------------------------------------------------------
def _login_first(request: Any) -> HTTPSeeOther | None:
    """A redirect to the login page, saying why, when nobody is logged in; else None."""
    if request.identity is not None:
        return None
    reason = request.environ.get("demo.session_ended")
    text = f"Your session ended ({reason})." if reason else "Log in first."
    request.session.flash(text, "error")
    return _see(request, "home")


def session_page(request: Any) -> Any:
    redirect = _login_first(request)
    if redirect is not None:
        return redirect
    factory = _factory(request)
    return _page(
        request,
        plugins=plugin_report(factory),
        status_url=request.route_url("status"),
        factory=factory,
    )


def add_note(request: Any) -> Any:
    """A CSRF-protected form: store a line of text in the session's data."""
    redirect = _login_first(request)
    if redirect is not None:
        return redirect
    text = request.POST.get("note", "").strip()[:200]
    if not text:
        request.session.flash("Write something first.", "error")
    else:
        notes = request.session.setdefault("notes", [])
        notes.append(text)
        request.session.flash(f"Note saved in the session ({len(notes)} in all).")
    return _see(request, "session")


def change_settings(request: Any) -> Any:
    """Change this session's idle timeout (the idle plugin's runtime setting)."""
    redirect = _login_first(request)
    if redirect is not None:
        return redirect
    value = request.POST.get("idle_timeout", "").strip()
    try:
        with request.session.settings as settings:
            settings.idle_timeout = int(value) if value else None
    except (SettingsError, ValueError) as exc:
        request.session.flash(f"Not changed: {exc}", "error")
    else:
        shown = f"{value} s" if value else "the global value"
        request.session.flash(f"This session's idle timeout is now {shown}.")
    return _see(request, "session")


def _remaining(expires: int | None, now: int) -> int | None:
    return None if expires is None else max(0, expires - now)


def describe_row(factory: SessionFactory, row: Session, now: int) -> dict[str, Any]:
    """What the session page shows of a stored row, as JSON."""
    settings = factory.config.row_settings(row)
    info = factory.describe(row)
    idle = settings["idle_timeout"]
    absolute = settings["absolute_timeout"]
    renewal = settings["renewal_timeout"]
    idle_expires = row.idle_expire if idle is not None else None
    absolute_expires = None
    if absolute is not None:
        absolute_expires = row.absolute_expire or row.created + absolute
    next_renewal = None
    if renewal is not None and row.renewal_at is not None:
        next_renewal = row.renewal_at + renewal
    expired = info.expires is not None and info.expires <= now
    flash = factory.data_serializer.loads(row.flash) if row.flash is not None else {}
    return {
        "state": "expired" if expired else "live",
        "session_id": row.id[:12],
        "user": row.user.name if row.user is not None else None,
        "created": row.created,
        "age": now - row.created,
        "updated": row.updated,
        "last_active": info.last_active,
        "expires": info.expires,
        "remaining": _remaining(info.expires, now),
        "data": factory.data_serializer.loads(row.data),
        "flash_waiting": sum(len(queue) for queue in flash.values()),
        "csrf_token_set": row.csrf_token is not None,
        "version": row.version,
        "idle": {
            "timeout": idle,
            "own": row.idle_timeout is not None,
            "expires": idle_expires,
            "remaining": _remaining(idle_expires, now),
        },
        "absolute": {
            "timeout": absolute,
            "expires": absolute_expires,
            "remaining": _remaining(absolute_expires, now),
        },
        "renewal": {
            "timeout": renewal,
            "try_every": settings["renewal_try_every"],
            "adopted": row.renewal_id is not None,
            "renewed_at": row.renewal_at,
            "next": next_renewal,
            "next_in": None if next_renewal is None else next_renewal - now,
            "offer_pending": row.renewal_candidate is not None,
            "offered_at": row.renewal_offered_at,
        },
        "cookie": {
            "name": factory.cookie_name,
            "max_age": settings["cookie_max_age"],
            "path": settings["cookie_path"],
            "domain": settings["cookie_domain"],
            "secure": settings["cookie_secure"],
            "httponly": settings["cookie_httponly"],
            "samesite": settings["cookie_samesite"],
        },
    }


def status(request: Any) -> Any:
    """JSON for the session page's poll; never extends or renews the session."""
    request.response.cache_control = "no-store"
    factory = _factory(request)
    now = _now(request)
    # A peek validates the session (an expired one, or a stale cookie renewal would
    # reject, shows no data) without extending or renewing it: a poll is not activity.
    peek = factory.peek(request)
    if not peek.valid:
        return {"state": "expired" if peek.rejected else "none", "now": now, "why": peek.reason}
    return {"now": now, **describe_row(factory, peek.row, now)}


# -- your sessions ----------------------------------------------------------------------
def your_sessions(request: Any) -> Any:
    redirect = _login_first(request)
    if redirect is not None:
        return redirect
    userid = request.authenticated_userid
    return _page(request, sessions=user_sessions(request, userid), now=_now(request))


def log_out_others(request: Any) -> Any:
    redirect = _login_first(request)
    if redirect is not None:
        return redirect
    userid = request.authenticated_userid
    count = invalidate_user_sessions(request, userid, except_current=True)
    plural = "" if count == 1 else "s"
    request.session.flash(f"Logged out everywhere else: {count} other session{plural} ended.")
    return _see(request, "sessions")


def bad_csrf(exc: BadCSRFToken, request: Any) -> Any:
    request.response.status = 400
    return {"detail": str(exc.detail or exc.explanation)}


def includeme(config: Any) -> None:
    config.add_subscriber(remember_rejection, SessionRejected)
    routes = [
        ("home", "/"),
        ("signup", "/signup"),
        ("login", "/login"),
        ("logout", "/logout"),
        ("session", "/session"),
        ("note", "/session/note"),
        ("settings", "/session/settings"),
        ("status", "/status.json"),
        ("sessions", "/sessions"),
        ("others", "/sessions/log-out-others"),
    ]
    for name, pattern in routes:
        config.add_route(name, pattern)
    home_page = TEMPLATES + "home.jinja2"
    config.add_view(home, route_name="home", request_method="GET", renderer=home_page)
    for name, view in [
        ("signup", signup),
        ("login", login),
        ("logout", logout),
        ("note", add_note),
        ("settings", change_settings),
        ("others", log_out_others),
    ]:
        config.add_view(view, route_name=name, request_method="POST")
    page = TEMPLATES + "session.jinja2"
    config.add_view(session_page, route_name="session", request_method="GET", renderer=page)
    config.add_view(status, route_name="status", request_method="GET", renderer="json")
    sessions = TEMPLATES + "sessions.jinja2"
    config.add_view(your_sessions, route_name="sessions", request_method="GET", renderer=sessions)
    config.add_view(bad_csrf, context=BadCSRFToken, renderer=TEMPLATES + "csrf_error.jinja2")
