"""sessions-cache in one process: reads without SQL, and every change seen, on each database.

On SQLite and MariaDB the cache needs ``cache_max_staleness``; on PostgreSQL
it runs on its listener (the trigger ``make_model`` installs through
``add_ddl``). Tests wait for events (a notification counted, the listener
live), never for time.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
import sessions_cache
import sqlalchemy as sa
from sessions_cache import CacheMixin, cache_of, listener_of
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from sessions_kernel import BaseMixin
from sessions_kernel import add_ddl as sessions_kernel_add_ddl
from sessions_kernel.maintenance import collect_garbage
from sessions_kernel.testing import make_model

STALENESS = {"cache_max_staleness": "30"}


def wait_for(condition, what: str, attempts: int = 400) -> None:
    """Poll ``condition`` (an event, not a duration): at most 400 polls, 25 ms apart."""
    event = threading.Event()
    for _ in range(attempts):
        if condition():
            return
        event.wait(0.025)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture
def cached(apps):
    """``cached(*mixins, settings=None, **options)``: ``apps`` of ``make_model(CacheMixin,
    *mixins)``."""

    def build(*mixins, settings=None, **kwargs):
        return apps(make_model(CacheMixin, *mixins), settings, **kwargs)

    return build


def warm(app):
    """A stored session whose row the cache holds (and, on PostgreSQL, a live listener)."""
    app.post_json("/set", {"a": 1})
    app.get("/read")  # a miss: read and kept
    listener = listener_of(app.factory)
    if listener is not None:
        # a heartbeat sent after every commit so far came back: their notifications
        # (which evict what a read kept meanwhile) have all arrived
        written = time.monotonic()
        wait_for(lambda: (listener.alive_since or 0) > written, "a heartbeat after the writes")
        app.get("/read")  # filled again
    assert app.get("/read").json["data"] == {"a": 1}
    return cache_of(app.factory)


def test_a_cached_read_runs_no_sql_and_takes_no_connection(cached):
    app = cached()
    cache = warm(app)
    checkouts = []
    sa.event.listen(app.engine, "checkout", lambda *args: checkouts.append(1))
    hits = cache.stats.hits
    with app.count() as sql:
        response = app.get("/read")
    assert response.json["data"] == {"a": 1}
    assert sql.statements == []
    assert checkouts == []
    assert cache.stats.hits == hits + 1


def test_a_write_of_a_cached_row_is_one_update_with_no_select(cached):
    app = cached()
    warm(app)
    with app.count() as sql:
        app.post_json("/set", {"b": 2})
    assert sql.kinds() == ["UPDATE"], sql.statements
    # this process's commit evicted the row: the next read sees the write
    assert app.get("/read").json["data"] == {"a": 1, "b": 2}


def test_a_logout_in_this_process_is_refused_at_once_with_a_copied_cookie(cached):
    app = cached()
    warm(app)
    thief = app.new_browser()
    thief.set_cookie("session", app.cookies["session"])
    assert thief.get("/read").json["data"] == {"a": 1}  # served from the cache
    app.post("/invalidate")
    after = thief.get("/read").json
    assert (after["data"], after["new"]) == ({}, True)
    assert app.rows() == []


def test_a_login_evicts_the_old_id(cached):
    app = cached()
    warm(app)
    old_cookie = app.cookies["session"]
    app.post("/regenerate")
    thief = app.new_browser()
    thief.set_cookie("session", old_cookie)
    assert thief.get("/read").json["new"] is True
    assert app.get("/read").json["data"] == {"a": 1}


def test_gc_evicts_what_it_deleted(cached):
    app = cached(settings={"max_age": "100"})
    warm(app)
    app.clock.advance(101)
    result = collect_garbage(app.factory, app.engine)
    assert result.deleted == 1
    # expired anyway; the row is gone and so is its cached copy
    assert len(cache_of(app.factory)) == 0


def test_a_stale_cached_copy_is_never_written_over_a_newer_row(cached, session_db_url):
    """Another process's write the cache has not heard of yet (no notification on this
    database, or not delivered yet): a write from the cached copy merges, never overwrites."""
    app = cached()
    cache = warm(app)
    listener = listener_of(app.factory)
    table = app.model.__table__
    with app.engine.begin() as connection:
        data = connection.execute(sa.select(table.c.data)).scalar_one()
        newer = data.replace(b'"a": 1', b'"a": 1, "other": 3').replace(b'"a":1', b'"a":1,"other":3')
        assert newer != data
        connection.execute(table.update().values(data=newer, version=table.c.version + 1))
    if listener is not None:  # PostgreSQL: the trigger told this process
        wait_for(lambda: len(cache) == 0, "the notification evicted the row")
    app.post_json("/set", {"b": 2})
    assert app.get("/read").json["data"] == {"a": 1, "other": 3, "b": 2}


def test_rows_changed_in_a_shared_transaction_are_not_served_from_the_cache(cached):
    """pshell, the starter's fixtures: a transaction that deleted a row serves it no more."""
    app = cached()
    warm(app)
    factory = app.factory
    assert factory.observed
    # a row this transaction changed is named by its change log, and not looked up
    import transaction

    from sessions_kernel.changes import ChangeLog

    row_id = app.row().id
    txn = transaction.TransactionManager().begin()
    ChangeLog.of(txn, factory).record(deleted=(row_id,))
    assert ChangeLog.find(txn, factory).covers(row_id)
    txn.abort()


