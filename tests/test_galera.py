"""Sessions on a 3-node MariaDB Galera cluster behind HAProxy (``scripts/galera-cluster``).

Run with the cluster up::

    scripts/galera-cluster start
    eval "$(scripts/galera-cluster env)"
    .venv/bin/pytest -m cluster -s tests/test_galera.py

Without ``SESSIONS_TEST_GALERA_URL`` every test here is skipped. Figures (stale
reads, attempts, the fault test's stall and failures) are printed and, when
``SESSIONS_TEST_GALERA_REPORT`` names a file, appended to it as JSON lines.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
import webtest
from concurrency_support import browser_with, build, data
from pyramid.events import NewRequest

from sessions_kernel import events
from sessions_kernel.cluster import galera_engine
from sessions_kernel.testing import SessionTestApp, make_model

pytestmark = pytest.mark.cluster

HAPROXY = os.environ.get("SESSIONS_TEST_GALERA_URL", "")
NODES = os.environ.get("SESSIONS_TEST_GALERA_NODES", "").split()
SCRIPT = os.environ.get("SESSIONS_TEST_GALERA_SCRIPT", "")
REPORT = os.environ.get("SESSIONS_TEST_GALERA_REPORT", "")


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    if not HAPROXY or len(NODES) != 3:
        pytest.skip(
            "SESSIONS_TEST_GALERA_URL and SESSIONS_TEST_GALERA_NODES are not set: no Galera "
            'cluster (scripts/galera-cluster start; eval "$(scripts/galera-cluster env)")'
        )
    return {"haproxy": HAPROXY, "nodes": NODES, "script": SCRIPT}


def report(name: str, **figures: Any) -> None:
    line = json.dumps({"test": name, **figures})
    print(f"\n[galera] {line}")
    if REPORT:
        with open(REPORT, "a") as out:
            out.write(line + "\n")


def including_cluster(config: Any) -> None:
    config.include("sessions_kernel.cluster")


class Attempts:
    """Which attempt each request reached (``job`` in the environ names the request)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_job: dict[Any, int] = {}

    def __call__(self, event: Any) -> None:
        environ = event.request.environ
        # pyramid_retry hands every attempt of a request the same environ
        job = environ.setdefault("job", f"request-{id(environ)}-{time.perf_counter_ns()}")
        if job is not None:
            with self.lock:
                self.by_job[job] = max(self.by_job.get(job, 0), environ["retry.attempt"] + 1)

    def configure(self, config: Any) -> None:
        config.include("sessions_kernel.cluster")
        config.add_subscriber(self, NewRequest)

    def histogram(self) -> dict[int, int]:
        return dict(sorted(Counter(self.by_job.values()).items()))


# -- stale reads ---------------------------------------------------------------------------


def write_load(engine: sa.Engine, stop: threading.Event, table: str, limit: int = 5000) -> None:
    """Bounded INSERTs (200 rows of 1 kB per transaction) that keep the other nodes applying."""
    payload = "x" * 1000
    for _ in range(limit):
        if stop.is_set():
            return
        with engine.begin() as conn:
            conn.execute(
                sa.text(f"INSERT INTO {table} (payload) VALUES (:p)"),
                [{"p": payload}] * 200,
            )


