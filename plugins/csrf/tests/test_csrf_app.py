"""The csrf plugin in real Pyramid applications, on SQLite, PostgreSQL and MariaDB.

The applications install ``ColumnCSRFStoragePolicy`` and use Pyramid's own
CSRF API (``check_csrf_token``, ``require_csrf``, ``get_csrf_token`` in
templates) unchanged.
"""

from __future__ import annotations

import os
import re
import string

import pytest
import sqlalchemy as sa
from pyramid.csrf import check_csrf_token, get_csrf_token, new_csrf_token
from sessions_csrf import ColumnCSRFStoragePolicy, CSRFMixin

from sessions_kernel.crypto import encode_payload, generate_secret_key
from sessions_kernel.session import UNSTORED_EXTRA
from sessions_kernel.testing import SessionTestApp, make_model

URLSAFE = set(string.ascii_letters + string.digits + "-_")
YEAR = 365 * 24 * 3600
#: what an attacker's page on another site (or a man in the middle over plain http) sends
CROSS_SITE = {"Origin": "http://evil.example"}


def stored(app):
    """The token the one stored row's ``csrf_token`` column stands for."""
    from sessions_csrf import stored_token  # imported here: the attack tests run without it

    return stored_token(app.factory, app.row().csrf_token)


def form_token(page) -> str:
    match = re.search(r'<input name="csrf_token" value="([^"]+)">', page.text)
    assert match, page.text
    return match.group(1)


def accepted(browser, token, **headers) -> bool:
    """Whether a POST to a ``require_csrf`` view with ``token`` in the form gets through."""
    response = browser.post("/protected", {"csrf_token": token}, headers=headers, status="*")
    assert response.status_int in (200, 400), response
    return response.status_int == 200


def add_csrf_views(config, *, require_by_default: bool = False) -> None:
    """Views over Pyramid's CSRF API, with the column policy installed."""
    config.set_csrf_storage_policy(ColumnCSRFStoragePolicy())
    if require_by_default:
        config.set_default_csrf_options(require_csrf=True)

    def view(name, func, **kw):
        config.add_route(name, "/" + name)
        config.add_view(func, route_name=name, renderer=kw.pop("renderer", "json"), **kw)

    def render_form(info):
        def render(value, system):
            token = system["get_csrf_token"]()  # what Chameleon and Jinja2 templates call
            return f'<form method="post"><input name="csrf_token" value="{token}"></form>'

        return render

    config.add_renderer(".csrf-form", render_form)

    view("token", lambda request: {"token": get_csrf_token(request)})
    view("peek", lambda request: {"token": request.session.csrf_token})
    view("form", lambda request: {}, renderer="form.csrf-form")
    view("protected", lambda request: {"ok": True}, request_method="POST", require_csrf=True)
    view("rotate", lambda request: {"token": new_csrf_token(request)}, require_csrf=True)
    view("manual", lambda request: {"ok": check_csrf_token(request, raises=False)})
    # under set_default_csrf_options(require_csrf=True): checked, unless opted out
    view("default", lambda request: {"ok": True}, request_method=("GET", "POST"))
    view("optout", lambda request: {"ok": True}, request_method="POST", require_csrf=False)

    def token_then_regenerate(request):
        token = get_csrf_token(request)
        request.session.regenerate_id()
        return {"token": token, "after": request.session.csrf_token}

    def token_then_invalidate(request):
        token = get_csrf_token(request)
        request.session.invalidate()
        return {"token": token, "after": request.session.csrf_token}

    def set_then_token(request):  # a view that stores something, then renders a form
        request.session["cart"] = [1]
        return {"token": get_csrf_token(request)}

    def token_then_set(request):  # the same, in the other order
        token = get_csrf_token(request)
        request.session["cart"] = [1]
        return {"token": token}

    def protected_set(request):  # a checked form whose POST stores the session (a login)
        request.session["user"] = "ann"
        return {"ok": True}

    view("token_regenerate", token_then_regenerate)
    view("token_invalidate", token_then_invalidate)
    view("set_then_token", set_then_token)
    view("token_then_set", token_then_set)
    view("protected_set", protected_set, request_method="POST", require_csrf=True)


