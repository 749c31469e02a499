"""Attacks and coding idioms that must not defeat the session (docs/security.rst cites these).

Every test runs on SQLite, PostgreSQL and MariaDB through a real Pyramid
application (pyramid_tm, pyramid_retry, WebTest browsers with cookie jars).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kernel_support import set_cookies
from pyramid.httpexceptions import HTTPFound
from pyramid.interfaces import ISessionFactory
from pyramid.security import forget, remember
from sessions_userid import UseridMixin, UserSessionSecurityPolicy, invalidate_user_sessions

from sessions_kernel.events import CookieRejected
from sessions_kernel.testing import make_model


def _views(config: Any) -> None:
    config.set_security_policy(UserSessionSecurityPolicy())

    def view(name: str, func: Any) -> None:
        config.add_route(name, "/" + name)
        config.add_view(func, route_name=name, renderer="json")

    def login(request: Any) -> Any:
        body = request.json_body
        remember(request, body["user"])
        request.session.update(body.get("data", {}))
        return {}

    def logout_redirect(request: Any) -> Any:
        raise HTTPFound(location="/read", headers=forget(request))

    def logout_then_fail(request: Any) -> Any:
        forget(request)
        raise RuntimeError("the view failed after logging out")

    def invalidate_redirect(request: Any) -> Any:
        request.session.invalidate()
        raise HTTPFound(location="/read")

    def others_redirect(request: Any) -> Any:
        userid = request.session.userid
        invalidate_user_sessions(request, userid, except_current=True)
        raise HTTPFound(location="/read")

    def others(request: Any) -> Any:
        userid = request.session.userid
        return {"deleted": invalidate_user_sessions(request, userid, except_current=True)}

    def everyone_redirect(request: Any) -> Any:
        invalidate_user_sessions(request, request.session.userid)
        raise HTTPFound(location="/read")

    def whoami(request: Any) -> Any:
        return {"userid": request.authenticated_userid, "data": dict(request.session)}

    def login_free_write(request: Any) -> Any:
        request.session.update(request.json_body)
        return {"userid": request.authenticated_userid}

    for func in (login, logout_redirect, logout_then_fail, invalidate_redirect, others_redirect):
        view(func.__name__, func)
    for func in (others, everyone_redirect, whoami, login_free_write):
        view(func.__name__, func)


@pytest.fixture
def app(session_app, log):
    def configure(config: Any) -> None:
        _views(config)
        log.configure(config)

    return session_app(make_model(UseridMixin), configure=configure)


def _rejected(log: Any) -> list[str]:
    """The reasons of the CookieRejected events sent so far."""
    return [event.reason for event in log.of(CookieRejected)]


def _login(app: Any, browser: Any = None, user: int = 7) -> Any:
    browser = browser or app.new_browser()
    browser.post_json("/login", {"user": user, "data": {"cart": [1, 2]}})
    return browser


def _stolen(app: Any, browser: Any) -> Any:
    """Another browser holding a copy of ``browser``'s current cookie."""
    thief = app.new_browser()
    thief.set_cookie("session", browser.cookies["session"])
    return thief


def _deletes_the_cookie(response: Any) -> bool:
    return any(c.startswith("session=; Max-Age=0") for c in set_cookies(response))


# -- 1. a logout holds, whatever the view does afterwards ------------------------------------


def test_logout_in_a_view_that_raises_a_redirect_holds(app):
    """``raise HTTPFound(..., headers=forget(request))`` aborts the transaction."""
    user = _login(app)
    thief = _stolen(app, user)
    response = user.get("/logout_redirect", status=302)
    assert _deletes_the_cookie(response)
    assert response.headers.getall("Set-Cookie") == [set_cookies(response)[0]]  # sent once
    assert app.rows() == []
    assert "session" not in user.cookies
    assert thief.get("/whoami").json == {"userid": None, "data": {}}


