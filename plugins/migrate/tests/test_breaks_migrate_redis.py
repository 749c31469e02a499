"""An outside review's attempts to break sessions-migrate with real pyramid_session_redis
sessions (Redis database 15, a key prefix of each test's own).

A strict expected failure names each break (B<n>); the others held when tried.
"""

# ruff: noqa: F811  (the fixtures imported from test_migrate_redis are arguments)
from __future__ import annotations

from typing import Any

import pytest
from test_migrate_redis import (  # noqa: F401
    REDIS_URL,
    SECRET_ENV,
    model,
    old_time,
    secret,
    switch,
    until,
)
from test_source_redis import log_in, old_app


def _views(config: Any) -> None:
    from sessions_csrf import ColumnCSRFStoragePolicy

    config.set_csrf_storage_policy(ColumnCSRFStoragePolicy())

    def whoami(request: Any) -> dict[str, Any]:
        return {"userid": request.session.userid, "cart": request.session.get("cart")}

    def boom(request: Any) -> dict[str, Any]:
        request.session.get("cart")
        raise RuntimeError("the view fails after the take")

    for name, view in (("whoami", whoami), ("boom", boom)):
        config.add_route(name, f"/{name}")
        config.add_view(view, route_name=name, renderer="json")


@pytest.fixture
def app_of(session_app, session_clock, model, prefix, secret):
    def build(**options: str) -> Any:
        opts = " ".join(f"{k}={v}" for k, v in {"prefix": prefix, **options}.items())
        values = {
            "migrate_from": "pyramid_session_redis",
            "migrate_until": until(session_clock),
            "migrate_secret_env": SECRET_ENV,
            "migrate_url": REDIS_URL,
            "migrate_options": opts,
            "cookie_name": "sid",
        }
        return session_app(model, values, configure=_views)

    return build


def _old_key(r: Any, prefix: str) -> bytes:
    (key,) = [k for k in r.scan_iter(match=prefix + "*") if b"migrating" not in k]
    return key


def test_held_a_view_that_raises_after_the_claim_releases_it(
    r, app_of, prefix, secret, session_clock
):
    old = old_app(prefix, secret)
    log_in(old, "7")
    old_time(session_clock)
    key = _old_key(r, prefix)
    app = app_of()
    browser = switch(old, app)
    browser.get("/boom", status=500)
    assert r.get(key) is not None
    assert not [k for k in r.scan_iter(match=prefix + "*") if b"migrating" in k]
    assert browser.get("/whoami").json["userid"] == 7
    assert r.get(key) is None


def test_b8_a_claim_left_by_a_dead_process_does_not_fail_the_browser_s_requests(
    r, app_of, prefix, secret, session_clock
):
    old = old_app(prefix, secret)
    log_in(old, "7")
    old_time(session_clock)
    key = _old_key(r, prefix).decode()
    # what a process that died after its SET NX leaves: a claim nobody will release
    r.set(prefix + "migrating:" + key[len(prefix) :], "a dead process's token", ex=60)
    app = app_of(claim_wait="0.2")  # the default waits 10 s per attempt
    browser = switch(old, app)
    response = browser.get("/whoami", expect_errors=True)
    assert response.status_int == 200, response.body
    assert response.json["userid"] is None  # not migrated while the claim is held...
    assert r.get(key) is not None  # ...the old session kept
    assert not any(c.startswith("session=") for c in response.headers.getall("Set-Cookie"))
    r.delete(prefix + "migrating:" + key[len(prefix) :])  # the dead claim expires
    assert browser.get("/whoami").json["userid"] == 7  # the next request migrates it
    assert r.get(key) is None


def test_b9_the_factory_s_config_does_not_show_the_redis_password(
    session_app, session_clock, model, prefix, secret
):
    from pyramid.interfaces import ISessionFactory

    values = {
        "migrate_from": "pyramid_session_redis",
        "migrate_until": until(session_clock),
        "migrate_secret_env": SECRET_ENV,
        "migrate_url": "redis://:hunter2-redis-password@127.0.0.1:6379/15",
        "migrate_options": f"prefix={prefix}",
        "cookie_name": "sid",
    }
    app = session_app(model, values, configure=_views)
    factory = app.wsgi.registry.queryUtility(ISessionFactory)
    shown = repr(factory.config)
    assert "hunter2-redis-password" not in shown
    assert secret not in shown