def test_a_session_written_on_one_node_is_found_on_another(cluster):
    """INSERT through node 1, read through node 3 right after: found with wsrep_sync_wait."""
    nodes = cluster["nodes"]
    model = make_model(tablename=f"galera_stale_{os.getpid()}")
    load_table = f"galera_load_{os.getpid()}"
    writer = galera_engine(nodes[0], pool_size=4)
    plain = sa.create_engine(nodes[2], pool_size=4, pool_pre_ping=True)
    synced = galera_engine(nodes[2], pool_size=4)
    model.metadata.drop_all(writer)
    model.metadata.create_all(writer)
    with writer.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {load_table}"))
        conn.execute(
            sa.text(f"CREATE TABLE {load_table} (id INT AUTO_INCREMENT PRIMARY KEY, payload TEXT)")
        )
    not_found: Counter[str] = Counter()
    lock = threading.Lock()

    def counting(name: str) -> Any:
        def configure(config: Any) -> None:
            def count(event: Any) -> None:
                with lock:
                    not_found[name] += 1

            config.add_subscriber(count, events.SessionNotFound)

        return configure

    apps = {
        "writer": SessionTestApp(model, writer),
        "plain": SessionTestApp(model, plain, configure=counting("plain")),
        "sync_wait": SessionTestApp(model, synced, configure=counting("sync_wait")),
    }
    stop = threading.Event()
    loaders = [
        threading.Thread(target=write_load, args=(writer, stop, load_table)) for _ in range(2)
    ]
    rounds = 200
    missing: Counter[str] = Counter()
    seconds: dict[str, list[float]] = {"plain": [], "sync_wait": []}
    try:
        for thread in loaders:
            thread.start()
        for i in range(rounds * 2):
            reader = "plain" if i % 2 == 0 else "sync_wait"
            browser = apps["writer"].new_browser()
            browser.post_json("/set", {"i": i})
            started = time.perf_counter()
            response = browser_with(apps[reader], browser.cookies["session"]).get("/read")
            seconds[reader].append(time.perf_counter() - started)
            if response.json["data"] != {"i": i}:
                missing[reader] += 1
                assert response.headers["Set-Cookie"].startswith("session=; Max-Age=0")
    finally:
        stop.set()
        for thread in loaders:
            thread.join(60)
        with writer.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {load_table}"))
        model.metadata.drop_all(writer)
        for engine in (writer, plain, synced):
            engine.dispose()

    def p99(values: list[float]) -> float:
        return round(sorted(values)[int(len(values) * 0.99) - 1] * 1000, 1)

    report(
        "stale_reads",
        rounds_per_reader=rounds,
        not_found_without_sync_wait=missing["plain"],
        not_found_with_sync_wait=missing["sync_wait"],
        read_p99_ms_without=p99(seconds["plain"]),
        read_p99_ms_with=p99(seconds["sync_wait"]),
    )
    assert missing["sync_wait"] == 0
    assert not_found["sync_wait"] == 0
    assert missing["plain"] == not_found["plain"]


# -- concurrent requests of one session ---------------------------------------------------

KEYS, INCREMENTS, THREADS = 100, 100, 8


def hammer(apps: list[Any], cookie: str, attempts: Attempts) -> Counter[Any]:
    """The issue's hammer: KEYS distinct-key writes and INCREMENTS increments, 8 threads;
    each request goes to a random one of ``apps``."""
    jobs = [("set", i) for i in range(KEYS)] + [("incr", i) for i in range(INCREMENTS)]
    jobs.sort(key=lambda job: (job[1] % 7, job[0]))
    chooser = random.Random(16)
    targets = [chooser.choice(apps) for _ in jobs]

    def request(index: int) -> Any:
        kind, i = jobs[index]
        browser = webtest.TestApp(targets[index].wsgi, extra_environ={"job": str(index)})
        browser.set_cookie("session", cookie)
        try:
            if kind == "set":
                return browser.post_json("/set", {f"key{i}": i}, expect_errors=True).status_int
            return browser.get("/incr/counter", expect_errors=True).status_int
        except Exception as exc:  # an error no view rendered
            return f"{type(exc).__name__}: {str(exc)[:120]}"

    with ThreadPoolExecutor(THREADS) as pool:
        return Counter(pool.map(request, range(len(jobs))))


def summary(statuses: Counter[Any]) -> dict[str, int]:
    """Statuses and error names, counted (first 60 characters of an error)."""
    counts: Counter[str] = Counter()
    for status, n in statuses.items():
        counts[str(status)[:60]] += n
    return dict(counts)


