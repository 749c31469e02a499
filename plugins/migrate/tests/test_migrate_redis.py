"""Switching from pyramid_session_redis: the same browser stays logged in, on every database.

A browser logs in through a real pyramid_session_redis application (Pyramid 2,
``SessionAuthenticationHelper``, its CSRF token in a form), fills a cart and gets
flash messages. The application then switches to sessions_kernel with
:class:`~sessions_migrate.MigrateMixin`, sessions-userid and sessions-csrf; the
browser's next request carries only the old cookie. The new sessions live on
SQLite, PostgreSQL and MariaDB; the old ones in Redis (``SESSIONS_TEST_REDIS_URL``).
"""

from __future__ import annotations

import datetime
import os
import threading

import pytest
from pyramid.httpexceptions import HTTPFound
from sessions_csrf import ColumnCSRFStoragePolicy, CSRFMixin
from sessions_migrate import MigrateMixin
from sessions_userid import UseridMixin
from test_source_redis import log_in, new_secret, old_app

from sessions_kernel.testing import make_model

SECRET_ENV = "TEST_MIGRATE_REDIS_SECRET"
REDIS_URL = os.environ.get("SESSIONS_TEST_REDIS_URL")
DAY = 24 * 3600


@pytest.fixture
def secret(monkeypatch):
    value = new_secret()
    monkeypatch.setenv(SECRET_ENV, value)
    return value


def views(config):
    config.set_csrf_storage_policy(ColumnCSRFStoragePolicy())

    def whoami(request):
        session = request.session
        return {
            "userid": session.userid,
            "cart": session.get("cart"),
            "flash": session.pop_flash(),
            "created": session.created,
        }

    def buy(request):
        request.session["bought"] = request.session.get("cart")
        return {"ok": True}

    def logout(request):
        request.session.invalidate()
        raise HTTPFound("/whoami")

    config.add_route("whoami", "/whoami")
    config.add_view(whoami, route_name="whoami", renderer="json")
    config.add_route("buy", "/buy")
    config.add_view(buy, route_name="buy", renderer="json", require_csrf=True)
    config.add_route("logout", "/logout")
    config.add_view(logout, route_name="logout")


def until(clock, days=30):
    moment = datetime.datetime.fromtimestamp(clock() + days * DAY, datetime.timezone.utc)
    return moment.date().isoformat()


@pytest.fixture
def model():
    return make_model(MigrateMixin, UseridMixin, CSRFMixin)


@pytest.fixture
def new_app(session_app, session_clock, model, prefix, secret):
    def build(**settings):
        values = {
            "migrate_from": "pyramid_session_redis",
            "migrate_until": until(session_clock),
            "migrate_secret_env": SECRET_ENV,
            "migrate_url": REDIS_URL,
            "migrate_options": f"prefix={prefix}",
            "cookie_name": "sid",
            **settings,
        }
        return session_app(model, values, configure=views)

    return build


def switch(old, app):
    """The same browser, after the switch: a browser of the new app holding the old cookie."""
    browser = app.new_browser()
    browser.set_cookie("session", old.cookies["session"])
    return browser


def old_time(clock):
    """Move the test clock to now: pyramid_session_redis stamps its sessions with the real
    time, rounded up to the next second (``int(ceil(time.time()))``)."""
    import time

    clock.advance(time.time() + 1 - clock())


def test_the_same_browser_stays_logged_in_with_its_cart_flash_and_csrf_token(
    r, new_app, prefix, secret, session_clock
):
    old = old_app(prefix, secret)
    token = log_in(old, "42")
    old_time(session_clock)
    created = old.get("/state").json["created"]
    (old_key,) = [k for k in r.scan_iter(match=prefix + "*") if b"migrating" not in k]
    app = new_app()
    browser = switch(old, app)

    first = browser.get("/whoami")
    assert first.json == {
        "userid": 42,
        "cart": ["tea", "milk"],
        "flash": ["tea added", "milk added"],
        "created": int(created),
    }
    # the old session is gone, the old cookie deleted, ours set, after the commit
    assert r.get(old_key) is None
    cookies = first.headers.getall("Set-Cookie")
    assert any(c.startswith("session=;") and "Max-Age=0" in c for c in cookies), cookies
    assert any(c.startswith("sid=") for c in cookies), cookies
    assert "session" not in browser.cookies
    # the form the old application rendered still posts: the CSRF token was carried
    browser.post("/buy", {"csrf_token": token}, status=200)
    browser.post("/buy", {"csrf_token": "0" * 40}, status=400)
    # and the next page is the same session, by our cookie alone
    assert browser.get("/whoami").json["userid"] == 42
    (row,) = app.rows()
    assert row.userid == 42
    assert row.created == int(created)


def test_a_logout_after_the_switch_holds(r, new_app, prefix, secret, session_clock):
    old_time(session_clock)
    old = old_app(prefix, secret)
    log_in(old, "7")
    stolen = old.cookies["session"]  # a copy of the old cookie, taken before the switch
    app = new_app()
    browser = switch(old, app)
    assert browser.get("/whoami").json["userid"] == 7
    browser.get("/logout", status=302)
    assert app.rows() == []
    thief = app.new_browser()
    thief.set_cookie("session", stolen)
    assert thief.get("/whoami").json["userid"] is None
    assert app.rows() == []


def test_an_old_session_that_expired_is_not_migrated(r, new_app, prefix, secret, session_clock):
    old_time(session_clock)
    old = old_app(prefix, secret, timeout=300)
    log_in(old, "5")
    app = new_app()
    session_clock.advance(301)  # past pyramid_session_redis's own expiry (its "x")
    browser = switch(old, app)
    assert browser.get("/whoami").json == {
        "userid": None,
        "cart": None,
        "flash": [],
        "created": int(session_clock()),
    }
    assert app.rows() == []


def test_a_forged_old_cookie_is_not_migrated_and_costs_no_sql(
    r, new_app, prefix, secret, session_clock
):
    old_time(session_clock)
    forger = old_app(prefix, new_secret())  # the same store, signed with another secret
    log_in(forger, "1")
    app = new_app()
    browser = switch(forger, app)
    with app.count() as counted:
        assert browser.get("/whoami").json["userid"] is None
    assert counted.count == 0
    assert app.rows() == []


def test_past_the_cut_off_the_old_cookie_is_deleted_and_not_read(
    r, new_app, prefix, secret, session_clock
):
    old_time(session_clock)
    old = old_app(prefix, secret, timeout=90 * DAY)
    log_in(old, "3")
    app = new_app(migrate_until=until(session_clock, days=2))
    session_clock.advance(3 * DAY)
    browser = switch(old, app)
    response = browser.get("/whoami")
    assert response.json["userid"] is None
    assert any(c.startswith("session=;") for c in response.headers.getall("Set-Cookie"))
    assert app.rows() == []


def test_two_first_visits_with_one_old_cookie_make_one_session(
    r, new_app, prefix, secret, session_clock
):
    old_time(session_clock)
    old = old_app(prefix, secret)
    log_in(old, "9")
    app = new_app()
    barrier = threading.Barrier(4)
    answers, errors = [], []

    def visit():
        browser = switch(old, app)
        barrier.wait()
        try:
            answers.append(browser.get("/whoami").json["userid"])
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=visit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert answers == [9, 9, 9, 9]
    (row,) = app.rows()
    assert row.userid == 9
