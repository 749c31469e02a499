"""session_fallback_token: a request without a session cookie continues a session a plugin names.

The plugin here reads a cookie ``legacy`` holding a name, and derives the token
from it with a key of the server's, as a migration from an old store does. Each
test runs on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import hashlib
import hmac
import threading

import pytest

from sessions_kernel import hookimpl
from sessions_kernel.cookies import row_id
from sessions_kernel.testing import SessionTestApp, make_model


def derived(request) -> bytes | None:
    name = request.cookies.get("legacy")
    if not name:
        return None
    key = b"k" * 32  # a real plugin: session.derived_keys(label, 32)[0]
    return hmac.new(key, name.encode(), hashlib.sha256).digest()


class ContinuesMixin:
    """Activates the test plugin."""


class Continues:
    """Names the token ``HMAC(key, legacy cookie)``; records each call."""

    def __init__(self, answer=None):
        self.calls = []
        self.answer = answer

    @hookimpl
    def session_mixins(self):
        return [ContinuesMixin]

    #: set by a test: first attempts wait here after their load, so that both load first
    barrier = None

    @hookimpl
    def session_load(self, session):
        if self.barrier is not None and not session.request.environ.get("retry.attempt"):
            self.barrier.wait(timeout=30)

    @hookimpl
    def session_fallback_token(self, session):
        self.calls.append(session.request.path)
        if self.answer is not None:
            return self.answer
        return derived(session.request)


def token_of(name: str) -> bytes:
    return hmac.new(b"k" * 32, name.encode(), hashlib.sha256).digest()


@pytest.fixture
def continued(session_app):
    plugin = Continues()
    app = session_app(make_model(ContinuesMixin), plugins=[plugin])
    app.plugin = plugin
    return app


def test_a_new_session_is_stored_under_the_token_and_its_cookie_sent(continued):
    browser = continued.new_browser()
    browser.set_cookie("legacy", "alice")
    browser.post_json("/set", {"cart": 1})
    (row,) = continued.rows()
    assert row.id == row_id(token_of("alice"))
    assert browser.cookies.get("session")
    # the cookie it got carries that token: the next request, without the legacy
    # cookie, is the same session
    browser.set_cookie("legacy", "")
    assert browser.get("/read").json["data"] == {"cart": 1}


def test_a_stored_row_the_token_names_is_loaded_and_its_cookie_sent(continued):
    first = continued.new_browser()
    first.set_cookie("legacy", "bob")
    first.post_json("/set", {"cart": 2})
    other = continued.new_browser()  # another browser presenting the same legacy cookie
    other.set_cookie("legacy", "bob")
    with continued.count() as counted:
        state = other.get("/read").json
    assert state["data"] == {"cart": 2}
    assert not state["new"]
    assert counted.kinds() == ["SELECT"]  # one statement: the row by its key
    assert other.cookies.get("session")  # the cookie was sent: the browser had none
    assert len(continued.rows()) == 1


def test_no_token_no_row_and_no_cookie(continued):
    browser = continued.new_browser()
    browser.set_cookie("unrelated", "x")
    with continued.count() as counted:
        assert browser.get("/read").json["new"]
    assert counted.count == 0
    assert "session" not in browser.cookies
    assert continued.plugin.calls == ["/read"]


def test_not_asked_when_the_browser_sent_a_session_cookie(continued):
    browser = continued.new_browser()
    browser.post_json("/set", {"a": 1})
    continued.plugin.calls.clear()
    browser.set_cookie("legacy", "carol")
    assert browser.get("/read").json["data"] == {"a": 1}
    assert continued.plugin.calls == []
    assert len(continued.rows()) == 1


def test_a_session_that_stores_nothing_writes_no_row(continued):
    browser = continued.new_browser()
    browser.set_cookie("legacy", "dave")
    assert browser.get("/read").json["new"]
    assert continued.rows() == []


def test_a_token_of_the_wrong_size_is_an_error_that_names_the_hook(session_app):
    app = session_app(make_model(ContinuesMixin), plugins=[Continues(answer=b"short")])
    body = app.get("/read", status=500).json
    assert body["error"] == (
        "a plugin's session_fallback_token returned 5 bytes: a token is 32 bytes (derive it "
        "with a key of session.derived_keys), or None"
    )


def test_two_first_requests_naming_one_token_store_one_row(continued, session_db_url):
    """Both load (no row yet), then both insert under one key: the second fails,
    pyramid_retry runs it again, and it finds the first's row (its change merged onto it)."""
    apps = [SessionTestApp(continued.model, continued.engine, plugins=[continued.plugin])]
    apps.append(SessionTestApp(continued.model, continued.engine, plugins=[continued.plugin]))
    continued.plugin.barrier = threading.Barrier(2)
    errors = []

    def visit(app, key):
        browser = app.new_browser()
        browser.set_cookie("legacy", "erin")
        try:
            browser.post_json("/set", {key: True})
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=visit, args=(a, k)) for a, k in zip(apps, "xy", strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    continued.plugin.barrier = None
    assert errors == []
    (row,) = continued.rows()
    assert row.id == row_id(token_of("erin"))
    reader = continued.new_browser()
    reader.set_cookie("legacy", "erin")
    assert reader.get("/read").json["data"] == {"x": True, "y": True}


def test_the_hook_trace_never_shows_the_token(session_app, monkeypatch, capsys):
    """SESSIONS_TRACE_HOOKS=1 prints hooks' answers; this one's is the key to a session."""
    from sessions_kernel.plugins import TRACE_HOOKS_ENV

    monkeypatch.setenv(TRACE_HOOKS_ENV, "1")
    plugin = Continues()
    app = session_app(make_model(ContinuesMixin), plugins=[plugin])
    capsys.readouterr()
    browser = app.new_browser()
    browser.set_cookie("legacy", "frank")
    browser.post_json("/set", {"a": 1})
    traced = capsys.readouterr().err
    assert "session_fallback_token" in traced
    token = token_of("frank")
    assert repr(token) not in traced and token.hex() not in traced
