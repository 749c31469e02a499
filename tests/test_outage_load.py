"""A real application under load while its database connections are killed, again and again.

An application configured as the README says (pyramid_tm, pyramid_retry,
``config.include("sessions_kernel")``), four writer threads and a reader, each
request through the whole WSGI stack, while another thread kills the
application's own connections on the server (PostgreSQL: ``pg_terminate_backend``
on the backends carrying this test's ``application_name``; MariaDB: ``KILL`` of the
connection ids the application's engine opened). Other clients of the shared
servers are never touched.

Every answer must be a 200, or a 503 with ``Retry-After``; never a traceback or a
500; and every write answered 200 must be stored.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa
import webtest
from kernel_support import make_included_app
from pyramid.config import Configurator
from pyramid_retry import IBeforeRetry

from sessions_kernel.pytest_plugin import server_url
from sessions_kernel.testing import TEST_SECRET_KEY, make_model

WRITERS, WRITES, READS = 4, 100, 100
KILL_EVERY = (0.005, 0.03)  # seconds between two kills, at random
MAX_KILLS, TIME_LIMIT = 400, 120.0
#: the kills the writers go on for (within TIME_LIMIT), so that a slow machine tests as much
MIN_KILLS = 20


class Connections:
    """The server-side ids of the application engine's connections, to kill them."""

    def __init__(self, engine: sa.Engine, application_name: str) -> None:
        self.engine, self.application_name = engine, application_name
        self.lock = threading.Lock()
        self.ids: set[int] = set()
        if engine.dialect.name != "postgresql":

            @sa.event.listens_for(engine, "connect")
            def remember(dbapi_connection: Any, record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("SELECT CONNECTION_ID()")
                (thread_id,) = cursor.fetchone()
                cursor.close()
                with self.lock:
                    self.ids.add(int(thread_id))

    def kill_one(self, killer: sa.Connection, chooser: random.Random) -> bool:
        if self.engine.dialect.name == "postgresql":
            pids = killer.exec_driver_sql(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %(name)s",
                {"name": self.application_name},
            ).scalars()
            candidates = sorted(pids)
        else:
            with self.lock:
                candidates = sorted(self.ids)
        if not candidates:  # every connection was killed, none made again yet
            # End the transaction: PostgreSQL reads pg_stat_activity once per transaction,
            # so the next look would see this empty list again, and the killer would stop.
            killer.rollback()
            return False
        victim = chooser.choice(candidates)
        try:
            if self.engine.dialect.name == "postgresql":
                killer.exec_driver_sql(f"SELECT pg_terminate_backend({int(victim)})")
            else:
                with self.lock:
                    self.ids.discard(victim)
                killer.exec_driver_sql(f"KILL {int(victim)}")
        except sa.exc.DBAPIError:  # it ended on its own meanwhile (unknown thread id)
            killer.rollback()
            return False
        killer.commit()
        return True


class Causes(logging.Handler):
    """The errors behind the outage tween's 503 answers, counted."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.getMessage().split(" after ")[0]] += 1


def build_app(engine: sa.Engine, model: type, retries: Counter[str]) -> Any:
    settings = {
        "tm.manager_hook": "pyramid_tm.explicit_manager",
        "retry.attempts": "3",
        "session.secret_key": TEST_SECRET_KEY,
        "session.model_class": model,
    }

    def count_retries(config: Configurator) -> None:
        config.add_subscriber(
            lambda event: retries.update([type(event.exception).__name__]), IBeforeRetry
        )

    return make_included_app(engine, settings, count_retries, retry=True).app


@pytest.fixture(params=["postgresql", "mariadb"])
def engine(request: pytest.FixtureRequest) -> Any:
    url = sa.make_url(server_url(request.param))
    name = f"outage-load-{os.getpid()}"
    args = {"application_name": name} if request.param == "postgresql" else {}
    # no pool_pre_ping: a killed idle connection fails its request's first statement,
    # which then has to be run again on a fresh connection
    engine = sa.create_engine(url, pool_size=WRITERS + 2, connect_args=args)
    yield engine, name
    engine.dispose()


def test_killed_connections_under_load_give_200s_and_clean_503s_and_lose_nothing(engine):
    engine, application_name = engine
    model = make_model(tablename=f"outage_load_{os.getpid()}")
    model.metadata.drop_all(engine)
    model.metadata.create_all(engine)
    connections = Connections(engine, application_name)
    retries: Counter[str] = Counter()
    wsgi = build_app(engine, model, retries)
    outcomes: Counter[tuple[str, Any]] = Counter()
    without_retry_after = Counter[str]()
    acknowledged: dict[int, list[int]] = {w: [] for w in range(WRITERS)}
    refused: dict[int, list[int]] = {w: [] for w in range(WRITERS)}  # answered 503
    cookies = []
    lock = threading.Lock()
    for _ in range(WRITERS):
        browser = webtest.TestApp(wsgi)
        browser.post_json("/set", {"start": True})
        cookies.append(browser.cookies["session"])
    done = threading.Event()
    deadline = time.monotonic() + TIME_LIMIT

    def record(kind: str, response: Any) -> None:
        with lock:
            outcomes[(kind, response.status_int)] += 1
            if response.status_int == 503 and response.headers.get("Retry-After") != "1":
                without_retry_after[kind] += 1

    def writer(w: int) -> None:
        browser = webtest.TestApp(wsgi)
        browser.set_cookie("session", cookies[w])
        for i in itertools.count():  # WRITES, and on until the killer got to work
            if (i >= WRITES and kills >= MIN_KILLS) or time.monotonic() > deadline:
                return
            try:
                response = browser.post_json("/set", {f"w{w}_{i}": i}, expect_errors=True)
            except Exception as exc:  # no view answered: a traceback
                with lock:
                    outcomes[("write", f"{type(exc).__name__}: {str(exc)[:100]}")] += 1
                continue
            record("write", response)
            with lock:
                (acknowledged if response.status_int == 200 else refused)[w].append(i)

    def reader() -> None:
        browser = webtest.TestApp(wsgi)
        browser.set_cookie("session", cookies[0])
        for _ in range(READS):
            if time.monotonic() > deadline:
                return
            try:
                response = browser.get("/read", expect_errors=True)
            except Exception as exc:
                with lock:
                    outcomes[("read", f"{type(exc).__name__}: {str(exc)[:100]}")] += 1
                continue
            record("read", response)
            if response.status_int == 200:
                assert response.json["new"] is False  # never logged out

    kills = 0

    def killer() -> None:
        nonlocal kills
        chooser = random.Random(11)
        killer_engine = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)
        try:
            with killer_engine.connect() as conn:
                while not done.is_set() and kills < MAX_KILLS and time.monotonic() < deadline:
                    if connections.kill_one(conn, chooser):
                        kills += 1
                    time.sleep(chooser.uniform(*KILL_EVERY))
        finally:
            killer_engine.dispose()

    causes = Causes()
    logging.getLogger("sessions_kernel.outage").addHandler(causes)
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    threads.append(threading.Thread(target=reader))
    kill_thread = threading.Thread(target=killer)
    try:
        kill_thread.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIME_LIMIT + 30)
        done.set()
        kill_thread.join(30)

        # what each writer's session holds now (the application reads it again)
        lost = stored_anyway = 0
        for w, cookie in enumerate(cookies):
            browser = webtest.TestApp(wsgi)
            browser.set_cookie("session", cookie)
            data = browser.get("/read").json["data"]
            lost += sum(f"w{w}_{i}" not in data for i in acknowledged[w])
            stored_anyway += sum(f"w{w}_{i}" in data for i in refused[w])
    finally:
        logging.getLogger("sessions_kernel.outage").removeHandler(causes)
        model.metadata.drop_all(engine)

    statuses = {f"{kind} {status}": n for (kind, status), n in sorted(outcomes.items(), key=str)}
    print(
        f"\n[outage] {engine.dialect.name}: kills={kills} retries={dict(retries)} {statuses} "
        f"503 causes: {dict(causes.counts)}; writes answered 503 but committed: {stored_anyway}"
    )
    assert kills >= MIN_KILLS, "the killer did not get to work"
    assert sum(retries.values()) >= 5, "no request met a killed connection"
    assert set(status for _, status in outcomes) <= {200, 503}, statuses
    assert not without_retry_after, without_retry_after
    assert lost == 0
    assert outcomes[("write", 200)] >= WRITERS * WRITES // 2  # mostly served