@pytest.fixture
def model():
    return make_model(CSRFMixin)


@pytest.fixture
def app(session_app, model):
    return session_app(model, configure=add_csrf_views)


@pytest.fixture
def strict_app(session_app, model):
    """An application with ``set_default_csrf_options(require_csrf=True)``."""
    return session_app(model, configure=lambda c: add_csrf_views(c, require_by_default=True))


# -- rejected and accepted requests --------------------------------------------------------


def test_post_without_token_is_400_and_stores_nothing(app):
    with app.count() as sql:
        response = app.post("/protected", status=400)
    assert sql.count == 0  # no cookie: nothing to read, and a failed check creates no token
    assert "Set-Cookie" not in response.headers
    assert app.rows() == []


def test_post_without_token_from_a_known_session_is_400(app):
    token = app.get("/token").json["token"]
    assert app.post("/protected", status=400).status_int == 400
    assert app.post("/protected", {"csrf_token": ""}, status=400).status_int == 400
    assert app.rows() == []  # the token lives in the cookie until the session is stored
    assert app.post("/protected", {"csrf_token": token}).json == {"ok": True}


def test_post_with_form_field_succeeds(app):
    token = app.get("/token").json["token"]
    assert app.post("/protected", {"csrf_token": token}).json == {"ok": True}


def test_post_with_header_succeeds(app):
    token = app.get("/token").json["token"]
    response = app.post("/protected", headers={"X-CSRF-Token": token})
    assert response.json == {"ok": True}


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: t[:-1],
        lambda t: t + "A",
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
        lambda t: t.upper() if t.upper() != t else t.lower(),
        lambda t: "é" * len(t),
        lambda t: "\u2603" + t[1:],
        lambda t: "x" * 10_000,
    ],
)
def test_wrong_token_is_400(app, forge):
    token = app.get("/token").json["token"]
    app.post("/protected", {"csrf_token": forge(token)}, status=400)
    app.post("/protected", headers={"X-CSRF-Token": forge(token)[:1000]}, status=400)
    assert app.post("/protected", {"csrf_token": token}).json == {"ok": True}


def test_token_of_another_session_is_rejected(app):
    other = app.new_browser()
    theirs = other.get("/token").json["token"]
    mine = app.get("/token").json["token"]
    assert theirs != mine
    app.post("/protected", {"csrf_token": theirs}, status=400)
    other.post("/protected", {"csrf_token": mine}, status=400)


def test_token_without_the_session_cookie_is_rejected(app):
    token = app.get("/token").json["token"]
    cookieless = app.new_browser()
    cookieless.post("/protected", {"csrf_token": token}, status=400)


def test_manual_check_csrf_token(app):
    token = app.get("/token").json["token"]
    assert app.post("/manual", {"csrf_token": "nope"}).json == {"ok": False}
    assert app.post("/manual", {"csrf_token": token}).json == {"ok": True}


def test_default_csrf_options_check_every_unsafe_request(strict_app):
    app = strict_app
    assert app.get("/default").json == {"ok": True}  # safe methods are not checked
    app.post("/default", status=400)
    token = app.get("/token").json["token"]
    assert app.post("/default", {"csrf_token": token}).json == {"ok": True}
    assert app.post("/default", headers={"X-CSRF-Token": token}).json == {"ok": True}
    assert app.post("/optout").json == {"ok": True}  # require_csrf=False on the view


def test_template_get_csrf_token(app):
    page = app.get("/form")
    match = re.search(r'<input name="csrf_token" value="([^"]+)">', page.text)
    assert match, page.text
    token = match.group(1)
    assert app.get("/peek").json["token"] == token
    assert app.post("/protected", {"csrf_token": token}).json == {"ok": True}


# -- the token's life ------------------------------------------------------------------------


def test_token_is_256_random_bits_in_urlsafe_base64(app):
    tokens = {app.new_browser().get("/token").json["token"] for _ in range(5)}
    assert len(tokens) == 5
    assert all(len(t) == 43 and set(t) <= URLSAFE for t in tokens)


