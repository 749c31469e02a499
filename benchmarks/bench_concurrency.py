"""Many requests of one session at once: throughput, failures, merges, retries, lost updates.

    python benchmarks/bench_concurrency.py                      # every database in the environment
    python benchmarks/bench_concurrency.py --database postgresql --isolation 'READ COMMITTED'
    python benchmarks/bench_concurrency.py --url sqlite:////tmp/c.sqlite

Two scenarios, each through the whole WSGI stack (pyramid_tm, pyramid_retry at
the settings users run, the kernel), with threads that each hold their own
database connection:

``hammer``
    ``--keys`` requests each set a key of their own and ``--increments``
    requests each add one to a shared counter, ``--threads`` at a time.
    Afterwards every key should be present and the counter should equal
    ``--increments``: anything else is a lost update.
``reads``
    ``--read-rounds`` rounds of ``--readers`` parallel GETs that only read a
    session whose model has the idle timeout (no ``extension_delay``, so every
    read extends it: the test clock moves one second per round), without
    pyramid_retry. None of them may fail.

Each row prints requests per second, failed requests (a 500, or an exception
no view rendered), requests that needed a merge (``SessionMerged``), retries
(attempts beyond the first) and what was lost. ``--attempts`` is
pyramid_retry's ``retry.attempts``; its default, 3, is pyramid_retry's own and
what applications run with. A larger value hides failures: don't.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa
import webtest
from pyramid.events import NewRequest

from sessions_kernel import events
from sessions_kernel.testing import Clock, SessionTestApp, make_model

#: Every database and isolation level the kernel supports, and the variable with its URL.
LEVELS = {
    "sqlite": (None, [None]),
    "postgresql": (
        "SESSIONS_TEST_POSTGRESQL_URL",
        ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"],
    ),
    "mariadb": ("SESSIONS_TEST_MARIADB_URL", ["REPEATABLE READ", "READ COMMITTED"]),
}


class _Counts:
    """Counts attempts (one NewRequest per pyramid_retry attempt) and merges."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def __call__(self, event: Any) -> None:
        with self.lock:
            self.counts[type(event).__name__] += 1

    def configure(self, config: Any) -> None:
        config.add_subscriber(self, NewRequest)
        merged = getattr(events, "SessionMerged", None)  # absent before the merge existed
        if merged is not None:
            config.add_subscriber(self, merged)


def _engine(url: str, isolation: str | None, threads: int) -> sa.Engine:
    options: dict[str, Any] = {"pool_size": threads + 2}
    if url.startswith("sqlite"):
        options = {"connect_args": {"timeout": 60}}
    if isolation:
        options["isolation_level"] = isolation
    return sa.create_engine(url, **options)


def _run_jobs(
    app: SessionTestApp, cookie: str, jobs: list[Any], threads: int, send: Callable[..., Any]
) -> tuple[Counter[Any], float]:
    def request(job: Any) -> Any:
        browser = webtest.TestApp(app.wsgi)
        browser.set_cookie("session", cookie)
        try:
            return send(browser, job).status_int
        except Exception as exc:  # an error no exception view rendered
            return type(exc).__name__

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        statuses = Counter(pool.map(request, jobs))
    return statuses, time.perf_counter() - started


def hammer(
    url: str, isolation: str | None, *, keys: int, increments: int, threads: int, attempts: int
) -> dict[str, Any]:
    engine = _engine(url, isolation, threads)
    counter = _Counts()
    model = make_model(tablename="bench_concurrency")
    model.metadata.drop_all(engine)
    model.metadata.create_all(engine)
    try:
        app = SessionTestApp(
            model, engine, settings={"retry.attempts": str(attempts)}, configure=counter.configure
        )
        app.post_json("/set", {"start": True})
        cookie = app.cookies["session"]
        counter.counts.clear()
        jobs = [("set", i) for i in range(keys)] + [("incr", i) for i in range(increments)]
        jobs.sort(key=lambda job: (job[1] % 7, job[0]))  # interleave the two kinds

        def send(browser: Any, job: tuple[str, int]) -> Any:
            kind, i = job
            if kind == "set":
                return browser.post_json("/set", {f"key{i}": i}, expect_errors=True)
            return browser.get("/incr/counter", expect_errors=True)

        statuses, elapsed = _run_jobs(app, cookie, jobs, threads, send)
        (row,) = app.rows()
        stored = json.loads(row.data)
        return _result(
            "hammer", engine, isolation, len(jobs), threads, attempts, statuses, elapsed,
            counter.counts,
            lost_increments=increments - stored.get("counter", 0),
            lost_keys=sum(f"key{i}" not in stored for i in range(keys)),
        )  # fmt: skip
    finally:
        model.metadata.drop_all(engine)
        engine.dispose()


