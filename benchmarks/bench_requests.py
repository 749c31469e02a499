#!/usr/bin/env python
"""What a request costs, in microseconds: no session, Pyramid's signed cookie, the
bare primary-key SELECT floor, and sessions_kernel's read/write/new/anonymous requests.

Every row drives a WSGI application in process (no network): a prepared environ is
copied and handed straight to the application, the same way for every row. The
applications are all built by :func:`sessions_kernel.testing.make_wsgi_app`, so they
share the tweens (pyramid_tm, pyramid_retry) and the ``request.dbsession`` set-up;
the rows differ only in what their view does.

Run ``python benchmarks/bench_requests.py --help`` for the options, and see
``benchmarks/README.md`` for how to read the table.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import itertools
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from pyramid.response import Response
from pyramid.session import SignedCookieSessionFactory
from webob import Request
from zope.sqlalchemy import mark_changed

from sessions_kernel.testing import StatementCounter, make_model, make_wsgi_app

#: Targets, as a multiple of each row's own floor (issue #14): a read of the bare
#: kernel, a read of a model with plugins, a write, a new session. An anonymous
#: request must cost no more than one of Pyramid's signed-cookie session. A read
#: the cache serves (issue #26): at most half the PK SELECT floor.
TARGETS = {
    "read": 1.15,
    "plugins read": 1.25,
    "write": 1.15,
    "new": 1.15,
    "anonymous": 1.0,
    "cached read": 0.5,
}
#: Kept for callers of the first version: the bare kernel's read target.
TARGET_RATIO = TARGETS["read"]
#: The floor (or the baseline) each kind of kernel row is a multiple of: the bare
#: model's. A model with plugins also has floors of its own, on its own table
#: (``"<model> floor: …"``, see :func:`floor_of`).
FLOOR_OF = {
    "read": "floor: PK SELECT",
    "write": "floor: SELECT+UPDATE",
    "new": "floor: INSERT",
    "anonymous": "signed cookie anonymous",
}


def floor_of(group: str, kind: str) -> str:
    """The name of the floor a ``group`` row of ``kind`` is a multiple of (``x own``).

    The bare kernel's rows and the anonymous rows use :data:`FLOOR_OF`. A model
    with plugins is measured against the same statement on its own table: the
    same row, the same indexes (the idle plugin's, say), so that ``x own`` is
    what the kernel and the plugins' code cost, not the table's width.
    """
    floor = FLOOR_OF[kind]
    if group == "kernel" or kind == "anonymous":
        return floor
    return f"{group} {floor}"


DATABASE_ENV = {
    "postgresql": "SESSIONS_TEST_POSTGRESQL_URL",
    "mariadb": "SESSIONS_TEST_MARIADB_URL",
}


# -- models: one benchmark row group per registered model -------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """A session model the kernel rows are measured with.

    ``mixins`` are ``"module:Name"`` references imported when the model is built;
    when one cannot be imported (its plugin is not installed) the model is skipped
    with a note instead of failing the run. ``settings`` are extra ``session.*``
    settings (without the prefix) its plugins need.
    """

    name: str
    description: str
    mixins: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    #: extra settings on one database only (``{"sqlite": {...}}``, by ``--database`` name)
    database_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the statements a kind of row issues, where not the bare kernel's (``{"read": ()}``)
    statements: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: the key of :data:`TARGETS` per kind of row, where not the usual one
    targets: dict[str, str] = field(default_factory=dict)
    #: per kind of row, a baseline row it must be faster than (``{"read": "redis read"}``)
    faster_than: dict[str, str] = field(default_factory=dict)
    #: called with the application and the read row's cookie before anything is counted
    #: or timed (a cache made live and filled); returns a callable that closes what it
    #: started, or ``None``
    warm: Callable[[Any, str], Callable[[], None] | None] | None = None
    #: what the model's plugins counted during the run (a cache's hits), for the report
    counters: Callable[[Any], dict[str, Any]] | None = None

    def settings_on(self, database: str) -> dict[str, Any]:
        """The ``session.*`` settings on ``database`` (its ``--database`` name)."""
        return {**self.settings, **self.database_settings.get(database, {})}

    def load_mixins(self) -> tuple[type, ...]:
        """Import the mixins; raises ImportError naming the missing one."""
        classes = []
        for ref in self.mixins:
            module_name, _, attr = ref.partition(":")
            try:
                module = importlib.import_module(module_name)
                classes.append(getattr(module, attr))
            except (ImportError, AttributeError) as exc:
                raise ImportError(f"{ref} is not importable ({exc})") from exc
        return tuple(classes)


#: Registry of models: add an entry to measure another model (``--model NAME``).
MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    MODELS[spec.name] = spec
    return spec


register_model(ModelSpec("kernel", "BaseMixin only (no feature plugin)"))
register_model(
    ModelSpec(
        "features",
        "all four feature plugins (idle, absolute, renewal, cookie settings)",
        mixins=(
            "sessions_idle_timeout:IdleMixin",
            "sessions_absolute_timeout:AbsoluteMixin",
            "sessions_renewal:RenewalMixin",
            "sessions_cookie_settings:ConfigCookieMixin",
        ),
        # timeouts a production site might use; reads inside the extension delay
        # write nothing, as reads of the bare kernel
        settings={
            "idle_timeout": 1800,
            "extension_delay": 60,
            "absolute_timeout": 86400,
            "renewal_timeout": 3600,
        },
    )
)


# -- sessions-cache: a model whose reads the process's cache serves ---------------------
def _factory_of(app: Any) -> Any:
    from pyramid.interfaces import ISessionFactory

    return app.registry.queryUtility(ISessionFactory)


def warm_cache(app: Any, cookie: str) -> Callable[[], None]:
    """Read the session until the cache serves it; returns what stops its listener.

    The first read starts the cache (on PostgreSQL its listener, which is live
    once it listens and a heartbeat came back; reads meanwhile go to the
    database), the next ones fill it and then hit. Raises if no read was
    served from the cache within 30 s.
    """
    import sessions_cache

    factory = _factory_of(app)
    cache = sessions_cache.cache_of(factory)
    deadline = time.monotonic() + 30
    while True:
        hits = cache.stats.hits
        response = Request.blank("/read", headers={"Cookie": cookie}).get_response(app)
        if response.status_code != 200 or response.body != b"1":
            raise RuntimeError(f"warming the cache: /read answered {response.status}")
        if cache.stats.hits > hits:
            return lambda: sessions_cache.stop(factory)
        if time.monotonic() > deadline:
            sessions_cache.stop(factory)
            raise RuntimeError(f"the cache served no read within 30 s: {cache.stats}")
        time.sleep(0.02)


def cache_counters(app: Any) -> dict[str, Any]:
    """The cache's counters (``sessions_cache.CacheStats``: hits, misses, bypassed...)."""
    import dataclasses

    import sessions_cache

    return dataclasses.asdict(sessions_cache.cache_of(_factory_of(app)).stats)


register_model(
    ModelSpec(
        "cached",
        "sessions-cache (CacheMixin): a read served from the process's cache",
        mixins=("sessions_cache:CacheMixin",),
        # PostgreSQL: the listener, on the trigger make_model's add_ddl installs;
        # elsewhere no notifications, so the cache needs its bound on staleness
        database_settings={
            "sqlite": {"cache_max_staleness": 5},
            "mariadb": {"cache_max_staleness": 5},
        },
        statements={"read": ()},  # once warm: served without SQL
        targets={"read": "cached read"},
        faster_than={"read": "redis read"},
        warm=warm_cache,
        counters=cache_counters,
    )
)


# -- the views: every row returns the same small text response --------------------------
def _respond(request: Any, text: str) -> Response:
    response = request.response
    response.text = text
    return response


def view_none(request: Any) -> Response:
    return _respond(request, "ok")


def view_session_read(request: Any) -> Response:
    return _respond(request, str(request.session.get("a")))


def view_session_write(request: Any) -> Response:
    session = request.session
    session["n"] = session.get("n", 0) + 1
    return _respond(request, str(session["n"]))


def view_session_new(request: Any) -> Response:
    request.session["a"] = 1
    return _respond(request, "1")


def view_session_anonymous(request: Any) -> Response:
    return _respond(request, str(request.session.get("a")))


def _floor_views(
    model: type, sid: str, write_sid: str, template: dict[str, Any]
) -> dict[str, Callable[[Any], Response]]:
    """What any session kept in the database pays at least, through the same stack.

    read: one primary-key SELECT (the ORM's ``get``, what an application reads a
    row with); write: that SELECT and a Core UPDATE of one row by its key; new: one
    Core INSERT of a row with the column values of ``template`` (a row the kernel
    stored in the same table: the plugins' columns filled as the kernel fills
    them). Each runs in pyramid_tm's transaction, which commits it.
    """
    table = model.__table__
    new_ids = itertools.count()
    prefix = f"floor{os.getpid()}-"

    def view_floor(request: Any) -> Response:
        row = request.dbsession.get(model, sid)
        return _respond(request, str(len(row.data)))

    def view_floor_write(request: Any) -> Response:
        dbsession = request.dbsession
        row = dbsession.get(model, write_sid)
        n = int(row.updated) + 1
        statement = table.update().where(table.c.id == write_sid)
        dbsession.execute(statement.values(data=b'{"n":%d}' % n, updated=n))
        mark_changed(dbsession)
        return _respond(request, str(n))

    def view_floor_insert(request: Any) -> Response:
        dbsession = request.dbsession
        values = {**template, "id": f"{prefix}{next(new_ids)}"}
        dbsession.execute(table.insert().values(values))
        mark_changed(dbsession)
        return _respond(request, "1")

    return {"/floor": view_floor, "/floor/write": view_floor_write, "/floor/new": view_floor_insert}


def _stored_values(db: Database, model: type, sid: str) -> dict[str, Any]:
    """The column values of a stored row (the floor's INSERT copies them)."""
    table = model.__table__
    with db.engine.connect() as conn:
        row = conn.execute(sa.select(table).where(table.c.id == sid)).mappings().one()
    return dict(row)


def _routes(views: dict[str, Callable[[Any], Response]]) -> Callable[[Any], None]:
    def configure(config: Any) -> None:
        for path, view in views.items():
            name = path.strip("/").replace("/", "_")
            config.add_route(name, path)
            config.add_view(view, route_name=name)

    return configure


FLOOR_PATHS = ("/floor", "/floor/write", "/floor/new")


def _late_views(
    views: dict[str, Callable[[Any], Response]],
) -> dict[str, Callable[[Any], Response]]:
    """Views that call what ``views`` holds at request time (the floors need the app first)."""

    def late(path: str) -> Callable[[Any], Response]:
        return lambda request: views[path](request)

    return {path: late(path) for path in FLOOR_PATHS}


# -- scenarios --------------------------------------------------------------------------
@dataclass
class Scenario:
    """One row: an application, the environ to copy per request, the statements expected."""

    name: str
    description: str
    app: Any
    environ: dict[str, Any]
    expected: tuple[str, ...]
    group: str = "baseline"
    #: the response body the view must give (``None``: not checked)
    expected_body: bytes | None = None
    statements: list[str] = field(default_factory=list)
    body: bytes = b""

    def call(self) -> bytes:
        """One request; returns the response body."""
        status: list[str] = []

        def start_response(s: str, headers: Any, exc_info: Any = None) -> Any:
            status.append(s)

        body = self.app(dict(self.environ), start_response)
        try:
            content = b"".join(body)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        if not status or not status[0].startswith("200"):
            raise RuntimeError(f"{self.name}: {status[0] if status else 'no status'}")
        return content


def _environ(path: str, cookie: str | None = None) -> dict[str, Any]:
    headers = {"Cookie": cookie} if cookie else {}
    return Request.blank(path, headers=headers).environ


def _cookie_from(app: Any, path: str, name: str) -> str:
    response = Request.blank(path).get_response(app)
    for header in response.headers.getall("Set-Cookie"):
        if header.startswith(name + "="):
            return header.split(";", 1)[0]
    raise RuntimeError(f"{path} set no {name} cookie: {response.status}")


@dataclass
class Database:
    name: str
    url: str
    engine: sa.Engine
    models: list[type] = field(default_factory=list)
    #: per model, the ids of the sessions the read and write rows use
    keep: dict[type, list[str]] = field(default_factory=dict)
    #: run at close, before the tables are dropped (a cache's listener stopped, Redis keys)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            cleanup()
        for model in self.models:
            model.metadata.drop_all(self.engine)
        self.engine.dispose()


def open_database(name: str, url: str) -> Database:
    engine = sa.create_engine(url)
    with engine.connect():
        pass  # first-connect queries of the dialect happen here
    return Database(name, url, engine)


def _kernel_app(db: Database, spec: ModelSpec, mixins: tuple[type, ...], extra: dict) -> Any:
    model = make_model(*mixins, tablename=f"bench_{spec.name}_{os.getpid()}")
    model.metadata.drop_all(db.engine)
    model.metadata.create_all(db.engine)
    db.models.append(model)
    views = {
        "/none": view_none,
        "/read": view_session_read,
        "/write": view_session_write,
        "/new": view_session_new,
        "/anonymous": view_session_anonymous,
        **extra,
    }
    app = make_wsgi_app(
        model,
        db.engine,
        settings=spec.settings_on(db.name),
        test_views=False,
        configure=_routes(views),
    )
    return model, app


def build_scenarios(
    db: Database,
    models: Sequence[str],
    notes: list[str] | None = None,
    redis_url: str | None = None,
) -> list[Scenario]:
    """The rows for one database: baselines (pyramid_session_redis's with ``redis_url``),
    then four kernel rows per usable model."""
    notes = notes if notes is not None else []
    scenarios: list[Scenario] = []

    # Baselines share one application made exactly like the kernel's: the floor reads
    # the same table by primary key through the same pyramid_tm + dbsession stack.
    base = MODELS["kernel"]
    floor_ref: dict[str, Callable[[Any], Response]] = {}

    model, app = _kernel_app(db, base, (), _late_views(floor_ref))
    cookie = _stored_session(db, model, app)
    _stored_session(db, model, app)  # the row the write floor updates
    sid, write_sid = db.keep[model]
    floor_ref.update(_floor_views(model, sid, write_sid, _stored_values(db, model, sid)))

    def signed(config: Any) -> None:
        views = {"/read": view_session_read, "/new": view_session_new}
        _routes({**views, "/anonymous": view_session_anonymous})(config)
        config.commit()  # replace the kernel's factory set by make_wsgi_app
        config.set_session_factory(SignedCookieSessionFactory("bench-secret" * 4))

    signed_app = make_wsgi_app(model, db.engine, test_views=False, configure=signed)
    signed_cookie = _cookie_from(signed_app, "/new", "session")
    scenarios += [
        Scenario(
            "no session",
            "view does not touch the session",
            app,
            _environ("/none"),
            (),
            expected_body=b"ok",
        ),
        Scenario(
            "signed cookie read",
            "Pyramid SignedCookieSessionFactory, existing cookie, read",
            signed_app,
            _environ("/read", signed_cookie),
            (),
            expected_body=b"1",
        ),
        Scenario(
            "signed cookie anonymous",
            "Pyramid SignedCookieSessionFactory, no cookie, read",
            signed_app,
            _environ("/anonymous"),
            (),
            expected_body=b"None",
        ),
        Scenario(
            "floor: PK SELECT",
            "request.dbsession.get(model, id), no session",
            app,
            _environ("/floor"),
            ("SELECT",),
            expected_body=b"7",  # len(b'{"a":1}')
        ),
        Scenario(
            "floor: SELECT+UPDATE",
            "get(model, id), then a Core UPDATE of that row by its key",
            app,
            _environ("/floor/write"),
            ("SELECT", "UPDATE"),
        ),
        Scenario(
            "floor: INSERT",
            "a Core INSERT of one row",
            app,
            _environ("/floor/new"),
            ("INSERT",),
            expected_body=b"1",
        ),
    ]
    if redis_url:
        scenarios += _redis_rows(db, model, redis_url, notes)
    if "kernel" in models:
        scenarios += _kernel_rows("kernel", app, cookie, _stored_session(db, model, app))

    for name in models:
        if name == "kernel":
            continue
        spec = MODELS[name]
        try:
            mixins = spec.load_mixins()
        except ImportError as exc:
            notes.append(f"model {name!r} skipped: {exc}")
            continue
        own_floors: dict[str, Callable[[Any], Response]] = {}
        model, app = _kernel_app(db, spec, mixins, _late_views(own_floors))
        read_cookie = _stored_session(db, model, app)
        write_cookie = _stored_session(db, model, app)
        if spec.warm is not None:
            stop = spec.warm(app, read_cookie)
            if stop is not None:
                db.cleanups.append(stop)
        sid, write_sid = db.keep[model]
        own_floors.update(_floor_views(model, sid, write_sid, _stored_values(db, model, sid)))
        scenarios += _floor_rows(name, app)
        scenarios += _kernel_rows(name, app, read_cookie, write_cookie, spec.statements)
    return scenarios


#: pyramid_session_redis signs its cookie with it
REDIS_SECRET = "sessions-kernel-benchmark"


def view_session_id(request: Any) -> Response:
    return _respond(request, request.session.session_id)


def _redis_rows(db: Database, model: type, url: str, notes: list[str]) -> list[Scenario]:
    """pyramid_session_redis on ``url``: a read and a write of an existing session.

    Its application is built like every other (pyramid_tm, pyramid_retry, the
    ``dbsession``, none of them used by its views); only the session factory
    differs, configured as ``bench_http.py``'s. Skipped with a note when the
    package is not installed or Redis does not answer; its sessions are deleted
    at the end.
    """
    try:
        import redis
        from pyramid_session_redis import RedisSessionFactory
    except ImportError as exc:
        notes.append(f"redis rows skipped: {exc} (the bench extra installs pyramid_session_redis)")
        return []
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        notes.append(f"redis rows skipped: no Redis answers at {url} ({exc})")
        return []

    def configure(config: Any) -> None:
        views = {"/read": view_session_read, "/write": view_session_write}
        _routes({**views, "/new": view_session_new, "/id": view_session_id})(config)
        config.commit()  # replace the kernel's factory set by make_wsgi_app
        config.set_session_factory(
            RedisSessionFactory(REDIS_SECRET, redis_url=url, timeout=3600, cookie_name="session")
        )

    app = make_wsgi_app(model, db.engine, test_views=False, configure=configure)
    cookies = [_cookie_from(app, "/new", "session") for _ in range(2)]
    keys = [Request.blank("/id", headers={"Cookie": c}).get_response(app).text for c in cookies]

    def cleanup() -> None:
        client.delete(*keys)
        client.close()

    db.cleanups.append(cleanup)
    read_cookie, write_cookie = cookies
    return [
        Scenario(
            "redis read",
            "pyramid_session_redis, existing session, read",
            app,
            _environ("/read", read_cookie),
            (),
            expected_body=b"1",
        ),
        Scenario(
            "redis write",
            "pyramid_session_redis, existing session, one key changed",
            app,
            _environ("/write", write_cookie),
            (),
        ),
    ]


def _stored_session(db: Database, model: type, app: Any) -> str:
    """Store a session for the read (or the write) rows; returns its cookie header value.

    Read and write use two sessions, so that the rows read are never updated
    during the run (no dead tuples on the floor's and the read's row).
    """
    kept = db.keep.setdefault(model, [])
    cookie = _cookie_from(app, "/new", "session")
    with sa.orm.Session(db.engine) as dbs:
        query = sa.select(model.id).where(model.id.not_in(kept)) if kept else sa.select(model.id)
        kept.append(dbs.scalars(query).one())
    return cookie


def _floor_rows(group: str, app: Any) -> list[Scenario]:
    """The three floors on ``group``'s own table (see :func:`floor_of`)."""
    return [
        Scenario(
            f"{group} floor: PK SELECT",
            "get(model, id) of this model's stored row, no session",
            app,
            _environ("/floor"),
            ("SELECT",),
            group,
            b"7",
        ),
        Scenario(
            f"{group} floor: SELECT+UPDATE",
            "get(model, id), then a Core UPDATE of that row by its key",
            app,
            _environ("/floor/write"),
            ("SELECT", "UPDATE"),
            group,
        ),
        Scenario(
            f"{group} floor: INSERT",
            "a Core INSERT of a row with a stored row's values",
            app,
            _environ("/floor/new"),
            ("INSERT",),
            group,
            b"1",
        ),
    ]


def _kernel_rows(
    group: str,
    app: Any,
    read_cookie: str,
    write_cookie: str,
    statements: dict[str, tuple[str, ...]] | None = None,
) -> list[Scenario]:
    """read, write, new, anonymous; ``statements`` overrides what a kind is expected to issue."""
    statements = statements or {}
    return [
        Scenario(
            f"{group} read",
            "existing session, no change",
            app,
            _environ("/read", read_cookie),
            statements.get("read", ("SELECT",)),
            group,
            b"1",
        ),
        Scenario(
            f"{group} write",
            "existing session, one key changed",
            app,
            _environ("/write", write_cookie),
            statements.get("write", ("SELECT", "UPDATE")),
            group,
        ),
        Scenario(
            f"{group} new",
            "no cookie, stores a key",
            app,
            _environ("/new"),
            statements.get("new", ("INSERT",)),
            group,
            b"1",
        ),
        Scenario(
            f"{group} anonymous",
            "no cookie, touches the session, stores nothing",
            app,
            _environ("/anonymous"),
            statements.get("anonymous", ()),
            group,
            b"None",
        ),
    ]


def count_statements(db: Database, scenarios: Iterable[Scenario]) -> None:
    """Run each scenario once, recording the SQL statements it issues (not timed)."""
    counter = StatementCounter(db.engine)
    try:
        for scenario in scenarios:
            with counter:
                scenario.body = scenario.call()
            scenario.statements = counter.kinds()
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", counter._record)


def prune_new_rows(db: Database) -> None:
    """Delete the rows the "new" rows made, keeping the sessions read and write use."""
    with db.engine.begin() as conn:
        for model in db.models:
            table = model.__table__
            conn.execute(table.delete().where(table.c.id.not_in(db.keep[model])))


# -- timing -----------------------------------------------------------------------------
def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def measure(
    scenarios: Sequence[Scenario],
    iterations: int,
    rounds: int,
    warmup: int,
    after_round: Callable[[], None] | None = None,
    chunk: int = 20,
) -> dict[str, dict[str, Any]]:
    """Time each scenario: ``rounds`` rounds of ``iterations`` requests each, interleaved.

    A round runs the scenarios in turn, ``chunk`` requests at a time, in an order
    shuffled at every turn (with a fixed seed), until each has made ``iterations``
    requests, so that background load (other processes, the database server)
    falls on every row alike, and so does what the row before leaves behind: a
    chunk that follows a write waited for the disk, and starts with cold caches
    (a rotated order kept every row after the same neighbour, and a
    microsecond-scale row after a disk-bound one paid it in every round).
    Returns per scenario the median of the rounds' medians, the median of the
    rounds' 90th percentiles (microseconds) and the number of timed requests.
    """
    clock = time.perf_counter_ns
    cpu_clock = time.process_time_ns
    for scenario in scenarios:
        for _ in range(warmup):
            scenario.call()
    medians: dict[str, list[float]] = {s.name: [] for s in scenarios}
    p90s: dict[str, list[float]] = {s.name: [] for s in scenarios}
    cpus: dict[str, list[float]] = {s.name: [] for s in scenarios}
    shuffle = random.Random(14).shuffle
    for _ in range(rounds):
        samples: dict[str, list[float]] = {s.name: [] for s in scenarios}
        cpu_samples: dict[str, list[float]] = {s.name: [] for s in scenarios}
        gc.collect()
        done = 0
        while done < iterations:
            n = min(chunk, iterations - done)
            order = list(scenarios)
            shuffle(order)
            for scenario in order:
                call = scenario.call
                out = samples[scenario.name]
                cpu_start = cpu_clock()
                for _ in range(n):
                    start = clock()
                    call()
                    out.append((clock() - start) / 1000)
                cpu_samples[scenario.name].append((cpu_clock() - cpu_start) / 1000 / n)
            done += n
        for name, values in samples.items():
            medians[name].append(statistics.median(values))
            p90s[name].append(_percentile(values, 0.9))
            cpus[name].append(statistics.median(cpu_samples[name]))
        if after_round is not None:
            after_round()
    return {
        s.name: {
            "median_us": statistics.median(medians[s.name]),
            "p90_us": statistics.median(p90s[s.name]),
            "round_medians_us": medians[s.name],
            # this process's CPU time per request (a chunk's, divided): what the Python
            # side costs, without the waits for the database and the disk
            "cpu_us": statistics.median(cpus[s.name]),
            "requests": iterations * rounds,
        }
        for s in scenarios
    }


def run_database(
    name: str,
    url: str,
    *,
    models: Sequence[str],
    iterations: int,
    rounds: int,
    warmup: int,
    notes: list[str],
    redis_url: str | None = None,
) -> dict[str, Any]:
    """Build, check and time every scenario on one database; returns its JSON record."""
    db = open_database(name, url)
    try:
        scenarios = build_scenarios(db, models, notes, redis_url)
        count_statements(db, scenarios)
        for s in scenarios:
            if tuple(s.statements) != s.expected:
                notes.append(f"{name}: {s.name} issued {s.statements}, expected {list(s.expected)}")
            if s.expected_body is not None and s.body != s.expected_body:
                notes.append(f"{name}: {s.name} answered {s.body!r}, expected {s.expected_body!r}")
        # what the models' plugins count (a cache's hits), over the warm-up and timed requests
        apps = {s.group: s.app for s in scenarios if s.group in MODELS}
        counted = {g: MODELS[g].counters for g in apps if MODELS[g].counters is not None}
        before = {g: counters(apps[g]) for g, counters in counted.items()}
        results = measure(scenarios, iterations, rounds, warmup, lambda: prune_new_rows(db))
        counters = {}
        for group, count in counted.items():
            after = count(apps[group])
            counters[group] = {k: v - before[group].get(k, 0) for k, v in after.items()}
        rows = []
        ratios = {}
        bare_ratios = {}
        target_keys = {}
        comparisons = []
        for s in scenarios:
            kind = s.name.rsplit(" ", 1)[-1]
            measured = s.group != "baseline" and kind in FLOOR_OF
            floor = floor_of(s.group, kind) if measured else None
            row = {
                "name": s.name,
                "group": s.group,
                "description": s.description,
                "statements": s.statements,
                "expected_statements": list(s.expected),
                "body": s.body.decode("utf-8", "replace"),
                "floor": floor,
                **results[s.name],
            }
            if floor is not None:
                row["x_floor"] = results[s.name]["median_us"] / results[floor]["median_us"]
                row["cpu_x_floor"] = results[s.name]["cpu_us"] / results[floor]["cpu_us"]
                label = f"{s.group} {kind} / {floor}"
                ratios[label] = row["x_floor"]
                spec = MODELS.get(s.group)
                default = "plugins read" if kind == "read" and s.group != "kernel" else kind
                target_keys[label] = (spec.targets if spec else {}).get(kind, default)
                than = spec.faster_than.get(kind) if spec else None
                if than in results:
                    ratio = results[s.name]["median_us"] / results[than]["median_us"]
                    comparisons.append({"row": s.name, "than": than, "ratio": ratio})
                bare = FLOOR_OF[kind]
                if bare != floor:  # also against the bare model's floor
                    row["bare_floor"] = bare
                    row["x_bare_floor"] = results[s.name]["median_us"] / results[bare]["median_us"]
                    bare_ratios[f"{s.group} {kind} / {bare}"] = row["x_bare_floor"]
            rows.append(row)
        return {
            "database": name,
            "dialect": db.engine.dialect.name,
            "rows": rows,
            "ratios": ratios,
            # the key of TARGETS each ratio is held to
            "target_keys": target_keys,
            # a model with plugins against the bare model's floors (its own are in ratios)
            "bare_ratios": bare_ratios,
            # rows that must be faster than a baseline row (the cached read than Redis's)
            "comparisons": comparisons,
            # per model, what its plugins counted during the warm-up and timed requests
            "counters": counters,
        }
    finally:
        db.close()


def database_urls(args: argparse.Namespace, tmpdir: str) -> dict[str, str]:
    """The databases to run on, in order, from ``--database`` and the URL options."""
    urls = {
        "sqlite": f"sqlite:///{os.path.join(tmpdir, 'bench.sqlite')}",
        "postgresql": args.postgresql or os.environ.get(DATABASE_ENV["postgresql"]),
        "mariadb": args.mariadb or os.environ.get(DATABASE_ENV["mariadb"]),
    }
    if args.database:
        wanted = [d.strip() for d in args.database.split(",") if d.strip()]
        unknown = [d for d in wanted if d not in urls]
        if unknown:
            raise SystemExit(f"--database: unknown {unknown}; choose from {list(urls)}")
        missing = [d for d in wanted if not urls[d]]
        if missing:
            options = ", ".join(f"--{d} URL or {DATABASE_ENV[d]}" for d in missing)
            raise SystemExit(f"--database {','.join(missing)} needs a URL: set {options}")
        return {d: urls[d] for d in wanted}
    return {d: url for d, url in urls.items() if url}


def run(args: argparse.Namespace) -> dict[str, Any]:
    models = [m.strip() for m in args.model.split(",") if m.strip()] if args.model else []
    models = models or list(MODELS)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"--model: unknown {unknown}; registered: {list(MODELS)}")
    notes: list[str] = []
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "iterations": args.iterations,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "target_ratio": TARGET_RATIO,
        "targets": TARGETS,
        "databases": [],
        "notes": notes,
    }
    with tempfile.TemporaryDirectory(prefix="sessions-bench-") as tmpdir:
        for name, url in database_urls(args, tmpdir).items():
            if not args.json:
                print(f"running on {name} ...", file=sys.stderr, flush=True)
            report["databases"].append(
                run_database(
                    name,
                    url,
                    models=models,
                    iterations=args.iterations,
                    rounds=args.rounds,
                    warmup=args.warmup,
                    notes=notes,
                    redis_url=args.redis or None,
                )
            )
    # a model skipped on every database is reported once
    report["notes"] = list(dict.fromkeys(notes))
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"Python {report['python']}; {report['rounds']} rounds x {report['iterations']} "
        f"requests per row (after {report['warmup']} warm-up requests); "
        "µs per request: median of the rounds' medians, median of their p90s",
        "",
    ]
    for db in report["databases"]:
        select = next(r for r in db["rows"] if r["name"] == "floor: PK SELECT")["median_us"]
        lines.append(f"== {db['database']} ==")
        header = (
            f"{'scenario':<30} {'median µs':>10} {'p90 µs':>9} {'x SELECT':>9} "
            f"{'x own':>6} {'CPU µs':>7} {'CPU x own':>9}  {'own floor':<30} SQL"
        )
        lines += [header, "-" * len(header)]
        for row in db["rows"]:
            sql = " ".join(row["statements"]) or "-"
            own = f"{row['x_floor']:>6.2f}" if row.get("floor") else f"{'':>6}"
            cpu_own = f"{row['cpu_x_floor']:>9.2f}" if "cpu_x_floor" in row else f"{'':>9}"
            lines.append(
                f"{row['name']:<30} {row['median_us']:>10.1f} {row['p90_us']:>9.1f} "
                f"{row['median_us'] / select:>9.2f} {own} {row.get('cpu_us', 0):>7.1f} "
                f"{cpu_own}  {row.get('floor') or '':<30} {sql}"
            )
        targets = report.get("targets", TARGETS)
        for label, ratio in db["ratios"].items():
            group, kind = label.split(" / ")[0].rsplit(" ", 1)
            key = "plugins read" if kind == "read" and group != "kernel" else kind
            key = db.get("target_keys", {}).get(label, key)
            target = targets[key]
            verdict = "met" if ratio <= target else "NOT met"
            bare = db.get("bare_ratios", {}).get(f"{group} {kind} / {FLOOR_OF[kind]}")
            against_bare = "" if bare is None else f"; x the bare model's floor: {bare:.2f}"
            lines.append(f"{label}: {ratio:.2f} (target <= {target}: {verdict}{against_bare})")
        for c in db.get("comparisons", []):
            verdict = "met" if c["ratio"] < 1 else "NOT met"
            lines.append(f"{c['row']} / {c['than']}: {c['ratio']:.2f} (target < 1: {verdict})")
        for group, counted in db.get("counters", {}).items():
            shown = ", ".join(f"{k} {v}" for k, v in counted.items())
            lines.append(f"{group}, counted over the warm-up and timed requests: {shown}")
        lines.append("")
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines).rstrip() + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--iterations", type=int, default=500, help="timed requests per row per round (500)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--warmup", type=int, default=100, help="untimed requests per row (100)")
    parser.add_argument(
        "--database",
        help="comma-separated: sqlite, postgresql, mariadb (default: sqlite and every "
        "server with a URL)",
    )
    parser.add_argument(
        "--postgresql", help=f"PostgreSQL URL (default ${DATABASE_ENV['postgresql']})"
    )
    parser.add_argument("--mariadb", help=f"MariaDB URL (default ${DATABASE_ENV['mariadb']})")
    parser.add_argument(
        "--redis",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"),
        help="Redis URL of the pyramid_session_redis rows (default $BENCH_REDIS_URL or "
        "redis://127.0.0.1:6379/15; '' leaves them out; skipped with a note when Redis "
        "does not answer)",
    )
    parser.add_argument(
        "--model",
        help=f"comma-separated models for the kernel rows (default: all of {list(MODELS)}; "
        "a model whose plugins are not installed is skipped with a note)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--iterations and --rounds must be >= 1, --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
