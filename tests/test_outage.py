"""sessions_kernel.outage: which database errors are run again, which are answered 503.

The drivers' real errors are provoked on PostgreSQL and MariaDB (a closed port on
127.0.0.1, the test's own connection killed during a transaction); the tween is
checked with errors raised where a request meets them.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import time
from typing import Any

import psycopg
import pymysql
import pytest
import sqlalchemy as sa
from kernel_support import make_included_app
from pyramid.config import Configurator
from pyramid.interfaces import ITweens

from sessions_kernel import outage
from sessions_kernel.pytest_plugin import server_url
from sessions_kernel.testing import TEST_SECRET_KEY, make_model

APPLICATION_NAME = f"outage-test-{os.getpid()}"


def wrapped(orig: Exception, statement: str | None = "UPDATE s SET v = 2", phase=None):
    error = sa.exc.OperationalError(statement, {}, orig)
    if phase is not None:
        setattr(error, outage.PHASE_ATTRIBUTE, phase)
    return error


def pg(state: str, message: str = "x") -> Exception:
    """A psycopg error of the class psycopg raises for ``state``."""
    return psycopg.errors.lookup(state)(message)


# -- classification ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("orig", "statement", "phase", "kind"),
    [
        # the server rolled back
        (pg("40001"), "UPDATE s SET v = 2", None, "retry"),
        (pg("40P01"), None, "commit", "retry"),
        # the server refused a new connection: starting up, shutting down, full
        (pg("57P03", "the database system is starting up"), None, "connect", "unavailable"),
        (pg("57P03", "the database system is shutting down"), None, None, "unavailable"),
        (pg("53300"), None, "connect", "unavailable"),
        (pg("08001"), None, None, "unavailable"),
        # the server ended the connection: safe unless during COMMIT
        (pg("57P01"), "SELECT 1", None, "retry"),
        (pg("57P01"), None, "rollback", "retry"),
        (pg("57P01"), None, "commit", "unknown-outcome"),
        (pg("57P01"), "COMMIT", None, "unknown-outcome"),
        (pg("57P02"), "SELECT 1", None, "retry"),
        (pg("08006"), None, None, "unknown-outcome"),  # nothing says where: as at COMMIT
        (pg("08007"), "SELECT 1", None, "unknown-outcome"),
        # psycopg's own failures have no SQLSTATE
        (psycopg.OperationalError("connection failed: Connection refused"), None, "connect",
         "unavailable"),
        (psycopg.OperationalError("server closed the connection unexpectedly"), "SELECT 1",
         None, "retry"),
        # MySQL-family numbers, as before
        (pymysql.err.OperationalError(1213, "Deadlock"), None, "commit", "retry"),
        (pymysql.err.OperationalError(1040, "Too many connections"), None, "connect",
         "unavailable"),
        (pymysql.err.OperationalError(2013, "Lost connection"), "SELECT 1", None, "retry"),
        (pymysql.err.OperationalError(2006, "gone away"), None, "commit", "unknown-outcome"),
    ],
)  # fmt: skip
def test_postgresql_and_mysql_errors_are_classified(orig, statement, phase, kind):
    error = wrapped(orig, statement, phase)
    assert outage.classify_error(error) == kind
    assert outage.is_retryable(error) == (kind != "unknown-outcome")


@pytest.mark.parametrize(
    "orig",
    [
        pg("42P01", 'relation "x" does not exist'),  # the application's own mistakes
        pg("23505", "duplicate key value"),
        pg("28P01", "password authentication failed"),
        psycopg.errors.lookup("57014")("canceling statement due to statement timeout"),
        pymysql.err.ProgrammingError(1146, "Table 'test.x' doesn't exist"),
        ValueError("not a database error"),
    ],
)
def test_errors_that_are_not_an_outage_are_not_ours(orig):
    assert outage.classify_error(wrapped(orig)) is None


def test_another_driver_s_broken_connection_counts_through_sqlalchemy():
    class Lost(Exception):
        __module__ = "someotherdriver"

    error = sa.exc.OperationalError("SELECT 1", {}, Lost(), connection_invalidated=True)
    assert outage.classify_error(error) == "retry"
    error = sa.exc.OperationalError(None, {}, Lost(), connection_invalidated=True)
    assert outage.classify_error(error) == "unknown-outcome"
    assert outage.classify_error(sa.exc.OperationalError("SELECT 1", {}, Lost())) is None


# -- the drivers' real errors ----------------------------------------------------------------

MYSQL_DRIVERS = {"pymysql": "pymysql", "mysqldb": "MySQLdb", "mariadbconnector": "mariadb"}


@pytest.fixture(params=["postgresql-psycopg", *(f"mariadb-{d}" for d in MYSQL_DRIVERS)])
def driver_url(request: pytest.FixtureRequest) -> sa.URL:
    database, driver = request.param.split("-")
    if database == "mariadb" and importlib.util.find_spec(MYSQL_DRIVERS[driver]) is None:
        pytest.skip(f"the {MYSQL_DRIVERS[driver]} driver is not installed (the drivers extra)")
    url = sa.make_url(server_url(database)).set(drivername=f"{database}+{driver}")
    if driver == "mariadbconnector":
        url = url.difference_update_query(["charset"])
    return url


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def own_engine(url: sa.URL) -> sa.Engine:
    """An engine whose PostgreSQL connections carry this test's application_name."""
    args = {"application_name": APPLICATION_NAME} if url.get_backend_name() == "postgresql" else {}
    return sa.create_engine(url, connect_args=args)