def lost(app: Any) -> tuple[int, int]:
    stored = data(app)
    return (
        INCREMENTS - stored.get("counter", 0),
        sum(stored.get(f"key{i}") != i for i in range(KEYS)),
    )


def test_hammer_through_haproxy_loses_nothing_with_three_attempts(cluster):
    engine = galera_engine(cluster["haproxy"], pool_size=THREADS + 2)
    attempts = Attempts()
    app = build(engine, attempts=3, configure=attempts.configure)
    try:
        app.post_json("/set", {"start": True})
        started = time.perf_counter()
        statuses = hammer([app], app.cookies["session"], attempts)
        elapsed = time.perf_counter() - started
        lost_increments, lost_keys = lost(app)
        report(
            "hammer_haproxy",
            attempts_allowed=3,
            statuses=summary(statuses),
            attempts_used=attempts.histogram(),
            merges=app.recorder.counts["SessionMerged"],
            lost_increments=lost_increments,
            lost_keys=lost_keys,
            requests_per_second=round((KEYS + INCREMENTS) / elapsed, 1),
        )
        assert statuses == {200: KEYS + INCREMENTS}
        assert (lost_increments, lost_keys) == (0, 0)
    finally:
        app.model.metadata.drop_all(engine)
        engine.dispose()


@pytest.mark.parametrize("allowed", [3, 100])
def test_hammer_with_writes_spread_over_all_nodes(cluster, allowed):
    """Each request to a random node: Galera's certification conflicts (1213 at COMMIT)
    come on top of the kernel's own; report the attempts they need."""
    engines = [galera_engine(url, pool_size=THREADS + 2) for url in cluster["nodes"]]
    attempts = Attempts()
    first = build(engines[0], attempts=allowed, configure=attempts.configure)
    apps = [first] + [
        SessionTestApp(
            first.model,
            engine,
            settings={"retry.attempts": str(allowed)},
            configure=attempts.configure,
        )
        for engine in engines[1:]
    ]
    try:
        first.post_json("/set", {"start": True})
        started = time.perf_counter()
        statuses = hammer(apps, first.cookies["session"], attempts)
        elapsed = time.perf_counter() - started
        lost_increments, lost_keys = lost(first)
        report(
            "hammer_spread",
            attempts_allowed=allowed,
            statuses=summary(statuses),
            attempts_used=attempts.histogram(),
            max_attempts=max(attempts.by_job.values(), default=0),
            lost_increments=lost_increments,
            lost_keys=lost_keys,
            requests_per_second=round((KEYS + INCREMENTS) / elapsed, 1),
        )
        # whatever failed failed cleanly (a 503 or a 500 the exception view rendered), and
        # nothing acknowledged is missing
        assert all(isinstance(status, int) for status in statuses)
        assert lost_keys <= sum(n for s, n in statuses.items() if s != 200)
        if allowed == 100:
            assert statuses == {200: KEYS + INCREMENTS}
            assert (lost_increments, lost_keys) == (0, 0)
    finally:
        first.model.metadata.drop_all(engines[0])
        for engine in engines:
            engine.dispose()


# -- a node killed under load ------------------------------------------------------------------


def script(*args: str, timeout: float = 180) -> str:
    done = subprocess.run(
        [cluster_script(), *args], capture_output=True, text=True, timeout=timeout, check=True
    )
    return done.stdout


def cluster_script() -> str:
    if not SCRIPT:
        pytest.skip("SESSIONS_TEST_GALERA_SCRIPT is not set: the test cannot kill a node")
    return SCRIPT


def checksums(urls: list[str], table: str) -> list[Any]:
    sums = []
    for url in urls:
        engine = galera_engine(url)
        try:
            with engine.connect() as conn:
                sums.append(conn.execute(sa.text(f"CHECKSUM TABLE {table}")).one()[1])
        finally:
            engine.dispose()
    return sums