def test_without_max_staleness_the_cache_is_off_on_sqlite_and_mariadb(
    session_app, session_db_url, caplog
):
    app = session_app(make_model(CacheMixin))
    app.post_json("/set", {"a": 1})
    with caplog.at_level(logging.ERROR, "sessions_cache"):
        app.get("/read")
    cache = cache_of(app.factory)
    if session_db_url.startswith("postgresql"):
        sessions_cache.stop(app.factory)
        return
    assert "cache_max_staleness" in caplog.text
    for _ in range(3):
        with app.count() as sql:
            assert app.get("/read").json["data"] == {"a": 1}
        assert sql.kinds() == ["SELECT"]
    assert len(cache) == 0


def test_asking_for_the_cache_of_a_factory_without_it_says_why(session_app):
    """Not a KeyError of a setting's name: the model lacks CacheMixin."""
    app = session_app(make_model())
    for accessor in (cache_of, listener_of, sessions_cache.stop):
        with pytest.raises(ValueError, match="CacheMixin"):
            accessor(app.factory)


def test_max_staleness_bounds_how_long_an_entry_is_served(cached, session_db_url):
    if session_db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's entries live until a notification evicts them")
    app = cached()
    cache = warm(app)
    table = app.model.__table__
    with app.engine.begin() as connection:  # another process's logout: unseen here
        connection.execute(table.delete())
    app.clock.advance(29)
    assert app.get("/read").json["data"] == {"a": 1}  # within the documented bound
    app.clock.advance(2)
    assert app.get("/read").json["new"] is True  # past it: read again, and gone
    assert cache.stats.misses >= 1


def test_an_engine_sharing_one_connection_leaves_the_cache_off(caplog):
    """SQLite :memory: (StaticPool): the cache's own read would share the request's
    connection, see its uncommitted writes and, turning autocommit on, commit them."""
    from sqlalchemy.pool import StaticPool

    from sessions_kernel.testing import SessionTestApp

    engine = sa.create_engine("sqlite://", poolclass=StaticPool)
    model = make_model(CacheMixin)
    model.metadata.create_all(engine)
    app = SessionTestApp(model, engine, settings=STALENESS)
    app.post_json("/set", {"a": 1})
    with caplog.at_level(logging.ERROR, "sessions_cache"):
        for _ in range(3):
            with app.count() as sql:
                assert app.get("/read").json["data"] == {"a": 1}
            assert sql.kinds() == ["SELECT"]
    assert "StaticPool shares one connection" in caplog.text
    assert len(cache_of(app.factory)) == 0


@pytest.fixture
def psycopg2_engine(session_db_url):
    if not session_db_url.startswith("postgresql"):
        pytest.skip("the listener's drivers are PostgreSQL's")
    engine = sa.create_engine(session_db_url.replace("+psycopg:", "+psycopg2:", 1))
    yield engine
    engine.dispose()