@pytest.mark.parametrize("path", ["/logout_redirect", "/invalidate_redirect"])
def test_a_logout_that_cannot_be_run_again_says_so_and_names_the_live_session(
    app, caplog, monkeypatch, path
):
    """The database stops answering between the abort and the replay of the logout."""
    import sqlalchemy as sa

    user = _login(app)
    (row,) = app.rows()
    storage = app.factory.storage

    def unreachable(dbsession: Any, statements: Any) -> None:
        raise sa.exc.OperationalError("DELETE", {}, Exception("server closed the connection"))

    monkeypatch.setattr(storage, "replay", unreachable)
    response = user.get(path, status=503)
    # a clean error, not a redirect that looks like a logout: the user is still logged in
    assert response.headers["Retry-After"] == "5"
    assert "Location" not in response.headers and set_cookies(response) == []
    assert "still logged in" in response.text
    (record,) = [r for r in caplog.records if "could not be run again" in r.getMessage()]
    message = record.getMessage()
    assert row.id[:24] in message  # the lineage of the session that stays valid
    assert user.get("/whoami").json["userid"] == 7  # true: the session lives on
    monkeypatch.undo()  # the database answers again: the same logout now holds
    user.get(path, status=302)
    assert app.rows() == []


def test_a_logout_replayed_over_a_broken_connection_is_run_once_more(app, monkeypatch):
    """The connection that aborted the request is often the one the replay gets first."""
    import sqlalchemy as sa

    user = _login(app)
    engine = app.engine
    begin, broken = engine.begin, []

    def begin_once_broken() -> Any:
        if not broken:
            broken.append(1)
            raise sa.exc.OperationalError(
                "DELETE", {}, Exception("server closed the connection"), connection_invalidated=True
            )
        return begin()

    monkeypatch.setattr(engine, "begin", begin_once_broken)
    response = user.get("/logout_redirect", status=302)
    assert broken == [1] and _deletes_the_cookie(response)
    monkeypatch.undo()
    assert app.rows() == []


def test_logout_in_a_view_that_then_fails_holds(app):
    user = _login(app)
    thief = _stolen(app, user)
    response = user.get("/logout_then_fail", status=500)
    assert _deletes_the_cookie(response)
    assert app.rows() == []
    assert thief.get("/whoami").json == {"userid": None, "data": {}}


def test_invalidate_then_redirect_holds(app):
    user = _login(app)
    thief = _stolen(app, user)
    assert _deletes_the_cookie(user.get("/invalidate_redirect", status=302))
    assert app.rows() == []
    assert thief.get("/whoami").json["userid"] is None


def test_logging_out_every_session_then_redirecting_holds(app):
    phone, laptop = _login(app), _login(app)
    _login(app, user=8)  # another user's session stays
    assert _deletes_the_cookie(laptop.get("/everyone_redirect", status=302))
    assert [row.userid for row in app.rows()] == [8]
    assert phone.get("/whoami").json["userid"] is None


# -- 2. log out everywhere else locks out a copy of the current cookie -----------------------


def test_log_out_everywhere_else_locks_out_a_copy_of_the_current_cookie(app):
    phone, laptop = _login(app), _login(app)
    thief = _stolen(app, laptop)  # the usual case: the current cookie was copied
    with app.count() as sql:
        assert laptop.get("/others").json == {"deleted": 1}
    assert sql.kinds() == ["SELECT", "UPDATE", "DELETE"], sql.statements
    assert laptop.get("/whoami").json == {"userid": 7, "data": {"cart": [1, 2]}}
    assert thief.get("/whoami").json["userid"] is None
    assert phone.get("/whoami").json["userid"] is None
    assert len(app.rows()) == 1  # the laptop's, under its new id


