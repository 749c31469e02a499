"""The application each server process of ``test_cache_processes.py`` runs.

The test kit's application (its JSON views, pyramid_tm, pyramid_retry) on a model
with sessions-cache, the idle timeout and the user id, plus views that let a
test see into the process, and that move its clock:

``/stats`` (``?row=<key>``)
    the cache's :class:`~sessions_cache.CacheStats`, its entries, whether the
    row ``key`` is cached (looked up without counting a hit), and the
    listener's ``live``, ``backend_pid`` and ``connects``. Never touches the session.
``/id``
    the kit's state of the session, plus ``id``: its row key.
``/login``
    ``{"userid": n}``: ``request.session.userid = n``.
``/logout_others``
    sessions_userid's ``invalidate_user_sessions(request, userid, except_current=True)``.
``/clock``
    ``{"time": t}``: sets this process's clock (every process has its own).
``/gate``
    ``{"open": false}``: the listener's next connection waits until ``{"open": true}``.

Every response carries ``X-Statements``: the SQL statements the request ran in
this process (counted by an engine event, on the request's thread).

Run ``python cache_worker.py``: it serves on 127.0.0.1 with waitress, on a free
port, and prints ``port <n>`` once it listens. Configured by the environment:
``CACHE_TEST_URL`` (the database), ``CACHE_TEST_TABLE``, ``CACHE_TEST_SETTINGS``
(session settings, JSON) and ``CACHE_TEST_NOW`` (the clock's start). ``psessions``
loads it from an ini file (``use = call:cache_worker:main``, the same names as
settings: ``cache_test.url``...).
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import sessions_cache
import sqlalchemy as sa
from pyramid.interfaces import ISessionFactory
from sessions_cache import CacheMixin, cache_of, listener_of
from sessions_idle_timeout import IdleMixin
from sessions_userid import UseridMixin

from sessions_kernel.testing import Clock, make_model, make_wsgi_app

#: Where the clocks of the processes start (the kit's Clock's default).
START = 1_750_000_000.0
#: This process's clock: ``/clock`` sets it; ``session.clock = cache_worker.CLOCK`` in an ini.
CLOCK = Clock(float(os.environ.get("CACHE_TEST_NOW", START)))
#: The settings of every process, unless ``CACHE_TEST_SETTINGS`` adds others.
SETTINGS = {"idle_timeout": "60", "extension_delay": "30", "cache_heartbeat": "0.25"}

_models: dict[str, type] = {}


def model(table: str) -> type:
    """The session model on ``table`` (one class per table in a process)."""
    if table not in _models:
        _models[table] = make_model(CacheMixin, IdleMixin, UseridMixin, tablename=table)
    return _models[table]


class _Counted:
    """WSGI middleware: ``X-Statements``, the statements the request ran on its thread."""

    def __init__(self, app: Any, engine: sa.Engine) -> None:
        self.app = app
        self.registry = app.registry  # what pyramid.paster.bootstrap (psessions) reads
        self.local = threading.local()
        sa.event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, *args: Any) -> None:
        if getattr(self.local, "statements", None) is not None:
            self.local.statements += 1

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.local.statements = 0

        def counted(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            # Pyramid calls it once pyramid_tm committed: every statement is counted
            headers.append(("X-Statements", str(self.local.statements)))
            self.local.statements = None
            return start_response(status, headers, *exc_info)

        return self.app(environ, counted)


def _views(config: Any) -> None:
    gate = threading.Event()
    gate.set()

    def factory_of(request: Any) -> Any:
        return request.registry.getUtility(ISessionFactory)

    def stats(request: Any) -> Any:
        factory = factory_of(request)
        cache = cache_of(factory)
        listener = listener_of(factory)
        row = request.params.get("row")
        return {
            **vars(cache.stats),
            "entries": len(cache),
            "cached": row in cache._entries if row else None,  # no hit counted
            "live": listener.live() if listener is not None else None,
            "backend_pid": listener.backend_pid if listener is not None else None,
            "connects": listener.connects if listener is not None else None,
            "module": sessions_cache.__file__,
        }

    def state(request: Any) -> dict[str, Any]:
        session = request.session
        return {
            "data": dict(session),
            "new": session.new,
            "id": None if session.new else session.session_id,
            "userid": session.userid,
        }

    def login(request: Any) -> Any:
        request.session.userid = int(request.json_body["userid"])
        return state(request)

    def logout_others(request: Any) -> Any:
        from sessions_userid.queries import invalidate_user_sessions

        deleted = invalidate_user_sessions(request, request.session.userid, except_current=True)
        return {"deleted": deleted, **state(request)}

    def clock(request: Any) -> Any:
        if request.body:
            CLOCK.time = float(request.json_body["time"])
        return {"time": CLOCK.time}

    def gated(request: Any) -> Any:
        listener = listener_of(factory_of(request))
        assert listener is not None, "no listener yet: send a request that reads a session first"
        if not getattr(listener, "_gated", False):
            connect = listener.connect

            def wait_then_connect() -> Any:
                gate.wait()
                return connect()

            listener.connect = wait_then_connect
            listener._gated = True  # type: ignore[attr-defined]
        if request.json_body["open"]:
            gate.set()
        else:
            gate.clear()
        return {"open": gate.is_set()}

    for path, view in (
        ("/stats", stats),
        ("/id", state),
        ("/login", login),
        ("/logout_others", logout_others),
        ("/clock", clock),
        ("/gate", gated),
    ):
        name = "worker_" + path.strip("/")
        config.add_route(name, path)
        config.add_view(view, route_name=name, renderer="json")


def main(global_config: Any = None, **settings: Any) -> Any:
    """The application: ``settings`` as in an ini file (``cache_test.url``, ``cache_test.table``,
    ``session.*``); missing ones from the environment."""
    url = settings.pop("cache_test.url", None) or os.environ["CACHE_TEST_URL"]
    table = settings.pop("cache_test.table", None) or os.environ["CACHE_TEST_TABLE"]
    engine = sa.create_engine(url, pool_size=4)
    session_settings = {**SETTINGS, **json.loads(os.environ.get("CACHE_TEST_SETTINGS", "{}"))}
    for key, value in settings.items():
        if key.startswith("session."):
            session_settings[key.removeprefix("session.")] = value
    app = make_wsgi_app(
        model(table),
        engine,
        settings={k: v for k, v in session_settings.items() if k != "clock"},
        clock=CLOCK,
        configure=_views,
    )
    return _Counted(app, engine)


def serve() -> None:
    import waitress

    server = waitress.create_server(main(), host="127.0.0.1", port=0, threads=4)
    print(f"port {server.effective_port}", flush=True)
    server.run()


if __name__ == "__main__":
    serve()