def test_token_is_stable_across_requests(app):
    app.post_json("/set", {"a": 1})  # stored: a cookie-only token would not outlive the INSERT
    token = app.get("/token").json["token"]
    app.post_json("/set", {"a": 2})  # the kernel's views: data changes leave the token alone
    app.clock.advance(3600)
    assert app.get("/token").json["token"] == token
    assert app.get("/peek").json["token"] == token
    assert app.post("/protected", {"csrf_token": token}).json == {"ok": True}


def test_new_csrf_token_replaces_the_old_one(app):
    app.post_json("/set", {"a": 1})
    old = app.get("/token").json["token"]
    with app.count() as sql:
        new = app.post("/rotate", {"csrf_token": old}).json["token"]
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assert new != old
    assert stored(app) == new
    app.post("/protected", {"csrf_token": old}, status=400)
    assert app.post("/protected", {"csrf_token": new}).json == {"ok": True}


def test_new_csrf_token_of_a_session_without_a_row_replaces_the_old_one(app):
    old = app.get("/token").json["token"]
    with app.count() as sql:
        new = app.post("/rotate", {"csrf_token": old}).json["token"]
    assert sql.count == 0 and app.rows() == []
    assert new != old
    app.post("/protected", {"csrf_token": old}, status=400)
    assert app.post("/protected", {"csrf_token": new}).json == {"ok": True}


def test_regenerate_keeps_the_token(app):
    app.post_json("/set", {"user": "ann"})
    token = app.get("/token").json["token"]
    assert stored(app) == token
    old_id = app.row().id
    app.get("/regenerate")
    assert app.row().id != old_id
    assert stored(app) == token
    assert app.post("/protected", {"csrf_token": token}).json == {"ok": True}


def test_regenerate_keeps_a_token_created_in_the_same_request(app):
    response = app.get("/token_regenerate").json
    assert response["after"] == response["token"]
    assert app.rows() == []
    assert app.post("/protected", {"csrf_token": response["token"]}).json == {"ok": True}


def test_invalidate_drops_the_token(app):
    token = app.get("/token").json["token"]
    app.post_json("/set", {"user": "alice"})
    app.get("/invalidate")  # logging out
    assert app.rows() == []
    app.post("/protected", {"csrf_token": token}, status=400)
    assert app.get("/peek").json["token"] is None
    assert app.get("/token").json["token"] != token


def test_invalidate_drops_a_token_created_in_the_same_request(app):
    with app.count() as sql:
        response = app.get("/token_invalidate").json
    assert response["after"] is None
    assert sql.count == 0
    assert app.rows() == []


# -- what it costs ---------------------------------------------------------------------------


def test_request_that_never_asks_costs_nothing(app):
    with app.count() as sql:
        response = app.get("/none")
    assert sql.count == 0
    assert "Set-Cookie" not in response.headers
    app.post_json("/set", {"a": 1})
    with app.count() as sql:
        app.get("/read")
    assert sql.kinds() == ["SELECT"], sql.statements
    assert app.row().csrf_token is None


def test_reading_the_attribute_never_creates_a_token(app):
    with app.count() as sql:
        response = app.get("/peek")
    assert sql.count == 0
    assert response.json == {"token": None}
    assert "Set-Cookie" not in response.headers
    assert app.rows() == []


def test_anonymous_visitors_rendering_a_token_write_no_row(app):
    """Every cookieless GET of a page with a form: a token in the cookie, no INSERT."""
    for _ in range(50):
        visitor = app.new_browser()
        with app.count() as sql:
            page = visitor.get("/form")
        assert sql.count == 0, sql.statements
        assert page.headers["Set-Cookie"].startswith("session=")
        token = re.search(r'value="([^"]+)"', page.text).group(1)
        with app.count() as sql:  # the next page: the same token, still no SQL
            assert visitor.get("/token").json["token"] == token
        assert sql.count == 0
    assert app.rows() == []


