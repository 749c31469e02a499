"""An outside review's attempts to break sessions-cache's promises: each test is one break.

A test marked ``xfail(strict=True)`` is a break left unfixed (its reason says
what would fix it); the others were fixed in the commits that followed this
file. Two "worker processes" on MariaDB or SQLite are two applications (two
factories, two caches) on one table, as in the kernel's own tests.
"""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc

import pytest
import sessions_cache
import sqlalchemy as sa
import transaction
import webtest
import zope.sqlalchemy
from pyramid.config import Configurator
from pyramid.interfaces import ISessionFactory
from pyramid.scripting import prepare
from sessions_cache import CacheMixin, cache_of, listener_of
from sessions_cache.store import RowCache
from sqlalchemy.orm import mapped_column
from test_cache import STALENESS, wait_for

from sessions_kernel.factory import factory_args_from_settings, register_factory, session_factory
from sessions_kernel.testing import (
    TEST_SECRET_KEY,
    SessionTestApp,
    add_dbsession,
    add_test_views,
    make_model,
)


def pause(seconds: float) -> None:
    threading.Event().wait(seconds)


def warm(app, browser=None):
    """The browser's session row held by the cache (and, on PostgreSQL, a live listener)."""
    get = (browser or app).get
    get("/read")
    listener = listener_of(app.factory)
    if listener is not None:
        written = time.monotonic()
        wait_for(lambda: (listener.alive_since or 0) > written, "a heartbeat after the writes")
        get("/read")
    cache = cache_of(app.factory)
    hits = cache.stats.hits
    get("/read")
    assert cache.stats.hits == hits + 1
    return cache


def thief_of(app):
    thief = app.new_browser()
    thief.set_cookie("session", app.cookies["session"])
    return thief


def only(session_db_url, *databases):
    name = session_db_url.split(":", 1)[0].split("+", 1)[0]
    if name not in databases:
        pytest.skip(f"a break of {', '.join(databases)}")


# -- 2, 7: a value a request changed in place, and never committed ------------------------
def _json_views(config):
    def prefs(request):
        row = request.session.row
        if request.method == "POST":
            row.prefs = {"theme": "dark"}
            request.session["x"] = 1
        return {"prefs": row.prefs}

    def poison(request):
        request.session.row.prefs["admin"] = True  # a change in place, then the view fails
        raise RuntimeError("aborted")

    for name, view in (("prefs", prefs), ("poison", poison)):
        config.add_route(name, f"/{name}")
        config.add_view(view, route_name=name, renderer="json")


def test_an_in_place_change_by_an_aborted_request_is_never_served(apps):
    """A JSON column's dict, changed in place by the request whose miss filled the entry,
    then rolled back: the cache kept the very object the request changed, and serves it."""
    app = apps(make_model(CacheMixin, prefs=mapped_column(sa.JSON)), configure=_json_views)
    app.post_json("/set", {"a": 1})
    app.post("/prefs")
    cache = warm(app)
    cache.flush()  # the next read misses, fills, and hands the request the values it keeps
    app.post("/poison", status=500)
    assert app.row().prefs == {"theme": "dark"}  # nothing was committed
    assert app.get("/prefs").json["prefs"] == {"theme": "dark"}


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(lambda n: [[] for _ in range(400)], id="json-nested-lists"),
        pytest.param(lambda n: {f"k{i}": i for i in range(200)}, id="json-dict"),
        pytest.param(lambda n: "\N{GRINNING FACE}" * 2000 + str(n), id="non-ascii-text"),
    ],
)
def test_the_byte_bound_holds_for_plugin_columns(value):
    """cache_max_bytes counts a mutable value as len(repr()) and a str as len(): a JSON
    column of small containers, or text outside Latin-1, holds several times the bound."""
    bound = 2 * 1024 * 1024
    cache = RowCache(max_entries=1_000_000, max_bytes=bound, max_staleness=60)
    gc.collect()
    tracemalloc.start()
    try:
        for n in range(4000):
            row_id = f"{n:064x}"
            values = {"id": row_id, "data": b"{}", "version": 1, "extra": value(n)}
            cache.fill(row_id, values, cache.moment(), 0.0)
            del values
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 1.5 * bound, f"{held} bytes held for a bound of {bound}"


# -- 1, 2: a request whose transaction already began ------------------------------------------
def _query_first(config):
    def view(request):
        request.dbsession.execute(sa.text("SELECT 1"))  # the view's own query first
        return {"data": dict(request.session)}

    config.add_route("query_first", "/query_first")
    config.add_view(view, route_name="query_first", renderer="json")


