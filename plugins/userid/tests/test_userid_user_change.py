"""A change of user clears the session's data (security review #24, item 5).

The review's attack: B logs in on a shared browser and stores an address; A
logs in over B's session and must not see it. Django's ``login()`` flushes the
session when the user changes; so does this plugin, unless the application
sets ``session.userid_clear_on_user_change = false``. A login from an
anonymous session, a login of the same user and a logout keep the data. On
SQLite, PostgreSQL and MariaDB, including requests of B's racing A's login.
"""

from __future__ import annotations

import json

import pytest
from pyramid.security import remember
from sessions_idle_timeout import IdleMixin
from sessions_userid import UseridMixin, UserSessionSecurityPolicy

from sessions_kernel import ConfigurationError, session_factory
from sessions_kernel.events import SessionMerged
from sessions_kernel.testing import TEST_SECRET_KEY, Race, make_model

B, A = 7, 8  # B used the browser first; A logs in over B's session
SETTING = "userid_clear_on_user_change"
ADDRESS = {"address": "B's home, 221B Baker Street"}


def configure(config):
    config.set_security_policy(UserSessionSecurityPolicy())

    def view(name, func):
        config.add_route(name, "/" + name)
        config.add_view(func, route_name=name, renderer="json")

    def login(request):
        """``before`` is stored before remember(), ``after`` after it (a login view's own)."""
        body = request.json_body
        request.session.update(body.get("before", {}))
        remember(request, body["user"])
        request.session.update(body.get("after", {}))
        return {}

    def switch(request):  # a change of user without remember()
        request.session.userid = request.json_body["user"]
        return {}

    def whoami(request):
        session = request.session
        return {"userid": session.userid, "data": dict(session), "flash": state(session)}

    def state(session):
        return {q: session.peek_flash(q) for q in ("", "info", "orders") if session.peek_flash(q)}

    view("login", login)
    view("switch", switch)
    view("whoami", whoami)


@pytest.fixture
def app(session_app):
    return session_app(make_model(UseridMixin), {"lock_contended_for": "0"}, configure=configure)


def b_logged_in(app, browser=None):
    """B logs in, stores an address and is told so by a flash message."""
    browser = browser or app.browser
    browser.post_json("/login", {"user": B})
    browser.post_json("/set", ADDRESS)
    browser.post_json("/flash", {"msg": "Address saved: 221B Baker Street", "queue": "info"})
    assert browser.get("/whoami").json["data"] == ADDRESS
    return browser


def stored(app):
    """The one row's (userid, data, flash), as stored."""
    [row] = app.rows()
    return row.userid, json.loads(row.data), row.flash


# -- the review's attack --------------------------------------------------------------------


@pytest.mark.parametrize("how", ["login", "switch"])
def test_logging_in_over_another_users_session_does_not_show_their_data(app, how):
    b_logged_in(app)
    b_cookie, b_id = app.cookies["session"], app.row().id

    with app.count() as sql:
        app.post_json(f"/{how}", {"user": A})
    # the clear rides in the UPDATE that writes the new id and userid
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements

    assert app.get("/whoami").json == {"userid": A, "data": {}, "flash": {}}
    assert stored(app) == (A, {}, None)
    assert app.row().id != b_id  # and a new id, as at every change of user
    # B's cookie (a copy kept by whoever used the browser before) opens nothing
    other = app.new_browser()
    other.set_cookie("session", b_cookie)
    assert other.get("/whoami").json == {"userid": None, "data": {}, "flash": {}}


def test_what_the_login_view_stores_after_the_change_is_kept(app):
    b_logged_in(app)
    app.post_json("/login", {"user": A, "before": {"next": "/b"}, "after": {"welcome": "A"}})
    # as Django's login(): set before the change belongs to the session being cleared
    assert app.get("/whoami").json == {"userid": A, "data": {"welcome": "A"}, "flash": {}}


# -- what keeps the data --------------------------------------------------------------------


def test_logging_in_from_an_anonymous_session_keeps_the_cart(app):
    app.post_json("/set", {"cart": ["book"]})
    app.post_json("/flash", {"msg": "Added to your cart", "queue": "info"})
    anonymous_id = app.row().id
    app.post_json("/login", {"user": A})
    assert app.get("/whoami").json == {
        "userid": A,
        "data": {"cart": ["book"]},
        "flash": {"info": ["Added to your cart"]},
    }
    assert app.row().id != anonymous_id


def test_the_same_user_logging_in_again_keeps_the_data(app):
    b_logged_in(app)
    first = app.row().id
    app.post_json("/login", {"user": B})
    body = app.get("/whoami").json
    assert (body["userid"], body["data"]) == (B, ADDRESS)
    assert body["flash"] == {"info": ["Address saved: 221B Baker Street"]}
    assert app.row().id != first  # a new authentication: a new id all the same


def test_a_logout_keeping_the_data_keeps_it_as_before(app):
    """``userid = None`` logs out and keeps the data (a cart); forget() ends everything."""
    b_logged_in(app)
    b_id = app.row().id
    app.post_json("/switch", {"user": None})
    body = app.get("/whoami").json
    assert (body["userid"], body["data"]) == (None, ADDRESS)
    assert app.row().id != b_id


def test_the_application_can_opt_out(session_app):
    app = session_app(make_model(UseridMixin), {SETTING: "false"}, configure=configure)
    b_logged_in(app)
    b_id = app.row().id
    app.post_json("/login", {"user": A})
    assert app.get("/whoami").json == {
        "userid": A,
        "data": ADDRESS,
        "flash": {"info": ["Address saved: 221B Baker Street"]},
    }
    assert app.row().id != b_id  # the id is regenerated all the same
    assert app.get("/settings").json[SETTING] is False


