"""The cookie is bound to its name: AES-GCM authenticates a label of the library and the
cookie name, so two applications sharing a key and a table cannot read each other's
cookies. Cookies of sessions-kernel 0.1 (unbound) are read only until
session.accept_unbound_cookies_until, and are sent again bound."""

from __future__ import annotations

import base64
import os
from datetime import datetime, timezone

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from kernel_support import factory_of, set_cookies

from sessions_kernel import (
    AESGCMCookieSerializer,
    ConfigurationError,
    events,
    generate_secret_key,
    session_factory,
)
from sessions_kernel.crypto import decode_payload, encode_payload, parse_secret_keys
from sessions_kernel.testing import TEST_SECRET_KEY, Clock, SessionTestApp, make_model

DAY = 24 * 3600


def unbound_cookie(key: str, token: bytes, extras: dict[str, bytes]) -> str:
    """A cookie as sessions-kernel 0.1 made it: no format byte, the library's label alone
    as associated data."""
    nonce = os.urandom(12)
    sealed = AESGCM(parse_secret_keys(key)[0]).encrypt(
        nonce, encode_payload(token, extras), b"sessions_kernel cookie v1"
    )
    return base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()


def raw(cookie: str) -> bytes:
    return base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4))


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat()


def token_of(app: SessionTestApp, cookie: str) -> tuple[bytes, dict[str, bytes]]:
    return decode_payload(factory_of(app).serializer.loads(cookie))


# -- one key, one table, two cookie names -------------------------------------------------


def test_a_cookie_made_under_one_name_is_refused_under_another(session_app, log):
    key = generate_secret_key()
    shop = session_app(make_model(), {"secret_key": key, "cookie_name": "shop"})
    admin = SessionTestApp(  # another application: the same key, the same table
        shop.model,
        shop.engine,
        settings={"secret_key": key, "cookie_name": "admin"},
        clock=shop.clock,
        configure=log.configure,
    )
    shop.post_json("/set", {"user": "alice"})
    admin.new_browser().post_json("/set", {"user": "root"})  # each works under its own name
    assert len(shop.rows()) == 2

    admin.set_cookie("admin", shop.cookies["shop"])
    with admin.count() as sql:
        response = admin.get("/read")
    assert response.json["new"] is True and response.json["data"] == {}
    assert sql.count == 0  # refused before the database
    assert [e.reason for e in log.of(events.CookieRejected)] == ["cookie failed authentication"]
    assert set_cookies(response)[0].startswith("admin=; Max-Age=0")
    assert shop.get("/read").json["data"] == {"user": "alice"}  # still the shop's session


def test_the_cookie_names_its_format_and_its_name_is_authenticated():
    key = parse_secret_keys(generate_secret_key())
    payload = encode_payload(os.urandom(32), {"x": b"1"})
    cookie = AESGCMCookieSerializer(key, cookie_name="shop").dumps(payload)
    assert raw(cookie)[0] == 2  # the format byte of bound cookies
    assert AESGCMCookieSerializer(key, cookie_name="shop").loads(cookie) == payload
    for other in ("admin", "Shop", "shop2", "session"):
        with pytest.raises(ValueError, match="cookie failed authentication"):
            AESGCMCookieSerializer(key, cookie_name=other).loads(cookie)


# -- the unbound cookies of sessions-kernel 0.1 -------------------------------------------


def with_cookie(value: str) -> dict[str, str]:
    """The request header of a browser holding the cookie as the application set it
    (WebTest's set_cookie would store it under another domain, beside the new one)."""
    return {"Cookie": f"session={value}"}


@pytest.fixture
def upgraded(session_app, log):
    """An application upgraded from 0.1 with a week's window, a session storing {"a": 1},
    its cookie as 0.1 made it and a browser with an empty cookie jar."""
    key = generate_secret_key()
    clock = Clock()
    app = session_app(
        make_model(),
        {"secret_key": key, "accept_unbound_cookies_until": iso(clock.time + 7 * DAY)},
        clock=clock,
        configure=log.configure,
    )
    app.post_json("/set", {"a": 1})
    token, extras = token_of(app, app.cookies["session"])
    return app, app.new_browser(), token, unbound_cookie(key, token, extras)


