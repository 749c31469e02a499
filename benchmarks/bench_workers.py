"""The concurrency hammer over HTTP, through gunicorn with several worker processes.

    python benchmarks/bench_workers.py                       # every database; 1, 2, 4 workers
    python benchmarks/bench_workers.py --database postgresql --workers 4 --runs 3
    python benchmarks/bench_workers.py --database mariadb --isolation 'READ COMMITTED'

``bench_concurrency.py``'s ``hammer`` runs its threads in one process, so every
request shares the kernel's memory of contended rows (``lock_contended_for``:
``RowStorage.mark_contended``). This runs the same hammer against
``http_app.py`` under gunicorn (sync workers: one process, one request at a
time each), so that the requests of one session land in different processes,
each with its own memory: for each database, isolation level and number of
workers, ``--runs`` times, it creates the table, starts gunicorn on 127.0.0.1,
starts one session (``POST /new``) and then sends, ``--threads`` at a time and all
with that session's cookie, ``--keys`` requests ``POST /set?key=kI`` (each a key of
its own) and ``--increments`` requests ``POST /write`` (each adds one to the
counter ``n``), interleaved. pyramid_retry runs at ``retry.attempts = 3``, what
applications run with (``http_app.py`` sets it).

Every worker appends its events to a file of its own (``BENCH_STATS_DIR``, see
``http_app.py``), summed after gunicorn stopped, so no worker's count is missed:
retries are the attempts beyond the first (``NewRequest`` events minus requests),
merges the ``SessionMerged`` events, locked the ``SELECT … FOR UPDATE`` statements
(locked loads of a retried attempt or a contended row, and the merge's re-read).
Failed counts answers other than 200 (and requests with no answer); lost counts the
increments and keys missing from the row afterwards. The exceptions that caused
retries and failures are listed under the table.

Databases: ``sqlite`` (a file), ``postgresql`` (READ COMMITTED) and ``mariadb``
(REPEATABLE READ, its default, and READ COMMITTED); URLs from
``$SESSIONS_TEST_POSTGRESQL_URL`` and ``$SESSIONS_TEST_MARIADB_URL``. Needs the
``bench`` extra (gunicorn). Everything is bounded: ``--keys + --increments``
requests per cell, ``--cell-timeout`` seconds per cell, gunicorn stopped by its pid.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_http import drop_table, free_port, new_sessions, prepare_table, start_gunicorn, stop  # noqa: E402

#: The isolation levels each database runs at by default (those the kernel recommends).
LEVELS = {
    "sqlite": [""],
    "postgresql": ["READ COMMITTED"],
    "mariadb": ["REPEATABLE READ", "READ COMMITTED"],
}
DEFAULT_URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mariadb": "mariadb+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4",
}
LABELS = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mariadb": "MariaDB"}


def send(port: int, cookie: str, path: str, timeout: float) -> int | str:
    """POST ``path`` with the session cookie; the status, or the client error's name."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Cookie": f"session={cookie}", "Content-Length": "0"}
        connection.request("POST", path, body=b"", headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError as exc:
        return type(exc).__name__
    finally:
        connection.close()


def read_stats(directory: Path) -> dict[str, Any]:
    """Sum the event lines of every worker's file (see ``http_app.Stats``)."""
    kinds: Counter[str] = Counter()
    retries: Counter[str] = Counter()  # "attempt N: Exception" -> count
    failures: Counter[str] = Counter()
    messages: list[str] = []
    per_worker: list[int] = []  # the retries each worker process ran, busiest first
    for path in sorted(directory.glob("*.txt")):
        lines = path.read_text(encoding="utf-8").splitlines()
        per_worker.append(sum(line.startswith("retry ") for line in lines))
        for line in lines:
            kind, _, rest = line.partition(" ")
            kinds[kind] += 1
            if kind == "retry":
                number, _, name = rest.partition(" ")
                retries[f"{name} (attempt {number})"] += 1
            elif kind == "failed":
                number, _, detail = rest.partition(" ")
                failures[f"{detail.split(':', 1)[0]} (attempt {number})"] += 1
                if len(messages) < 5:
                    messages.append(detail)
    return {
        "kinds": kinds,
        "retries_by_cause": dict(retries),
        "failures_by_cause": dict(failures),
        "failure_messages": messages,
        "retries_per_worker": sorted(per_worker, reverse=True),
    }


def read_row(url: str, table: str) -> dict[str, Any] | None:
    """The data of the one session row the hammer wrote (``None`` if there is none)."""
    import sqlalchemy as sa
    from http_app import model_for

    model: Any = model_for(table)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(model.__table__.c.data)).scalars().all()
    finally:
        engine.dispose()
    if len(rows) != 1:
        return None
    data = rows[0]
    return json.loads(data.decode() if isinstance(data, bytes) else data)