# -- the setting ------------------------------------------------------------------------------


def test_the_setting_is_on_by_default_and_readable(app):
    assert app.get("/settings").json[SETTING] is True


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("off", False), (False, False)])
def test_the_setting_takes_booleans(value, expected):
    model = make_model(UseridMixin)
    factory = session_factory(model_class=model, secret_key=TEST_SECRET_KEY, **{SETTING: value})
    assert factory.config.values[SETTING] is expected


def test_a_wrong_value_is_refused_at_start_up():
    model = make_model(UseridMixin)
    with pytest.raises(ConfigurationError, match=f"session.{SETTING} = 'sometimes'.*true or false"):
        session_factory(model_class=model, secret_key=TEST_SECRET_KEY, **{SETTING: "sometimes"})


def test_the_setting_needs_the_mixin():
    with pytest.raises(
        ConfigurationError, match=f"session.{SETTING} = 'false' is set.*UseridMixin"
    ):
        session_factory(model_class=make_model(), secret_key=TEST_SECRET_KEY, **{SETTING: "false"})


# -- B's requests racing A's login --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [("/set", {"last_order": "B's order 42"}), ("/flash", {"msg": "Shipped", "queue": "orders"})],
    ids=["key", "flash"],
)
def test_a_concurrent_write_of_the_previous_user_does_not_come_back(app, path, body):
    """B's request writes a key (or a flash queue) the login never saw, and commits first.

    The kernel merges the login's write onto B's key by key: the keys the
    login cleared go, a key only B's request wrote would stay, in A's
    session. The plugin refuses that merge; the login runs again
    (pyramid_retry) on the row B wrote, and clears that too.
    """
    b_logged_in(app)
    with Race(app) as race:
        login = race.start("/login", json={"user": A, "after": {"welcome": "A"}})
        b = race.start(path, json=body)
        b.finish()  # B's write commits while A's login is under way
        login.finish()  # the login writes over it
    assert b.response.status_int == login.response.status_int == 200
    assert login.browser.get("/whoami").json == {
        "userid": A,
        "data": {"welcome": "A"},
        "flash": {},
    }
    assert stored(app) == (A, {"welcome": "A"}, None)
    assert login.attempts == 2  # ran again on B's write


def test_without_pyramid_retry_the_login_fails_and_stores_nothing(session_app):
    app = session_app(
        make_model(UseridMixin), {"lock_contended_for": "0"}, configure=configure, retry=False
    )
    b_logged_in(app)
    with Race(app) as race:
        login = race.start("/login", json={"user": A})
        b = race.start("/set", json={"last_order": "B's order 42"})
        b.finish()
        login.finish()
    # the test views' exception view renders the SessionConflictError
    assert login.response.status_int == 500
    assert "while a concurrent request wrote" in login.response.json["error"]
    assert "Set-Cookie" not in login.response.headers
    # B's session as B's request left it: nobody else was logged in to it
    userid, data, _ = stored(app)
    assert (userid, data) == (B, {**ADDRESS, "last_order": "B's order 42"})


def test_a_write_of_the_previous_user_committed_after_the_login_stays_out(app):
    """B's request loaded the session before A's login and commits after it.

    Its row moved to the login's new id; the kernel finds it by its lineage
    and merges onto it, and the plugin refuses that merge. Not run again: B's
    request would present its old id, start a session of its own and send
    its cookie over the login's. A's session holds nothing of B's.
    """
    b_logged_in(app)
    with Race(app) as race:
        b = race.start("/set", json={"last_order": "B's order 42"})
        login = race.start("/login", json={"user": A})
        login.finish()
        b.finish()
    assert login.response.status_int == 200 and login.attempts == 1
    assert b.response.status_int == 500 and b.attempts == 1
    assert "nothing was stored" in b.response.json["error"]
    assert "Set-Cookie" not in b.response.headers
    assert login.browser.get("/whoami").json == {"userid": A, "data": {}, "flash": {}}
    rows = {row.userid: json.loads(row.data) for row in app.rows()}
    assert rows == {A: {}}


def test_a_concurrent_write_that_brings_nothing_back_merges_without_running_again(session_app):
    """B's parallel read only extends the idle expiry: the login merges, once."""
    merges = []

    def configure_and_log(config):
        configure(config)
        config.add_subscriber(lambda event: merges.append(event.keys), SessionMerged)

    app = session_app(
        make_model(IdleMixin, UseridMixin),
        {"idle_timeout": "600", "lock_contended_for": "0"},
        configure=configure_and_log,
    )
    b_logged_in(app)
    app.clock.advance(30)
    with Race(app) as race:
        login = race.start("/login", json={"user": A})
        reader = race.start("/read")
        reader.finish()
        login.finish()
    assert login.response.status_int == 200
    assert login.attempts == 1  # no second run
    assert len(merges) == 1  # the login merged onto the reader's extension
    assert stored(app) == (A, {}, None)


def test_a_write_of_the_previous_user_stays_out_after_a_login_and_a_logout(app):
    """B's request loads before A's login and commits after A logged out again (``userid =
    None``, which keeps the data): B's write must not land in the now anonymous session,
    whose data the next login would keep."""
    b_logged_in(app)
    with Race(app, share_cookies=True) as race:
        b = race.start("/set", json={"last_order": "B's order 42"})
        login = race.start("/login", json={"user": A})
        login.finish()
        logout = race.start("/switch", json={"user": None})
        logout.finish()
        b.finish()
    assert b.response.status_int == 500 and "nothing was stored" in b.response.json["error"]
    rows = [json.loads(row.data) for row in app.rows()]
    assert rows == [{}]