def test_the_first_insert_issues_a_fresh_token(app):
    """The cookie-only token never becomes the stored one; the INSERT carries a new token."""
    token = app.get("/token").json["token"]
    planted = app.cookies["session"]
    with app.count() as sql:
        app.post_json("/set", {"user": "ann"})
    assert sql.kinds() == ["INSERT"], sql.statements  # the new token costs no statement
    fresh = stored(app)
    assert fresh is not None and fresh != token
    assert not accepted(app, token)
    assert accepted(app, fresh)
    with app.count() as sql:
        assert app.get("/token").json["token"] == fresh
    assert sql.kinds() == ["SELECT"], sql.statements
    assert app.cookies["session"] != planted
    # The stored session got a token of its own: a cookie-only session planted in a
    # victim's browser (from a sibling subdomain) does not fix the stored session's id.
    assert app.new_browser().get("/read", headers={"Cookie": f"session={planted}"}).json["new"]


def test_first_token_of_a_stored_session_updates_that_column_only(app):
    app.post_json("/set", {"a": 1})
    updated = app.row().updated
    app.clock.advance(60)
    with app.count() as sql:
        token = app.get("/token").json["token"]
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assigned = sql.statements[1].split("WHERE")[0].replace(" ", "")
    assert "csrf_token=" in assigned
    assert not any(f"{c}=" in assigned for c in ("data", "flash", "updated", "created"))
    assert (stored(app), app.row().updated) == (token, updated)


def test_asking_for_an_existing_token_is_one_select(app):
    app.post_json("/set", {"a": 1})
    token = app.get("/token").json["token"]
    with app.count() as sql:
        response = app.get("/token")
    assert sql.kinds() == ["SELECT"], sql.statements
    assert response.json["token"] == token
    assert "Set-Cookie" not in response.headers


def test_check_of_an_existing_token_is_one_select_and_no_write(app):
    app.post_json("/set", {"a": 1})
    token = app.get("/token").json["token"]
    with app.count() as sql:
        response = app.post("/protected", {"csrf_token": token})
    assert sql.kinds() == ["SELECT"], sql.statements
    assert "Set-Cookie" not in response.headers
    with app.count() as sql:
        app.post("/protected", headers={"X-CSRF-Token": "forged"}, status=400)
    assert sql.kinds() == ["SELECT"], sql.statements


# -- the security review (#24, item 4 and its info item), each attack as the review ran it ----


def test_a_planted_cookie_only_token_passes_no_check_after_the_victims_first_insert(app):
    # the attacker gets a cookie-only session of their own, and the token of its form
    attacker = app.new_browser()
    token = form_token(attacker.get("/form"))
    planted = attacker.cookies["session"]
    # ... and plants that cookie in the victim's browser (a sibling subdomain, plain http)
    victim = app.new_browser()
    victim.set_cookie("session", planted)
    victim.post_json("/set", {"cart": [1]})  # the victim's first write: the INSERT
    assert len(app.rows()) == 1
    assert victim.cookies["session"] != planted

    # the attacker's cross-site form, posted by the victim's browser over plain http
    assert not accepted(victim, token, **CROSS_SITE)
    assert victim.post("/manual", {"csrf_token": token}).json == {"ok": False}
    assert victim.get("/token").json["token"] != token


def test_a_planted_token_the_victim_posted_with_is_refused_once_that_post_stored_the_session(app):
    attacker = app.new_browser()
    token = form_token(attacker.get("/form"))
    victim = app.new_browser()
    victim.set_cookie("session", attacker.cookies["session"])
    # the victim's own login form shows the planted token; its POST is checked against the
    # cookie's token before the session is stored, and passes
    assert form_token(victim.get("/form")) == token
    assert victim.post("/protected_set", {"csrf_token": token}).json == {"ok": True}
    assert len(app.rows()) == 1

    assert not accepted(victim, token, **CROSS_SITE)
    assert victim.post("/protected_set", {"csrf_token": token}, status=400)


def test_a_cookie_only_token_is_refused_ten_years_later(app):
    attacker = app.new_browser()
    token = attacker.get("/token").json["token"]
    victim = app.new_browser()
    victim.set_cookie("session", attacker.cookies["session"])
    app.clock.advance(10 * YEAR)
    assert not accepted(victim, token, **CROSS_SITE)
    assert not accepted(attacker, token)
    assert app.rows() == []