def test_a_miss_does_not_wait_for_a_second_connection_of_the_pool(session_db_url, session_clock):
    """A pool sized to the threads (here 1, max_overflow=0): the request holds its connection
    when it first reads the session; the cache's fill waits for another until pool_timeout,
    and the request fails, where without the cache it reads in its own transaction."""
    engine = sa.create_engine(session_db_url, pool_size=1, max_overflow=0, pool_timeout=1)
    model = make_model(CacheMixin)
    model.metadata.create_all(engine)
    app = SessionTestApp(
        model, engine, settings=STALENESS, configure=_query_first, clock=session_clock
    )
    try:
        app.post_json("/set", {"a": 1})
        warm(app)
        cache_of(app.factory).flush()
        assert app.get("/query_first").json["data"] == {"a": 1}
    finally:
        sessions_cache.stop(app.factory)
        model.metadata.drop_all(engine)
        engine.dispose()


def _starter_app(model, engine, clock):
    """The SQLAlchemy starter's layout: request.dbsession from the environ when a test
    fixture put one there (one transaction shared across requests)."""
    settings = {
        "tm.manager_hook": "pyramid_tm.explicit_manager",
        "session.secret_key": TEST_SECRET_KEY,
        "session.cache_max_staleness": "30",
    }
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.registry["dbsession_factory"] = add_dbsession(config, engine)
        args = factory_args_from_settings(config.get_settings())
        args.update(model_class=model, clock=clock)
        register_factory(config, session_factory(**args))
        add_test_views(config)
    return config.make_wsgi_app()


@pytest.fixture
def starter(session_engine, session_clock):
    """(app, model, browser): the starter's app, and a browser whose session the cache holds."""
    model = make_model(CacheMixin)
    model.metadata.create_all(session_engine)
    app = _starter_app(model, session_engine, session_clock)
    factory = app.registry.queryUtility(ISessionFactory)
    browser = webtest.TestApp(app)
    browser.post_json("/set", {"a": 1})
    cache = cache_of(factory)
    for _ in range(200):  # on PostgreSQL, until the listener is live and the row kept
        browser.get("/read")
        if cache.stats.hits:
            break
        pause(0.025)
    assert cache.stats.hits
    yield app, model, browser
    sessions_cache.stop(factory)
    model.metadata.drop_all(session_engine)


def _delete_rows(db, model, how):
    if how == "core":
        db.execute(sa.delete(model.__table__))
    else:
        for row in db.scalars(sa.select(model)):
            db.delete(row)
        db.flush()


@pytest.mark.parametrize("how", ["core", "orm"])
def test_pshell_a_row_its_transaction_deleted_is_not_served(starter, how):
    """pshell: request.tm.begin(), the row deleted (SQL, or dbsession.delete), then
    request.session: the transaction holds no such row, the cache served it."""
    app, model, browser = starter
    env = prepare(registry=app.registry)
    try:
        request = env["request"]
        request.environ["HTTP_COOKIE"] = f"session={browser.cookies['session']}"
        request.tm.begin()
        try:
            _delete_rows(request.dbsession, model, how)
            assert request.session.new is True
        finally:
            request.tm.abort()
    finally:
        env["closer"]()


@pytest.mark.parametrize("how", ["core", "orm"])
def test_a_fixtures_shared_transaction_that_deleted_the_row_does_not_serve_it(starter, how):
    app, model, browser = starter
    tm = transaction.TransactionManager(explicit=True)
    tm.begin()
    tm.doom()
    db = app.registry["dbsession_factory"]()
    zope.sqlalchemy.register(db, transaction_manager=tm)
    try:
        _delete_rows(db, model, how)
        shared = webtest.TestApp(
            app, extra_environ={"tm.active": True, "tm.manager": tm, "app.dbsession": db}
        )
        shared.set_cookie("session", browser.cookies["session"])
        assert shared.get("/read").json["new"] is True
    finally:
        tm.abort()


# -- 3: PostgreSQL, the trigger gone while the listener stays live ---------------------------
def _triggers_dropped(app):
    from sessions_cache.ddl import trigger_names

    table = app.model.__table__
    with app.engine.begin() as connection:  # the documented downgrade(), a restore, by hand
        for name in trigger_names(table):
            connection.exec_driver_sql(f'DROP TRIGGER IF EXISTS "{name}" ON "{table.name}"')


def _triggers_disabled(app):
    with app.engine.begin() as connection:  # what pg_restore --disable-triggers does
        connection.exec_driver_sql(f'ALTER TABLE "{app.model.__table__.name}" DISABLE TRIGGER ALL')


def _table_recreated(app):
    app.model.metadata.drop_all(app.engine)  # no trigger fires for a DROP TABLE
    app.model.metadata.create_all(app.engine)  # add_ddl installs the trigger again


