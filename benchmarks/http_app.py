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

Routes: ``GET /read`` answers the session's counter; ``POST /write`` adds one to it;
``POST /new`` starts a session (the benchmark collects the cookies first).
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

    for name, view, method in (
        ("read", read, "GET"),
        ("write", write, "POST"),
        ("new", new, "POST"),
    ):
        config.add_route(name, f"/{name}")
        config.add_view(view, route_name=name, request_method=method)


def model_for(table: str) -> type:
    from sessions_kernel.testing import make_model

    return make_model(tablename=table)


def make_app() -> Any:
    backend = os.environ.get("BENCH_BACKEND", "sql")
    url = os.environ["BENCH_URL"]
    settings = {"tm.manager_hook": "pyramid_tm.explicit_manager", "retry.attempts": "3"}
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

            if os.environ.get("BENCH_GALERA") == "1":
                from sessions_kernel.cluster import galera_engine

                engine = galera_engine(url, pool_size=2)
                config.include("sessions_kernel.cluster")
            elif url.startswith("sqlite"):
                engine = sa.create_engine(url, connect_args={"timeout": 30})
            else:
                # PostgreSQL: the benchmark finds its server processes by this name
                connect_args = {"application_name": "bench_http"} if "postgres" in url else {}
                engine = sa.create_engine(
                    url, pool_size=2, pool_pre_ping=True, connect_args=connect_args
                )
            add_dbsession(config, engine)
            model = model_for(os.environ.get("BENCH_TABLE", "bench_http"))
            config.set_session_factory(
                session_factory(secret_key=TEST_SECRET_KEY, model_class=model)
            )
        views(config)
        return config.make_wsgi_app()
