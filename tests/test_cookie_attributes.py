"""The kernel's cookie attributes: validation, per-session values, deleting the right cookie.

A model makes a cookie setting runtime-configurable by having a column of its name; these
tests declare such columns themselves so that they need no plugin.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Boolean, Integer, String
from sqlalchemy.orm import mapped_column

from sessions_kernel import ConfigurationError, SettingsError, hookimpl, session_factory
from sessions_kernel.testing import TEST_SECRET_KEY, make_model


def cookie_columns() -> dict:
    return {
        "cookie_max_age": mapped_column(Integer, nullable=True),
        "cookie_path": mapped_column(String(1024), nullable=True),
        "cookie_domain": mapped_column(String(253), nullable=True),
        "cookie_secure": mapped_column(Boolean, nullable=True),
        "cookie_samesite": mapped_column(String(6), nullable=True),
    }


class RejectMixin:
    """Activates :class:`RejectPlugin`."""


class RejectPlugin:
    """Rejects a stored session whose data says so."""

    __name__ = "reject_plugin"

    @hookimpl
    def session_mixins(self):
        return [RejectMixin]

    @hookimpl
    def session_validate(self, session):
        return "told to" if b"reject" in session.row.data else None


def set_cookies(response) -> list[str]:
    return response.headers.getall("Set-Cookie")


def is_deletion(header: str, name: str = "session") -> bool:
    return header.startswith(f"{name}=;") and "Max-Age=0;" in header


def cookie_value(response) -> str:
    (header,) = [h for h in set_cookies(response) if not is_deletion(h)]
    return header.split(";", 1)[0].split("=", 1)[1]


def send(app, method, path, cookie, body=None):
    """A request from a fresh browser carrying ``cookie`` (whatever its path and domain)."""
    browser = app.new_browser()
    headers = {"Cookie": f"session={cookie}"}
    if method == "get":
        return browser.get(path, headers=headers)
    return browser.post_json(path, body or {}, headers=headers)


def settings_views(config):
    def change(request):
        body = request.json_body
        with request.session.settings as s:
            for name, value in body.pop("settings").items():
                s[name] = value
        if body.pop("invalidate", False):
            request.session.invalidate()
        request.session.update(body)
        return {"ok": True}

    config.add_route("change", "/change")
    config.add_view(change, route_name="change", renderer="json")


@pytest.fixture
def model():
    return make_model(RejectMixin, **cookie_columns())


@pytest.fixture
def app(session_app, model):
    return session_app(model, plugins=[RejectPlugin()], configure=settings_views)


def test_samesite_none_is_reachable_and_needs_secure():
    model = make_model()
    base = {"model_class": model, "secret_key": TEST_SECRET_KEY}
    factory = session_factory(**base, cookie_samesite="None", cookie_secure="true")
    assert factory.default_cookie_attributes["samesite"] == "None"
    assert session_factory(**base, cookie_samesite="").default_cookie_attributes["samesite"] is None
    with pytest.raises(ConfigurationError, match="cookie_samesite = None needs cookie_secure"):
        session_factory(**base, cookie_samesite="none")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("cookie_path", "/a;b", "without spaces or ';'"),
        ("cookie_path", "/a b", "without spaces or ';'"),
        ("cookie_path", "/" + "x" * 1024, "at most 1024 characters"),
        ("cookie_domain", "exa mple.com", "expected a domain name"),
        ("cookie_domain", "example.com; Secure", "expected a domain name"),
        ("cookie_domain", "a..b", "expected a domain name"),
        ("cookie_domain", "x" * 254, "at most 253 characters"),
    ],
)
def test_bad_path_or_domain_is_a_start_up_error(name, value, message):
    with pytest.raises(ConfigurationError, match=message):
        session_factory(model_class=make_model(), secret_key=TEST_SECRET_KEY, **{name: value})


def test_cross_setting_rules_see_start_up_only_settings_at_save(session_app, model):
    app = session_app(
        model,
        settings={"cookie_name": "__Host-s", "cookie_secure": "true"},
        plugins=[RejectPlugin()],
        configure=settings_views,
    )
    with pytest.raises(SettingsError, match="__Host- prefix"):
        app.post_json("/change", {"settings": {"cookie_path": "/app"}})
    with pytest.raises(SettingsError, match="__Host- prefix"):
        app.post_json("/change", {"settings": {"cookie_secure": False}})
    app.post_json("/change", {"settings": {"cookie_max_age": 60}, "a": 1})
    assert app.row().cookie_max_age == 60


def test_samesite_none_without_secure_is_refused_per_session(app):
    with pytest.raises(SettingsError, match="cookie_samesite = None needs cookie_secure"):
        app.post_json("/change", {"settings": {"cookie_samesite": "None"}})
    response = app.post_json(
        "/change", {"settings": {"cookie_samesite": "None", "cookie_secure": True}, "a": 1}
    )
    assert "SameSite=None" in response.headers["Set-Cookie"]
    assert "secure" in response.headers["Set-Cookie"].lower()


def test_moving_a_cookie_deletes_it_where_it_was(app):
    cookie = cookie_value(app.post_json("/set", {"a": 1}))
    response = send(
        app, "post", "/change", cookie, {"settings": {"cookie_path": "/app", "cookie_max_age": 9}}
    )
    deleted, added = set_cookies(response)
    assert is_deletion(deleted) and "Path=/;" in deleted + ";"
    assert "Path=/app" in added and "Max-Age=9" in added
    assert app.row().cookie_path == "/app"
    # a change that keeps path and domain re-sends the cookie, deletes nothing
    cookie = cookie_value(response)
    response = send(app, "post", "/change", cookie, {"settings": {"cookie_max_age": 99}})
    (added,) = set_cookies(response)
    assert "Path=/app" in added and "Max-Age=99" in added


def test_invalidate_deletes_the_cookie_where_it_was_set(app):
    response = app.post_json(
        "/change", {"settings": {"cookie_path": "/app", "cookie_domain": "ex.org"}, "a": 1}
    )
    cookie = cookie_value(response)
    assert "Path=/app" in response.headers["Set-Cookie"]
    # the same request moves the cookie, then invalidates: the browser's cookie is at /app
    response = send(
        app, "post", "/change", cookie, {"settings": {"cookie_path": "/other"}, "invalidate": True}
    )
    (deleted,) = set_cookies(response)
    assert is_deletion(deleted)
    assert "Path=/app" in deleted and "Domain=ex.org" in deleted
    assert app.rows() == []


def test_rejected_session_cookie_is_deleted_where_it_was_set(app):
    response = app.post_json("/change", {"settings": {"cookie_path": "/app"}, "reject": 1})
    cookie = cookie_value(response)
    response = send(app, "post", "/set", cookie, {"b": 2})
    deleted, added = set_cookies(response)
    assert is_deletion(deleted) and "Path=/app" in deleted
    assert added.startswith("session=") and "Path=/;" in added + ";"
    assert len(app.rows()) == 1 and app.row().cookie_path is None


def test_host_prefix_cookie_is_deleted_with_secure(session_app):
    app = session_app(make_model(), settings={"cookie_name": "__Host-s", "cookie_secure": "true"})
    app.set_cookie("__Host-s", "garbage")
    response = app.get("/read")
    deleted = response.headers["Set-Cookie"]
    assert is_deletion(deleted, "__Host-s")
    assert "secure" in deleted.lower() and "Path=/" in deleted and "Domain" not in deleted