class Load:
    """Writer threads (each its own session, a new key per request) and reader threads,
    recording every outcome, until stopped (bounded: at most ``limit`` requests each)."""

    def __init__(self, app: Any, writers: int, readers: int, limit: int = 20_000) -> None:
        self.app, self.limit = app, limit
        self.lock = threading.Lock()
        self.cookies = []
        for _ in range(writers):
            browser = app.new_browser()
            browser.post_json("/set", {"start": True})
            self.cookies.append(browser.cookies["session"])
        self.acknowledged: dict[int, list[int]] = {w: [] for w in range(writers)}
        self.outcomes: Counter[tuple[str, Any]] = Counter()
        self.completions: list[tuple[float, float, str, Any]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.writer, args=(w,)) for w in range(writers)]
        self.threads += [threading.Thread(target=self.reader, args=(r,)) for r in range(readers)]
        self.unavailable = ServiceUnavailableLog()

    def record(self, kind: str, started: float, status: Any) -> None:
        with self.lock:
            self.outcomes[(kind, status)] += 1
            self.completions.append((started, time.perf_counter(), kind, status))

    def writer(self, w: int) -> None:
        browser = browser_with(self.app, self.cookies[w])
        for i in range(self.limit):
            if self.stop.is_set():
                return
            started = time.perf_counter()
            try:
                status = browser.post_json("/set", {f"w{w}_{i}": i}, expect_errors=True)
                status = status.status_int
            except Exception as exc:  # an error no view rendered: a traceback
                status = type(exc).__name__
            if status == 200:
                with self.lock:
                    self.acknowledged[w].append(i)
            self.record("write", started, status)

    def reader(self, r: int) -> None:
        browser = browser_with(self.app, self.cookies[r % len(self.cookies)])
        for _ in range(self.limit):
            if self.stop.is_set():
                return
            started = time.perf_counter()
            try:
                response = browser.get("/read", expect_errors=True)
                status = response.status_int
                if status == 200 and response.json["new"]:
                    status = "logged out"
            except Exception as exc:
                status = type(exc).__name__
            self.record("read", started, status)

    def __enter__(self) -> Load:
        self.t0 = time.perf_counter()
        self.unavailable.start()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(120)
        self.unavailable.stop()

    def since(self) -> float:
        return round(time.perf_counter() - self.t0, 1)

    def figures(self) -> dict[str, Any]:
        writes = sorted(
            (end, status) for _, end, kind, status in self.completions if kind == "write"
        )
        ok = [self.t0] + [end for end, status in writes if status == 200]
        return {
            "requests": sum(self.outcomes.values()),
            "acknowledged_writes": sum(map(len, self.acknowledged.values())),
            "failed": {f"{k} {s}": n for (k, s), n in self.outcomes.items() if s != 200},
            "causes_of_503": dict(self.unavailable.causes),
            "longest_write_stall_s": round(max(b - a for a, b in itertools.pairwise(ok)), 2),
            "slowest_request_s": round(max(e - s for s, e, _, _ in self.completions), 2),
        }

    def missing_on(self, urls: list[str], model: type) -> list[int]:
        """Acknowledged writes missing from each node's copy of the table."""
        missing = []
        for url in urls:
            engine = galera_engine(url)
            try:
                with sa.orm.Session(engine) as db:
                    rows = [json.loads(row.data) for row in db.scalars(sa.select(model))]
            finally:
                engine.dispose()
            lost = 0
            for w, keys in self.acknowledged.items():
                held = [d for d in rows if f"w{w}_{keys[0]}" in d] if keys else [{}]
                present = held[0] if held else {}
                lost += sum(f"w{w}_{i}" not in present for i in keys)
            missing.append(lost)
        return missing