def test_the_stored_column_passes_no_check(app):
    """A copy of the table (a backup, a SQL injection's read) gives no usable token."""
    app.post_json("/set", {"a": 1})
    token = app.get("/token").json["token"]
    column = app.row().csrf_token
    assert token not in column
    assert not accepted(app, column, **CROSS_SITE)
    app.post("/protected", headers={"X-CSRF-Token": column}, status=400)
    assert app.post("/manual", {"csrf_token": column}).json == {"ok": False}
    assert accepted(app, token)


def test_a_cookie_only_token_of_the_previous_version_is_refused(app):
    """sessions-csrf 0.1 put the token in the cookie without its time: its age is unknown."""
    token = "A" * 42 + "E"
    extras = {"csrf": token.encode("ascii"), UNSTORED_EXTRA: b""}
    app.set_cookie("session", app.factory.serializer.dumps(encode_payload(os.urandom(32), extras)))
    assert app.get("/peek").json == {"token": None}
    assert not accepted(app, token)
    fresh = app.get("/token").json["token"]
    assert fresh != token
    assert accepted(app, fresh)


# -- the first INSERT and the forms rendered before it ---------------------------------------


def test_a_visitors_first_checked_post_stores_the_session_and_gets_a_new_token(app):
    token = form_token(app.get("/form"))  # a login form: the token lives in the cookie
    with app.count() as sql:
        assert app.post("/protected_set", {"csrf_token": token}).json == {"ok": True}
    assert sql.kinds() == ["INSERT"], sql.statements
    fresh = form_token(app.get("/form"))  # the page after the login (PRG)
    assert fresh != token and stored(app) == fresh
    assert accepted(app, fresh)
    assert not accepted(app, token)  # a second tab's form rendered before the login


def test_a_form_rendered_after_the_session_changed_shows_the_stored_token(app):
    app.get("/token")  # the visitor's cookie holds a cookie-only token
    token = app.get("/set_then_token").json["token"]
    assert stored(app) == token
    assert accepted(app, token)


def test_a_token_handed_out_before_the_inserting_change_is_replaced(app):
    """A view that renders the cookie's token, then stores the session: the form is stale.

    The INSERT cannot tell a planted cookie-only token from the visitor's own,
    so it replaces it; render forms after changing the session (or redirect).
    """
    before = app.get("/token").json["token"]
    shown = app.get("/token_then_set").json["token"]
    assert shown == before
    assert stored(app) not in (None, before)
    assert not accepted(app, shown)


def test_a_token_made_in_the_inserting_request_is_kept(app):
    token = app.get("/token_then_set").json["token"]  # no cookie: made in this request
    assert stored(app) == token
    assert accepted(app, token)


# -- how long a cookie-only token lives -------------------------------------------------------


def test_a_cookie_only_token_lives_an_hour_without_timeouts(app):
    token = app.get("/token").json["token"]
    app.clock.advance(3599)
    assert accepted(app, token)  # a check renews nothing
    app.clock.advance(1)
    assert not accepted(app, token)
    assert app.get("/peek").json == {"token": None}
    fresh = app.get("/token").json["token"]
    assert fresh != token
    assert accepted(app, fresh)
    assert app.rows() == []
    from sessions_csrf import UNSTORED_TOKEN_LIFETIME

    assert UNSTORED_TOKEN_LIFETIME == 3600


@pytest.mark.parametrize(
    ("plugin", "mixin", "setting"),
    [
        ("sessions_idle_timeout", "IdleMixin", "idle_timeout"),
        ("sessions_absolute_timeout", "AbsoluteMixin", "absolute_timeout"),
    ],
)
def test_a_cookie_only_token_lives_no_longer_than_the_sessions_timeout(
    session_app, plugin, mixin, setting
):
    module = pytest.importorskip(plugin)
    model = make_model(CSRFMixin, getattr(module, mixin))
    app = session_app(model, settings={setting: "60"}, configure=add_csrf_views)
    token = app.get("/token").json["token"]
    app.clock.advance(59)
    assert accepted(app, token)
    app.clock.advance(1)
    assert not accepted(app, token)
    assert app.get("/token").json["token"] != token