def kill(engine: sa.Engine, victim: sa.Connection) -> None:
    """End the server side of ``victim`` (a connection this test opened), from another."""
    with engine.connect() as killer:
        if engine.dialect.name == "postgresql":
            pid = victim.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            killer.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)}, 5000)")
        else:
            thread_id = victim.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
            killer.exec_driver_sql(f"KILL {int(thread_id)}")
        killer.commit()
    time.sleep(0.2)  # the server has closed its end


def test_a_refused_connection_is_retried(driver_url):
    engine = own_engine(driver_url.set(port=closed_port()))
    with pytest.raises(sa.exc.DBAPIError) as refused:
        engine.connect()
    assert outage.error_phase(refused.value) == "connect"
    assert outage.classify_error(refused.value) == "unavailable"
    assert outage.is_retryable(refused.value)


def test_a_connection_killed_before_a_statement_is_retried(driver_url):
    engine = own_engine(driver_url)
    try:
        victim = engine.connect()
        victim.exec_driver_sql("SELECT 1")  # in a transaction
        kill(engine, victim)
        with pytest.raises(sa.exc.DBAPIError) as killed:
            victim.exec_driver_sql("SELECT 2")
        assert killed.value.connection_invalidated
        assert outage.error_phase(killed.value) == "statement"
        assert outage.classify_error(killed.value) == "retry"
        victim.close()
        # SQLAlchemy invalidated the pool: the next connection works
        with engine.connect() as fresh:
            assert fresh.exec_driver_sql("SELECT 3").scalar() == 3
    finally:
        engine.dispose()


def test_a_connection_killed_before_commit_is_an_unknown_outcome(driver_url):
    engine = own_engine(driver_url)
    try:
        victim = engine.connect()
        victim.exec_driver_sql("SELECT 1")
        kill(engine, victim)
        with pytest.raises(sa.exc.DBAPIError) as killed:
            victim.commit()
        assert outage.error_phase(killed.value) == "commit"
        assert outage.classify_error(killed.value) == "unknown-outcome"
        assert not outage.is_retryable(killed.value)
        victim.close()
    finally:
        engine.dispose()


def test_the_recorded_phase_agrees_with_the_traceback(driver_url):
    """track_error_phase (galera_engine's) and the traceback say the same."""
    engine = outage.track_error_phase(own_engine(driver_url))
    try:
        victim = engine.connect()
        victim.exec_driver_sql("SELECT 1")
        kill(engine, victim)
        with pytest.raises(sa.exc.DBAPIError) as killed:
            victim.commit()
        assert getattr(killed.value, outage.PHASE_ATTRIBUTE) == "commit"
        assert outage._phase_from_traceback(killed.value) == "commit"
        victim.close()
    finally:
        engine.dispose()


# -- the tween --------------------------------------------------------------------------------


def app_raising(errors: list[BaseException], *, at_commit: bool = False, attempts: int = 3):
    """An application through config.include("sessions_kernel") whose view (or
    before-commit hook) raises the next of ``errors``."""
    calls: list[int] = []
    model = make_model(tablename="outage_tween")
    settings = {
        "tm.manager_hook": "pyramid_tm.explicit_manager",
        "retry.attempts": str(attempts),
        "session.secret_key": TEST_SECRET_KEY,
        "session.model_class": model,
    }

    def configure(config: Configurator) -> None:
        def view(request: Any) -> Any:
            calls.append(request.environ["retry.attempt"])
            error = errors.pop(0) if errors else None
            if error is not None:
                if not at_commit:
                    raise error

                def fail() -> None:
                    raise error

                request.tm.get().addBeforeCommitHook(fail)
            return {"attempt": request.environ["retry.attempt"]}

        config.add_route("view", "/")
        config.add_view(view, route_name="view", renderer="json")

    app = make_included_app(sa.create_engine("sqlite://"), settings, configure, retry=True)
    return app, calls


def shutdown(statement: str | None = "SELECT 1") -> Exception:
    return wrapped(pg("57P01", "terminating connection due to administrator command"), statement)


def test_a_postgresql_restart_is_run_again():
    app, calls = app_raising([shutdown(), wrapped(pg("57P03"), None)])
    assert app.get("/").json == {"attempt": 2}
    assert calls == [0, 1, 2]


