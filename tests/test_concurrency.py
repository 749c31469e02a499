"""Concurrent requests of one session lose nothing, on every database and isolation level.

Two kinds of tests: scripted interleavings (threads paused at chosen points,
so each outcome is exact), and a hammer (many threads at once, through the
whole WSGI stack, each with its own database connection).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from concurrency_support import browser_with, build, data, run_paused

from sessions_kernel.pytest_plugin import server_url
from sessions_kernel.testing import make_model

LEVELS = [
    ("sqlite", None),
    ("postgresql", "READ COMMITTED"),
    ("postgresql", "REPEATABLE READ"),
    ("postgresql", "SERIALIZABLE"),
    ("mariadb", "REPEATABLE READ"),
    ("mariadb", "READ COMMITTED"),
]


@pytest.fixture(params=LEVELS, ids=lambda p: f"{p[0]}-{(p[1] or 'default').replace(' ', '_')}")
def engine(request, tmp_path):
    database, level = request.param
    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'concurrency.sqlite'}"
        engine = sa.create_engine(url, connect_args={"timeout": 30})
    else:
        url = server_url(database)  # skipped (or failed, in CI) when the server is not there
        engine = sa.create_engine(url, isolation_level=level, pool_size=10)
    yield engine
    engine.dispose()


@pytest.fixture
def app(engine):
    app = build(engine)
    yield app
    app.model.metadata.drop_all(engine)


# -- scripted interleavings -------------------------------------------------------------------


def test_different_keys_are_merged(app):
    app.post_json("/set", {"base": 0})
    slow, _ = run_paused(app, {"set": {"slow": 1}}, lambda: app.post_json("/set", {"fast": 2}))
    assert slow.status_int == 200
    assert data(app) == {"base": 0, "slow": 1, "fast": 2}
    counts = app.recorder.counts
    # READ COMMITTED and MariaDB merge without running the view again; PostgreSQL's
    # REPEATABLE READ and SERIALIZABLE refuse the UPDATE, and pyramid_retry runs it again.
    assert counts["SessionMerged"] + (counts["NewRequest"] - 3) == 1
    assert [event.keys for event in app.recorder.merged] in ([], [("slow",)])


def test_same_key_is_retried_not_overwritten(app):
    app.post_json("/set", {"n": 0})
    slow, _ = run_paused(app, {"incr": ["n"]}, lambda: app.get("/incr/n"))
    assert slow.status_int == 200
    assert data(app) == {"n": 2}
    assert app.recorder.counts["NewRequest"] == 4  # set, slow, fast, slow again


def test_flash_queues_merge(app):
    app.post_json("/set", {"a": 1})
    run_paused(
        app,
        {"flash": ["from slow"]},
        lambda: app.post_json("/flash", {"msg": "from fast", "queue": "other"}),
    )
    merged = [event.keys for event in app.recorder.merged]
    retried = app.recorder.counts["NewRequest"] > 3
    # merged (a flash queue is named flash:<queue>, the default queue is ""), or, on
    # PostgreSQL's REPEATABLE READ and SERIALIZABLE, retried
    assert merged == [("flash:",)] or (retried and merged == [])
    assert app.get("/pop_flash").json == {"messages": ["from slow"]}
    assert app.get("/pop_flash?queue=other").json == {"messages": ["from fast"]}


def test_without_pyramid_retry_a_conflict_fails_clearly(engine):
    app = build(engine, retry=False)
    try:
        app.post_json("/set", {"n": 0})
        slow, _ = run_paused(app, {"incr": ["n"]}, lambda: app.get("/incr/n"))
        assert data(app) == {"n": 1}  # the fast write stands; nothing silently dropped
        if isinstance(slow, Exception):  # PostgreSQL refused the UPDATE itself
            assert engine.dialect.name == "postgresql"
            assert "could not serialize access" in str(slow)
        else:
            assert slow.status_int == 500
            assert "both changed 'n'" in slow.json["error"]
            assert "pyramid_retry" in slow.json["error"]
    finally:
        app.model.metadata.drop_all(engine)


def test_a_logout_is_not_undone_by_a_slower_write(app):
    app.post_json("/set", {"user": "ann"})
    (old,) = app.rows()
    logout = app.new_browser()
    logout.set_cookie("session", app.cookies["session"])
    slow, out = run_paused(app, {"set": {"late": 1}}, lambda: logout.post_json("/invalidate"))
    assert out.headers["Set-Cookie"].startswith("session=; Max-Age=0")
    assert slow.status_int == 200
    rows = app.rows()
    assert old.id not in {row.id for row in rows}  # not resurrected
    if app.recorder.counts["NewRequest"] == 3:
        # READ COMMITTED, MariaDB, SQLite: the slow write finds the row gone, drops its
        # change and deletes the cookie
        assert rows == []
        assert slow.headers["Set-Cookie"].startswith("session=; Max-Age=0")
    else:
        # PostgreSQL REPEATABLE READ / SERIALIZABLE refuse the UPDATE; pyramid_retry runs
        # the request again, as if it had come after the logout: a new, anonymous session
        assert [json.loads(row.data) for row in rows] == [{"late": 1}]


def test_a_session_deleted_meanwhile_loses_the_cookie_it_was_set_with(engine):
    """The slower request moved the cookie to another path; the browser's is still at /."""
    from sessions_cookie_settings import ConfigCookieMixin

    app = build(engine, model=make_model(ConfigCookieMixin))
    try:
        app.post_json("/set", {"user": "ann"})
        logout = browser_with(app, app.cookies["session"])
        slow, _ = run_paused(
            app,
            {"set": {"late": 1}, "settings": {"cookie_path": "/app"}},
            lambda: logout.post_json("/invalidate"),
        )
        assert app.rows() == [] or app.recorder.counts["NewRequest"] > 3
        if app.recorder.counts["NewRequest"] == 3:  # the merge found the row gone
            [header] = [v for k, v in slow.headerlist if k == "Set-Cookie"]
            assert header.startswith("session=; Max-Age=0; Path=/;"), header
    finally:
        app.model.metadata.drop_all(engine)


def test_a_slower_logout_wins_over_a_write(app):
    app.post_json("/set", {"user": "ann"})
    writer = browser_with(app, app.cookies["session"])
    run_paused(app, {"logout": True}, lambda: writer.post_json("/set", {"more": 1}))
    assert app.rows() == []


def test_the_common_path_costs_no_extra_statement(app):
    app.post_json("/set", {"a": 1})
    with app.count() as sql:
        app.get("/incr/a")
    assert sql.kinds() == ["SELECT", "UPDATE"]
    assert "version" in sql.statements[1].split("WHERE")[1]


# -- the hammer ---------------------------------------------------------------------------------

KEYS, INCREMENTS, THREADS = 12, 24, 6


def test_hammer_loses_nothing(engine):
    app = build(engine, attempts=50)
    try:
        app.post_json("/set", {"start": True})
        cookie = app.cookies["session"]
        jobs = [("set", i) for i in range(KEYS)] + [("incr", i) for i in range(INCREMENTS)]

        def request(job: tuple[str, int]) -> int:
            browser = browser_with(app, cookie)
            kind, i = job
            if kind == "set":
                return browser.post_json("/set", {f"key{i}": i}).status_int
            return browser.get("/incr/counter").status_int

        with ThreadPoolExecutor(THREADS) as pool:
            statuses = list(pool.map(request, jobs))
        assert statuses == [200] * len(jobs)
        stored = data(app)
        assert stored["counter"] == INCREMENTS
        assert all(stored[f"key{i}"] == i for i in range(KEYS))
    finally:
        app.model.metadata.drop_all(engine)
