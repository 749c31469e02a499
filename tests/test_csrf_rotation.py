"""The CSRF token rotates at login (sessions-userid's ``session_user_changed`` hook).

A token handed out before a login, or before the session's user changed,
passes no CSRF check afterwards: Pyramid's ``check_csrf_token`` and views
with ``require_csrf`` refuse it. On SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import pytest
from pyramid.csrf import check_csrf_token, get_csrf_token
from pyramid.security import forget, remember
from sessions_csrf import ColumnCSRFStoragePolicy, CSRFMixin, stored_token
from sessions_userid import UseridMixin, UserSessionSecurityPolicy

from sessions_kernel.testing import make_model


def configure(config):
    config.set_security_policy(UserSessionSecurityPolicy())
    config.set_csrf_storage_policy(ColumnCSRFStoragePolicy())

    def view(name, func, **kw):
        config.add_route(name, "/" + name)
        config.add_view(func, route_name=name, renderer="json", **kw)

    def login(request):
        remember(request, int(request.params["user"]))
        return {"token": request.session.csrf_token}

    def switch(request):  # a change of user without remember()
        request.session.userid = int(request.params["user"]) if request.params["user"] else None
        return {"token": request.session.csrf_token}

    def logout(request):
        forget(request)
        return {"token": request.session.csrf_token}

    view("token", lambda request: {"token": get_csrf_token(request)})
    view("login", login, request_method="POST")  # a login form itself is not CSRF-checked here
    view("switch", switch, request_method="POST")
    view("logout", logout, request_method="POST")
    view("protected", lambda request: {"ok": True}, request_method="POST", require_csrf=True)
    view("check", lambda request: {"ok": check_csrf_token(request, raises=False)})


@pytest.fixture
def app(session_app):
    return session_app(make_model(CSRFMixin, UseridMixin), configure=configure)


def accepted(app, token):
    """Whether a POST to a ``require_csrf`` view with ``token`` gets through."""
    return app.post("/protected", {"csrf_token": token}, expect_errors=True).status_int == 200


def checked(app, token):
    """Whether ``pyramid.csrf.check_csrf_token`` accepts ``token`` (sent as the header)."""
    return app.get("/check", headers={"X-CSRF-Token": token}).json["ok"]


def assert_login_replaces(app, before):
    """A login answers a new token, stored in the row; only the new one is accepted."""
    after = app.post("/login", {"user": "1"}).json["token"]

    assert after and after != before
    assert stored_token(app.factory, app.row().csrf_token) == after
    assert not accepted(app, before)
    assert not checked(app, before)
    assert accepted(app, after)
    assert checked(app, after)


def test_remember_refuses_the_token_a_visitor_got_before_login(app):
    # a visitor without a stored session: the token travels in the cookie, no row
    before = app.get("/token").json["token"]
    assert app.rows() == []
    assert accepted(app, before)

    assert_login_replaces(app, before)


def test_remember_issues_a_new_token_and_refuses_the_pre_login_one(app):
    app.post_json("/set", {"cart": [1]})  # a stored anonymous session: the token in the column
    before = app.get("/token").json["token"]
    assert stored_token(app.factory, app.row().csrf_token) == before
    assert accepted(app, before)

    assert_login_replaces(app, before)


def test_remember_of_the_user_already_logged_in_issues_a_new_token(app):
    app.post("/login", {"user": "1"})
    first = app.get("/token").json["token"]

    again = app.post("/login", {"user": "1"}).json["token"]

    assert again != first
    assert not accepted(app, first)
    assert accepted(app, again)


def test_a_login_without_a_token_before_issues_one(app):
    # nothing handed out before the login: it stores a token anyway, so a token
    # a later pre-session mechanism gave the visitor is never the one in force
    token = app.post("/login", {"user": "1"}).json["token"]
    assert token and stored_token(app.factory, app.row().csrf_token) == token
    assert accepted(app, token)


def test_a_change_of_user_issues_a_new_token(app):
    app.post("/login", {"user": "1"})
    alice = app.get("/token").json["token"]

    bob = app.post("/switch", {"user": "2"}).json["token"]
    assert bob != alice
    assert not accepted(app, alice)
    assert accepted(app, bob)

    # setting the same user again changes nothing
    assert app.post("/switch", {"user": "2"}).json["token"] == bob
    assert accepted(app, bob)

    # logging out while keeping the data (userid = None) is a change too
    anonymous = app.post("/switch", {"user": ""}).json["token"]
    assert anonymous != bob
    assert not accepted(app, bob)
    assert accepted(app, anonymous)


def test_forget_drops_the_token_with_the_session(app):
    app.post("/login", {"user": "1"})
    token = app.get("/token").json["token"]
    assert app.post("/logout").json["token"] is None
    assert not accepted(app, token)
    assert app.rows() == []


def test_the_csrf_plugin_loads_without_the_userid_plugin(monkeypatch):
    from sessions_kernel import session_factory
    from sessions_kernel.plugins import LOAD_PLUGINS_ENV
    from sessions_kernel.testing import TEST_SECRET_KEY

    monkeypatch.setenv(LOAD_PLUGINS_ENV, "csrf")  # sessions-userid not loaded at all
    factory = session_factory(model_class=make_model(CSRFMixin), secret_key=TEST_SECRET_KEY)
    assert [info.name for info in factory.config.installed] == ["sessions_kernel", "csrf"]
    assert factory.session_class.new_csrf_token  # active, its optional hook unspecified
