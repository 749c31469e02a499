"""The application ``bench_http.py`` runs under gunicorn: one session read or write per request.

Configured by the environment (gunicorn passes it to every worker):

``BENCH_BACKEND``
    ``sql`` (sessions_kernel; ``BENCH_URL`` names the database) or ``redis``
    (pyramid_session_redis; ``BENCH_URL`` is a ``redis://`` URL).
``BENCH_URL``
    the database or Redis URL.
``BENCH_TABLE``
    the session table (``bench_http``), created by ``bench_http.py`` beforehand.
``BENCH_CACHE``
    ``1``: the model includes ``sessions_cache.CacheMixin`` (reads served from each
    worker's cache; on PostgreSQL the table needs the trigger ``model_for`` adds, which
    ``create_all`` installs).
``BENCH_CACHE_STALENESS``
    the cache's ``cache_max_staleness`` in seconds (what SQLite and MariaDB need);
    unset: not set.
``BENCH_APP_QUERY``
    ``1``: the realistic scenario: ``/read`` and ``/write`` also run one query of the
    application's own, a ``SELECT`` by primary key of a random one of the 100 rows of
    ``<BENCH_TABLE>_items`` (:func:`items_for`), in the request's transaction, and answer
    its value with the counter.
``BENCH_APP_URL``
    with ``redis``: the database of that query (the kernel's backends query their own).
``BENCH_EXPECT_SESSION``
    ``1``: ``/read`` and ``/write`` answer 500 when the cookie's session was not found
    (the session is new): every request of ``bench_http.py`` names a stored session, so a
    lost one is counted as a failure, not served as a fresh session.
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
``POST /set?key=K`` sets the session's key ``K`` (to ``1``); ``GET /ping`` answers
without touching the session (the server is up); ``GET /bench-stats`` reads the
session (which starts a cache's listener) and answers, as JSON, the worker's pid and
its cache's counters and liveness (``null`` without a cache).
"""

from __future__ import annotations

import dataclasses
import os
import random
from typing import Any

import sqlalchemy as sa
from pyramid.config import Configurator
from pyramid.response import Response

SECRET = "sessions-kernel-http-benchmark"  # pyramid_session_redis signs its cookie with it


#: rows of the realistic scenario's table
ITEMS = 100


def items_for(table: str) -> sa.Table:
    """The application's own table of the realistic scenario: ``<table>_items``."""
    return sa.Table(
        f"{table}_items",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("title", sa.String(40), nullable=False),
    )


def views(
    config: Configurator,
    *,
    items: sa.Table | None = None,
    expect_session: bool = False,
    cache_factory: Any = None,
) -> None:
    """The routes; ``items``: the realistic scenario's query; ``expect_session``: a
    read or write of a session that was not found is a 500; ``cache_factory``: the
    session factory whose cache ``/bench-stats`` reports."""

    def own_query(request: Any) -> str:
        if items is None:
            return ""
        key = random.randint(1, ITEMS)
        query = sa.select(items.c.title).where(items.c.id == key)
        return " " + request.dbsession.execute(query).scalar_one()

    def lost(request: Any) -> Response | None:
        if expect_session and request.session.new:
            return Response("the cookie's session was not found\n", status=500)
        return None

    def read(request: Any) -> Response:
        return lost(request) or Response(str(request.session.get("n", 0)) + own_query(request))

    def write(request: Any) -> Response:
        failed = lost(request)
        if failed is not None:
            return failed
        request.session["n"] = request.session.get("n", 0) + 1
        return Response(str(request.session["n"]) + own_query(request))

    def new(request: Any) -> Response:
        request.session["n"] = 0
        return Response("0")

    def set_key(request: Any) -> Response:
        request.session[request.params["key"]] = 1
        return Response("1")

    def ping(request: Any) -> Response:
        return Response("ok")

    def bench_stats(request: Any) -> Any:
        stats: dict[str, Any] = {"pid": os.getpid(), "new": request.session.new, "cache": None}
        if cache_factory is not None:
            import sessions_cache

            cache = sessions_cache.cache_of(cache_factory)
            stats["cache"] = {**dataclasses.asdict(cache.stats), "live": cache.live()}
        return stats

    for name, view, method in (
        ("read", read, "GET"),
        ("write", write, "POST"),
        ("new", new, "POST"),
        ("set", set_key, "POST"),
        ("ping", ping, "GET"),
    ):
        config.add_route(name, f"/{name}")
        config.add_view(view, route_name=name, request_method=method)
    config.add_route("bench-stats", "/bench-stats")
    config.add_view(bench_stats, route_name="bench-stats", request_method="GET", renderer="json")


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


def model_for(table: str, cache: bool = False) -> type:
    """The session model on ``table``; ``cache``: with sessions-cache's ``CacheMixin`` (and
    its trigger, which ``create_all`` installs on PostgreSQL)."""
    from sessions_kernel.testing import make_model

    if cache:
        from sessions_cache import CacheMixin

        return make_model(CacheMixin, tablename=table)
    return make_model(tablename=table)


def _engine(url: str, **options: Any) -> sa.Engine:
    if url.startswith("sqlite"):
        return sa.create_engine(url, connect_args={"timeout": 30}, **options)
    # PostgreSQL: the benchmark finds its server processes by this name
    connect_args = {"application_name": "bench_http"} if "postgres" in url else {}
    return sa.create_engine(
        url, pool_size=2, pool_pre_ping=True, connect_args=connect_args, **options
    )


def make_app() -> Any:
    backend = os.environ.get("BENCH_BACKEND", "sql")
    url = os.environ["BENCH_URL"]
    settings = {"tm.manager_hook": "pyramid_tm.explicit_manager", "retry.attempts": "3"}
    stats_dir = os.environ.get("BENCH_STATS_DIR")
    table = os.environ.get("BENCH_TABLE", "bench_http")
    items = items_for(table) if os.environ.get("BENCH_APP_QUERY") == "1" else None
    engine = None
    factory = None
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_retry")
        if backend == "redis":
            from pyramid_session_redis import RedisSessionFactory

            config.set_session_factory(
                RedisSessionFactory(SECRET, redis_url=url, timeout=3600, cookie_name="session")
            )
            if items is not None:  # the application's own database
                from sessions_kernel.testing import add_dbsession

                add_dbsession(config, _engine(os.environ["BENCH_APP_URL"]))
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
            else:
                engine = _engine(url, **options)
            add_dbsession(config, engine)
            if os.environ.get("BENCH_OUTAGE") == "1":
                config.include("sessions_kernel.outage")
            cache = os.environ.get("BENCH_CACHE") == "1"
            model = model_for(table, cache=cache)
            factory_args: dict[str, Any] = {}
            if os.environ.get("BENCH_LOCK_CONTENDED_FOR"):
                factory_args["lock_contended_for"] = os.environ["BENCH_LOCK_CONTENDED_FOR"]
            if cache and os.environ.get("BENCH_CACHE_STALENESS"):
                factory_args["cache_max_staleness"] = os.environ["BENCH_CACHE_STALENESS"]
            factory = session_factory(secret_key=TEST_SECRET_KEY, model_class=model, **factory_args)
            config.set_session_factory(factory)
        if stats_dir:
            Stats(stats_dir).configure(config, engine)
        views(
            config,
            items=items,
            expect_session=os.environ.get("BENCH_EXPECT_SESSION") == "1",
            cache_factory=factory if os.environ.get("BENCH_CACHE") == "1" else None,
        )
        return config.make_wsgi_app()
