"""The application ``bench_http.py`` runs under gunicorn: one session read or write per request.

Configured by the environment (gunicorn passes it to every worker):

``BENCH_BACKEND``
    ``sql`` (sessions_kernel; ``BENCH_URL`` names the database) or ``redis``
    (pyramid_session_redis; ``BENCH_URL`` is a ``redis://`` URL).
``BENCH_URL``
    the database or Redis URL.
``BENCH_TABLE``
    the session table (``bench_http``), created by ``bench_http.py`` beforehand.
``BENCH_GALERA``
    ``1``: build the engine with ``sessions_kernel.cluster.galera_engine`` and include
    ``sessions_kernel.cluster`` (what the operations guide recommends for a cluster).
``BENCH_OUTAGE``
    ``1``: include ``sessions_kernel.outage`` (what ``config.include("sessions_kernel")``
    includes by default: database outages retried where safe, else a 503);
    ``bench_outage.py`` compares it with ``0``. The application sets its session
    factory by hand, so without it the tween is absent.
``BENCH_ISOLATION``
    the engine's ``isolation_level`` (``READ COMMITTED``...); unset: the database's default.
``BENCH_LOCK_CONTENDED_FOR``
    the kernel's ``lock_contended_for`` setting; unset: its default.
``BENCH_STATS_DIR``
    a directory: every worker appends what happened to ``<dir>/<pid>.txt``, one line per
    event (``bench_workers.py`` sums them): ``attempt`` (a ``NewRequest``: one per
    pyramid_retry attempt), ``merged`` (``SessionMerged``), ``retry <attempt> <exception>``
    (pyramid_retry's ``BeforeRetry``), ``failed <attempt> <exception>: <message>`` (an
    exception that ended a request, on its last attempt or not retryable: rendered as a 500
    by an exception view) and ``locked`` (a ``SELECT … FOR UPDATE`` the worker ran).
    Unset: nothing is recorded, and no exception view is added.

Routes: ``GET /read`` answers the session's counter; ``POST /write`` adds one to it;
``POST /new`` starts a session (the benchmark collects the cookies first);
``POST /set?key=K`` sets the session's key ``K`` (to ``1``).
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from pyramid.config import Configurator
from pyramid.response import Response

SECRET = "sessions-kernel-http-benchmark"  # pyramid_session_redis signs its cookie with it


def views(config: Configurator) -> None:
    def read(request: Any) -> Response:
        return Response(str(request.session.get("n", 0)))

    def write(request: Any) -> Response:
        request.session["n"] = request.session.get("n", 0) + 1
        return Response(str(request.session["n"]))

    def new(request: Any) -> Response:
        request.session["n"] = 0
        return Response("0")

    def set_key(request: Any) -> Response:
        request.session[request.params["key"]] = 1
        return Response("1")

    for name, view, method in (
        ("read", read, "GET"),
        ("write", write, "POST"),
        ("new", new, "POST"),
        ("set", set_key, "POST"),
    ):
        config.add_route(name, f"/{name}")
        config.add_view(view, route_name=name, request_method=method)


class Stats:
    """Appends a line per event to ``<directory>/<pid>.txt`` (see ``BENCH_STATS_DIR``).

    Each line is written (file opened, appended, closed) before the request's
    response leaves the worker, so once a client has every answer, the files
    hold every event of those requests.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def write(self, line: str) -> None:
        path = os.path.join(self.directory, f"{os.getpid()}.txt")
        with open(path, "a", encoding="utf-8") as out:
            out.write(line.replace("\n", " ")[:300] + "\n")

    def configure(self, config: Configurator, engine: sa.Engine | None) -> None:
        from pyramid.events import NewRequest
        from pyramid.httpexceptions import HTTPException
        from pyramid_retry import IBeforeRetry, is_error_retryable

        def attempt(request: Any) -> str:
            return str(request.environ.get("retry.attempt", 0) + 1)

        def before_retry(event: Any) -> None:
            exc = event.exception
            self.write(f"retry {attempt(event.request)} {type(exc).__name__}")

        def failed(exc: Exception, request: Any) -> Any:
            if isinstance(exc, HTTPException):
                return exc
            if not is_error_retryable(request, exc):  # else pyramid_retry runs it again
                self.write(f"failed {attempt(request)} {type(exc).__name__}: {exc}")
            return Response(f"{type(exc).__name__}\n", status=500)

        config.add_subscriber(lambda event: self.write("attempt"), NewRequest)
        config.add_subscriber(before_retry, IBeforeRetry)
        config.add_exception_view(failed, context=Exception)
        if engine is not None:
            from sessions_kernel.events import SessionMerged

            config.add_subscriber(lambda event: self.write("merged"), SessionMerged)

            @sa.event.listens_for(engine, "before_cursor_execute")
            def locked(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
                if "FOR UPDATE" in statement:
                    self.write("locked")


def model_for(table: str) -> type:
    from sessions_kernel.testing import make_model

    return make_model(tablename=table)


def make_app() -> Any:
    backend = os.environ.get("BENCH_BACKEND", "sql")
    url = os.environ["BENCH_URL"]
    settings = {"tm.manager_hook": "pyramid_tm.explicit_manager", "retry.attempts": "3"}
    stats_dir = os.environ.get("BENCH_STATS_DIR")
    engine = None
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_retry")
        if backend == "redis":
            from pyramid_session_redis import RedisSessionFactory

            config.set_session_factory(
                RedisSessionFactory(SECRET, redis_url=url, timeout=3600, cookie_name="session")
            )
        else:
            from sessions_kernel import session_factory
            from sessions_kernel.testing import TEST_SECRET_KEY, add_dbsession

            options: dict[str, Any] = {}
            if os.environ.get("BENCH_ISOLATION"):
                options["isolation_level"] = os.environ["BENCH_ISOLATION"]
            if os.environ.get("BENCH_GALERA") == "1":
                from sessions_kernel.cluster import galera_engine

                engine = galera_engine(url, pool_size=2, **options)
                config.include("sessions_kernel.cluster")
            elif url.startswith("sqlite"):
                engine = sa.create_engine(url, connect_args={"timeout": 30}, **options)
            else:
                # PostgreSQL: the benchmark finds its server processes by this name
                connect_args = {"application_name": "bench_http"} if "postgres" in url else {}
                engine = sa.create_engine(
                    url, pool_size=2, pool_pre_ping=True, connect_args=connect_args, **options
                )
            add_dbsession(config, engine)
            if os.environ.get("BENCH_OUTAGE") == "1":
                config.include("sessions_kernel.outage")
            model = model_for(os.environ.get("BENCH_TABLE", "bench_http"))
            factory_args: dict[str, Any] = {}
            if os.environ.get("BENCH_LOCK_CONTENDED_FOR"):
                factory_args["lock_contended_for"] = os.environ["BENCH_LOCK_CONTENDED_FOR"]
            config.set_session_factory(
                session_factory(secret_key=TEST_SECRET_KEY, model_class=model, **factory_args)
            )
        if stats_dir:
            Stats(stats_dir).configure(config, engine)
        views(config)
        return config.make_wsgi_app()
