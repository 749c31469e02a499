"""HTTP load: the application under gunicorn, driven by wrk over 127.0.0.1.

    python benchmarks/bench_http.py       # every backend with a URL; 1, 2 and 4 workers
    python benchmarks/bench_http.py --backend sqlite,redis --workers 1,4 --duration 5
    python benchmarks/bench_http.py --backend postgresql,postgresql-cache,redis --workers 1,2 \
        --scenario plain,realistic

For each backend and number of gunicorn workers (sync workers, separate
processes): create the session table, start gunicorn on 127.0.0.1, start
``--sessions`` sessions over HTTP and collect their cookies, wait until every
worker's cache is live (the ``-cache`` backends), run wrk ``--warmup`` seconds
untimed, then for ``--duration`` seconds with ``--connections`` connections.
wrk's Lua script sends 90 % ``GET /read`` and 10 % ``POST /write``
(``--write-percent``), each with a random one of the cookies. Prints requests per
second, p50 and p99 latency, the count of non-2xx answers and of socket errors
(the application answers 500 when a cookie's session was not found, and
pyramid_retry runs a request up to 3 attempts before it fails), and for the
cache the share of the timed reads it served; gunicorn is stopped by its pid
after each cell. The script exits with status 1 when any request failed.

Scenarios (``--scenario``): ``plain``, the views touch only the session;
``realistic``, each view also runs one query of the application's own (a
``SELECT`` by primary key of a 100-row table, in the request's transaction: on
the backend's database, and for ``redis`` on PostgreSQL when its URL is known,
else on a SQLite file).

Backends: ``sqlite`` (a file), ``postgresql`` and ``mariadb``
(``$SESSIONS_TEST_POSTGRESQL_URL``, ``$SESSIONS_TEST_MARIADB_URL``), ``galera``
(``$SESSIONS_TEST_GALERA_URL``, through HAProxy, with ``galera_engine``) — all
sessions_kernel — ``sqlite-cache``, ``postgresql-cache`` and ``mariadb-cache``
(sessions_kernel with sessions-cache's ``CacheMixin``: on PostgreSQL its trigger
and listener, elsewhere ``cache_max_staleness`` of ``--cache-staleness``
seconds), and ``redis`` (pyramid_session_redis on ``--redis``). Needs ``wrk``
(Debian package) and the ``bench`` extra (gunicorn, pyramid_session_redis).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LUA = """
local cookies = {%(cookies)s}
local write_percent = %(write_percent)d
math.randomseed(os.time() + (wrk.thread and wrk.thread.id or 0))
request = function()
  local cookie = "session=" .. cookies[math.random(#cookies)]
  if math.random(100) <= write_percent then
    return wrk.format("POST", "/write", {["Cookie"] = cookie, ["Content-Length"] = "0"}, "")
  end
  return wrk.format("GET", "/read", {["Cookie"] = cookie})
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BACKENDS = (
    "sqlite",
    "postgresql",
    "mariadb",
    "galera",
    "redis",
    "sqlite-cache",
    "postgresql-cache",
    "mariadb-cache",
)
SCENARIOS = ("plain", "realistic")


def backends(args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, str]]:
    sqlite = f"sqlite:///{tmp / 'bench_http.sqlite'}"
    staleness = {"BENCH_CACHE": "1", "BENCH_CACHE_STALENESS": str(args.cache_staleness)}
    found = {
        "sqlite": {"BENCH_URL": sqlite},
        "postgresql": {"BENCH_URL": args.postgresql},
        "mariadb": {"BENCH_URL": args.mariadb},
        "galera": {"BENCH_URL": args.galera, "BENCH_GALERA": "1"},
        # the realistic scenario's own query: on PostgreSQL if there is one
        "redis": {
            "BENCH_URL": args.redis,
            "BENCH_BACKEND": "redis",
            "BENCH_APP_URL": args.postgresql or f"sqlite:///{tmp / 'bench_http_app.sqlite'}",
        },
        "sqlite-cache": {"BENCH_URL": sqlite, **staleness},
        # the listener, on the trigger create_all installs: no bound on staleness needed
        "postgresql-cache": {"BENCH_URL": args.postgresql, "BENCH_CACHE": "1"},
        "mariadb-cache": {"BENCH_URL": args.mariadb, **staleness},
    }
    return {name: env for name, env in found.items() if env["BENCH_URL"]}


def _app_url(env: dict[str, str]) -> str | None:
    """The database of the realistic scenario's own query (``None``: plain scenario)."""
    if env.get("BENCH_APP_QUERY") != "1":
        return None
    return env.get("BENCH_APP_URL") or env["BENCH_URL"]


def prepare_table(env: dict[str, str], table: str) -> None:
    """Create the session table (with its plugins' DDL), and the realistic scenario's."""
    import sqlalchemy as sa

    sys.path.insert(0, str(HERE))
    from http_app import ITEMS, items_for, model_for

    if env.get("BENCH_BACKEND") != "redis":
        engine = sa.create_engine(env["BENCH_URL"])
        model = model_for(table, cache=env.get("BENCH_CACHE") == "1")
        model.metadata.drop_all(engine)
        model.metadata.create_all(engine)
        engine.dispose()
    app_url = _app_url(env)
    if app_url:
        items = items_for(table)
        engine = sa.create_engine(app_url)
        items.metadata.drop_all(engine)
        items.metadata.create_all(engine)
        with engine.begin() as conn:
            rows = [{"id": i, "title": f"item {i}"} for i in range(1, ITEMS + 1)]
            conn.execute(items.insert(), rows)
        engine.dispose()


def drop_table(env: dict[str, str], table: str) -> None:
    import sqlalchemy as sa
    from http_app import items_for, model_for

    if env.get("BENCH_BACKEND") != "redis":
        engine = sa.create_engine(env["BENCH_URL"])
        model_for(table, cache=env.get("BENCH_CACHE") == "1").metadata.drop_all(engine)
        engine.dispose()
    app_url = _app_url(env)
    if app_url:
        engine = sa.create_engine(app_url)
        items_for(table).metadata.drop_all(engine)
        engine.dispose()


def start_gunicorn(env: dict[str, str], workers: int, port: int, log: Path) -> subprocess.Popen:
    gunicorn = Path(sys.executable).with_name("gunicorn")
    process = subprocess.Popen(
        [
            str(gunicorn),
            "--workers",
            str(workers),
            "--bind",
            f"127.0.0.1:{port}",
            "--chdir",
            str(HERE),
            "--backlog",
            "256",
            "--log-level",
            "warning",
            "http_app:make_app()",
        ],
        env={**os.environ, **env},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).read()
            return process
        except OSError:
            time.sleep(0.2)
    stop(process)
    raise RuntimeError("gunicorn did not answer in 60 s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # the master stops its workers
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def new_sessions(port: int, count: int) -> list[str]:
    cookies = []
    for _ in range(count):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/new", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            header = response.headers["Set-Cookie"]
        cookies.append(header.split(";", 1)[0].split("=", 1)[1])
    return cookies


def worker_stats(
    port: int, cookie: str, workers: int, live: bool = False, timeout: float = 60
) -> dict[int, dict[str, Any]]:
    """Every worker's ``/bench-stats``, by pid: concurrent requests until ``workers`` pids
    answered (with ``live``: until each answered that its cache is live, which the
    request itself starts, reading the cookie's session)."""

    def one(_: int) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/bench-stats", headers={"Cookie": f"session={cookie}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    seen: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    with concurrent.futures.ThreadPoolExecutor(2 * workers + 2) as pool:
        while True:
            for stats in pool.map(one, range(4 * workers)):
                seen[stats["pid"]] = stats
            ready = [s for s in seen.values() if not live or (s["cache"] or {}).get("live")]
            if len(ready) >= workers:
                return seen
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"after {timeout} s, {len(ready)} of {workers} workers answered"
                    + (" with a live cache" if live else "")
                    + f": {seen}"
                )
            time.sleep(0.1)


def cache_counts(
    before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """What the workers' caches counted between two :func:`worker_stats`, summed."""
    counts: dict[str, Any] = {}
    for pid, stats in after.items():
        cache = stats["cache"] or {}
        earlier = (before.get(pid) or {}).get("cache") or {}
        for key, value in cache.items():
            if key != "live":
                counts[key] = counts.get(key, 0) + value - earlier.get(key, 0)
    counts["workers_restarted"] = len(set(after) - set(before))
    served = counts.get("hits", 0) + counts.get("misses", 0) + counts.get("bypassed", 0)
    counts["hit_percent"] = round(100 * counts.get("hits", 0) / served, 1) if served else None
    return counts


# The database server's processes, to count the CPU time they spent during a cell.
SERVER_PROCESSES = {
    "postgresql": lambda comm, cmd: comm == "postgres",
    "mariadb": lambda comm, cmd: comm == "mariadbd" and "galera" not in cmd,
    "galera": lambda comm, cmd: comm == "mariadbd" and "galera" in cmd,
    "redis": lambda comm, cmd: comm == "redis-server",
}


def postgresql_backends(url: str) -> set[int]:
    """The pids of the PostgreSQL backends serving the benchmark's application."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = "SELECT pid FROM pg_stat_activity WHERE application_name = 'bench_http'"
            return set(conn.exec_driver_sql(query).scalars())
    finally:
        engine.dispose()


def server_cpu_seconds(backend: str, pids: set[int] | None = None) -> float | None:
    """CPU seconds (user + system) the backend's server processes have used so far.

    With ``pids``, only those processes (PostgreSQL's backends of this benchmark, so
    that other clients of a shared server do not count).
    """
    match = SERVER_PROCESSES.get(backend)
    if match is None:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or (pids is not None and int(proc.name) not in pids):
            continue
        try:
            stat = (proc / "stat").read_text()
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        if match(comm, cmd):
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def parse_ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(
    args: argparse.Namespace, port: int, script: Path, duration: int | None = None
) -> dict[str, Any]:
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(args.threads),
            "-c",
            str(args.connections),
            "-d",
            f"{duration or args.duration}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=(duration or args.duration) + 60,
        check=True,
    ).stdout
    figures: dict[str, Any] = {
        "requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": parse_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
        "p99_ms": parse_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
    }
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["non_2xx"] = int(bad.group(1)) if bad else 0
    errors = re.search(r"Socket errors: (.*)", out)
    figures["socket_errors"] = errors.group(1) if errors else ""
    # connect, read, write, timeout: every request wrk could not complete
    figures["errors"] = sum(int(n) for n in re.findall(r"\d+", figures["socket_errors"]))
    return figures


def run_cell(
    args: argparse.Namespace,
    name: str,
    env: dict[str, str],
    workers: int,
    table: str,
    tmp: Path,
) -> dict[str, Any]:
    """One backend, scenario and number of workers: start, warm, measure, stop."""
    prepare_table(env, table)
    port = free_port()
    process = start_gunicorn(env, workers, port, tmp / "gunicorn.log")
    try:
        cookies = new_sessions(port, args.sessions)
        script = tmp / "mix.lua"
        script.write_text(
            LUA
            % {
                "cookies": ",".join(json.dumps(c) for c in cookies),
                "write_percent": args.write_percent,
            }
        )
        cache = env.get("BENCH_CACHE") == "1"
        # every worker up (and its cache's listener live), then untimed load
        worker_stats(port, cookies[0], workers, live=cache)
        warm: dict[str, Any] = {}
        if args.warmup:
            warm = run_wrk(args, port, script, args.warmup)
        before = worker_stats(port, cookies[0], workers)
        base = name.removesuffix("-cache")
        pids = postgresql_backends(env["BENCH_URL"]) if base == "postgresql" else None
        cpu_before = server_cpu_seconds(base, pids)
        figures = run_wrk(args, port, script)
        if cpu_before is not None:
            used = server_cpu_seconds(base, pids) - cpu_before
            figures["server_cpu_s"] = round(used, 2)
            writes = figures["requests"] * args.write_percent / 100
            figures["writes_per_server_cpu_s"] = round(writes / used, 1) if used else None
        if cache:
            figures["cache"] = cache_counts(before, worker_stats(port, cookies[0], workers))
        figures["warmup_failures"] = warm.get("non_2xx", 0) + warm.get("errors", 0)
    finally:
        stop(process)
        drop_table(env, table)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend",
        default="sqlite,postgresql,mariadb,galera,redis",
        help=f"comma-separated, of {', '.join(BACKENDS)}",
    )
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument(
        "--scenario",
        default="plain",
        help="comma-separated: plain (the views touch only the session), realistic (each "
        "also runs one query of the application's own)",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per cell")
    parser.add_argument(
        "--warmup", type=int, default=2, help="seconds of untimed wrk per cell, first (2)"
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--write-percent", type=int, default=10)
    parser.add_argument(
        "--cache-staleness",
        type=float,
        default=5,
        help="cache_max_staleness of sqlite-cache and mariadb-cache, seconds (5)",
    )
    parser.add_argument("--postgresql", default=os.environ.get("SESSIONS_TEST_POSTGRESQL_URL", ""))
    parser.add_argument("--mariadb", default=os.environ.get("SESSIONS_TEST_MARIADB_URL", ""))
    parser.add_argument("--galera", default=os.environ.get("SESSIONS_TEST_GALERA_URL", ""))
    parser.add_argument(
        "--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.backend.split(",") if n.strip()]
    scenarios = [n.strip() for n in args.scenario.split(",") if n.strip()]
    if unknown := [n for n in names if n not in BACKENDS]:
        parser.error(f"--backend: unknown {unknown}; choose from {', '.join(BACKENDS)}")
    if unknown := [n for n in scenarios if n not in SCENARIOS]:
        parser.error(f"--scenario: unknown {unknown}; choose from {', '.join(SCENARIOS)}")
    if not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install wrk)")
    if not 1 <= args.duration <= 300:
        parser.error("--duration is 1 to 300 seconds")
    if not 0 <= args.warmup <= 60:
        parser.error("--warmup is 0 to 60 seconds")
    results = []
    table = f"bench_http_{os.getpid()}"
    if not args.json:
        print(
            f"{'backend':<17}{'scenario':<10}{'workers':>8}{'req/s':>10}{'p50 ms':>10}"
            f"{'p99 ms':>10}{'non-2xx':>9}{'errors':>8}{'hit %':>7}{'db cpu s':>9}"
        )
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        available = backends(args, tmp)
        for name in names:
            if name not in available:
                print(f"# {name}: no URL, skipped", file=sys.stderr)
                continue
            for scenario in scenarios:
                env = {"BENCH_TABLE": table, "BENCH_EXPECT_SESSION": "1", **available[name]}
                if scenario == "realistic":
                    env["BENCH_APP_QUERY"] = "1"
                for workers in [int(w) for w in args.workers.split(",")]:
                    figures = run_cell(args, name, env, workers, table, tmp)
                    results.append(
                        {"backend": name, "scenario": scenario, "workers": workers, **figures}
                    )
                    if not args.json:
                        r = results[-1]
                        hits = (r.get("cache") or {}).get("hit_percent")
                        print(
                            f"{name:<17}{scenario:<10}{workers:>8}"
                            f"{r['requests_per_second']:>10.1f}{r['p50_ms']:>10.2f}"
                            f"{r['p99_ms']:>10.2f}{r['non_2xx']:>9}{r['errors']:>8}"
                            f"{'-' if hits is None else hits:>7}"
                            f"{r.get('server_cpu_s', '-'):>9}",
                            flush=True,
                        )
    if args.json:
        print(json.dumps(results, indent=2))
    failed = [r for r in results if r["non_2xx"] or r["errors"] or r["warmup_failures"]]
    for r in failed:
        print(
            f"FAILED: {r['backend']} {r['scenario']} {r['workers']} workers: "
            f"{r['non_2xx']} non-2xx, socket errors: {r['socket_errors'] or 0}, "
            f"{r['warmup_failures']} failures while warming up",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
