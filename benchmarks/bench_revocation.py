"""The revocation delay of sessions-cache across processes, on PostgreSQL.

    python benchmarks/bench_revocation.py                    # 1,000 logouts
    python benchmarks/bench_revocation.py --count 200 --change update --json

How long another process may still serve a session from its cache after a
logout committed. This process is A: it runs the application in-process (the
test kit's, through WebTest, no cache) and commits each change. Process B is
this script again (``--serve``) under waitress: the same application with
sessions-cache, whose listener thread evicts rows when PostgreSQL's
``NOTIFY`` names them. For each of ``--count`` revocations:

1. A stores a new session (``POST /set``);
2. B reads it over HTTP until a read is served from its cache (a hit counted);
3. A commits the change: a logout (``POST /invalidate``: the row deleted) or,
   with ``--change update``, a write of the session (``POST /set``: the row
   updated). A records ``time.monotonic()`` just before its ``COMMIT`` is sent
   (SQLAlchemy's ``commit`` event) and once it returned (the ORM session's
   ``after_commit``);
4. B records ``time.monotonic()`` once its listener evicted the row (its
   cache's ``learn``, wrapped); A asks for it (a request that waits for the
   eviction, without polling);
5. B is asked for the session once more, with the old cookie: after a logout it
   must answer a new, empty session, after a write the new data, and in both
   cases not from its cache ("stale" counts the reads that were).

``time.monotonic()`` is the machine's ``CLOCK_MONOTONIC``, the same in both
processes. The delay from the commit's return can be negative: B may evict before
A's driver has read the server's answer to ``COMMIT``; from ``COMMIT`` sent it is
an upper bound (it includes the commit's own time, its fsync). Printed: median,
p99 and max, in milliseconds. URL from ``--url``, else
``$SESSIONS_TEST_POSTGRESQL_URL``; the table ``bench_revocation_<pid>`` is dropped
at the end, and B stopped by its pid.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def model_for(table: str, cached: bool) -> type:
    from sessions_kernel.testing import make_model

    if cached:
        from sessions_cache import CacheMixin

        return make_model(CacheMixin, tablename=table)
    return make_model(tablename=table)


# -- process B ------------------------------------------------------------------------------------
def serve(url: str, table: str, heartbeat: str) -> None:
    """B: the application with the cache under waitress; prints ``port <n>`` once listening."""
    import waitress
    from pyramid.interfaces import ISessionFactory
    from sessions_cache import cache_of, listener_of

    from sessions_kernel.testing import make_wsgi_app

    evicted: dict[str, float] = {}
    changed = threading.Condition()
    wrapped: list[Any] = []

    def instrument(factory: Any) -> Any:
        cache = cache_of(factory)
        if not wrapped:  # the listener calls cache.learn with the (key, version) a NOTIFY named
            learn = cache.learn

            def timed_learn(changes: Any) -> None:
                learnt = list(changes)
                learn(learnt)
                at = time.monotonic()
                with changed:
                    for row_id, _ in learnt:
                        evicted[row_id] = at
                    changed.notify_all()

            cache.learn = timed_learn  # type: ignore[method-assign]
            wrapped.append(cache)
        return cache

    def views(config: Any) -> None:
        def read(request: Any) -> Any:
            factory = request.registry.getUtility(ISessionFactory)
            cache = instrument(factory)
            session = request.session
            data = dict(session)  # loads it: a hit, or a read of the row
            return {
                "data": data,
                "new": session.new,
                "id": None if session.new else session.session_id,
                "hits": cache.stats.hits,
            }

        def stats(request: Any) -> Any:
            factory = request.registry.getUtility(ISessionFactory)
            listener = listener_of(factory)
            return {
                **vars(instrument(factory).stats),
                "live": listener is not None and listener.live(),
            }

        def eviction(request: Any) -> Any:
            row_id = request.params["row"]
            deadline = time.monotonic() + float(request.params.get("timeout", "10"))
            with changed:
                while row_id not in evicted:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return {"at": None}
                    changed.wait(left)
                return {"at": evicted.pop(row_id)}

        for name, view in (("read", read), ("stats", stats), ("evicted", eviction)):
            config.add_route(f"bench_{name}", f"/{name}")
            config.add_view(view, route_name=f"bench_{name}", renderer="json")

    engine = sa.create_engine(url, pool_size=4)
    app = make_wsgi_app(
        model_for(table, cached=True),
        engine,
        settings={"cache_heartbeat": heartbeat},
        configure=views,
        test_views=False,
    )
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
    print(f"port {server.effective_port}", flush=True)
    server.run()


class Client:
    """Requests to B over one keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self, path: str, cookie: str | None = None) -> dict[str, Any]:
        headers = {"Cookie": f"session={cookie}"} if cookie else {}
        self.connection.request("GET", path, headers=headers)
        response = self.connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"B answered {response.status} to {path}: {body[:500]!r}")
        return json.loads(body)

    def close(self) -> None:
        self.connection.close()