@pytest.mark.parametrize(
    "change", [_triggers_dropped, _triggers_disabled, _table_recreated], ids=lambda f: f.__name__
)
def test_the_cache_stops_when_the_trigger_goes(apps, session_db_url, change):
    """The listener checks the trigger once, at connect: once it is dropped or disabled, or
    the table recreated, the heartbeat still comes back, and every later change of a row is
    never told: a logged-out session is served for as long as it stays in the cache."""
    only(session_db_url, "postgresql")
    app = apps(make_model(CacheMixin))
    app.post_json("/set", {"a": 1})
    warm(app)
    change(app)
    with app.engine.begin() as connection:  # a logout in another process
        connection.execute(app.model.__table__.delete())
    pause(4 * listener_of(app.factory).heartbeat)  # past the documented worst case, 3 beats
    assert thief_of(app).get("/read").json["new"] is True
    # and once the trigger is back, the cache turns on again by itself
    from sessions_kernel.maintenance import required_ddl

    with app.engine.begin() as connection:
        connection.exec_driver_sql(f'ALTER TABLE "{app.model.__table__.name}" ENABLE TRIGGER ALL')
        for statement in required_ddl(app.model, connection.dialect):
            connection.exec_driver_sql(statement)
    listener = listener_of(app.factory)
    wait_for(listener.live, "the listener live again once the trigger was back", 800)
    app.post_json("/set", {"b": 2})
    warm(app)


def test_a_table_named_in_capitals_gets_its_cache(apps, session_db_url):
    """trigger_installed() looks the table up with to_regclass('UserSession'), unquoted:
    PostgreSQL folds it to usersession, finds nothing, and the listener reports the trigger
    missing forever (failing closed: no cache, and an error naming ddl --apply, which does
    not help)."""
    only(session_db_url, "postgresql")
    app = apps(make_model(CacheMixin, tablename="UserSession"))
    app.post_json("/set", {"a": 1})
    app.get("/read")
    listener = listener_of(app.factory)
    wait_for(lambda: listener.live() or listener.trigger_missing, "the listener's verdict")
    assert not listener.trigger_missing
    warm(app)


# -- 4: MariaDB and SQLite, the bound of cache_max_staleness ---------------------------------
def test_a_wall_clock_stepped_back_does_not_extend_max_staleness(apps, session_db_url):
    """The entries' deadline is read on the factory's clock, time.time by default: a clock
    stepped back (NTP, a VM resumed) serves an entry for max_staleness plus the step."""
    only(session_db_url, "sqlite", "mariadb")
    app = apps(make_model(CacheMixin))
    app.post_json("/set", {"a": 1})
    warm(app)
    with app.engine.begin() as connection:  # another worker's logout
        connection.execute(app.model.__table__.delete())
    app.clock.advance(-3600)  # the wall clock steps back an hour
    app.clock.advance(31)  # then 31 s pass: past cache_max_staleness = 30
    assert thief_of(app).get("/read").json["new"] is True


def test_log_out_everywhere_through_the_factory_evicts_in_this_process(apps, session_db_url):
    """MariaDB/SQLite promise: every change made through the kernel (and its plugins) in the
    process evicts at once; an admin tool's "log out everywhere" stays served."""
    only(session_db_url, "sqlite", "mariadb")
    from sessions_userid import UseridMixin, invalidate_user_sessions

    def login(request):
        request.session.userid = 7
        return {}

    def configure(config):
        config.add_route("login", "/login")
        config.add_view(login, route_name="login", renderer="json")

    app = apps(make_model(CacheMixin, UseridMixin), configure=configure)
    app.post("/login")
    warm(app)
    with sa.orm.Session(app.engine) as db:
        assert invalidate_user_sessions(app.factory, 7, dbsession=db) == 1
        db.commit()
    assert thief_of(app).get("/read").json["new"] is True


# -- 6: renewal across workers ---------------------------------------------------------------
def test_a_renewal_offer_in_one_worker_does_not_log_the_user_out_in_another(
    apps, session_db_url, session_clock
):
    only(session_db_url, "sqlite", "mariadb")
    from sessions_renewal import RenewalMixin

    settings = {"cache_max_staleness": "5", "renewal_timeout": 60, "renewal_try_every": 5}
    model = make_model(CacheMixin, RenewalMixin)
    a = apps(model, settings)
    b = SessionTestApp(model, a.engine, settings={**STALENESS, **settings}, clock=session_clock)
    try:
        a.post_json("/set", {"user": "ann"})
        session_clock.advance(58)
        b.set_cookie("session", a.cookies["session"])
        assert b.get("/read").json["data"] == {"user": "ann"}  # worker B keeps the row
        session_clock.advance(2)
        offer = a.get("/read")  # worker A offers a new renewal id
        assert "session=" in offer.headers.get("Set-Cookie", "")
        b.set_cookie("session", a.cookies["session"])  # the browser's next request, on B
        session_clock.advance(1)
        assert b.get("/read").json["data"] == {"user": "ann"}
        assert len(a.rows()) == 1
    finally:
        sessions_cache.stop(b.factory)
