"""A session read with no transaction, then a transaction begins: it is loaded again in it.

A tween over pyramid_tm's that reads the session, or pshell before
``request.tm.begin()``, loads it read-only. ``begin()`` drops that load (a
synchronizer of ``request.tm``); the next use loads the session in the
transaction, as a first use there does, and if nothing uses it, the
transaction's before-commit hook does: the extend, renew and persist stages
run, a row a plugin rejects is deleted. After the commit (or an abort), a
value changed in place before the next ``begin()`` makes that transaction's
commit raise. On SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

from typing import Any

import pytest
from pyramid.scripting import prepare
from sessions_idle_timeout import IdleMixin

from sessions_kernel import SessionError, events
from sessions_kernel.testing import make_model


def reading_tween(handler: Any, registry: Any) -> Any:
    """Over pyramid_tm's: reads the session before the request's transaction began."""

    def tween(request: Any) -> Any:
        request.session.get("items")
        return handler(request)

    return tween


def _views(config: Any) -> None:
    config.add_tween("test_read_only_then_begin.reading_tween", over="pyramid_tm.tm_tween_factory")

    def untouched(request: Any) -> Any:
        return {"ok": True}  # the view never uses the session: only the tween read it

    config.add_route("untouched", "/untouched")
    config.add_view(untouched, route_name="untouched", renderer="json")


@pytest.fixture
def app(session_app):
    return session_app(make_model(), configure=_views)


def test_a_view_that_never_uses_the_session_still_slides_the_idle_timeout(
    session_app, session_clock
):
    app = session_app(make_model(IdleMixin), {"idle_timeout": "60"}, configure=_views)
    app.post_json("/set", {"items": ["a"]})
    for _ in range(3):  # every 40 s, inside the 60 s idle timeout: the tween's read counts
        session_clock.advance(40)
        assert app.get("/untouched").json == {"ok": True}
    assert app.get("/read").json["data"] == {"items": ["a"]}


def test_a_rejected_row_is_deleted_though_the_view_never_uses_the_session(
    session_app, session_clock
):
    told: list[Any] = []

    def views(config: Any) -> None:
        _views(config)
        config.add_subscriber(told.append, events.SessionRejected)

    app = session_app(make_model(IdleMixin), {"idle_timeout": "60"}, configure=views)
    app.post_json("/set", {"items": ["secret"]})
    session_clock.advance(120)
    app.get("/untouched")
    assert app.rows() == []
    assert [type(event) for event in told] == [events.SessionRejected]


def test_a_read_in_the_tween_and_in_the_view_costs_one_more_select_and_writes_nothing(app):
    app.post_json("/set", {"items": ["a"]})
    with app.count() as sql:
        assert app.get("/read").json["data"] == {"items": ["a"]}
    # the tween's read-only SELECT, then the view's in its transaction; a list handed out
    # both times and left alone: nothing written
    assert sql.kinds() == ["SELECT", "SELECT"]


def test_a_retried_attempt_loads_the_row_locked(session_app):
    attempts: list[int] = []

    def views(config: Any) -> None:
        _views(config)

        def conflicting(request: Any) -> Any:
            attempts.append(1)
            request.session["n"] = len(attempts)
            if len(attempts) == 1:
                from pyramid_retry import RetryableException

                raise RetryableException("try again")
            return {"attempts": len(attempts)}

        config.add_route("conflicting", "/conflicting")
        config.add_view(conflicting, route_name="conflicting", renderer="json")

    app = session_app(make_model(), configure=views)
    app.post_json("/set", {"items": ["a"]})
    with app.count() as sql:
        assert app.get("/conflicting").json == {"attempts": 2}
    selects = [s for s in sql.statements if s.lstrip().upper().startswith("SELECT")]
    if app.engine.dialect.name == "sqlite":  # no FOR UPDATE: SQLite locks the whole file
        assert selects
    else:  # the retried attempt's load in its transaction is locked, as without the tween
        assert any("FOR UPDATE" in s.upper() for s in selects[2:])
    assert app.get("/read").json["data"] == {"items": ["a"], "n": 2}


def test_pshell_a_change_in_place_before_begin_is_refused_at_commit(app):
    app.post_json("/set", {"items": ["tea"]})
    env = prepare(registry=app.wsgi.registry)
    try:
        request = env["request"]
        request.headers["Cookie"] = f"session={app.cookies['session']}"
        request.session["items"].append("milk")  # read-only: no transaction yet
        request.tm.begin()
        with pytest.raises(SessionError, match=r"changed in place .* before request.tm.begin"):
            request.tm.commit()
        request.tm.abort()
    finally:
        env["closer"]()
    assert app.get("/read").json["data"] == {"items": ["tea"]}


def test_pshell_a_value_read_before_begin_and_left_alone_reloads_cleanly(app):
    app.post_json("/set", {"items": ["tea"]})
    env = prepare(registry=app.wsgi.registry)
    try:
        request = env["request"]
        request.headers["Cookie"] = f"session={app.cookies['session']}"
        assert request.session["items"] == ["tea"]  # handed out, not changed
        request.tm.begin()
        assert request.session["items"] == ["tea"]
        request.session["note"] = 1
        request.tm.commit()
    finally:
        env["closer"]()
    assert app.get("/read").json["data"] == {"items": ["tea"], "note": 1}


def test_pshell_a_change_in_place_after_two_commits_is_still_refused(app):
    env = prepare(registry=app.wsgi.registry)
    try:
        request = env["request"]
        request.tm.begin()
        request.session["items"] = ["tea"]
        request.tm.commit()
        assert request.session["items"] == ["tea"]  # handed out after the commit, left alone
        request.tm.begin()
        request.tm.commit()  # nothing changed: fine
        request.session["items"].append("milk")  # no transaction: told at the next begin()
        request.tm.begin()
        with pytest.raises(SessionError, match="already written for this request"):
            request.tm.commit()
        request.tm.abort()
    finally:
        env["closer"]()
    assert app.row().data == b'{"items":["tea"]}'


def test_pshell_a_change_after_an_abort_raises_and_says_so(app):
    env = prepare(registry=app.wsgi.registry)
    try:
        request = env["request"]
        request.tm.begin()
        request.session["items"] = ["tea"]
        request.tm.abort()
        request.tm.begin()
        with pytest.raises(SessionError, match="transaction that was aborted"):
            request.session["more"] = 1
        items = request.session["items"]  # reading still works
        items.append("milk")
        with pytest.raises(SessionError, match="transaction that was aborted"):
            request.tm.commit()
        request.tm.abort()
    finally:
        env["closer"]()
    assert app.rows() == []


def test_the_synchronizer_is_gone_when_the_request_ends(app):
    """pyramid_tm's default manager is the thread's: a read-only load's synchronizer must not
    be told of a later request's transaction."""
    app.post_json("/set", {"items": ["tea"]})
    env = prepare(registry=app.wsgi.registry)
    request = env["request"]
    request.headers["Cookie"] = f"session={app.cookies['session']}"
    request.session.get("items")
    manager = request.tm
    assert manager.registeredSynchs()
    env["closer"]()
    assert not manager.registeredSynchs()
