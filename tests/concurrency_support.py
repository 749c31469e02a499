"""Helpers for tests that run requests of one session at the same time."""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import sqlalchemy as sa
import webtest
from pyramid.events import NewRequest

from sessions_kernel import events
from sessions_kernel.pytest_plugin import server_url
from sessions_kernel.testing import Race, SessionTestApp, make_model

#: Every database and isolation level the kernel supports.
LEVELS = [
    ("sqlite", None),
    ("postgresql", "READ COMMITTED"),
    ("postgresql", "REPEATABLE READ"),
    ("postgresql", "SERIALIZABLE"),
    ("mariadb", "REPEATABLE READ"),
    ("mariadb", "READ COMMITTED"),
]
#: Where a request that lost merges (PostgreSQL's REPEATABLE READ and SERIALIZABLE refuse
#: the write itself, before any rule can see both values: a droppable write is dropped,
#: any other runs again).
MERGING_LEVELS = [
    ("sqlite", None),
    ("postgresql", "READ COMMITTED"),
    ("mariadb", "REPEATABLE READ"),
    ("mariadb", "READ COMMITTED"),
]


def level_id(param: tuple[str, str | None]) -> str:
    return f"{param[0]}-{(param[1] or 'default').replace(' ', '_')}"


def make_engine(database: str, level: str | None, tmp_path: Any) -> sa.Engine:
    """An engine on ``database`` at isolation ``level`` (skipped when its server is not there)."""
    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'concurrency.sqlite'}"
        return sa.create_engine(url, connect_args={"timeout": 30})
    url = server_url(database)  # skipped (or failed, in CI) when the server is not there
    return sa.create_engine(url, isolation_level=level, pool_size=10)


class Recorder:
    """Counts attempts (one NewRequest per pyramid_retry attempt) and keeps session events."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.merged: list[events.SessionMerged] = []

    def __call__(self, event: Any) -> None:
        with self.lock:
            self.counts[type(event).__name__] += 1
            if isinstance(event, events.SessionMerged):
                self.merged.append(event)

    def configure(self, config: Any) -> None:
        config.add_subscriber(self, NewRequest)
        config.add_subscriber(self, events.SessionMerged)
        config.add_subscriber(self, events.SessionNotFound)


def add_apply_view(config: Any) -> None:
    """``/apply``: one request's changes, as its JSON body lists them (for races)."""

    def apply(request: Any) -> dict[str, Any]:
        session = request.session
        body = request.json_body
        if body.get("logout"):
            session.invalidate()
        for key, value in body.get("set", {}).items():
            session[key] = value
        for key in body.get("incr", []):
            session[key] = session.get(key, 0) + 1
        for message in body.get("flash", []):
            session.flash(message)
        if body.get("settings"):
            with session.settings as settings:
                for name, value in body["settings"].items():
                    settings[name] = value
        return {"data": dict(session)}

    config.add_route("apply", "/apply")
    config.add_view(apply, route_name="apply", renderer="json")


def build(
    engine: sa.Engine,
    *,
    retry: bool = True,
    attempts: int = 5,
    model: type | None = None,
    settings: dict[str, Any] | None = None,
    configure: Any = None,
    plugins: Any = (),
) -> Any:
    """A test app with ``/apply`` (see :func:`run_paused`), counting attempts and events."""
    recorder = Recorder()
    extra = configure

    def configure(config: Any) -> None:
        recorder.configure(config)
        add_apply_view(config)
        if extra is not None:
            extra(config)

    model = model or make_model()
    model.metadata.drop_all(engine)
    model.metadata.create_all(engine)
    app = SessionTestApp(
        model,
        engine,
        settings={"retry.attempts": str(attempts), **(settings or {})},
        retry=retry,
        configure=configure,
        plugins=plugins,
    )
    app.recorder = recorder
    return app


def browser_with(app: Any, cookie: str) -> webtest.TestApp:
    browser = app.new_browser()
    browser.set_cookie("session", cookie)
    return browser


def run_paused(app: Any, body: dict[str, Any], then: Any) -> Any:
    """A slow request: it loads the session, ``then()`` runs, and it commits after that.

    The slow request is ``/apply`` with ``body``, in a copy of the default
    browser (:class:`~sessions_kernel.testing.Race`). Returns its response (or
    the exception that reached WebTest) and what ``then()`` returned.
    """
    with Race(app) as race:
        slow = race.start("/apply", json=body)
        other = then()
        slow.finish()
    return (slow.response if slow.error is None else slow.error), other


def data(app: Any) -> dict[str, Any]:
    (row,) = app.rows()
    return json.loads(row.data)