class ServiceUnavailableLog(logging.Handler):
    """Counts the database errors behind the outage tween's 503 answers."""

    def __init__(self) -> None:
        super().__init__()
        self.causes: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.causes[record.getMessage().split(" after ")[0]] += 1

    def start(self) -> None:
        logging.getLogger("sessions_kernel.outage").addHandler(self)

    def stop(self) -> None:
        logging.getLogger("sessions_kernel.outage").removeHandler(self)


def back_on_node1(url: str, seconds: float = 60) -> None:
    """Wait until HAProxy sends new connections to node 1 again (its checks saw it Synced)."""
    probe = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                with probe.connect() as conn:
                    if conn.exec_driver_sql("SELECT @@wsrep_node_name").scalar() == "node1":
                        return
            except sa.exc.DBAPIError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"HAProxy did not route to node 1 again within {seconds} s")
    finally:
        probe.dispose()


def report_fault(
    name: str,
    load: Any,
    attempts: Any,
    *,
    timeline: dict[str, float],
    restarted: str,
    missing: list[int],
    sums: list[Any],
    after: list[int],
    **extra: Any,
) -> None:
    """Report a fault test's figures, then check what every fault must keep.

    No acknowledged write lost on any node, the nodes' checksums agree, the
    application answers 20 writes after the fault, and every failure was a 503.
    """
    figures = load.figures()
    report(
        name,
        timeline_s=timeline,
        rejoin=restarted.strip().splitlines()[-1],
        **figures,
        attempts_used=attempts.histogram(),
        lost_acknowledged_writes_per_node=missing,
        checksums=sums,
        **extra,
    )
    assert missing == [0, 0, 0]
    assert len(set(sums)) == 1
    assert after == [200] * 20
    assert set(figures["failed"]) <= {"write 503", "read 503"}, figures["failed"]


def test_killing_the_writer_loses_no_acknowledged_write(cluster):
    """kill -9 of the node HAProxy writes to, under reads and writes; it rejoins by IST."""
    cluster_script()
    engine = galera_engine(cluster["haproxy"], pool_size=8)
    model = make_model(tablename=f"galera_fault_{os.getpid()}")
    attempts = Attempts()
    app = build(engine, attempts=3, model=model, configure=attempts.configure)
    timeline: dict[str, float] = {}
    try:
        with Load(app, writers=4, readers=2) as load:
            time.sleep(3)
            timeline["kill"] = load.since()
            script("kill", "1")
            time.sleep(10)  # the survivors evict node 1 (suspect timeout), HAProxy fails over
            timeline["restart"] = load.since()
            restarted = script("start-node", "1")
            timeline["synced"] = load.since()
            time.sleep(6)  # HAProxy sees node 1 Synced again (rise 2) and moves writes back
        timeline["end"] = load.since()
        back_on_node1(cluster["haproxy"])
        # the application goes on without a restart, on the rejoined writer
        after = [app.post_json("/set", {"after": n}).status_int for n in range(20)]
        with engine.connect() as conn:
            writer_after = conn.execute(sa.text("SELECT @@wsrep_node_name")).scalar()
        script("wait-synced")
        missing = load.missing_on(cluster["nodes"], model)
        sums = checksums(cluster["nodes"], model.__tablename__)
    finally:
        model.metadata.drop_all(engine)
        engine.dispose()
    report_fault(
        "fault_kill_writer",
        load,
        attempts,
        timeline=timeline,
        restarted=restarted,
        missing=missing,
        sums=sums,
        after=after,
        writer_after=writer_after,
    )
    assert writer_after == "node1"


