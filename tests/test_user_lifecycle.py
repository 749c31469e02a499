"""sessions-userid's ``session_user_changed`` covers every change of user: login, switch, logout.

A plugin implementing it learns of a login (``remember()``, also of the user
already logged in), a change of user, a logout that keeps the data
(``userid = None``) and a logout that ends the session (``forget()``,
``invalidate()``, an expiry), each after the kernel's own lifecycle hook. On
SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

from typing import Any

import pytest
from pyramid.security import forget, remember
from sessions_csrf import ColumnCSRFStoragePolicy, CSRFMixin
from sessions_idle_timeout import IdleMixin
from sessions_userid import UseridMixin, UserSessionSecurityPolicy, invalidate_user_sessions

import sessions_kernel
from sessions_kernel.testing import make_model


class Audit:
    """A third-party plugin logging who logs in and out, and the lifecycle around it."""

    __name__ = "audit"

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    @sessions_kernel.hookimpl
    def session_mixins(self) -> list[type]:
        return [UseridMixin]

    @sessions_kernel.hookimpl(optionalhook=True)
    def session_user_changed(self, session: Any, old: Any, new: Any) -> None:
        assert session.userid == new
        self.calls.append(("user", old, new))

    @sessions_kernel.hookimpl
    def session_regenerated(self) -> None:
        self.calls.append(("regenerated",))

    @sessions_kernel.hookimpl
    def session_invalidated(self, reason: str) -> None:
        self.calls.append(("invalidated", reason))


def configure(config: Any) -> None:
    config.set_security_policy(UserSessionSecurityPolicy())
    config.set_csrf_storage_policy(ColumnCSRFStoragePolicy())

    def view(name: str, func: Any) -> None:
        config.add_route(name, "/" + name)
        config.add_view(func, route_name=name, renderer="json")

    def login(request: Any) -> Any:
        remember(request, int(request.params["user"]))
        return {}

    def switch(request: Any) -> Any:
        request.session.userid = int(request.params["user"]) if request.params["user"] else None
        return {}

    def logout(request: Any) -> Any:
        forget(request)
        return {"token": request.session.csrf_token}

    def login_and_logout(request: Any) -> Any:
        remember(request, 5)
        forget(request)
        return {}

    def everywhere(request: Any) -> Any:
        return {"deleted": invalidate_user_sessions(request, request.session.userid)}

    view("login", login)
    view("switch", switch)
    view("logout", logout)
    view("login_and_logout", login_and_logout)
    view("everywhere", everywhere)
    view("whoami", lambda request: {"userid": request.session.userid})


@pytest.fixture
def audit() -> Audit:
    return Audit()


@pytest.fixture
def app(session_app, audit):
    model = make_model(CSRFMixin, IdleMixin, UseridMixin)
    return session_app(model, {"idle_timeout": "600"}, plugins=[audit], configure=configure)


def test_a_login_a_switch_and_a_logout_keeping_the_data(app, audit):
    app.get("/login", {"user": "1"})
    assert audit.calls == [("regenerated",), ("user", None, 1)]
    audit.calls.clear()
    app.get("/login", {"user": "1"})  # the same user again: a new authentication
    assert audit.calls == [("regenerated",), ("user", 1, 1)]
    audit.calls.clear()
    app.get("/switch", {"user": "2"})
    assert audit.calls == [("regenerated",), ("user", 1, 2)]
    audit.calls.clear()
    app.get("/switch", {"user": ""})
    assert audit.calls == [("regenerated",), ("user", 2, None)]


def test_forget_is_a_change_of_user(app, audit):
    app.get("/login", {"user": "1"})
    audit.calls.clear()
    assert app.get("/logout").json["token"] is None  # no CSRF token made for the new session
    assert audit.calls == [("invalidated", "invalidated"), ("user", 1, None)]
    assert app.rows() == []
    assert app.get("/whoami").json["userid"] is None


def test_an_expiry_of_a_logged_in_session_is_a_change_of_user(app, audit):
    app.get("/login", {"user": "1"})
    app.clock.advance(601)
    audit.calls.clear()
    response = app.get("/whoami")
    assert response.json["userid"] is None
    assert audit.calls == [("invalidated", "idle timeout"), ("user", 1, None)]
    assert app.rows() == []  # the logout stores nothing: the CSRF plugin made no token
    assert all("Max-Age=0" in h for h in response.headers.getall("Set-Cookie"))


def test_an_anonymous_session_ending_changes_no_user(app, audit):
    app.post_json("/set", {"cart": 1})
    audit.calls.clear()
    app.get("/invalidate")
    assert audit.calls == [("invalidated", "invalidated")]


def test_a_login_and_a_logout_in_one_request_on_a_new_session(app, audit):
    app.get("/login_and_logout")
    assert audit.calls == [
        ("regenerated",),
        ("user", None, 5),
        ("invalidated", "invalidated"),
        ("user", 5, None),
    ]
    assert app.rows() == []


def test_logging_the_user_out_everywhere_reports_the_current_sessions_logout(app, audit):
    app.get("/login", {"user": "1"})
    audit.calls.clear()
    assert app.get("/everywhere").json["deleted"] == 1
    assert audit.calls == [("invalidated", "invalidated"), ("user", 1, None)]