def test_the_last_attempt_answers_503_with_retry_after(caplog):
    app, calls = app_raising([shutdown(), shutdown(), shutdown()])
    response = app.get("/", status=503)
    assert response.headers["Retry-After"] == "1"
    assert calls == [0, 1, 2]
    assert "57P01" in caplog.text
    assert "UPDATE" not in caplog.text and "SELECT" not in caplog.text  # no SQL, no parameters


def test_a_connection_lost_at_commit_is_answered_503_not_run_again():
    app, calls = app_raising([shutdown(statement=None)], at_commit=True)
    response = app.get("/", status=503)
    assert "may or may not have been saved" in response.text
    assert calls == [0]


def test_other_errors_pass_through():
    app, calls = app_raising([wrapped(pg("42P01", 'relation "x" does not exist'))])
    with pytest.raises(sa.exc.OperationalError):
        app.get("/")
    assert calls == [0]


def tween_names(**settings: Any) -> list[str]:
    includes = settings.pop("includes", ["sessions_kernel"])
    model = make_model(tablename="outage_tweens")
    app_settings = {"session.secret_key": TEST_SECRET_KEY, "session.model_class": model}
    with Configurator(settings={**app_settings, **settings}) as config:
        config.include("pyramid_tm")
        config.include("pyramid_retry")
        for name in includes:
            config.include(name)
        app = config.make_wsgi_app()
    return [name for name, _ in app.registry.getUtility(ITweens).implicit()]


def test_on_by_default_over_pyramid_tm_once_and_off_by_a_setting():
    names = tween_names()
    assert names.index("sessions_kernel.outage.outage_tween_factory") < names.index(
        "pyramid_tm.tm_tween_factory"
    )
    both = tween_names(includes=["sessions_kernel", "sessions_kernel.cluster"])
    assert both == names
    assert tween_names(includes=["sessions_kernel.cluster", "sessions_kernel"]) == names
    off = tween_names(**{"sessions_kernel.outage_tween": "false"})
    assert "sessions_kernel.outage.outage_tween_factory" not in off
    # the cluster's include asks for it explicitly
    assert "sessions_kernel.outage.outage_tween_factory" in tween_names(
        includes=["sessions_kernel", "sessions_kernel.cluster"],
        **{"sessions_kernel.outage_tween": "false"},
    )


def test_without_pyramid_tm_the_tween_sits_over_the_exception_view():
    with Configurator(settings={}) as config:
        config.include("sessions_kernel.outage")
        app = config.make_wsgi_app()
    names = [name for name, _ in app.registry.getUtility(ITweens).implicit()]
    assert names.index("sessions_kernel.outage.outage_tween_factory") < names.index(
        "pyramid.tweens.excview_tween_factory"
    )


def test_an_exception_view_s_500_for_an_outage_becomes_a_503():
    model = make_model(tablename="outage_excview")
    settings = {
        "tm.manager_hook": "pyramid_tm.explicit_manager",
        "retry.attempts": "1",
        "session.secret_key": TEST_SECRET_KEY,
        "session.model_class": model,
    }

    def configure(config: Configurator) -> None:
        def view(request: Any) -> Any:
            raise shutdown()

        def error_view(exc: Exception, request: Any) -> Any:
            request.response.status = 500
            return {"error": "rendered"}

        config.add_route("down", "/down")
        config.add_view(view, route_name="down", renderer="json")
        config.add_exception_view(error_view, context=sa.exc.DBAPIError, renderer="json")

    app = make_included_app(sa.create_engine("sqlite://"), settings, configure, retry=True)
    assert app.get("/down", status=503).headers["Retry-After"] == "1"


def test_a_pool_with_no_connection_free_is_a_clean_503_at_once(tmp_path):
    """Every connection of the pool is taken (a slow report, a leak): a request waiting
    for one gets 503 with Retry-After, not SQLAlchemy's TimeoutError and a traceback, and
    is not run again (it would only wait again)."""
    engine = sa.create_engine(
        f"sqlite:///{tmp_path / 'busy.sqlite'}", pool_size=1, max_overflow=0, pool_timeout=0.2
    )
    model = make_model()
    model.metadata.create_all(engine)
    settings = {
        "session.secret_key": TEST_SECRET_KEY,
        "session.model_class": model,
        "retry.attempts": "3",
        "tm.manager_hook": "pyramid_tm.explicit_manager",
    }
    attempts = []

    def count_attempts(config: Configurator) -> None:
        config.add_subscriber(lambda event: attempts.append(1), "pyramid.events.NewRequest")

    app = make_included_app(engine, settings, count_attempts, retry=True)
    app.post_json("/set", {"a": 1})
    held = engine.connect()  # the pool's only connection
    try:
        attempts.clear()
        response = app.get("/read", status=503)
    finally:
        held.close()
    assert response.headers["Retry-After"] == "1"
    assert "busy" in response.text
    assert len(attempts) == 1
    assert app.get("/read").json["data"] == {"a": 1}
