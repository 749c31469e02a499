"""A database restart under write load through gunicorn, with and without the outage tween.

    python benchmarks/bench_outage.py                       # PostgreSQL and MariaDB, 40 s each
    python benchmarks/bench_outage.py --backend postgresql --duration 20 --restart-at 5

For each backend the script starts a database server of its own (a fresh
``initdb`` cluster, or ``mariadb-install-db`` data directory, in a temporary
folder, on a free port of 127.0.0.1; as the OS users ``postgres`` and ``mysql``
when run as root), and for each mode:

* ``before``: ``http_app.py`` without the tween (``BENCH_OUTAGE=0``: what an
  application had before ``sessions_kernel.outage``);
* ``after``: with it (``BENCH_OUTAGE=1``: what ``config.include("sessions_kernel")``
  now includes);

starts gunicorn (``--workers`` sync workers, ``retry.attempts = 3``, pool with
``pool_pre_ping``), and ``--clients`` client threads that each write new keys into
a session of their own (``POST /set?key=...``), for ``--duration`` seconds.
``--restart-at`` seconds in, the server is restarted: ``pg_ctl restart -m fast``,
or ``SIGTERM`` to mariadbd, wait for it to exit, start it again. Then it
counts the answers (200, 503 with and without ``Retry-After``, 500, others,
connection errors), the tracebacks in gunicorn's log, the longest time without
a successful write, and, reading the table after the run, the acknowledged
writes missing (lost) and the writes answered 503 that committed anyway.

Every server the script started is stopped by its pid at the end, and its
folder removed. Traffic goes to 127.0.0.1 only. Needs gunicorn (the ``bench``
extra), PostgreSQL's server binaries (``/usr/lib/postgresql/*/bin``) and
``mariadbd``/``mariadb-install-db``.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_http import free_port, start_gunicorn, stop  # noqa: E402


def as_user(user: str, command: list[str]) -> list[str]:
    """``command`` run as the OS user ``user`` when this script runs as root."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", user, "--", *command]


def wait_until(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not within {seconds} s")


def accepts(url: str) -> bool:
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return True
    except sa.exc.DBAPIError:
        return False
    finally:
        engine.dispose()


class PostgreSQL:
    """A PostgreSQL cluster of the script's own, in ``folder``."""

    def __init__(self, folder: Path) -> None:
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not candidates:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
        self.bin = Path(candidates[-1]).parent
        self.folder, self.data, self.port = folder, folder / "data", free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/bench"

    def run(self, *args: str, timeout: float = 120) -> None:
        subprocess.run(
            as_user("postgres", [str(self.bin / args[0]), *args[1:]]),
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.folder}'\nmax_connections = 50\n"
            )
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "log"), "-w", "start")
        self.run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                 "-c", "CREATE DATABASE bench")  # fmt: skip

    @property
    def pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def restart(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "log"),
                 "-m", "fast", "-w", "restart")  # fmt: skip

    def stop(self) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        pid = self.pid
        os.kill(pid, signal.SIGINT)  # fast shutdown
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), 60, "PostgreSQL stops")


class MariaDB:
    """A MariaDB server of the script's own, in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.data, self.port = folder, folder / "data", free_port()
        self.url = f"mariadb+pymysql://root@127.0.0.1:{self.port}/bench?charset=utf8mb4"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "mysql", "mysql")
        subprocess.run(
            ["mariadb-install-db", "--user=mysql", f"--datadir={self.data}",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, capture_output=True, timeout=180,
        )  # fmt: skip
        self.launch()
        import sqlalchemy as sa

        engine = sa.create_engine(
            self.url.replace("/bench?", "/mysql?"), poolclass=sa.pool.NullPool
        )
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE DATABASE bench")
        engine.dispose()

    def launch(self) -> None:
        command = [
            shutil.which("mariadbd") or "/usr/sbin/mariadbd",
            "--no-defaults",
            f"--datadir={self.data}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.folder / 'mariadbd.sock'}",
            f"--pid-file={self.folder / 'mariadbd.pid'}",
            f"--log-error={self.folder / 'error.log'}",
            "--innodb-buffer-pool-size=128M",
            "--skip-log-bin",
        ]
        if os.geteuid() == 0:
            command.insert(2, "--user=mysql")
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        url = self.url.replace("/bench?", "/mysql?")
        wait_until(lambda: accepts(url), 60, "MariaDB accepts connections")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def restart(self) -> None:
        self.stop()
        self.launch()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(120)


SERVERS = {"postgresql": PostgreSQL, "mariadb": MariaDB}


class Load:
    """``clients`` threads writing new keys, each into its own session, until ``stop``."""

    def __init__(self, port: int, clients: int, limit: int = 100_000) -> None:
        self.port, self.limit = port, limit
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.outcomes: Counter[str] = Counter()
        self.acknowledged: set[str] = set()
        self.answered_503: set[str] = set()
        self.ok_times: list[float] = []
        self.threads = [threading.Thread(target=self.client, args=(c,)) for c in range(clients)]
        self.cookies = [self.new_session() for _ in range(clients)]

    def request(self, method: str, path: str, cookie: str | None = None) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = {"Content-Length": "0"}
            if cookie:
                headers["Cookie"] = f"session={cookie}"
            conn.request(method, path, body=b"", headers=headers)
            response = conn.getresponse()
            body = response.read()
            return response.status, response.headers, body
        finally:
            conn.close()

    def new_session(self) -> str:
        status, headers, _ = self.request("POST", "/new")
        assert status == 200, status
        return str(headers["Set-Cookie"].split(";", 1)[0].split("=", 1)[1])

    def client(self, c: int) -> None:
        for n in range(self.limit):
            if self.stop.is_set():
                return
            key = f"c{c}_{n}"
            try:
                status, headers, _ = self.request("POST", f"/set?key={key}", self.cookies[c])
            except OSError as exc:
                outcome = f"connection error {type(exc).__name__}"
            else:
                outcome = str(status)
                if status == 503:
                    outcome += " Retry-After" if headers.get("Retry-After") else " no Retry-After"
            with self.lock:
                self.outcomes[outcome] += 1
                if outcome == "200":
                    self.acknowledged.add(key)
                    self.ok_times.append(time.monotonic())
                elif outcome.startswith("503"):
                    self.answered_503.add(key)

    def __enter__(self) -> Load:
        self.t0 = time.monotonic()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def longest_stall(self) -> float:
        times = sorted([self.t0, *self.ok_times])
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def stored_keys(url: str, table: str) -> set[str]:
    import sqlalchemy as sa
    from http_app import model_for

    model = model_for(table)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    keys: set[str] = set()
    try:
        with sa.orm.Session(engine) as db:
            for row in db.scalars(sa.select(model)):
                data = row.data
                keys.update(json.loads(data) if isinstance(data, bytes | str) else data)
    finally:
        engine.dispose()
    return keys


def causes(log_text: str) -> dict[str, int]:
    """What the failures were: the outage tween's warnings (``label (code) after N
    attempt(s): ...``), or the exceptions of gunicorn's tracebacks."""
    found: Counter[str] = Counter()
    for line in log_text.splitlines():
        tween = re.match(r"(.+?\)) after \d+ attempt", line)
        if tween:
            found[f"503: {tween.group(1)}"] += 1
        elif line.startswith("sqlalchemy.exc."):
            shown = re.sub(r"port \d+", "port N", line)[15:110]
            found[f"500: {shown}"] += 1
    return dict(found.most_common())


