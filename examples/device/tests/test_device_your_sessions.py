"""The device of each session in "your sessions" (sessions-userid's listing), and at sign-in."""

from __future__ import annotations

import pytest
from sessions_device import DeviceMixin
from sessions_userid import UseridMixin, UserSessionSecurityPolicy, user_sessions

from sessions_kernel.testing import make_model

ALICE = 7


def add_views(config):
    def login(request):
        request.session.userid = ALICE
        return {"ok": True}

    def login_and_list(request):
        # user_sessions() flushes the SQLAlchemy session: the login is written there
        request.session.userid = ALICE
        return {"listed": len(user_sessions(request, ALICE))}

    def remember(request):  # what UserSessionSecurityPolicy.remember() does
        UserSessionSecurityPolicy().remember(request, ALICE)
        return {"ok": True}

    def logout(request):
        request.session.userid = None
        return {"ok": True}

    def your_sessions(request):
        return [
            {
                "current": s.current,
                "last_ip": s.details["device_last_ip"],
                "last_user_agent": s.details["device_last_user_agent"],
                "login_user_agent": s.details["device_login_user_agent"],
            }
            for s in user_sessions(request, request.session.userid)
        ]

    config.add_route("login", "/login")
    config.add_view(login, route_name="login", renderer="json")
    config.add_route("login_and_list", "/login-and-list")
    config.add_view(login_and_list, route_name="login_and_list", renderer="json")
    config.add_route("remember", "/remember")
    config.add_view(remember, route_name="remember", renderer="json")
    config.add_route("logout", "/logout")
    config.add_view(logout, route_name="logout", renderer="json")
    config.add_route("your_sessions", "/your-sessions")
    config.add_view(your_sessions, route_name="your_sessions", renderer="json")


@pytest.fixture
def app(session_app):
    return session_app(make_model(UseridMixin, DeviceMixin), configure=add_views)


def test_signing_in_records_the_device_that_signed_in(app, session_clock):
    app.post_json("/set", {"cart": 1}, headers={"User-Agent": "Anon/1"})
    session_clock.advance(10)
    with app.count() as sql:
        app.get("/login", headers={"User-Agent": "Browser/2"}, extra_environ={"REMOTE_ADDR": "::1"})
    assert sql.kinds() == ["SELECT", "UPDATE"]  # in the login's own UPDATE
    row = app.row()
    assert (row.device_login_ip, row.device_login_user_agent) == ("::1", "Browser/2")
    assert (row.device_last_ip, row.device_last_user_agent) == ("::1", "Browser/2")


def test_signing_in_on_a_new_session_is_one_insert(app):
    with app.count() as sql:
        app.get("/login", headers={"User-Agent": "Browser/2"})
    assert sql.kinds() == ["INSERT"]
    assert app.row().device_login_user_agent == "Browser/2"


def test_a_flush_after_signing_in_still_records_the_device(app, session_clock):
    app.post_json("/set", {"cart": 1}, headers={"User-Agent": "Anon/1"})
    session_clock.advance(10)
    response = app.get("/login-and-list", headers={"User-Agent": "Browser/2"})
    assert response.json["listed"] == 1
    assert app.row().device_login_user_agent == "Browser/2"


def test_signing_in_again_records_the_device_again(app, session_clock):
    app.get("/remember", headers={"User-Agent": "Browser/2"})
    app.get("/remember", headers={"User-Agent": "Browser/3"})  # the same user: a new sign-in
    assert app.row().device_login_user_agent == "Browser/3"


def test_signing_out_keeps_the_device_that_signed_in(app, session_clock):
    app.get("/login", headers={"User-Agent": "Browser/2"})
    app.get("/logout", headers={"User-Agent": "Browser/3"})
    row = app.row()
    assert (row.userid, row.device_login_user_agent) == (None, "Browser/2")
    assert row.device_last_user_agent == "Browser/3"


def test_your_sessions_shows_each_sessions_device(app, session_clock):
    phone = app.new_browser()
    phone.get(
        "/login", headers={"User-Agent": "Phone/1"}, extra_environ={"REMOTE_ADDR": "10.0.0.2"}
    )
    session_clock.advance(5)
    app.get("/login", headers={"User-Agent": "Laptop/1"}, extra_environ={"REMOTE_ADDR": "10.0.0.1"})
    session_clock.advance(5)
    phone.post_json(
        "/set",
        {"a": 1},
        headers={"User-Agent": "Phone/2"},
        extra_environ={"REMOTE_ADDR": "10.0.0.3"},
    )
    with app.count() as sql:
        listing = app.get(
            "/your-sessions",
            headers={"User-Agent": "Laptop/1"},
            extra_environ={"REMOTE_ADDR": "10.0.0.1"},
        ).json
    assert sql.kinds() == ["SELECT", "SELECT"]  # the session's own, and the listing's
    assert listing == [
        {
            "current": False,
            "last_ip": "10.0.0.3",
            "last_user_agent": "Phone/2",
            "login_user_agent": "Phone/1",
        },
        {
            "current": True,
            "last_ip": "10.0.0.1",
            "last_user_agent": "Laptop/1",
            "login_user_agent": "Laptop/1",
        },
    ]