def test_log_out_everywhere_else_then_redirect_holds(app):
    phone, laptop = _login(app), _login(app)
    thief = _stolen(app, laptop)
    response = laptop.get("/others_redirect", status=302)
    assert any(c.startswith("session=") and "Max-Age=0" not in c for c in set_cookies(response))
    assert laptop.get("/whoami").json == {"userid": 7, "data": {"cart": [1, 2]}}
    assert thief.get("/whoami").json["userid"] is None
    assert phone.get("/whoami").json["userid"] is None
    assert len(app.rows()) == 1


# -- 10. shared caches ----------------------------------------------------------------------------


def test_responses_that_set_or_delete_the_cookie_are_private(app):
    response = app.post_json("/set", {"a": 1})
    assert response.headers["Cache-Control"] == "private"
    assert "Cookie" in response.headers["Vary"]
    response = app.get("/invalidate")
    assert _deletes_the_cookie(response) and response.headers["Cache-Control"] == "private"


def test_a_page_of_a_stored_session_is_private_even_without_a_cookie(app):
    """A logged-in page that sets no cookie: Vary alone lets many shared caches store it."""
    user = _login(app)
    response = user.get("/whoami")
    assert "Set-Cookie" not in response.headers
    assert response.headers["Cache-Control"] == "private"
    assert "Cookie" in response.headers["Vary"]
    # a page of a visitor without a session is the application's to cache
    response = app.new_browser().get("/whoami")
    assert "Cache-Control" not in response.headers and "Set-Cookie" not in response.headers


def test_a_public_logged_in_page_is_made_private(session_app):
    def views(config: Any) -> None:
        def page(request: Any) -> Any:
            request.session.get("a")
            request.response.cache_control.public = True
            request.response.cache_control.max_age = 600
            return {}

        config.add_route("page", "/page")
        config.add_view(page, route_name="page", renderer="json")

    app = session_app(make_model(), configure=views)
    app.post_json("/set", {"a": 1})
    cache = app.get("/page").headers["Cache-Control"]
    assert "private" in cache and "public" not in cache


@pytest.mark.parametrize(
    ("given", "kept"),
    [("private", True), ("no-store", True), ('public, max-age=600, private="Set-Cookie"', False)],
)
def test_only_a_bare_private_or_no_store_is_kept(session_app, given, kept):
    """``private="Set-Cookie"`` lets a shared cache store the rest of the page."""

    def views(config: Any) -> None:
        def page(request: Any) -> Any:
            request.session.get("a")
            request.response.headers["Cache-Control"] = given
            return {}

        config.add_route("page", "/page")
        config.add_view(page, route_name="page", renderer="json")

    app = session_app(make_model(), configure=views)
    app.post_json("/set", {"a": 1})
    cache = app.get("/page").headers["Cache-Control"]
    if kept:
        assert cache == given
    else:
        assert "public" not in cache and ("private," in cache + "," or cache.endswith("private"))
        assert 'private="Set-Cookie"' not in cache and "private=Set-Cookie" not in cache


def test_a_page_built_from_a_peek_is_private(session_app):
    def views(config: Any) -> None:
        def status(request: Any) -> Any:
            return {"valid": request.registry.getUtility(ISessionFactory).peek(request).valid}

        config.add_route("status", "/status")
        config.add_view(status, route_name="status", renderer="json")

    app = session_app(make_model(), configure=views)
    assert "Cache-Control" not in app.get("/status").headers  # no session: no opinion
    app.post_json("/set", {"a": 1})
    response = app.get("/status")
    assert response.json["valid"] is True
    assert response.headers["Cache-Control"] == "private"
    assert "Cookie" in response.headers["Vary"]


# -- 8. a limit on the data's size -------------------------------------------------------------


def test_data_over_max_data_size_is_refused_before_any_sql(session_app):
    app = session_app(make_model(), settings={"max_data_size": "4096"})
    app.post_json("/set", {"small": "x" * 100})
    before = app.row()
    with app.count() as sql:
        response = app.post_json("/set", {"big": "x" * 5000}, expect_errors=True)
    assert response.status_int == 500
    error = response.json["error"]
    assert "5" in error and "over session.max_data_size = 4096" in error
    assert sql.kinds() == ["SELECT"], sql.statements  # the load; no write was tried
    after = app.row()
    assert (after.data, after.version) == (before.data, before.version)
    assert json.loads(after.data) == {"small": "x" * 100}