def test_an_application_on_a_killed_node_answers_503_until_the_node_is_back(cluster):
    """No proxy: the application's only node dies and rejoins. Connection refused (2003),
    lost (2013), then 'WSREP has not yet prepared node' (1047) while it joins: 503s,
    never a traceback, and the same application works again once the node is Synced."""
    cluster_script()
    engine = galera_engine(cluster["nodes"][2], pool_size=6)
    model = make_model(tablename=f"galera_pinned_{os.getpid()}")
    attempts = Attempts()
    app = build(engine, attempts=3, model=model, configure=attempts.configure)
    timeline: dict[str, float] = {}
    try:
        with Load(app, writers=2, readers=1) as load:
            time.sleep(2)
            timeline["kill"] = load.since()
            script("kill", "3")
            time.sleep(4)
            timeline["restart"] = load.since()
            restarted = script("start-node", "3")
            timeline["synced"] = load.since()
            time.sleep(2)
        timeline["end"] = load.since()
        after = [app.post_json("/set", {"after": n}).status_int for n in range(20)]
        script("wait-synced")
        missing = load.missing_on(cluster["nodes"], model)
        sums = checksums(cluster["nodes"], model.__tablename__)
    finally:
        model.metadata.drop_all(engine)
        engine.dispose()
    report_fault(
        "fault_pinned_node",
        load,
        attempts,
        timeline=timeline,
        restarted=restarted,
        missing=missing,
        sums=sums,
        after=after,
    )


# -- the drivers' real errors ----------------------------------------------------------------

DRIVERS = {"pymysql": "pymysql", "mysqldb": "MySQLdb", "mariadbconnector": "mariadb"}


@pytest.fixture(params=sorted(DRIVERS))
def driver_urls(request, cluster) -> list[str]:
    import importlib.util

    if importlib.util.find_spec(DRIVERS[request.param]) is None:
        pytest.skip(f"the {DRIVERS[request.param]} driver is not installed")
    urls = []
    for url in cluster["nodes"]:
        parsed = sa.engine.make_url(url).set(drivername=f"mariadb+{request.param}")
        if request.param == "mariadbconnector":
            parsed = parsed.difference_update_query(["charset"])
        urls.append(parsed)
    return urls


def test_each_driver_s_real_errors_are_classified(driver_urls):
    """A certification conflict between two nodes (1213), a killed connection (lost during
    a statement), a closed port (2003), raised by the driver itself."""
    from sessions_kernel.cluster import classify_error, error_code

    one, two = (galera_engine(url) for url in driver_urls[:2])
    table = f"galera_driver_{os.getpid()}"
    try:
        with one.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
            conn.exec_driver_sql(f"CREATE TABLE {table} (id INT PRIMARY KEY, n INT)")
            conn.exec_driver_sql(f"INSERT INTO {table} VALUES (1, 0)")
        a, b = one.connect(), two.connect()
        a.exec_driver_sql(f"UPDATE {table} SET n = n + 1 WHERE id = 1")
        b.exec_driver_sql(f"UPDATE {table} SET n = n + 10 WHERE id = 1")
        a.commit()
        with pytest.raises(sa.exc.DBAPIError) as conflict:
            b.exec_driver_sql(f"SELECT n FROM {table}")  # the conflict aborted b's transaction
            b.commit()
        b.rollback()
        assert (error_code(conflict.value), classify_error(conflict.value)) == (1213, "retry")

        victim = one.connect()
        victim_id = victim.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
        victim.exec_driver_sql("SELECT 1")
        with one.connect() as killer:
            killer.exec_driver_sql(f"KILL {victim_id}")
        with pytest.raises(sa.exc.DBAPIError) as killed:
            victim.exec_driver_sql(f"SELECT n FROM {table}")
        victim.invalidate()
        assert error_code(killed.value) in {2006, 2013, 1927, 4031}, killed.value
        assert classify_error(killed.value) == "retry"

        closed = galera_engine(sa.engine.make_url(driver_urls[0]).set(port=4399))
        with pytest.raises(sa.exc.DBAPIError) as refused:
            closed.connect()
        assert error_code(refused.value) in {2002, 2003}  # libmariadb says 2002 for TCP too
        assert classify_error(refused.value) == "unavailable"
        a.close()
        b.close()
    finally:
        with one.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        one.dispose()
        two.dispose()
