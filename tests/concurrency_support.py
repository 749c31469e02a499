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
from sessions_kernel.testing import SessionTestApp, make_model

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


class Gate:
    """Lets a test pause a request after it loaded the session, and release it later."""

    def __init__(self) -> None:
        self.loaded = threading.Event()
        self.go = threading.Event()

    def configure(self, config: Any) -> None:
        def paused(request: Any) -> dict[str, Any]:
            session = request.session
            session.get("x")  # load now, under this request's snapshot
            self.loaded.set()
            assert self.go.wait(30), "the test never released the paused request"
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

        config.add_route("paused", "/paused")
        config.add_view(paused, route_name="paused", renderer="json")


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
    """A test app whose requests a test can pause (``/paused``), counting attempts and events."""
    recorder, gate = Recorder(), Gate()
    extra = configure

    def configure(config: Any) -> None:
        recorder.configure(config)
        gate.configure(config)
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
    app.recorder, app.gate = recorder, gate
    return app


def browser_with(app: Any, cookie: str) -> webtest.TestApp:
    browser = app.new_browser()
    browser.set_cookie("session", cookie)
    return browser


def run_paused(app: Any, body: dict[str, Any], then: Any) -> Any:
    """Start a paused request, run ``then()`` while it waits, release it, return both."""
    slow = browser_with(app, app.cookies["session"])
    result: dict[str, Any] = {}

    def slow_request() -> None:
        try:
            result["response"] = slow.post_json("/paused", body, expect_errors=True)
        except Exception as exc:  # an error no exception view rendered reaches WebTest
            result["response"] = exc

    thread = threading.Thread(target=slow_request)
    thread.start()
    assert app.gate.loaded.wait(30)
    other = then()
    app.gate.go.set()
    thread.join(30)
    return result["response"], other


def data(app: Any) -> dict[str, Any]:
    (row,) = app.rows()
    return json.loads(row.data)
