"""pytest fixtures for sessions_kernel and its plugins (entry point ``pytest11``).

``session_db_url`` runs a test once per database: SQLite always, PostgreSQL
and MariaDB when ``SESSIONS_TEST_POSTGRESQL_URL`` / ``SESSIONS_TEST_MARIADB_URL``
are set (skipped with that reason otherwise). ``session_app`` builds a
:class:`~sessions_kernel.testing.SessionTestApp` for a model on that database
and drops its table afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from .testing import Clock, SessionTestApp, make_app

DATABASES = {
    "postgresql": "SESSIONS_TEST_POSTGRESQL_URL",
    "mariadb": "SESSIONS_TEST_MARIADB_URL",
}


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def session_db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """The URL of the database under test (one run per database)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sessions.sqlite'}"
    variable = DATABASES[request.param]
    url = os.environ.get(variable)
    if not url:
        pytest.skip(f"{variable} is not set: no {request.param} server to test against")
    return url


@pytest.fixture
def session_engine(session_db_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(session_db_url)
    with engine.connect():
        pass  # the dialect's first-connect queries happen here, not in a counted request
    yield engine
    engine.dispose()


@pytest.fixture
def session_clock() -> Clock:
    return Clock()


@pytest.fixture
def session_app(
    session_engine: sa.Engine, session_clock: Clock
) -> Iterator[Callable[..., SessionTestApp]]:
    """``session_app(model, **settings)``: a test app for ``model`` on the database under test."""
    made: list[type] = []

    def build(model: type, settings: dict[str, Any] | None = None, **kwargs: Any) -> SessionTestApp:
        kwargs.setdefault("clock", session_clock)
        app = make_app(model, session_engine, settings=settings, **kwargs)
        made.append(model)
        return app

    yield build
    for model in made:
        model.metadata.drop_all(session_engine)