def run(
    server: Any, backend: str, mode: str, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    from bench_http import drop_table, prepare_table

    table = f"bench_outage_{mode}"
    env = {
        "BENCH_URL": server.url,
        "BENCH_TABLE": table,
        "BENCH_OUTAGE": "1" if mode == "after" else "0",
    }
    prepare_table(env, table)
    log = tmp / f"gunicorn-{backend}-{mode}.log"
    port = free_port()
    process = start_gunicorn(env, args.workers, port, log)
    restart_seconds = None
    restarted = float("inf")
    try:
        with Load(port, args.clients) as load:
            time.sleep(args.restart_at)
            started = time.monotonic()
            server.restart()
            restarted = time.monotonic()
            restart_seconds = round(restarted - started, 2)
            time.sleep(max(0.0, args.duration - (time.monotonic() - load.t0)))
    finally:
        stop(process)
    stored = stored_keys(server.url, table)
    drop_table(env, table)
    text = log.read_text(errors="replace")
    if args.logs:
        Path(args.logs).mkdir(parents=True, exist_ok=True)
        shutil.copy(log, Path(args.logs) / log.name)
    failed = {k: v for k, v in load.outcomes.items() if k != "200"}
    return {
        "backend": backend,
        "mode": mode,
        "restart_s": restart_seconds,
        "requests": sum(load.outcomes.values()),
        "succeeded": load.outcomes["200"],
        "succeeded_after_restart": sum(t > restarted for t in load.ok_times),
        "failed": sum(failed.values()),
        "503_with_retry_after": load.outcomes["503 Retry-After"],
        "500": load.outcomes["500"],
        "other": {k: v for k, v in failed.items() if k not in ("500", "503 Retry-After")},
        # gunicorn's "Error handling request" + traceback: an exception no view answered
        "tracebacks_logged": text.count("Error handling request"),
        "other_tracebacks_logged": text.count("Traceback (most recent call last)")
        - text.count("Error handling request"),
        "causes": causes(text),
        "lost_acknowledged_writes": len(load.acknowledged - stored),
        "answered_503_but_committed": len(load.answered_503 & stored),
        "longest_write_stall_s": round(load.longest_stall(), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="postgresql,mariadb")
    parser.add_argument("--mode", default="before,after")
    parser.add_argument("--duration", type=float, default=40)
    parser.add_argument("--restart-at", type=float, default=15)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--logs", help="a folder to copy gunicorn's logs to")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not 5 <= args.duration <= 300 or not 1 <= args.restart_at < args.duration:
        parser.error("--duration is 5 to 300 s, --restart-at within it")
    results = []
    header = (
        f"{'backend':<11}{'mode':<8}{'restart s':>10}{'requests':>9}{'ok':>7}{'failed':>7}"
        f"{'503':>6}{'500':>5}{'tracebacks':>11}{'lost':>5}{'503 but saved':>14}{'stall s':>8}"
    )
    if not args.json:
        print(header)
    for backend in args.backend.split(","):
        folder = Path(tempfile.mkdtemp(prefix=f"bench-outage-{backend}-"))
        server = SERVERS[backend](folder)
        try:
            server.start()
            print(f"# {backend}: own server, pid {server.pid}, port {server.port}", file=sys.stderr)
            for mode in args.mode.split(","):
                r = run(server, backend, mode, args, folder)
                results.append(r)
                if not args.json:
                    print(
                        f"{backend:<11}{mode:<8}{r['restart_s']:>10}{r['requests']:>9}"
                        f"{r['succeeded']:>7}{r['failed']:>7}{r['503_with_retry_after']:>6}"
                        f"{r['500']:>5}{r['tracebacks_logged']:>11}"
                        f"{r['lost_acknowledged_writes']:>5}{r['answered_503_but_committed']:>14}"
                        f"{r['longest_write_stall_s']:>8}"
                        + (f"  other: {r['other']}" if r["other"] else ""),
                        flush=True,
                    )
        finally:
            server.stop()
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
