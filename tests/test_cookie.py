"""The cookie: a 256-bit token, AES-GCM, key rotation, every attribute, prefixes checked."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
from typing import Any

import pytest
from kernel_support import EventLog, factory_of, set_cookies

from sessions_kernel import ConfigurationError, events, generate_secret_key, session_factory
from sessions_kernel.crypto import decode_payload, parse_secret_keys
from sessions_kernel.testing import SessionTestApp, make_model

# keys made for this run: a key printed in a test is published (see tests/test_keys.py)
KEY_A = generate_secret_key()
KEY_B = generate_secret_key()


def _second_app(app: Any, log: EventLog | None = None, **settings: Any) -> SessionTestApp:
    """Another application on the same table (its factory configured differently)."""
    return SessionTestApp(
        app.model,
        app.engine,
        settings=settings,
        clock=app.clock,
        configure=log.configure if log is not None else None,
    )


def test_keys_are_valid():
    assert parse_secret_keys(KEY_B) and parse_secret_keys(KEY_A)


def test_token_is_256_bits_and_the_row_holds_only_its_hash(session_app):
    app = session_app(make_model())
    app.post_json("/set", {"a": 1})
    payload = factory_of(app).serializer.loads(app.cookies["session"])
    token, extras = decode_payload(payload)
    assert len(token) * 8 >= 256 and extras == {}
    row = app.row()
    assert row.id == hashlib.sha256(token).hexdigest()
    forms = [token, token.hex().encode(), base64.urlsafe_b64encode(token).rstrip(b"=")]
    for column in ("id", "created", "updated", "data", "flash"):
        value = getattr(row, column)
        stored = value if isinstance(value, bytes) else str(value).encode()
        assert not any(form in stored for form in forms), column


def test_tokens_differ_between_sessions(session_app):
    app = session_app(make_model())
    tokens = set()
    for _ in range(3):
        browser = app.new_browser()
        browser.post_json("/set", {"a": 1})
        tokens.add(decode_payload(factory_of(app).serializer.loads(browser.cookies["session"]))[0])
    assert len(tokens) == 3


def test_key_rotation(session_app):
    app = session_app(make_model(), {"secret_key": KEY_A})
    app.post_json("/set", {"a": 1})
    cookie_a = app.cookies["session"]

    rotated = _second_app(app, secret_key=f"{KEY_B} {KEY_A}")
    rotated.set_cookie("session", cookie_a)
    with rotated.count() as sql:
        assert rotated.get("/read").json["data"] == {"a": 1}  # A's cookie still works
    assert sql.kinds() == ["SELECT"]
    rotated.get("/incr/a")  # a write sends the cookie again, now made with B
    only_b = parse_secret_keys(KEY_B)
    from sessions_kernel import AESGCMCookieSerializer

    AESGCMCookieSerializer(only_b).loads(rotated.cookies["session"])
    fresh = rotated.new_browser()
    fresh.post_json("/set", {"b": 1})
    AESGCMCookieSerializer(only_b).loads(fresh.cookies["session"])
    with pytest.raises(ValueError, match="failed authentication"):
        AESGCMCookieSerializer(parse_secret_keys(KEY_A)).loads(fresh.cookies["session"])

    log = EventLog()
    b_only = _second_app(app, log, secret_key=KEY_B)
    b_only.set_cookie("session", cookie_a)
    with b_only.count() as sql:
        response = b_only.get("/read")
    assert sql.count == 0
    assert response.json["new"] is True
    assert set_cookies(response)[0].startswith("session=; Max-Age=0")
    assert [e.reason for e in log.of(events.CookieRejected)] == ["cookie failed authentication"]


def test_generate_secret_key_gives_fresh_valid_keys():
    keys = {generate_secret_key() for _ in range(5)}
    assert len(keys) == 5
    for key in keys:
        assert len(key) == 44
        assert [len(k) for k in parse_secret_keys(key)] == [32]


def test_python_m_sessions_kernel_prints_a_key():
    out = subprocess.run(
        [sys.executable, "-m", "sessions_kernel"], capture_output=True, text=True, check=True
    ).stdout
    assert [len(k) for k in parse_secret_keys(out.strip())] == [32]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_python_m_sessions_kernel_help_prints_usage_and_no_key(flag):
    run = subprocess.run(
        [sys.executable, "-m", "sessions_kernel", flag], capture_output=True, text=True
    )
    assert run.returncode == 0
    assert run.stdout.startswith("usage: python -m sessions_kernel")
    assert "session.secret_key" in run.stdout
    # no key anywhere in what it printed: a 43-character run of base64 would be one
    assert not re.search(r"[A-Za-z0-9_-]{40,}=", run.stdout + run.stderr)


def test_python_m_sessions_kernel_refuses_an_unknown_argument_without_printing_a_key():
    run = subprocess.run(
        [sys.executable, "-m", "sessions_kernel", "--count", "2"], capture_output=True, text=True
    )
    assert run.returncode == 2 and "unrecognized arguments" in run.stderr
    assert run.stdout == ""


@pytest.mark.parametrize(
    "bad",
    ["short", "x" * 44, KEY_B[:-2], f"{KEY_B} oops", "  "],
    ids=["short", "x44", "truncated", "a bad second key", "blank"],
)
def test_bad_key_at_start_up_says_how_to_make_one(bad):
    with pytest.raises(ConfigurationError) as info:
        session_factory(model_class=make_model(), secret_key=bad)
    message = str(info.value)
    assert "session.secret_key" in message
    assert "python -m sessions_kernel" in message
    # no key in the message: neither a valid one among the bad ones, nor a fresh one
    # (a start-up error goes to logs, and a key copied from a log is no secret)
    assert not re.search(r"[A-Za-z0-9_-]{20}", message), message


def test_default_cookie_attributes(session_app):
    app = session_app(make_model())
    [cookie] = set_cookies(app.post_json("/set", {"a": 1}))
    parts = [p.strip() for p in cookie.split(";")]
    assert parts[0].startswith("session=")
    assert sorted(parts[1:]) == ["HttpOnly", "Path=/", "SameSite=Lax"]


def test_every_cookie_setting_appears_in_set_cookie(session_app):
    app = session_app(
        make_model(),
        {
            "cookie_name": "sid",
            "cookie_max_age": "3600",
            "cookie_path": "/app",
            "cookie_domain": "example.com",
            "cookie_secure": "true",
            "cookie_httponly": "false",
            "cookie_samesite": "Strict",
        },
    )
    [cookie] = set_cookies(app.post_json("/set", {"a": 1}))
    parts = [p.strip() for p in cookie.split(";")]
    assert parts[0].startswith("sid=")
    attrs = {p.split("=")[0].lower(): p for p in parts[1:]}
    assert attrs["max-age"] == "Max-Age=3600"
    assert attrs["path"] == "Path=/app"
    assert attrs["domain"] == "Domain=example.com"
    assert attrs["secure"].lower() == "secure"
    assert attrs["samesite"] == "SameSite=Strict"
    assert "expires" in attrs
    assert "httponly" not in attrs


def test_samesite_none_with_secure(session_app):
    app = session_app(make_model(), {"cookie_samesite": "None", "cookie_secure": "true"})
    [cookie] = set_cookies(app.post_json("/set", {"a": 1}))
    assert "SameSite=None" in cookie and "secure" in cookie.lower()


def test_empty_samesite_sends_no_attribute(session_app):
    app = session_app(make_model(), {"cookie_samesite": ""})
    [cookie] = set_cookies(app.post_json("/set", {"a": 1}))
    assert "samesite" not in cookie.lower()


@pytest.mark.parametrize("value", ["None", "none", "NONE"])
def test_samesite_none_without_secure_is_refused(value):
    with pytest.raises(ConfigurationError, match="cookie_samesite = None needs cookie_secure"):
        session_factory(model_class=make_model(), secret_key=KEY_A, cookie_samesite=value)


def test_bad_samesite_names_the_setting():
    with pytest.raises(ConfigurationError) as info:
        session_factory(model_class=make_model(), secret_key=KEY_A, cookie_samesite="sometimes")
    assert "session.cookie_samesite = 'sometimes'" in str(info.value)
    assert "expected one of Strict, Lax, None" in str(info.value)


@pytest.mark.parametrize(
    "settings",
    [
        {"cookie_secure": "false"},
        {"cookie_secure": "true", "cookie_path": "/app"},
        {"cookie_secure": "true", "cookie_domain": "example.com"},
    ],
)
def test_host_prefix_is_checked_at_start_up(settings):
    with pytest.raises(ConfigurationError) as info:
        session_factory(
            model_class=make_model(), secret_key=KEY_A, cookie_name="__Host-session", **settings
        )
    message = str(info.value)
    assert "__Host-" in message
    assert "cookie_secure = true, cookie_path = / and no cookie_domain" in message


def test_secure_prefix_needs_secure():
    with pytest.raises(ConfigurationError, match="__Secure- prefix"):
        session_factory(model_class=make_model(), secret_key=KEY_A, cookie_name="__Secure-s")


def test_host_prefix_cookie_is_set_and_deleted_with_its_attributes(session_app):
    app = session_app(make_model(), {"cookie_name": "__Host-s", "cookie_secure": "true"})
    [cookie] = set_cookies(app.post_json("/set", {"a": 1}, extra_environ={"HTTPS": "on"}))
    assert cookie.startswith("__Host-s=") and "Path=/" in cookie and "secure" in cookie.lower()
    assert "Domain" not in cookie
    # a browser drops a __Host- deletion that lacks Secure: the deletion carries it
    app.set_cookie("__Host-s", "forged")
    [deletion] = set_cookies(app.get("/read"))
    assert deletion.startswith("__Host-s=; Max-Age=0; Path=/")
    assert "secure" in deletion.lower()


def _lenient(value: str) -> bytes:
    """How sessions-kernel decoded a cookie before it checked the encoding."""
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _variants(value: str) -> dict[str, str]:
    """Other cookie values that :func:`_lenient` reads as ``value``'s bytes."""
    middle = len(value) // 2
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    index = alphabet.index(value[-1])
    return {
        "!!!! inserted": value[:middle] + "!!!!" + value[middle:],
        ".... inserted": value[:middle] + "...." + value[middle:],
        "standard alphabet": value.replace("-", "+").replace("_", "/"),
        "padded": value + "=" * (-len(value) % 4),
        # the last character's unused low bits (a length not a multiple of 4 leaves some)
        "unused bits set": value[:-1] + alphabet[index ^ 1],
    }


def test_only_the_canonical_encoding_of_a_cookie_opens_its_session(session_app, log):
    app = session_app(make_model(), configure=log.configure)
    app.post_json("/set", {"cart": 3})
    value = app.cookies["session"]
    assert len(value) % 4  # so that the last character has unused bits
    tried = 0
    for name, variant in _variants(value).items():
        if variant == value or _lenient(variant) != _lenient(value):
            continue  # not a variant of this cookie (no - or _ in it, say)
        tried += 1
        browser = app.new_browser()
        browser.set_cookie("session", variant)
        with app.count() as sql:
            response = browser.get("/read")
        assert response.json["new"] is True, name
        assert sql.count == 0, name  # refused before any SQL
        reason = log.of(events.CookieRejected)[-1].reason
        assert reason == "cookie is not in its canonical encoding", name
    assert tried >= 3
    assert app.get("/read").json["data"] == {"cart": 3}  # the canonical one still works
