"""HTTP load: the application under gunicorn, driven by wrk over 127.0.0.1.

    python benchmarks/bench_http.py       # every backend with a URL; 1, 2 and 4 workers
    python benchmarks/bench_http.py --backend sqlite,redis --workers 1,4 --duration 5

For each backend and number of gunicorn workers (sync workers, separate
processes): create the session table, start gunicorn on 127.0.0.1, start
``--sessions`` sessions over HTTP and collect their cookies, then run wrk for
``--duration`` seconds with ``--connections`` connections. wrk's Lua script sends
90 % ``GET /read`` and 10 % ``POST /write`` (``--write-percent``), each with a
random one of the cookies. Prints requests per second, p50 and p99 latency and
the count of non-2xx answers; gunicorn is stopped by its pid after each cell.

Backends: ``sqlite`` (a file), ``postgresql`` and ``mariadb``
(``$SESSIONS_TEST_POSTGRESQL_URL``, ``$SESSIONS_TEST_MARIADB_URL``), ``galera``
(``$SESSIONS_TEST_GALERA_URL``, through HAProxy, with ``galera_engine``) — all
sessions_kernel — and ``redis`` (pyramid_session_redis on ``--redis``). Needs
``wrk`` (Debian package) and the ``bench`` extra (gunicorn, pyramid_session_redis).
"""

from __future__ import annotations

import argparse
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


def backends(args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, str]]:
    found = {
        "sqlite": {"BENCH_URL": f"sqlite:///{tmp / 'bench_http.sqlite'}"},
        "postgresql": {"BENCH_URL": args.postgresql},
        "mariadb": {"BENCH_URL": args.mariadb},
        "galera": {"BENCH_URL": args.galera, "BENCH_GALERA": "1"},
        "redis": {"BENCH_URL": args.redis, "BENCH_BACKEND": "redis"},
    }
    return {name: env for name, env in found.items() if env["BENCH_URL"]}


def prepare_table(env: dict[str, str], table: str) -> None:
    if env.get("BENCH_BACKEND") == "redis":
        return
    import sqlalchemy as sa

    sys.path.insert(0, str(HERE))
    from http_app import model_for

    engine = sa.create_engine(env["BENCH_URL"])
    model = model_for(table)
    model.metadata.drop_all(engine)
    model.metadata.create_all(engine)
    engine.dispose()


def drop_table(env: dict[str, str], table: str) -> None:
    if env.get("BENCH_BACKEND") == "redis":
        return
    import sqlalchemy as sa
    from http_app import model_for

    engine = sa.create_engine(env["BENCH_URL"])
    model_for(table).metadata.drop_all(engine)
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
            urllib.request.urlopen(f"http://127.0.0.1:{port}/read", timeout=2).read()
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


def run_wrk(args: argparse.Namespace, port: int, script: Path) -> dict[str, Any]:
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(args.threads),
            "-c",
            str(args.connections),
            "-d",
            f"{args.duration}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=args.duration + 60,
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
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="sqlite,postgresql,mariadb,galera,redis")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per cell")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--write-percent", type=int, default=10)
    parser.add_argument("--postgresql", default=os.environ.get("SESSIONS_TEST_POSTGRESQL_URL", ""))
    parser.add_argument("--mariadb", default=os.environ.get("SESSIONS_TEST_MARIADB_URL", ""))
    parser.add_argument("--galera", default=os.environ.get("SESSIONS_TEST_GALERA_URL", ""))
    parser.add_argument(
        "--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install wrk)")
    if not 1 <= args.duration <= 300:
        parser.error("--duration is 1 to 300 seconds")
    results = []
    table = f"bench_http_{os.getpid()}"
    if not args.json:
        print(
            f"{'backend':<11}{'workers':>8}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>9}"
            f"{'db cpu s':>9}"
        )
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        available = backends(args, tmp)
        for name in args.backend.split(","):
            if name not in available:
                print(f"# {name}: no URL, skipped", file=sys.stderr)
                continue
            env = {"BENCH_TABLE": table, **available[name]}
            for workers in [int(w) for w in args.workers.split(",")]:
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
                    pids = postgresql_backends(env["BENCH_URL"]) if name == "postgresql" else None
                    cpu_before = server_cpu_seconds(name, pids)
                    figures = run_wrk(args, port, script)
                    if cpu_before is not None:
                        used = server_cpu_seconds(name, pids) - cpu_before
                        figures["server_cpu_s"] = round(used, 2)
                        writes = figures["requests"] * args.write_percent / 100
                        figures["writes_per_server_cpu_s"] = (
                            round(writes / used, 1) if used else None
                        )
                finally:
                    stop(process)
                drop_table(env, table)
                results.append({"backend": name, "workers": workers, **figures})
                if not args.json:
                    r = results[-1]
                    print(
                        f"{name:<11}{workers:>8}{r['requests_per_second']:>10.1f}"
                        f"{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['non_2xx']:>9}"
                        f"{r.get('server_cpu_s', '-'):>9}",
                        flush=True,
                    )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