# -- process A: the driver -----------------------------------------------------------------------
def start_b(args: argparse.Namespace, table: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            *(sys.executable, str(Path(__file__).resolve()), "--serve", "--url", args.url),
            *("--table", table, "--heartbeat", str(args.heartbeat)),
        ],
        stdout=subprocess.PIPE,
    )
    ready, _, _ = select.select([process.stdout], [], [], 60)
    line = process.stdout.readline().decode() if ready else ""
    if not line.startswith("port "):
        stop(process)
        raise SystemExit(f"B did not start (its output: {line!r})")
    process.port = int(line.split()[1])  # type: ignore[attr-defined]
    return process


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()  # by its pid
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    if process.stdout is not None:
        process.stdout.close()


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values``."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sessions_kernel.testing import SessionTestApp

    table = f"bench_revocation_{os.getpid()}"
    engine = sa.create_engine(args.url)
    created = model_for(table, cached=True)  # with the cache's trigger (add_ddl)
    created.metadata.drop_all(engine)
    created.metadata.create_all(engine)
    commit_sent: list[float] = []
    committed: list[float] = []
    sa.event.listen(engine, "commit", lambda conn: commit_sent.append(time.monotonic()))
    sa.event.listen(sa.orm.Session, "after_commit", lambda s: committed.append(time.monotonic()))
    a = SessionTestApp(model_for(table, cached=False), engine, clock=time.time)
    b_process = start_b(args, table)
    b = Client(b_process.port)  # type: ignore[attr-defined]
    from_return: list[float] = []
    from_sent: list[float] = []
    stale = refused_fills = missed = 0
    try:
        # B's listener starts with its first lookup of a session
        warm = a.new_browser()
        warm.post_json("/set", {"warm": 1})
        b.get("/read", warm.cookies["session"])
        deadline = time.monotonic() + 30
        while not b.get("/stats")["live"]:
            if time.monotonic() > deadline:
                raise SystemExit("B's listener never came up")
            time.sleep(0.02)
        for i in range(args.count):
            browser = a.new_browser()
            browser.post_json("/set", {"n": i})
            cookie = browser.cookies["session"]
            first = b.get("/read", cookie)  # a miss: read, and kept
            hits, row = first["hits"], first["id"]
            for _ in range(50):
                read = b.get("/read", cookie)
                assert read["data"] == {"n": i}, read
                if read["hits"] > hits:
                    break
                refused_fills += 1  # its fill was refused: the last write's NOTIFY came after
                hits = read["hits"]
            else:
                raise SystemExit(f"B never served session {i} from its cache")
            commit_sent.clear()
            committed.clear()
            if args.change == "logout":
                browser.post("/invalidate")
            else:
                browser.post_json("/set", {"m": i})
            sent, done = commit_sent[-1], committed[-1]
            at = b.get(f"/evicted?row={row}&timeout=10")["at"]
            if at is None:
                missed += 1
                continue
            from_return.append((at - done) * 1000)
            from_sent.append((at - sent) * 1000)
            after = b.get("/read", cookie)
            expected = {} if args.change == "logout" else {"n": i, "m": i}
            if after["hits"] != read["hits"] or after["data"] != expected:
                stale += 1
        b_stats = b.get("/stats")
    finally:
        b.close()
        stop(b_process)
        created.metadata.drop_all(engine)
        engine.dispose()
    figures: dict[str, Any] = {
        "change": args.change,
        "count": args.count,
        "measured": len(from_return),
        "missed": missed,
        "stale": stale,
        "refused_fills": refused_fills,
        "heartbeat": args.heartbeat,
        "b_notifications": b_stats["notifications"],
        "b_bypassed": b_stats["bypassed"],
    }
    for name, values in (
        ("from_commit_returned_ms", from_return),
        ("from_commit_sent_ms", from_sent),
    ):
        figures[name] = (
            {
                "median": round(statistics.median(values), 3),
                "p99": round(percentile(values, 0.99), 3),
                "max": round(max(values), 3),
                "min": round(min(values), 3),
            }
            if values
            else None
        )
    return figures


def print_table(figures: dict[str, Any]) -> None:
    print(
        f"revocation delay on PostgreSQL: {figures['measured']} of {figures['count']} "
        f"{figures['change']}s in A, evicted by B's listener (heartbeat {figures['heartbeat']} s)"
    )
    print(f"{'from':<22} {'median ms':>10} {'p99 ms':>10} {'max ms':>10} {'min ms':>10}")
    for label, key in (
        ("A's commit returned", "from_commit_returned_ms"),
        ("A's COMMIT sent", "from_commit_sent_ms"),
    ):
        row = figures[key]
        if row is None:
            print(f"{label:<22} {'-':>10}")
            continue
        print(
            f"{label:<22} {row['median']:>10.3f} {row['p99']:>10.3f} {row['max']:>10.3f} "
            f"{row['min']:>10.3f}"
        )
    print(
        f"stale reads after an eviction: {figures['stale']}; evictions never seen: "
        f"{figures['missed']}; fills refused: {figures['refused_fills']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--url", default=os.environ.get("SESSIONS_TEST_POSTGRESQL_URL") or DEFAULT_URL
    )
    parser.add_argument("--count", type=int, default=1000, help="revocations (default 1000)")
    parser.add_argument("--change", choices=("logout", "update"), default="logout")
    parser.add_argument("--heartbeat", type=float, default=0.25, help="B's cache_heartbeat")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.url.startswith("postgresql"):
        parser.error("the revocation delay is PostgreSQL's (NOTIFY): give a postgresql+psycopg URL")
    if args.serve:
        serve(args.url, args.table, str(args.heartbeat))
        return 0
    if args.count < 1:
        parser.error("--count must be at least 1")
    figures = run(args)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print_table(figures)
    return 0 if figures["stale"] == 0 and figures["missed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
