"""sessions_kernel.cluster without a cluster: error classes, the tween, the engine helper."""

from __future__ import annotations

import pymysql
import pytest
import sqlalchemy as sa
import transaction
import webtest
from pyramid.config import Configurator

from sessions_kernel import cluster
from sessions_kernel.testing import TEST_SECRET_KEY, add_dbsession


def wrapped(orig: Exception, statement: str | None = "UPDATE x SET y=1", phase=None):
    error = sa.exc.OperationalError(statement, {}, orig)
    if phase is not None:
        setattr(error, cluster.PHASE_ATTRIBUTE, phase)
    return error


class FakeMariadbError(Exception):
    """Like MariaDB Connector/Python's errors: the number in ``errno``, a message in args."""

    __module__ = "mariadb"

    def __init__(self, message: str, errno: int) -> None:
        super().__init__(message)
        self.errno = errno


class FakeMySQLdbError(Exception):
    """Like mysqlclient's errors: ``(number, message)``."""

    __module__ = "MySQLdb._exceptions"


@pytest.mark.parametrize(
    "orig",
    [
        pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock"),
        FakeMySQLdbError(1213, "Deadlock found when trying to get lock"),
        FakeMariadbError("Deadlock found when trying to get lock", 1213),
    ],
    ids=["pymysql", "mysqlclient", "mariadb-connector"],
)
def test_every_mysql_driver_has_its_error_number_read(orig):
    assert cluster.error_code(orig) == 1213
    assert cluster.error_code(wrapped(orig)) == 1213
    assert cluster.classify_error(wrapped(orig)) == "retry"
    assert cluster.is_retryable(wrapped(orig))


def test_errors_of_other_databases_are_not_ours():
    class PgError(Exception):
        __module__ = "psycopg.errors"

    assert cluster.error_code(PgError(1213)) is None
    assert cluster.classify_error(wrapped(PgError("deadlock"))) is None
    assert cluster.classify_error(ValueError(1213)) is None
    # a MySQL error that is the application's own fault is not retried either
    missing = pymysql.err.ProgrammingError(1146, "Table 'test.x' doesn't exist")
    assert cluster.classify_error(wrapped(missing)) is None


@pytest.mark.parametrize(
    ("code", "kind"),
    [(1205, "retry"), (1047, "unavailable"), (2003, "unavailable"), (1053, "unavailable")],
)
def test_conflicts_and_unavailable_nodes(code, kind):
    assert cluster.classify_error(wrapped(pymysql.err.OperationalError(code, "x"))) == kind
    assert cluster.is_retryable(wrapped(pymysql.err.OperationalError(code, "x")))


@pytest.mark.parametrize(
    ("statement", "phase", "kind"),
    [
        ("SELECT 1", "statement", "retry"),
        (None, "connect", "unavailable"),
        (None, "rollback", "retry"),
        (None, "commit", "unknown-outcome"),
        # without the phase (an engine not built by galera_engine): by the statement
        ("UPDATE s SET v=2", None, "retry"),
        (None, None, "unknown-outcome"),
        ("COMMIT", None, "unknown-outcome"),
    ],
)
def test_a_lost_connection_is_retried_unless_it_was_lost_at_commit(statement, phase, kind):
    error = wrapped(pymysql.err.OperationalError(2013, "Lost connection"), statement, phase)
    assert cluster.classify_error(error) == kind
    assert cluster.is_retryable(error) == (kind != "unknown-outcome")


def test_sync_wait_is_a_bit_mask():
    engine = sa.create_engine("sqlite://")
    with pytest.raises(ValueError, match="bit mask"):
        cluster.install_sync_wait(engine, 16)


def test_the_phase_of_an_error_is_recorded(tmp_path):
    engine = cluster.track_error_phase(sa.create_engine(f"sqlite:///{tmp_path / 'x.sqlite'}"))
    with engine.connect() as conn, pytest.raises(sa.exc.OperationalError) as info:
        conn.execute(sa.text("SELECT * FROM missing"))
    assert getattr(info.value, cluster.PHASE_ATTRIBUTE) == "statement"


