"""sessions-cache across real processes on PostgreSQL: every revocation reaches the other one.

Two waitress servers, A and B, each a process of its own running
``cache_worker.py`` (the kit's application with sessions-cache, the idle
timeout and the user id) on one table. A browser's session row is cached in
B (a read there counts a hit and runs no SQL); then A, a third process or a
plain psycopg connection ends the session (a logout, "log out everywhere
else", the idle timeout, ``psessions gc``, a raw ``DELETE``), and B must
refuse a copy of the cookie. Tests wait for B's listener to evict the row (an
event B's ``/stats`` shows, polled), never for a duration; B is not asked
for the session before that, so no read of it can be served stale.

The fail-closed tests kill B's listener connection (``pg_terminate_backend``)
and change rows while it is down: nothing is served from the cache until it
is back, and then nothing from before (the cache was emptied).
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import select
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
import sessions_cache
import sqlalchemy as sa

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(
    not os.environ.get("SESSIONS_TEST_POSTGRESQL_URL"),
    reason="SESSIONS_TEST_POSTGRESQL_URL is not set: the cross-process cache tests need "
    "PostgreSQL (its NOTIFY is what tells the other processes)",
)


def wait_for(condition: Any, what: str, attempts: int = 400) -> None:
    """Poll ``condition`` (an event, not a duration): at most 400 polls, 25 ms apart."""
    event = threading.Event()
    for _ in range(attempts):
        if condition():
            return
        event.wait(0.025)
    raise AssertionError(f"never happened: {what}")


def _pythonpath() -> str:
    """The folders the packages this test imports come from, so that every process it
    starts runs the same code (a worktree's, when PYTHONPATH names it)."""
    import sessions_idle_timeout
    import sessions_userid

    import sessions_kernel

    folders = [str(HERE)]
    for module in (sessions_kernel, sessions_cache, sessions_userid, sessions_idle_timeout):
        folders.append(str(Path(module.__file__).resolve().parent.parent))
    return os.pathsep.join(dict.fromkeys([*folders, os.environ.get("PYTHONPATH", "")]))


class Response:
    def __init__(self, status: int, body: bytes, headers: http.client.HTTPMessage) -> None:
        self.status = status
        self.json = json.loads(body) if body else None
        self.headers = headers
        #: the SQL statements the request ran in the server (its X-Statements)
        self.statements = int(headers.get("X-Statements", "-1"))


class Server:
    """One waitress process running ``cache_worker.py``; stopped by its pid."""

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with open(log, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(HERE / "cache_worker.py")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        ready, _, _ = select.select([self.process.stdout], [], [], 60)
        line = self.process.stdout.readline().decode() if ready else ""
        if not line.startswith("port "):
            self.stop()
            raise RuntimeError(f"server {name} did not start: {log.read_text()[-2000:]}")
        self.port = int(line.split()[1])

    def request(
        self, method: str, path: str, body: Any = None, cookie: str | None = None
    ) -> Response:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = {"Content-Type": "application/json"}
            if cookie is not None:
                headers["Cookie"] = f"session={cookie}"
            data = json.dumps(body).encode() if body is not None else b""
            connection.request(method, path, body=data, headers=headers)
            answer = connection.getresponse()
            response = Response(answer.status, answer.read(), answer.headers)
        finally:
            connection.close()
        assert response.status == 200, (self.name, path, response.status, response.json)
        return response

    def stats(self, row: str | None = None) -> dict[str, Any]:
        response = self.request("GET", f"/stats?row={row}" if row else "/stats")
        assert response.statements == 0
        return response.json

    def set_clock(self, time: float) -> None:
        self.request("POST", "/clock", {"time": time})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # by its pid
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()


class Browser:
    """A cookie jar of one cookie, ``session``, kept as a browser keeps it."""

    def __init__(self, cookie: str | None = None) -> None:
        self.cookie = cookie

    def copy(self) -> Browser:
        """Another browser holding a copy of this one's cookie (a stolen cookie)."""
        assert self.cookie, "no cookie to copy"
        return Browser(self.cookie)

    def send(self, server: Server, path: str, body: Any = None) -> Response:
        method = "GET" if body is None else "POST"
        response = server.request(method, path, body, cookie=self.cookie)
        for header in response.headers.get_all("Set-Cookie") or ():
            morsel = SimpleCookie(header).get("session")
            if morsel is not None:
                deleted = morsel["max-age"] == "0" or not morsel.value
                self.cookie = None if deleted else morsel.value
        return response


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg_url() -> str:
    from sessions_kernel.pytest_plugin import server_url

    return server_url("postgresql")  # skips with the reason when it does not answer


@pytest.fixture(scope="module")
def table(pg_url: str) -> Iterator[str]:
    """The table A and B share, created with the cache's trigger (``add_ddl``)."""
    import cache_worker

    name = f"cache_processes_{os.getpid()}"
    model = cache_worker.model(name)
    engine = sa.create_engine(pg_url)
    model.metadata.drop_all(engine)
    model.metadata.create_all(engine)
    yield name
    model.metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def env(pg_url: str, table: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": _pythonpath(),
        "CACHE_TEST_URL": pg_url,
        "CACHE_TEST_TABLE": table,
    }


@pytest.fixture(scope="module")
def servers(env: dict[str, str], tmp_path_factory: Any) -> Iterator[tuple[Server, Server]]:
    """A and B, each with a stored session read once so that its listener started."""
    logs = tmp_path_factory.mktemp("servers")
    started: list[Server] = []
    try:
        for name in ("A", "B"):
            server = Server(name, env, logs / f"{name}.log")
            started.append(server)
            browser = Browser()
            browser.send(server, "/set", {"warm": 1})
            browser.send(server, "/read")  # the first lookup starts the listener
            wait_for(lambda s=server: s.stats()["live"], f"{name}'s listener is live")
            # the server runs the code this test imported (a worktree's, say)
            assert server.stats()["module"] == sessions_cache.__file__
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()


_clock_base = itertools.count(1)


@pytest.fixture
def ab(servers: tuple[Server, Server]) -> tuple[Server, Server, float]:
    """A, B, and the time both their clocks were set to, later than any test before used."""
    time = 1_750_000_000.0 + 10_000 * next(_clock_base)
    for server in servers:
        server.set_clock(time)
    return (*servers, time)


@pytest.fixture
def sql(pg_url: str) -> Iterator[Any]:
    """A plain psycopg connection (autocommit): another program's SQL, or the test's."""
    import psycopg

    url = sa.engine.make_url(pg_url).set(drivername="postgresql")
    connection = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
    yield connection
    connection.close()


# -- helpers -----------------------------------------------------------------------------------
def stored_session(a: Server, data: dict[str, Any]) -> Browser:
    browser = Browser()
    assert browser.send(a, "/set", data).json["data"] == data
    return browser


def cached_in(b: Server, thief: Browser, data: dict[str, Any]) -> str:
    """Read the session in B until B serves it from its cache; its row key.

    Proves it is cached: a read counted as a hit in B's stats that ran no SQL.
    (A fill may be refused while the notification of the row's last write is on
    its way: its read may predate that write.)
    """
    reads: list[Response] = []

    def read() -> bool:
        response = thief.send(b, "/id")
        assert response.json["data"] == data and response.json["new"] is False
        reads.append(response)
        return response.statements == 0

    before = b.stats()
    wait_for(read, "B serves the session from its cache")
    # (the first read may be a hit already: B's own write of the row kept it)
    row = reads[-1].json["id"]
    after = b.stats(row)
    assert after["cached"] is True
    assert after["hits"] >= before["hits"] + 1
    hits = after["hits"]
    response = thief.send(b, "/id")  # once more, counted on its own
    assert (response.statements, response.json["data"]) == (0, data)
    assert b.stats()["hits"] == hits + 1
    return row


def refused_after_eviction(b: Server, thief: Browser, row: str, notifications: int) -> None:
    """Wait for B to evict ``row`` (its listener's event), then B refuses the copied cookie
    without serving anything from its cache."""
    wait_for(lambda: not b.stats(row)["cached"], f"B evicted the row {row[:12]}…")
    before = b.stats()
    assert before["notifications"] > notifications
    response = thief.send(b, "/id")
    assert response.json["new"] is True and response.json["data"] == {}
    assert response.statements > 0  # read from the database, where the row is gone
    after = b.stats(row)
    assert after["hits"] == before["hits"]
    assert after["cached"] is False


# -- revocations across processes ----------------------------------------------------------------
def test_a_cached_read_in_another_process_runs_no_sql(ab):
    a, b, _ = ab
    browser = stored_session(a, {"n": 1})
    thief = browser.copy()
    row = cached_in(b, thief, {"n": 1})
    assert cached_in(a, browser, {"n": 1}) == row  # cached in both processes
    notifications = a.stats()["notifications"]
    # a write in B from its cached copy: the kernel's versioned UPDATE alone
    assert thief.send(b, "/set", {"m": 2}).statements == 1
    # B kept what it committed (its next read is a hit); A evicted its older copy when told
    assert b.stats(row)["cached"] is True
    wait_for(lambda: not a.stats(row)["cached"], "A evicted the row B wrote")
    assert a.stats()["notifications"] > notifications
    assert browser.send(a, "/read").json["data"] == {"n": 1, "m": 2}
    again = thief.send(b, "/read")
    assert again.json["data"] == {"n": 1, "m": 2} and again.statements == 0
    # B's own notification of its write (the version it holds) did not evict it
    wait_for(lambda: b.stats()["notifications"] > 0, "B heard its own write")
    assert b.stats(row)["cached"] is True


def test_a_logout_in_a_is_refused_in_b(ab):
    a, b, _ = ab
    browser = stored_session(a, {"cart": [1]})
    thief = browser.copy()
    row = cached_in(b, thief, {"cart": [1]})
    notifications = b.stats()["notifications"]
    assert browser.send(a, "/invalidate").json["new"] is True
    refused_after_eviction(b, thief, row, notifications)


def test_a_new_id_in_a_refuses_the_old_cookie_in_b(ab):
    """A login rotates the id (``regenerate_id``): a copy of the old cookie stops working."""
    a, b, _ = ab
    browser = stored_session(a, {"cart": [1]})
    thief = browser.copy()
    row = cached_in(b, thief, {"cart": [1]})
    notifications = b.stats()["notifications"]
    assert browser.send(a, "/regenerate").json["data"] == {"cart": [1]}
    refused_after_eviction(b, thief, row, notifications)
    assert browser.send(b, "/id").json["data"] == {"cart": [1]}  # the new cookie works


def test_log_out_everywhere_else_in_a_is_refused_in_b(ab):
    a, b, _ = ab
    userid = next(_clock_base) + 1000
    browser = stored_session(a, {"cart": [1]})
    browser.send(a, "/login", {"userid": userid})
    thief = browser.copy()
    row = cached_in(b, thief, {"cart": [1]})
    other = stored_session(a, {"elsewhere": True})  # the same user, another device
    other.send(a, "/login", {"userid": userid})
    notifications = b.stats()["notifications"]
    assert other.send(a, "/logout_others").json["deleted"] == 1
    refused_after_eviction(b, thief, row, notifications)
    # the session that logged the others out lives on, in both processes
    assert other.send(b, "/id").json["data"] == {"elsewhere": True}


def test_an_idle_timeout_in_a_is_refused_in_b(ab):
    """A's clock passed the timeout and A rejected (deleted) the row; B's clock has not,
    so only the eviction keeps B from serving its copy."""
    a, b, now = ab
    browser = stored_session(a, {"cart": [1]})
    thief = browser.copy()
    row = cached_in(b, thief, {"cart": [1]})
    notifications = b.stats()["notifications"]
    a.set_clock(now + 61)  # idle_timeout is 60
    assert browser.send(a, "/id").json["new"] is True  # rejected, and its row deleted
    refused_after_eviction(b, thief, row, notifications)


def test_psessions_gc_in_a_third_process_is_refused_in_b(ab, env, tmp_path):
    a, b, now = ab
    browser = stored_session(a, {"cart": [1]})
    thief = browser.copy()
    row = cached_in(b, thief, {"cart": [1]})
    notifications = b.stats()["notifications"]
    ini = tmp_path / "gc.ini"
    ini.write_text(
        "[app:main]\nuse = call:cache_worker:main\n"
        f"cache_test.url = {env['CACHE_TEST_URL']}\ncache_test.table = {env['CACHE_TEST_TABLE']}\n"
    )
    gc = subprocess.run(
        [sys.executable, "-m", "sessions_kernel.cli", str(ini), "gc"],
        env={**env, "CACHE_TEST_NOW": str(now + 61)},  # its clock, past the idle timeout
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gc.returncode == 0, gc.stderr
    assert "deleted" in gc.stdout, gc.stdout
    refused_after_eviction(b, thief, row, notifications)


def test_a_raw_sql_delete_is_refused_in_b(ab, sql, env):
    a, b, _ = ab
    browser = stored_session(a, {"cart": [1]})
    thief = browser.copy()
    row = cached_in(b, thief, {"cart": [1]})
    notifications = b.stats()["notifications"]
    deleted = sql.execute(f'DELETE FROM "{env["CACHE_TEST_TABLE"]}" WHERE id = %s', (row,))
    assert deleted.rowcount == 1
    refused_after_eviction(b, thief, row, notifications)


# -- failing closed ----------------------------------------------------------------------------
def test_while_the_listener_is_down_nothing_is_served_nor_after_it_from_before(ab, sql, env):
    """Kill B's listener connection; its reconnection waits at a gate (B's ``/gate``) until
    the test opened it. Changes made meanwhile are never notified: B serves nothing from
    its cache while down, and after reconnecting not the entries from before."""
    a, b, _ = ab
    table = env["CACHE_TEST_TABLE"]
    deleted_browser = stored_session(a, {"x": 1})
    deleted_thief = deleted_browser.copy()
    deleted_row = cached_in(b, deleted_thief, {"x": 1})
    updated_browser = stored_session(a, {"y": 1})
    updated_thief = updated_browser.copy()
    updated_row = cached_in(b, updated_thief, {"y": 1})

    b.request("POST", "/gate", {"open": False})
    try:
        before = b.stats()
        killed = sql.execute("SELECT pg_terminate_backend(%s)", (before["backend_pid"],))
        assert killed.fetchone()[0] is True
        wait_for(lambda: b.stats()["live"] is False, "B's listener is down")
        # the changes, while the listener is down: never notified to B
        sql.execute(f'DELETE FROM "{table}" WHERE id = %s', (deleted_row,))
        assert updated_browser.send(a, "/set", {"y": 2}).json["data"] == {"y": 2}
        down = b.stats()
        assert down["connects"] == before["connects"]  # held at the gate
        # B's copies from before are still there, and served to nobody
        assert b.stats(deleted_row)["cached"] and b.stats(updated_row)["cached"]
        for _ in range(2):
            response = deleted_thief.copy().send(b, "/id")  # the copy's cookie is then deleted
            assert response.json["new"] is True and response.statements > 0
            response = updated_thief.send(b, "/id")
            assert response.json["data"] == {"y": 2} and response.statements > 0
        still = b.stats()
        assert still["hits"] == down["hits"]
        assert still["bypassed"] >= down["bypassed"] + 4
        assert still["live"] is False and still["connects"] == before["connects"]
    finally:
        b.request("POST", "/gate", {"open": True})

    def back() -> bool:
        stats = b.stats()
        return stats["connects"] > before["connects"] and stats["live"] is True

    wait_for(back, "B's listener reconnected")
    after = b.stats(updated_row)
    assert after["flushes"] > before["flushes"]
    assert after["cached"] is False  # emptied on reconnecting
    # never the copy from before the kill: read again, then served from the cache again
    cached_in(b, updated_thief, {"y": 2})
    response = deleted_thief.send(b, "/id")
    assert response.json["new"] is True and response.statements > 0


def test_a_change_right_after_the_listener_is_killed_is_never_served_stale(ab, sql, env):
    """No gate: B reconnects as soon as it can, before or after the change commits."""
    a, b, _ = ab
    table = env["CACHE_TEST_TABLE"]
    browser = stored_session(a, {"x": 1})
    thief = browser.copy()
    row = cached_in(b, thief, {"x": 1})
    before = b.stats()
    sql.execute("SELECT pg_terminate_backend(%s)", (before["backend_pid"],))
    sql.execute(f'DELETE FROM "{table}" WHERE id = %s', (row,))

    def back() -> bool:
        stats = b.stats(row)
        return stats["connects"] > before["connects"] and stats["live"] is True

    wait_for(back, "B's listener reconnected")
    assert b.stats(row)["cached"] is False
    response = thief.send(b, "/id")
    assert response.json["new"] is True and response.statements > 0


# -- a process forked after the cache started ----------------------------------------------------
def _in_forked_child(app: Any) -> dict[str, Any]:
    """What a child forked from a process whose cache was serving sees of it (a worker
    forked after a warm-up request: gunicorn ``--preload``, uWSGI without lazy-apps)."""
    from sessions_cache import cache_of, listener_of

    factory = app.factory
    app.engine.dispose(close=False)  # the pool's connections are the parent's (SQLAlchemy's advice)
    found: dict[str, Any] = {"entries": len(cache_of(factory))}
    found["inherited_listener"] = listener_of(factory) is not None
    app.get("/read")  # the child's first lookup
    wait_for(
        lambda: listener_of(factory) is not None and listener_of(factory).live(),
        "the child's own listener is live",
    )
    app.get("/read")  # read and kept (the listener emptied the cache when it started)
    with app.count() as sql:
        found["data"] = app.get("/read").json["data"]
    found["statements"] = sql.count
    found["own_backend"] = listener_of(factory).backend_pid
    sessions_cache.stop(factory)  # what the child's exit runs (weakref.finalize)
    return found


def test_a_forked_child_listens_for_itself_and_leaves_the_parents_listener_alone(pg_url, table):
    """Without a fork handler, the child kept the parent's entries and listener (whose thread
    does not run in the child, so its cache never served again), and closing that listener
    at the child's exit closed the parent's connection."""
    import time

    import cache_worker
    from sessions_cache import cache_of, listener_of

    from sessions_kernel.testing import SessionTestApp

    engine = sa.create_engine(pg_url)
    app = SessionTestApp(cache_worker.model(table), engine, settings=cache_worker.SETTINGS)
    try:
        app.post_json("/set", {"a": 1})
        app.get("/read")
        listener = listener_of(app.factory)
        wait_for(listener.live, "the parent's listener is live")
        app.get("/read")
        with app.count() as sql:
            assert app.get("/read").json["data"] == {"a": 1}
        assert sql.count == 0 and len(cache_of(app.factory)) == 1
        backend, connects = listener.backend_pid, listener.connects

        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover (the child)
            os.close(read)
            try:
                found = _in_forked_child(app)
            except BaseException as exc:
                found = {"error": repr(exc)}
            os.write(write, json.dumps(found).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            found = json.loads(pipe.read() or b"{}")
        os.waitpid(child, 0)
        assert found == {
            "entries": 0,
            "inherited_listener": False,
            "data": {"a": 1},
            "statements": 0,
            "own_backend": found.get("own_backend"),
        }
        assert found["own_backend"] not in (None, backend)
        # a heartbeat of the parent's sent after the child exited came back, on its connection
        after = time.monotonic()
        wait_for(lambda: (listener.alive_since or 0) > after, "the parent's next heartbeat")
        assert (listener.backend_pid, listener.connects) == (backend, connects)
    finally:
        sessions_cache.stop(app.factory)
        engine.dispose()