def test_the_default_limit_is_one_mebibyte(session_app):
    app = session_app(make_model())
    assert app.post_json("/set", {"big": "x" * 1_000_000}).status_int == 200
    response = app.post_json("/set", {"bigger": "x" * 100_000}, expect_errors=True)
    assert "over session.max_data_size = 1048576" in response.json["error"]


# -- 7. several cookies of the session's name -------------------------------------------------


def _cookie_header(*values: str) -> dict[str, str]:
    return {"Cookie": "; ".join(f"session={value}" for value in values)}


@pytest.mark.parametrize("order", ["garbage first", "garbage last"])
def test_a_bad_cookie_beside_the_good_one_is_passed_over(app, order):
    user = _login(app)
    good = user.cookies["session"]
    values = ["garbage", good] if order == "garbage first" else [good, "garbage"]
    browser = app.new_browser()  # sends exactly the header given
    response = browser.get("/whoami", headers=_cookie_header(*values))
    assert response.json == {"userid": 7, "data": {"cart": [1, 2]}}
    assert set_cookies(response) == []  # the user's good cookie is not deleted


def test_a_planted_cookie_of_a_dead_session_does_not_log_the_user_out(app):
    """A sibling subdomain planted a real, but logged-out, cookie beside the user's."""
    dead = _login(app, user=9)
    planted = dead.cookies["session"]
    dead.get("/invalidate_redirect", status=302)
    user = _login(app)
    good = user.cookies["session"]
    for values in ([planted, good], [good, planted]):
        browser = app.new_browser()
        with app.count() as sql:
            response = browser.get("/whoami", headers=_cookie_header(*values))
        assert response.json["userid"] == 7
        assert set_cookies(response) == []
        # every cookie is looked up, and the dead one's lineage (was it a login's old id?)
        assert sql.kinds() == ["SELECT", "SELECT", "SELECT"]


@pytest.mark.parametrize("order", ["attacker first", "victim first"])
def test_a_planted_live_session_never_puts_the_victim_in_another_account(app, log, order):
    """The attacker plants the cookie of their own live session (a longer Path, a parent
    Domain), so that the browser sends it beside, or before, the victim's own."""
    attacker, victim = _login(app, user=666), _login(app, user=7)
    cookies = [attacker.cookies["session"], victim.cookies["session"]]
    if order == "victim first":
        cookies.reverse()
    response = app.new_browser().get("/whoami", headers=_cookie_header(*cookies))
    assert response.json == {"userid": None, "data": {}}  # neither account: fail closed
    assert set_cookies(response) == []  # and neither cookie is deleted
    assert "two different stored sessions" in _rejected(log)[-1]
    # both sessions live on: the victim's own cookie, alone, still opens the victim's
    assert victim.get("/whoami").json["userid"] == 7
    assert attacker.get("/whoami").json["userid"] == 666


def _cookie_only(app: Any) -> str:
    """A valid cookie of a session with nothing stored (what a CSRF page would set)."""
    import os

    from sessions_kernel.crypto import encode_payload
    from sessions_kernel.session import UNSTORED_EXTRA

    return app.factory.serializer.dumps(encode_payload(os.urandom(32), {UNSTORED_EXTRA: b""}))


def test_a_fail_closed_request_sets_no_cookie_that_would_replace_the_victims(app):
    """The chain the second review found: the planted live session makes the request fail
    closed, and the page's own Set-Cookie (an anonymous write, a CSRF token) then replaced
    the victim's cookie, leaving the planted one the only stored session."""
    attacker, victim = _login(app, user=2), _login(app, user=7)
    header = _cookie_header(attacker.cookies["session"], victim.cookies["session"])
    response = app.new_browser().post_json("/login_free_write", {"cart": [1]}, headers=header)
    assert response.json["userid"] is None and set_cookies(response) == []
    assert victim.get("/whoami").json["userid"] == 7  # the victim's cookie is intact


