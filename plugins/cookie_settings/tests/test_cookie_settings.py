"""Per-session cookie attributes on SQLite, PostgreSQL and MariaDB, through a real Pyramid app."""

from __future__ import annotations

import pytest
from sessions_cookie_settings import ConfigCookieMixin

from sessions_kernel import SettingsError
from sessions_kernel.testing import SessionTestApp, make_model

MONTH = 30 * 24 * 3600


def remember_me_views(config):
    def login(request):
        """Log in; ticking "remember me" keeps the cookie for a month."""
        body = request.json_body
        request.session["user"] = body["user"]
        if body.get("remember"):
            settings = request.session.settings
            settings.edit()
            settings.cookie_max_age = MONTH
            settings.save()
        return {"max_age": request.session.settings.cookie_max_age}

    def remember(request):
        """Tick "remember me" on an existing session, without touching its data."""
        with request.session.settings as s:
            s["cookie_max_age"] = request.json_body["max_age"]
        return dict(request.session.settings)

    def logout(request):
        request.session.invalidate()
        return {"ok": True}

    for path, view in [("/login", login), ("/remember", remember), ("/logout", logout)]:
        config.add_route(path, path)
        config.add_view(view, route_name=path, renderer="json")


@pytest.fixture
def app(session_app) -> SessionTestApp:
    return session_app(make_model(ConfigCookieMixin), configure=remember_me_views)


def set_cookies(response) -> list[str]:
    return response.headers.getall("Set-Cookie")


def is_deletion(header: str) -> bool:
    return header.startswith("session=;") and "Max-Age=0;" in header


def attributes(header: str) -> dict[str, str | bool]:
    """The attributes of one Set-Cookie header, by lower-case name."""
    found: dict[str, str | bool] = {}
    for part in header.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        found[name.lower()] = value or True
    return found


def cookie_value(response) -> str:
    (header,) = [h for h in set_cookies(response) if not is_deletion(h)]
    return header.split(";", 1)[0].split("=", 1)[1]


def send(app, path, cookie, body):
    """A request from a fresh browser carrying ``cookie``, whatever its path and domain."""
    return app.new_browser().post_json(path, body, headers={"Cookie": f"session={cookie}"})


def test_remember_me_at_login_sets_max_age(app):
    response = app.post_json("/login", {"user": "ann", "remember": True})
    assert response.json == {"max_age": MONTH}
    assert attributes(response.headers["Set-Cookie"])["max-age"] == str(MONTH)
    assert app.row().cookie_max_age == MONTH
    other = app.new_browser().post_json("/login", {"user": "bob"})
    assert "max-age" not in attributes(other.headers["Set-Cookie"])  # a browser-session cookie


def test_remember_me_on_an_existing_session_resends_the_cookie(app):
    first = app.post_json("/login", {"user": "ann"})
    session_id = app.row().id
    assert "max-age" not in attributes(first.headers["Set-Cookie"])
    app.clock.advance(60)
    with app.count() as sql:
        response = app.post_json("/remember", {"max_age": MONTH})
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    update = sql.statements[1].split("WHERE")[0]
    assert "cookie_max_age" in update and "data" not in update
    (header,) = set_cookies(response)
    assert attributes(header)["max-age"] == str(MONTH)
    assert app.row().id == session_id  # the same session, re-sent with its new Max-Age
    assert response.json["cookie_max_age"] == MONTH
    # unticking goes back to the global value: a browser-session cookie again
    response = app.post_json("/remember", {"max_age": None})
    assert "max-age" not in attributes(response.headers["Set-Cookie"])
    assert app.row().cookie_max_age is None


def test_a_read_is_one_select_and_sends_no_cookie(app):
    app.post_json("/login", {"user": "ann", "remember": True})
    with app.count() as sql:
        response = app.get("/read")
    assert sql.kinds() == ["SELECT"], sql.statements
    assert "Set-Cookie" not in response.headers