# -- the tween -----------------------------------------------------------------------------


def app_raising(errors: list[BaseException], attempts: int = 3, at_commit: bool = False):
    """An app whose view (or before-commit hook) raises the next error of ``errors``."""
    calls = []
    settings = {
        "tm.manager_hook": "pyramid_tm.explicit_manager",
        "retry.attempts": str(attempts),
        "session.secret_key": TEST_SECRET_KEY,
    }
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_retry")
        config.include("sessions_kernel.cluster")
        add_dbsession(config, sa.create_engine("sqlite://"))

        def view(request):
            calls.append(request.environ["retry.attempt"])
            error = errors.pop(0) if errors else None
            if error is not None:
                if not at_commit:
                    raise error

                def fail():
                    raise error

                request.tm.get().addBeforeCommitHook(fail)
            return {"attempt": request.environ["retry.attempt"]}

        config.add_route("view", "/")
        config.add_view(view, route_name="view", renderer="json")
        app = config.make_wsgi_app()
    return webtest.TestApp(app), calls


def deadlock():
    return wrapped(pymysql.err.OperationalError(1213, "Deadlock found"))


def lost_at_commit():
    return wrapped(pymysql.err.OperationalError(2013, "Lost connection"), None, "commit")


@pytest.mark.parametrize("at_commit", [False, True], ids=["in-view", "at-commit"])
def test_a_conflict_is_retried(at_commit):
    app, calls = app_raising([deadlock(), deadlock()], at_commit=at_commit)
    assert app.get("/").json == {"attempt": 2}
    assert calls == [0, 1, 2]


def test_the_last_attempt_answers_503_not_a_traceback():
    app, calls = app_raising([deadlock(), deadlock(), deadlock()])
    response = app.get("/", status=503)
    assert response.headers["Retry-After"] == "1"
    assert calls == [0, 1, 2]


def test_an_unknown_commit_outcome_is_not_run_again():
    app, calls = app_raising([lost_at_commit()], at_commit=True)
    app.get("/", status=503)
    assert calls == [0]


class AbortFails:
    """A data manager whose abort fails with a lost node, as a dead connection's can."""

    transaction_manager = None

    def abort(self, txn):
        raise wrapped(pymysql.err.OperationalError(1047, "WSREP has not yet prepared node"))

    tpc_begin = commit = tpc_vote = tpc_finish = tpc_abort = abort

    def sortKey(self):
        return "abort-fails"


def test_no_transaction_in_place_of_a_database_error_is_that_error():
    """When the abort after a failure fails too, pyramid_tm raises NoTransaction (its
    transaction is gone): the database's error behind it decides, not a traceback."""
    with pytest.raises(transaction.interfaces.NoTransaction):
        app_failing_abort(attempts=1, include=False).get("/")
    app = app_failing_abort(attempts=1)
    app.get("/", status=503)
    app = app_failing_abort(attempts=3)
    assert app.get("/").json == {"attempt": 1}


def app_failing_abort(attempts: int, include: bool = True):
    settings = {"tm.manager_hook": "pyramid_tm.explicit_manager", "retry.attempts": str(attempts)}
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_retry")
        if include:
            config.include("sessions_kernel.cluster")

        def view(request):
            attempt = request.environ["retry.attempt"]
            if attempt == 0:
                request.tm.get().join(AbortFails())
                raise wrapped(pymysql.err.OperationalError(2013, "Lost connection"), "SELECT 1")
            return {"attempt": attempt}

        config.add_route("view", "/")
        config.add_view(view, route_name="view", renderer="json")
        return webtest.TestApp(config.make_wsgi_app())


def test_a_session_conflict_on_the_last_attempt_is_a_503():
    from sessions_kernel import SessionConflictError

    app, calls = app_raising([SessionConflictError("both changed 'n'")] * 3)
    app.get("/", status=503)
    assert calls == [0, 1, 2]


def test_other_errors_pass_through():
    app, calls = app_raising([RuntimeError("a bug")])
    with pytest.raises(RuntimeError, match="a bug"):
        app.get("/")
    assert calls == [0]
