"""Many requests of one session at once: throughput, merges, retries and lost updates.

    python benchmarks/bench_concurrency.py                      # PostgreSQL from the environment
    python benchmarks/bench_concurrency.py --url sqlite:////tmp/c.sqlite --isolation ''

Threads (each with its own database connection) drive one session through the
whole WSGI stack (pyramid_tm, pyramid_retry, the kernel): ``--keys`` requests
each set a key of their own, ``--increments`` requests each add one to a shared
counter. Afterwards every key should be present and the counter should equal
``--increments``: anything else is a lost update. Prints requests per second,
how many requests needed a merge (``SessionMerged``) or a retry (an attempt
beyond the first), and what was lost. Works on kernels without the merge too
(it then reports no merges), to compare before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa
import webtest
from pyramid.events import NewRequest

from sessions_kernel import events
from sessions_kernel.testing import SessionTestApp, make_model


def run(url: str, isolation: str | None, keys: int, increments: int, threads: int) -> dict:
    options: dict[str, Any] = {"pool_size": threads + 2}
    if url.startswith("sqlite"):
        options = {"connect_args": {"timeout": 60}}
    if isolation:
        options["isolation_level"] = isolation
    engine = sa.create_engine(url, **options)
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def count(event: Any) -> None:
        with lock:
            counts[type(event).__name__] += 1

    def configure(config: Any) -> None:
        config.add_subscriber(count, NewRequest)
        merged = getattr(events, "SessionMerged", None)  # absent before the merge existed
        if merged is not None:
            config.add_subscriber(count, merged)

    model = make_model(tablename="bench_concurrency")
    model.metadata.drop_all(engine)
    model.metadata.create_all(engine)
    try:
        app = SessionTestApp(model, engine, settings={"retry.attempts": "100"}, configure=configure)
        app.post_json("/set", {"start": True})
        cookie = app.cookies["session"]
        counts.clear()
        jobs = [("set", i) for i in range(keys)] + [("incr", i) for i in range(increments)]
        jobs.sort(key=lambda job: (job[1] % 7, job[0]))  # interleave the two kinds

        def request(job: tuple[str, int]) -> int:
            browser = webtest.TestApp(app.wsgi)
            browser.set_cookie("session", cookie)
            kind, i = job
            if kind == "set":
                return browser.post_json("/set", {f"key{i}": i}, expect_errors=True).status_int
            return browser.get("/incr/counter", expect_errors=True).status_int

        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            statuses = Counter(pool.map(request, jobs))
        elapsed = time.perf_counter() - started
        (row,) = app.rows()
        stored = json.loads(row.data)
        return {
            "database": engine.dialect.name,
            "isolation": isolation or "default",
            "requests": len(jobs),
            "threads": threads,
            "seconds": round(elapsed, 3),
            "requests_per_second": round(len(jobs) / elapsed, 1),
            "statuses": dict(statuses),
            "merges": counts["SessionMerged"],
            "retries": counts["NewRequest"] - len(jobs),
            "lost_increments": increments - stored.get("counter", 0),
            "lost_keys": sum(f"key{i}" not in stored for i in range(keys)),
        }
    finally:
        model.metadata.drop_all(engine)
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("SESSIONS_TEST_POSTGRESQL_URL"))
    parser.add_argument(
        "--isolation",
        default="READ COMMITTED,REPEATABLE READ,SERIALIZABLE",
        help="comma-separated isolation levels, '' for the driver's default",
    )
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--increments", type=int, default=100)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("give --url or set SESSIONS_TEST_POSTGRESQL_URL")
    results = [
        run(args.url, level or None, args.keys, args.increments, args.threads)
        for level in args.isolation.split(",")
    ]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    header = f"{'database':<11}{'isolation':<17}{'req/s':>8}{'merges':>8}{'retries':>9}"
    print(header + f"{'lost incr':>11}{'lost keys':>11}  statuses")
    for r in results:
        print(
            f"{r['database']:<11}{r['isolation']:<17}{r['requests_per_second']:>8}"
            f"{r['merges']:>8}{r['retries']:>9}{r['lost_increments']:>11}{r['lost_keys']:>11}"
            f"  {r['statuses']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