def parallel_reads(url: str, isolation: str | None, *, rounds: int, readers: int) -> dict[str, Any]:
    """``rounds`` rounds of ``readers`` parallel reads of an idle-timeout session (no retry)."""
    from sessions_idle_timeout import IdleMixin

    engine = _engine(url, isolation, readers)
    counter = _Counts()
    clock = Clock()
    model = make_model(IdleMixin, tablename="bench_concurrency_reads")
    model.metadata.drop_all(engine)
    model.metadata.create_all(engine)
    try:
        app = SessionTestApp(
            model,
            engine,
            settings={"idle_timeout": "600"},
            clock=clock,
            retry=False,
            configure=counter.configure,
        )
        app.post_json("/set", {"user": "ann"})
        cookie = app.cookies["session"]
        counter.counts.clear()
        statuses: Counter[Any] = Counter()
        elapsed = 0.0
        for _ in range(rounds):
            clock.advance(1)  # every read of the round extends the idle expiry
            got, seconds = _run_jobs(
                app, cookie, list(range(readers)), readers, lambda b, _: b.get("/read")
            )
            statuses += got
            elapsed += seconds
        return _result(
            "reads", engine, isolation, rounds * readers, readers, 1, statuses, elapsed,
            counter.counts, lost_increments=0, lost_keys=0,
        )  # fmt: skip
    finally:
        model.metadata.drop_all(engine)
        engine.dispose()


def _result(
    scenario: str,
    engine: sa.Engine,
    isolation: str | None,
    requests: int,
    threads: int,
    attempts: int,
    statuses: Counter[Any],
    elapsed: float,
    counts: Counter[str],
    **lost: int,
) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "database": engine.dialect.name,
        "isolation": isolation or "default",
        "attempts": attempts,
        "requests": requests,
        "threads": threads,
        "seconds": round(elapsed, 3),
        "requests_per_second": round(requests / elapsed, 1),
        "failed": requests - statuses.get(200, 0),
        "statuses": {str(k): v for k, v in statuses.items()},
        "merges": counts["SessionMerged"],
        "retries": counts["NewRequest"] - requests,
        **lost,
    }


def _targets(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    if args.url:
        levels = args.isolation.split(",") if args.isolation is not None else [""]
        return [(args.url, level or None) for level in levels]
    targets = []
    for database in args.database or list(LEVELS):
        variable, levels = LEVELS[database]
        if variable is None:
            url = "sqlite:///" + os.path.abspath(args.sqlite_file)
        else:
            url = os.environ.get(variable, "")
            if not url:
                print(f"# {database}: {variable} is not set, skipped", file=sys.stderr)
                continue
        if args.isolation is not None:
            levels = [level or None for level in args.isolation.split(",")]
        targets += [(url, level) for level in levels]
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="one database URL (default: every database configured)")
    parser.add_argument("--database", action="append", choices=list(LEVELS))
    parser.add_argument("--isolation", help="comma-separated isolation levels ('' = default)")
    parser.add_argument("--sqlite-file", default="bench_concurrency.sqlite")
    parser.add_argument("--scenario", action="append", choices=["hammer", "reads"])
    parser.add_argument("--attempts", type=int, default=3, help="retry.attempts (default 3)")
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--increments", type=int, default=100)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--read-rounds", type=int, default=30)
    parser.add_argument("--readers", type=int, default=6)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    scenarios = args.scenario or ["hammer", "reads"]
    results = []
    for url, level in _targets(args):
        if "hammer" in scenarios:
            options = {"keys": args.keys, "increments": args.increments}
            options |= {"threads": args.threads, "attempts": args.attempts}
            results.append(hammer(url, level, **options))
        if "reads" in scenarios:
            results.append(
                parallel_reads(url, level, rounds=args.read_rounds, readers=args.readers)
            )
        if url.startswith("sqlite") and os.path.exists(args.sqlite_file):
            os.remove(args.sqlite_file)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"{'scenario':<9}{'database':<11}{'isolation':<17}{'req/s':>8}{'failed':>8}"
        f"{'merges':>8}{'retries':>9}{'lost incr':>11}{'lost keys':>11}  statuses"
    )
    for r in results:
        print(
            f"{r['scenario']:<9}{r['database']:<11}{r['isolation']:<17}"
            f"{r['requests_per_second']:>8}{r['failed']:>5}/{r['requests']:<3}{r['merges']:>7}"
            f"{r['retries']:>9}{r['lost_increments']:>11}{r['lost_keys']:>11}  {r['statuses']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