def test_an_unbound_cookie_is_read_in_the_window_and_sent_again_bound(upgraded, log):
    app, browser, token, old = upgraded
    with app.count() as sql:
        response = browser.get("/read", headers=with_cookie(old))
    assert response.json["data"] == {"a": 1} and response.json["new"] is False
    assert sql.kinds() == ["SELECT"]  # the cookie is sent again; the row is not written
    [cookie] = set_cookies(response)
    assert cookie.startswith("session=") and "Max-Age=0" not in cookie
    bound = browser.cookies["session"]
    assert raw(bound)[0] == 2
    assert token_of(app, bound) == (token, {})  # the same session, nothing else carried
    assert set_cookies(browser.get("/read")) == []  # once
    assert not log.of(events.CookieRejected)


def test_an_unbound_cookie_is_answered_bound_on_its_next_write(upgraded):
    app, browser, token, old = upgraded
    assert browser.get("/incr/a", headers=with_cookie(old)).json["data"] == {"a": 2}
    bound = browser.cookies["session"]
    assert raw(bound)[0] == 2 and token_of(app, bound) == (token, {})
    assert app.row().data is not None and browser.get("/read").json["data"] == {"a": 2}


def test_an_unbound_cookie_is_refused_after_the_window(upgraded, log):
    app, browser, _, old = upgraded
    reissued = app.new_browser()
    assert set_cookies(reissued.get("/read", headers=with_cookie(old)))  # sent again bound

    app.clock.advance(7 * DAY)
    with app.count() as sql:
        response = browser.get("/read", headers=with_cookie(old))
    assert response.json["new"] is True and response.json["data"] == {}
    assert sql.count == 0
    assert set_cookies(response)[0].startswith("session=; Max-Age=0")
    [rejected] = log.of(events.CookieRejected)
    assert "unbound format" in rejected.reason
    assert "accept_unbound_cookies_until" in rejected.reason
    # a cookie sent again in the window lives on
    assert reissued.get("/read").json["data"] == {"a": 1}


def test_an_unbound_cookie_is_refused_without_a_window(session_app, log):
    key = generate_secret_key()
    app = session_app(make_model(), {"secret_key": key}, configure=log.configure)
    app.post_json("/set", {"a": 1})
    token, extras = token_of(app, app.cookies["session"])
    old = unbound_cookie(key, token, extras)
    with app.count() as sql:
        assert app.new_browser().get("/read", headers=with_cookie(old)).json["new"] is True
    assert sql.count == 0
    assert "unbound format" in log.of(events.CookieRejected)[0].reason


# -- the setting --------------------------------------------------------------------------


def _factory(**settings):
    clock = Clock(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp())
    return session_factory(
        model_class=make_model(), secret_key=TEST_SECRET_KEY, clock=clock, **settings
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-03-31", datetime(2026, 3, 31, tzinfo=timezone.utc)),
        ("2026-03-31T12:30:00", datetime(2026, 3, 31, 12, 30, tzinfo=timezone.utc)),
        ("2026-03-31T12:30:00Z", datetime(2026, 3, 31, 12, 30, tzinfo=timezone.utc)),
        ("2026-03-31T14:30:00+02:00", datetime(2026, 3, 31, 12, 30, tzinfo=timezone.utc)),
        (datetime(2026, 3, 31).date(), datetime(2026, 3, 31, tzinfo=timezone.utc)),
        ("", None),
    ],
)
def test_accept_unbound_cookies_until_takes_a_date(value, expected):
    until = _factory(accept_unbound_cookies_until=value).config.values[
        "accept_unbound_cookies_until"
    ]
    assert until == (expected and expected.timestamp())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"accept_unbound_cookies_until": "soon"}, "expected a date such as 2026-03-31"),
        ({"accept_unbound_cookies_until": "2027-01-03"}, "more than a year ahead"),
        (
            {"accept_unbound_cookies_until": "2026-02-01", "serializer": "json"},
            "applies to the built-in cookie serializer only",
        ),
    ],
)
def test_accept_unbound_cookies_until_is_checked(settings, message):
    with pytest.raises(ConfigurationError, match=message):
        _factory(**settings)