def test_every_attribute_appears_as_set(app):
    values = {
        "cookie_max_age": 3600,
        "cookie_path": "/shop",
        "cookie_domain": "example.com",
        "cookie_secure": True,
        "cookie_httponly": False,
        "cookie_samesite": "Strict",
    }
    cookie = cookie_value(app.post_json("/set", {"a": 1}))
    response = send(app, "/settings", cookie, values)
    assert response.json == {**response.json, **values}
    header = next(h for h in set_cookies(response) if not is_deletion(h))
    attrs = attributes(header)
    assert attrs["max-age"] == "3600" and attrs["path"] == "/shop"
    assert attrs["domain"] == "example.com" and attrs["samesite"].lower() == "strict"
    assert attrs["secure"] is True and "httponly" not in attrs
    row = app.row()
    assert {name: getattr(row, name) for name in values} == values
    # the cookie left its old place (path /, no domain): the old one is deleted there
    (deleted,) = [h for h in set_cookies(response) if is_deletion(h)]
    assert attributes(deleted)["path"] == "/" and "domain" not in attributes(deleted)


def test_global_values_apply_where_the_row_has_none(session_app):
    app = session_app(
        make_model(ConfigCookieMixin),
        settings={"cookie_path": "/app", "cookie_secure": "true", "cookie_samesite": "None"},
    )
    attrs = attributes(app.post_json("/set", {"a": 1}).headers["Set-Cookie"])
    assert attrs["path"] == "/app" and attrs["secure"] is True and attrs["samesite"] == "None"
    row = app.row()
    assert (row.cookie_path, row.cookie_secure, row.cookie_samesite) == (None, None, None)


def test_deleting_uses_the_stored_path_and_domain(app):
    cookie = cookie_value(app.post_json("/set", {"a": 1}))
    moved = send(app, "/settings", cookie, {"cookie_path": "/shop", "cookie_domain": "ex.org"})
    cookie = cookie_value(moved)
    response = send(app, "/logout", cookie, {})
    (deleted,) = set_cookies(response)
    assert is_deletion(deleted)
    assert attributes(deleted)["path"] == "/shop" and attributes(deleted)["domain"] == "ex.org"
    assert app.rows() == []


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("cookie_max_age", -1, "expected a whole number"),
        ("cookie_max_age", "a month", "expected a whole number"),
        ("cookie_path", "shop", "starting with '/'"),
        ("cookie_path", "/a;b", "without spaces or ';'"),
        ("cookie_path", "/" + "p" * 1024, "at most 1024"),
        ("cookie_domain", "ex ample.com", "expected a domain name"),
        ("cookie_domain", "d" * 254, "at most 253"),
        ("cookie_secure", "maybe", "expected true or false"),
        ("cookie_httponly", 2, "expected true or false"),
        ("cookie_samesite", "Sometimes", "expected one of Strict, Lax, None"),
    ],
)
def test_invalid_values_are_settings_errors(app, name, value, message):
    app.post_json("/set", {"a": 1})
    with pytest.raises(SettingsError, match=message):
        app.post_json("/settings", {name: value})
    assert getattr(app.row(), name) is None


def test_samesite_none_needs_secure_per_session(app):
    app.post_json("/set", {"a": 1})
    with pytest.raises(SettingsError, match="cookie_samesite = None needs cookie_secure"):
        app.post_json("/settings", {"cookie_samesite": "None"})
    response = app.post_json("/settings", {"cookie_samesite": "None", "cookie_secure": True})
    attrs = attributes(response.headers["Set-Cookie"])
    assert attrs["samesite"] == "None" and attrs["secure"] is True


def test_host_prefix_rules_hold_per_session(session_app):
    app = session_app(
        make_model(ConfigCookieMixin),
        settings={"cookie_name": "__Host-session", "cookie_secure": "true"},
    )
    for change in [{"cookie_path": "/shop"}, {"cookie_domain": "ex.org"}, {"cookie_secure": False}]:
        with pytest.raises(SettingsError, match="__Host- prefix"):
            app.post_json("/settings", change)
    response = app.post_json("/settings", {"cookie_max_age": 60})
    assert response.json["cookie_max_age"] == 60


def test_without_the_mixin_cookie_settings_are_read_only(session_app):
    app = session_app(make_model())
    app.post_json("/set", {"a": 1})
    assert app.get("/settings").json["cookie_max_age"] is None
    with pytest.raises(SettingsError, match="use ConfigCookieMixin from cookie_settings"):
        app.post_json("/settings", {"cookie_max_age": MONTH})


def test_settings_saved_on_a_new_session_store_it(app):
    with app.count() as sql:
        response = app.post_json("/remember", {"max_age": MONTH})
    assert sql.kinds() == ["INSERT"]
    assert f"Max-Age={MONTH}" in response.headers["Set-Cookie"]
    assert app.row().cookie_max_age == MONTH