def run_cell(
    args: argparse.Namespace, database: str, url: str, isolation: str, workers: int, tmp: Path
) -> dict[str, Any]:
    table = f"bench_workers_{os.getpid()}"
    stats_dir = tmp / "stats"
    shutil.rmtree(stats_dir, ignore_errors=True)
    stats_dir.mkdir()
    env = {
        "BENCH_URL": url,
        "BENCH_TABLE": table,
        "BENCH_ISOLATION": isolation,
        "BENCH_STATS_DIR": str(stats_dir),
    }
    if args.lock_contended_for is not None:
        env["BENCH_LOCK_CONTENDED_FOR"] = str(args.lock_contended_for)
    jobs = [f"/set?key=k{i}" for i in range(args.keys)] + ["/write"] * args.increments
    order = list(range(args.keys)) + list(range(args.increments))
    # interleave the two kinds, as bench_concurrency.py does
    jobs = [job for _, job in sorted(zip(order, jobs, strict=True), key=lambda p: (p[0] % 7, p[1]))]
    prepare_table(env, table)
    port = free_port()
    log = tmp / "gunicorn.log"
    process = start_gunicorn(env, workers, port, log)
    try:
        (cookie,) = new_sessions(port, 1)
        for path in stats_dir.glob("*.txt"):  # the start-up probe and POST /new
            path.unlink()
        deadline = time.monotonic() + args.cell_timeout
        started = time.perf_counter()
        with ThreadPoolExecutor(args.threads) as pool:
            futures = [pool.submit(send, port, cookie, job, args.request_timeout) for job in jobs]
            done, pending = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
            elapsed = time.perf_counter() - started
            if pending:
                for future in pending:
                    future.cancel()
                stop(process)  # the requests still running end with a connection error
        statuses = Counter(str(f.result()) if f in done else "timeout" for f in futures)
    finally:
        stop(process)
    stats = read_stats(stats_dir)
    data = read_row(url, table)
    drop_table(env, table)
    kinds = stats.pop("kinds")
    requests = len(jobs)
    lost_keys = args.keys if data is None else sum(f"k{i}" not in data for i in range(args.keys))
    counter = 0 if data is None else data.get("n", 0)
    server_errors = [
        line for line in log.read_text(errors="replace").splitlines() if "Traceback" in line
    ]
    return {
        "database": database,
        "isolation": isolation or "default",
        "workers": workers,
        "requests": requests,
        "seconds": round(elapsed, 3),
        "requests_per_second": round(requests / elapsed, 1),
        "failed": requests - statuses.get("200", 0),
        "statuses": dict(statuses),
        "attempts": kinds["attempt"],
        "retries": kinds["attempt"] - requests,
        "retry_events": kinds["retry"],
        "merges": kinds["merged"],
        "locked_selects": kinds["locked"],
        "lost_increments": args.increments - counter,
        "lost_keys": lost_keys,
        "unrendered_tracebacks": len(server_errors),
        **stats,
    }