@pytest.mark.parametrize("order", ["cookie-only first", "live first"])
def test_a_planted_live_session_beside_a_cookie_only_one_is_not_used(app, log, order):
    attacker = _login(app, user=2)
    cookies = [_cookie_only(app), attacker.cookies["session"]]
    if order == "live first":
        cookies.reverse()
    response = app.new_browser().get("/whoami", headers=_cookie_header(*cookies))
    assert response.json["userid"] is None and set_cookies(response) == []
    assert "with nothing stored" in _rejected(log)[-1]


def test_cookie_values_are_read_exactly(app):
    """One pair of quotes around a value, and Cookie lines a server joined with a comma;
    a stray quote makes another value, which opens nothing."""
    victim = _login(app)
    value = victim.cookies["session"]
    for header in (f'session="{value}"', f"session=x, session={value}", f"session= {value} "):
        response = app.new_browser().get("/whoami", headers={"Cookie": header})
        assert response.json["userid"] == 7, header
        assert set_cookies(response) == [], header
    for stray in (f'session="{value}', f'session={value}"', f'session=""{value}""'):
        response = app.new_browser().get("/whoami", headers={"Cookie": stray})
        assert response.json["userid"] is None, stray


@pytest.mark.parametrize("planted", ["garbage", "dead"])
def test_more_cookies_than_tried_never_delete_the_victims(app, log, planted):
    """Four planted cookies sent before the victim's own: the fifth is not tried."""
    if planted == "dead":
        dead = _login(app, user=9)
        value = dead.cookies["session"]
        dead.get("/invalidate_redirect", status=302)
    else:
        value = "garbage"
    victim = _login(app)
    header = _cookie_header(*[value] * 4, victim.cookies["session"])
    with app.count() as sql:
        response = app.new_browser().get("/whoami", headers=header)
    assert response.json["userid"] is None
    assert set_cookies(response) == []  # the untried cookie may be the victim's: kept
    assert sql.kinds() == []  # none is tried at all
    assert "more than the 4 tried" in _rejected(log)[-1]
    assert victim.get("/whoami").json["userid"] == 7


def test_four_bad_cookies_before_the_good_one_are_all_tried(app):
    victim = _login(app)
    header = _cookie_header("garbage", "junk", "x" * 40, victim.cookies["session"])
    response = app.new_browser().get("/whoami", headers=header)
    assert response.json["userid"] == 7
    assert set_cookies(response) == []


def test_only_bad_cookies_are_deleted(app):
    response = app.new_browser().get("/whoami", headers=_cookie_header("garbage", "junk"))
    assert response.json["userid"] is None
    assert _deletes_the_cookie(response)


# -- 4. no anonymous rows --------------------------------------------------------------------


def test_a_retried_request_after_a_logout_sees_the_logout(session_app):
    """A logout followed by a conflict: the logout held, and the retry runs logged out."""
    from pyramid_retry import mark_error_retryable

    class Conflict(Exception):
        pass

    mark_error_retryable(Conflict)
    seen = []

    def views(config: Any) -> None:
        def logout_conflict(request: Any) -> Any:
            seen.append(dict(request.session))
            if len(seen) == 1:
                request.session.invalidate()
                raise Conflict("a serialization failure, say")
            return {}

        config.add_route("logout_conflict", "/logout_conflict")
        config.add_view(logout_conflict, route_name="logout_conflict", renderer="json")

    app = session_app(make_model(), configure=views)
    app.post_json("/set", {"user": "ann"})
    response = app.get("/logout_conflict")
    assert seen == [{"user": "ann"}, {}]
    assert app.rows() == []
    assert _deletes_the_cookie(response)