def test_the_listener_runs_on_psycopg2_too(psycopg2_engine):
    """A raw DELETE in another connection reaches a listener on a psycopg2 engine."""
    from sessions_kernel.testing import SessionTestApp

    model = make_model(CacheMixin)
    model.metadata.create_all(psycopg2_engine)
    try:
        app = SessionTestApp(model, psycopg2_engine)
        cache = warm(app)
        assert listener_of(app.factory) is not None and cache.stats.hits
        with psycopg2_engine.begin() as connection:
            connection.execute(model.__table__.delete())
        wait_for(lambda: cache.stats.notifications > 0, "the DELETE's notification")
        assert app.get("/read").json["new"] is True
        sessions_cache.stop(app.factory)
    finally:
        model.metadata.drop_all(psycopg2_engine)


def test_a_missing_trigger_leaves_the_cache_off_until_it_is_installed(cached, caplog):
    app = cached()
    listener_needed = app.engine.dialect.name == "postgresql"
    if not listener_needed:
        pytest.skip("the trigger is PostgreSQL's")
    from sessions_cache.ddl import trigger_names

    table = app.model.__table__
    with app.engine.begin() as connection:
        for name in trigger_names(table):
            connection.exec_driver_sql(f'DROP TRIGGER "{name}" ON "{table.name}"')
    app.post_json("/set", {"a": 1})
    with caplog.at_level(logging.ERROR, "sessions_cache"):
        app.get("/read")  # starts the listener, which finds no trigger
        listener = listener_of(app.factory)
        wait_for(lambda: listener.trigger_missing, "the listener saw no trigger")
    assert "psessions <config.ini> ddl --apply" in caplog.text
    for _ in range(2):
        with app.count() as sql:
            app.get("/read")
        assert sql.kinds() == ["SELECT"]  # nothing served, nothing filled
    assert len(cache_of(app.factory)) == 0
    from sessions_kernel.maintenance import required_ddl

    with app.engine.begin() as connection:
        for statement in required_ddl(app.model, connection.dialect):
            connection.exec_driver_sql(statement)
    wait_for(listener.live, "the listener went live once the trigger was there", 800)
    warm(app)
    with app.count() as sql:
        app.get("/read")
    assert sql.statements == []


def test_a_model_with_an_eagerly_loaded_relationship_is_served(session_engine):
    """The user relationship sessions-userid's docs show (``lazy="joined"``): a served row
    joins the request's SQLAlchemy session and loads the relationship when first read."""
    from sessions_kernel.testing import SessionTestApp

    class Base(DeclarativeBase):
        pass

    class User(Base):
        __tablename__ = f"cache_users_{id(Base)}"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(20))

    class Session(CacheMixin, BaseMixin, Base):
        __tablename__ = f"cache_sessions_{id(Base)}"
        user_id: Mapped[int | None] = mapped_column(sa.ForeignKey(User.id))
        user: Mapped[User | None] = relationship(lazy="joined")

    sessions_kernel_add_ddl(Session)
    Base.metadata.create_all(session_engine)

    def user_view(request):
        session = request.session
        if request.method == "POST":
            session.row.user_id = 1  # a column of the application's own: written at commit
        user = session.row.user if session.row is not None else None
        return {"user": user.name if user else None}

    def configure(config):
        config.add_route("user", "/user")
        config.add_view(user_view, route_name="user", renderer="json")

    try:
        with session_engine.begin() as connection:
            connection.execute(User.__table__.insert().values(id=1, name="ann"))
        app = SessionTestApp(Session, session_engine, settings=STALENESS, configure=configure)
        app.post_json("/set", {"a": 1})
        app.post("/user")
        cache = warm(app)
        hits = cache.stats.hits
        with app.count() as sql:
            assert app.get("/user").json == {"user": "ann"}
        assert cache.stats.hits == hits + 1
        assert len(sql.statements) == 1 and User.__tablename__ in sql.statements[0]
        sessions_cache.stop(app.factory)
    finally:
        Base.metadata.drop_all(session_engine)
