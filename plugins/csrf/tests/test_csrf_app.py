"""The csrf plugin in real Pyramid applications, on SQLite, PostgreSQL and MariaDB.

The applications install ``ColumnCSRFStoragePolicy`` and use Pyramid's own
CSRF API (``check_csrf_token``, ``require_csrf``, ``get_csrf_token`` in
templates) unchanged.
"""

from __future__ import annotations

import re
import string

import pytest
from pyramid.csrf import check_csrf_token, get_csrf_token, new_csrf_token
from sessions_csrf import ColumnCSRFStoragePolicy, CSRFMixin

from sessions_kernel.testing import make_model

URLSAFE = set(string.ascii_letters + string.digits + "-_")


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

    view("token_regenerate", token_then_regenerate)
    view("token_invalidate", token_then_invalidate)


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
    token = app.get("/token").json["token"]
    app.post_json("/set", {"a": 1})  # the kernel's views: data changes leave the token alone
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
    assert app.row().csrf_token == new
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
    token = app.get("/token").json["token"]
    app.post_json("/set", {"user": "ann"})  # the first INSERT carries the token into the column
    assert app.row().csrf_token == token
    old_id = app.row().id
    app.get("/regenerate")
    row = app.row()
    assert row.id != old_id
    assert row.csrf_token == token
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


def test_the_cookies_token_moves_into_the_first_insert(app):
    token = app.get("/token").json["token"]
    planted = app.cookies["session"]
    with app.count() as sql:
        app.post_json("/set", {"user": "ann"})
    assert sql.kinds() == ["INSERT"], sql.statements
    row = app.row()
    assert row.csrf_token == token
    assert app.post("/protected", {"csrf_token": token}).json == {"ok": True}
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
    row = app.row()
    assert (row.csrf_token, row.updated) == (token, updated)


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
