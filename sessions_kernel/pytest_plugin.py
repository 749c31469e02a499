"""pytest fixtures for sessions_kernel, its plugins and your application (entry point ``pytest11``).

Installing sessions-kernel adds this plugin to every pytest run in that
environment (pytest loads the ``pytest11`` entry points); its fixtures do
nothing until a test asks for them. ``pytest -p no:sessions_kernel`` leaves
it out.

``session_db_url`` runs a test once per database: SQLite always, PostgreSQL
and MariaDB at the URLs in ``SESSIONS_TEST_POSTGRESQL_URL`` /
``SESSIONS_TEST_MARIADB_URL``. A server whose variable is unset, or that does
not answer (each URL is tried once per run, with a short timeout), is
skipped with that reason, and the end of the run says which databases ran
and which were skipped. With ``SESSIONS_TEST_REQUIRE_SERVERS=1`` (CI sets it)
a missing or silent server fails the tests instead.

``session_app`` builds a :class:`~sessions_kernel.testing.SessionTestApp` for
a model on that database and drops its table afterwards;
``session_application`` does the same for your own application's ``main()``
(see :class:`~sessions_kernel.testing.ApplicationTestApp`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

if TYPE_CHECKING:
    from .model import BaseMixin
    from .testing import ApplicationTestApp, Clock, SessionTestApp

# sessions_kernel.testing is imported by the fixtures that use it, not here: pytest loads
# this plugin in every run of an environment that has sessions-kernel, and a run whose
# tests use none of these fixtures must not need the ``testing`` extra (WebTest, ...).

#: The servers a test runs on besides SQLite, each with the variable that holds its URL.
DATABASES = {
    "postgresql": "SESSIONS_TEST_POSTGRESQL_URL",
    "mariadb": "SESSIONS_TEST_MARIADB_URL",
}
#: Set to 1 (CI does) to fail, not skip, tests of a server that is not set or not reachable.
REQUIRE_SERVERS_ENV = "SESSIONS_TEST_REQUIRE_SERVERS"
#: Seconds a server gets to accept the one connection that tells whether it is there.
PROBE_TIMEOUT = 3

# database name -> None (reachable) or why it is not; filled once per run
_servers: dict[str, str | None] = {}
# database name -> how many tests ran on it, or the reason they were skipped
_report: dict[str, int | str] = {}


def _shown(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def _probe(url: str) -> str | None:
    """None if a connection to ``url`` succeeds within PROBE_TIMEOUT seconds, else why not."""
    try:
        engine = sa.create_engine(
            url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": PROBE_TIMEOUT}
        )
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return f"not reachable at {_shown(url)} ({first[0] if first else type(exc).__name__})"
    return None


def server_url(database: str) -> str:
    """The URL of the ``postgresql`` or ``mariadb`` server under test.

    Skips the calling test when the server's variable is unset or the server
    does not answer (fails it instead with ``SESSIONS_TEST_REQUIRE_SERVERS=1``).
    For fixtures of your own that need a server URL.
    """
    variable = DATABASES[database]
    url = os.environ.get(variable)
    if database not in _servers:
        _servers[database] = (
            _probe(url) if url else f"{variable} is not set: no {database} server to test against"
        )
    reason = _servers[database]
    if reason is not None:
        _report[database] = reason
        if os.environ.get(REQUIRE_SERVERS_ENV, "").strip() not in ("", "0"):
            pytest.fail(f"{database}: {reason} ({REQUIRE_SERVERS_ENV} is set)", pytrace=False)
        pytest.skip(f"{database}: {reason}")
    assert url is not None
    _count(database)
    return url


def _count(database: str) -> None:
    ran = _report.get(database, 0)
    _report[database] = (ran if isinstance(ran, int) else 0) + 1


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def session_db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """The URL of the database under test: a test that uses it runs once per database.

    Parametrized ``sqlite``, ``postgresql``, ``mariadb`` (the test ids end in
    ``[sqlite]``..., so ``-k sqlite`` picks one). SQLite is a file in the
    test's ``tmp_path``. A server's URL is read from
    ``SESSIONS_TEST_POSTGRESQL_URL`` / ``SESSIONS_TEST_MARIADB_URL``; unset,
    or a server that does not answer, skips the test with the reason (fails
    it with ``SESSIONS_TEST_REQUIRE_SERVERS=1``). Every fixture below builds
    on it.
    """
    if request.param == "sqlite":
        _count("sqlite")
        return f"sqlite:///{tmp_path / 'sessions.sqlite'}"
    return server_url(request.param)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """One line saying on which databases the tests ran, and why any were skipped."""
    if not _report:
        return
    parts = []
    for database in ("sqlite", *DATABASES):
        state = _report.get(database)
        if isinstance(state, int):
            parts.append(f"{database}: ran ({state} test{'s' if state != 1 else ''})")
        elif state is not None:
            parts.append(f"{database}: SKIPPED, {state}")
    terminalreporter.write_sep("-", "sessions_kernel databases")
    for part in parts:
        terminalreporter.write_line(part)


@pytest.fixture
def session_engine(session_db_url: str) -> Iterator[sa.Engine]:
    """A SQLAlchemy engine on ``session_db_url``, the database under test.

    Connected once before the test, so that the dialect's first-connect
    queries are not counted as a request's, and disposed after it.
    """
    engine = sa.create_engine(session_db_url)
    with engine.connect():
        pass  # the dialect's first-connect queries happen here, not in a counted request
    yield engine
    engine.dispose()


@pytest.fixture
def session_clock() -> Clock:
    """The :class:`~sessions_kernel.testing.Clock` the test's applications read.

    ``session_clock.advance(61)`` moves their time forward instead of
    sleeping; ``session_app`` and ``session_application`` give it to every
    application they build, unless told another ``clock``.
    """
    from .testing import Clock

    return Clock()


@pytest.fixture
def session_app(
    session_engine: sa.Engine, session_clock: Clock
) -> Iterator[Callable[..., SessionTestApp]]:
    """``session_app(model, settings=None, **options)``: a test app of ``model`` on the database.

    Each call creates the table of ``model`` (a leftover is dropped first)
    and returns a :class:`~sessions_kernel.testing.SessionTestApp` on
    ``session_engine`` with ``session_clock``; the tables are dropped after
    the test. ``settings`` are session settings as in an ini file
    (``{"idle_timeout": "60"}``); ``options`` are the other keyword
    arguments of ``SessionTestApp``: ``plugins``, ``configure``, ``retry``,
    ``test_views``, ``clock``. A second application on the same table is
    ``SessionTestApp(app.model, app.engine, ...)`` (another call would
    drop the table).
    """
    from .testing import make_app

    made: list[type[BaseMixin]] = []

    def build(
        model: type[BaseMixin], settings: dict[str, Any] | None = None, **kwargs: Any
    ) -> SessionTestApp:
        kwargs.setdefault("clock", session_clock)
        app = make_app(model, session_engine, settings=settings, **kwargs)
        made.append(model)
        return app

    yield build
    for model in made:
        model.metadata.drop_all(session_engine)


@pytest.fixture
def session_application(
    session_engine: sa.Engine, session_clock: Clock
) -> Iterator[Callable[..., ApplicationTestApp]]:
    """``session_application(main, settings, metadata=Base.metadata)``: your app on the database.

    Each call builds an :class:`~sessions_kernel.testing.ApplicationTestApp`
    from your application's ``main(global_config, **settings)`` on
    ``session_engine``, with real commits, ``session_clock`` as
    ``session.clock`` and ``app.count()``. The tables of ``metadata`` are
    created first and dropped after the test.
    """
    from .testing import ApplicationTestApp

    made: list[ApplicationTestApp] = []

    def build(
        main: Callable[..., Any], settings: dict[str, Any] | None = None, **kwargs: Any
    ) -> ApplicationTestApp:
        kwargs.setdefault("clock", session_clock)
        app = ApplicationTestApp(main, settings, engine=session_engine, **kwargs)
        made.append(app)
        return app

    yield build
    for app in made:
        app.close()
