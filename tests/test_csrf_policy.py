"""Pyramid's default CSRF storage policy without a plugin that gives the session its methods.

Pyramid's default policy (``LegacySessionCSRFStoragePolicy``) calls
``request.session.get_csrf_token()`` and ``new_csrf_token()``; the kernel's
session has them only through a plugin (sessions-csrf's mixin). Without one,
start-up warns (or, where CSRF checks are required, refuses) and a request
that still uses a token gets an error naming the two fixes, never a bare
``AttributeError``. On SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import logging

import pytest
from pyramid.csrf import CookieCSRFStoragePolicy, check_csrf_token, get_csrf_token
from pyramid.interfaces import ISessionFactory
from sessions_csrf import CSRFMixin

from sessions_kernel import ConfigurationError
from sessions_kernel.errors import MissingSessionMethodError
from sessions_kernel.testing import make_model

FIXES = (
    "config.set_csrf_storage_policy(pyramid.csrf.CookieCSRFStoragePolicy())",
    "LegacySessionCSRFStoragePolicy",
)


def views(config):
    def token(request):
        return {"token": get_csrf_token(request)}

    def check(request):
        return {"ok": check_csrf_token(request, raises=False)}

    for name, view in (("token", token), ("check", check)):
        config.add_route(name, f"/{name}")
        config.add_view(view, route_name=name, renderer="json")


def warnings_of(caplog):
    """The kernel's warnings about CSRF."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "sessions_kernel" and r.levelno == logging.WARNING and "csrf" in r.msg.lower()
    ]


def test_without_the_plugin_start_up_warns_with_both_fixes(session_app, caplog):
    caplog.set_level(logging.WARNING, logger="sessions_kernel")
    session_app(make_model(), configure=views)
    [warning] = warnings_of(caplog)
    assert warning.startswith("request.session.get_csrf_token() is not there")
    for fix in FIXES:
        assert fix in warning
    # the plugin is installed in this environment: the kernel found it by its session_attributes
    assert "add CSRFMixin of csrf (sessions-csrf) to the bases of Session" in warning


def test_without_the_plugin_a_token_at_request_time_is_a_clear_error(session_app):
    app = session_app(make_model(), configure=views)
    # the test views answer an exception with a 500 and its message
    message = app.get("/token", status=500).json["error"]
    assert message.startswith("request.session.get_csrf_token() is not there")
    for fix in FIXES:
        assert fix in message
    checked = app.get("/check", headers={"X-CSRF-Token": "anything"}, status=500)
    assert checked.json["error"].startswith("request.session.get_csrf_token() is not there")
    assert app.rows() == []  # nothing stored on the way


def test_the_error_is_an_attribute_error_and_hasattr_stays_false(session_app):
    app = session_app(make_model(), configure=views)
    factory = app.wsgi.registry.queryUtility(ISessionFactory)
    session = factory.session_class(None, factory)
    for name in ("get_csrf_token", "new_csrf_token"):
        assert not hasattr(session, name) and not hasattr(factory.session_class, name)
        with pytest.raises(MissingSessionMethodError, match=rf"request.session.{name}\(\)"):
            getattr(session, name)
    assert issubclass(MissingSessionMethodError, AttributeError)


def test_without_the_plugin_required_csrf_checks_refuse_to_start(session_app):
    def required(config):
        views(config)
        config.set_default_csrf_options(require_csrf=True)

    with pytest.raises(ConfigurationError) as info:
        session_app(make_model(), configure=required)
    message = str(info.value)
    assert "CSRF checks are required (require_csrf)" in message
    for fix in FIXES:
        assert fix in message


def test_a_view_that_requires_csrf_counts_too(session_app):
    def one_view(config):
        config.add_route("form", "/form")
        config.add_view(lambda r: {}, route_name="form", renderer="json", require_csrf=True)

    with pytest.raises(ConfigurationError, match="require_csrf"):
        session_app(make_model(), configure=one_view)


def test_with_the_plugin_tokens_work_without_a_warning(session_app, caplog):
    caplog.set_level(logging.WARNING, logger="sessions_kernel")
    app = session_app(make_model(CSRFMixin), configure=views)
    assert warnings_of(caplog) == []
    token = app.get("/token").json["token"]
    assert app.get("/check", headers={"X-CSRF-Token": token}).json == {"ok": True}
    assert app.get("/check", headers={"X-CSRF-Token": "forged"}).json == {"ok": False}


def test_with_the_cookie_policy_tokens_work_without_the_plugin_or_a_warning(session_app, caplog):
    def cookie_policy(config):
        views(config)
        config.set_csrf_storage_policy(CookieCSRFStoragePolicy())
        config.set_default_csrf_options(require_csrf=True)

    caplog.set_level(logging.WARNING, logger="sessions_kernel")
    app = session_app(make_model(), configure=cookie_policy)
    assert warnings_of(caplog) == []
    token = app.get("/token").json["token"]
    assert app.get("/check", headers={"X-CSRF-Token": token}).json == {"ok": True}
    assert app.rows() == []  # the token lives in its own cookie: no session row