def test_handing_a_cookie_only_token_out_again_renews_its_time(session_app):
    idle = pytest.importorskip("sessions_idle_timeout")
    model = make_model(CSRFMixin, idle.IdleMixin)
    app = session_app(model, settings={"idle_timeout": "60"}, configure=add_csrf_views)
    token = app.get("/token").json["token"]
    app.clock.advance(5)
    response = app.get("/token")  # younger than a tenth of its life: the cookie stays
    assert response.json["token"] == token
    assert "Set-Cookie" not in response.headers
    app.clock.advance(5)
    with app.count() as sql:
        page = app.get("/form")  # a tenth of its life: handed out again, with this time
    assert form_token(page) == token
    assert page.headers["Set-Cookie"].startswith("session=")
    assert sql.count == 0 and app.rows() == []
    app.clock.advance(59)
    assert accepted(app, token)
    app.clock.advance(1)
    assert not accepted(app, token)


# -- the sealed column --------------------------------------------------------------------------


def test_the_column_holds_the_token_sealed(app):
    from sessions_csrf import SEALED_LENGTH, stored_token

    app.post_json("/set", {"a": 1})
    token = app.get("/token").json["token"]
    column = app.row().csrf_token
    # AES-SIV's tag and the encrypted token, in URL-safe base64: exactly the String(64)
    assert len(column) == SEALED_LENGTH == 64 and set(column) <= URLSAFE
    assert token not in column
    assert stored_token(app.factory, column) == token
    other = SessionTestApp(
        app.model, app.engine, settings={"secret_key": generate_secret_key()}, clock=app.clock
    )
    assert stored_token(other.factory, column) is None  # another key opens nothing
    assert stored_token(app.factory, column[:-1] + ("A" if column[-1] != "A" else "B")) is None


def test_a_token_stored_in_clear_keeps_working_and_is_sealed_at_the_next_request(app):
    """Rows of sessions-csrf 0.1 hold the token in clear: nobody is logged out, no form
    refused; the session's next request seals it (one UPDATE, once)."""
    app.post_json("/set", {"a": 1})
    token = "x" * 42 + "w"  # what token_urlsafe(32) gave: 43 characters
    with app.engine.begin() as connection:
        connection.execute(sa.update(app.model.__table__).values(csrf_token=token))
    with app.count() as sql:
        assert accepted(app, token)
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assert "csrf_token=" in sql.statements[1].split("WHERE")[0].replace(" ", "")
    assert app.row().csrf_token != token and stored(app) == token
    with app.count() as sql:
        assert app.get("/token").json["token"] == token
        assert accepted(app, token)
    assert sql.kinds() == ["SELECT", "SELECT"], sql.statements
    assert not accepted(app, app.row().csrf_token)


def test_a_token_survives_a_key_rotation(app):
    first, second = generate_secret_key(), generate_secret_key()

    def on_keys(keys):
        return SessionTestApp(
            app.model,
            app.engine,
            settings={"secret_key": keys},
            clock=app.clock,
            configure=add_csrf_views,
        )

    before = on_keys(first)
    before.post_json("/set", {"a": 1})
    token = before.get("/token").json["token"]

    rotated = on_keys(f"{second} {first}")  # the new key first, the old one after it
    rotated.set_cookie("session", before.cookies["session"])
    with rotated.count() as sql:
        assert accepted(rotated, token)  # sealed again with the new key: same token
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assert rotated.get("/token").json["token"] == token

    after = on_keys(second)  # the old key dropped
    after.set_cookie("session", rotated.cookies["session"])
    assert after.get("/token").json["token"] == token
    assert accepted(after, token)


def test_two_requests_sealing_one_clear_token_do_not_conflict(session_app, model):
    from sessions_kernel.testing import Race

    app = session_app(
        model, settings={"lock_contended_for": "0"}, configure=add_csrf_views, retry=False
    )
    app.post_json("/set", {"a": 1})
    token = "y" * 42 + "w"
    with app.engine.begin() as connection:
        connection.execute(sa.update(app.model.__table__).values(csrf_token=token))
    with Race(app) as race:
        a = race.start("/token")
        b = race.start("/token")
        b.finish()
        a.finish()
    assert (a.response.status_int, b.response.status_int) == (200, 200)
    assert a.response.json["token"] == b.response.json["token"] == token
    assert stored(app) == token and app.row().csrf_token != token