def targets(args: argparse.Namespace, tmp: Path) -> list[tuple[str, str, str]]:
    found = []
    for database in args.database.split(","):
        if database == "sqlite":
            url = f"sqlite:///{tmp / 'bench_workers.sqlite'}"
        elif database in DEFAULT_URLS:
            url = getattr(args, database)
            if not url:
                print(f"# {database}: no URL, skipped", file=sys.stderr)
                continue
        else:
            raise SystemExit(f"unknown database {database!r}: sqlite, postgresql or mariadb")
        levels = LEVELS[database] if args.isolation is None else args.isolation.split(",")
        found += [(database, url, level) for level in levels]
    return found


def print_table(results: list[dict[str, Any]]) -> None:
    print(
        "| database | isolation | workers | run | req/s | failed | retries (2nd / 3rd attempts)"
        " | merges | locked SELECTs | lost incr | lost keys |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        third = sum(v for k, v in r["retries_by_cause"].items() if k.endswith("(attempt 2)"))
        print(
            f"| {LABELS[r['database']]} | {r['isolation']} | {r['workers']} | {r['run']} "
            f"| {r['requests_per_second']} | {r['failed']} / {r['requests']} "
            f"| {r['retries']} ({r['retries'] - third} / {third}) | {r['merges']} "
            f"| {r['locked_selects']} | {r['lost_increments']} | {r['lost_keys']} |"
        )
    print()
    for r in results:
        causes = r["retries_by_cause"] | {
            f"FAILED {k}": v for k, v in r["failures_by_cause"].items()
        }
        if causes or r["failed"]:
            print(
                f"* {LABELS[r['database']]} {r['isolation']}, {r['workers']} workers, run "
                f"{r['run']}: {causes or ''}, retries per worker {r['retries_per_worker']}, "
                f"statuses {r['statuses']}"
            )
            for message in r["failure_messages"]:
                print(f"    {message}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="sqlite,postgresql,mariadb")
    parser.add_argument("--isolation", help="comma-separated levels for every database")
    parser.add_argument("--workers", default="1,2,4", help="gunicorn sync workers per cell")
    parser.add_argument("--runs", type=int, default=2, help="runs of every cell (interleaved)")
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--increments", type=int, default=100)
    parser.add_argument("--threads", type=int, default=16, help="client threads")
    parser.add_argument(
        "--lock-contended-for", type=int, help="the kernel's setting (default: its own, 30)"
    )
    parser.add_argument("--cell-timeout", type=float, default=300.0, help="seconds per cell")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="seconds")
    parser.add_argument("--postgresql", default=os.environ.get("SESSIONS_TEST_POSTGRESQL_URL"))
    parser.add_argument("--mariadb", default=os.environ.get("SESSIONS_TEST_MARIADB_URL"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    for database, url in DEFAULT_URLS.items():
        if getattr(args, database) is None:  # unset; an empty variable skips the database
            setattr(args, database, url)
    if not Path(sys.executable).with_name("gunicorn").exists():
        parser.error("gunicorn is not installed (the bench extra)")
    if not (1 <= args.runs <= 20 and 0 < args.keys + args.increments <= 10000):
        parser.error("--runs is 1 to 20, --keys + --increments 1 to 10000")
    if not 1 <= args.threads <= 64:
        parser.error("--threads is 1 to 64")
    workers = [int(w) for w in args.workers.split(",")]
    if not all(1 <= w <= 16 for w in workers):
        parser.error("--workers are 1 to 16")
    results = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        cells = targets(args, tmp)
        for run in range(1, args.runs + 1):
            for database, url, isolation in cells:
                for count in workers:
                    result = run_cell(args, database, url, isolation, count, tmp)
                    results.append({"run": run, **result})
                    if not args.json:
                        r = results[-1]
                        print(
                            f"# {database} {r['isolation']} workers={count} run={run}: "
                            f"{r['requests_per_second']} req/s, failed {r['failed']}, "
                            f"retries {r['retries']}, merges {r['merges']}, "
                            f"lost {r['lost_increments']}/{r['lost_keys']}",
                            file=sys.stderr,
                            flush=True,
                        )
    results.sort(key=lambda r: (list(LABELS).index(r["database"]), r["isolation"], r["workers"]))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
