"""PostgreSQL: every committed change of the session table, told to every process.

The trigger :mod:`sessions_cache.ddl` installs sends, inside each writing
transaction, ``NOTIFY <channel>, '<key>:<version> <key>:- …'``: the new version
of each row an ``UPDATE`` wrote, ``-`` for each row a ``DELETE`` removed or an
``UPDATE`` gave another key (``'*'`` for a ``TRUNCATE``). PostgreSQL
delivers a notification only once its transaction committed, in commit
order. :class:`Listener` holds one connection per process and factory
(outside the pool) that ``LISTEN``\\ s, and evicts the rows named (but an
entry of the version named: this process's own write, kept when it committed).

It fails closed. The cache serves entries only while :meth:`Listener.live`:
the connection is up, the trigger was found, and the listener's heartbeat,
a notification of its own sent through the server every ``cache_heartbeat``
seconds (it arrives after every notification committed before it), came
back less than three heartbeats ago. The heartbeat is sent only while the
table it started on still has its triggers, enabled; when it finds them
gone, the listener starts again. When the connection drops, the
cache is bypassed at once; when it is back, the cache is emptied before it
serves again, since notifications sent meanwhile were lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from .store import GONE, RowCache

__all__ = ["Listener", "channel_name"]

log = logging.getLogger("sessions_cache")

#: Connections a forked child inherited from its parent's listeners: never closed nor
#: collected there (closing one would end the parent's ``LISTEN``).
_INHERITED: list[Any] = []

#: The heartbeat's multiple past which entries are no longer served.
LIVENESS_BEATS = 3


def channel_name(table: sa.Table) -> str:
    """The ``NOTIFY`` channel of a session table: ``session_rows_<schema>_<table>``, lower
    case, at most 63 characters (PostgreSQL's identifier limit)."""
    parts = ["session_rows", *([table.schema] if table.schema else []), table.name]
    return "_".join(parts).lower()[:63]


def _regclass(table: sa.Table) -> str:
    """The table's name as ``to_regclass`` reads it: quoted, so that PostgreSQL does not fold
    a name in capitals (``UserSession``) to another (``usersession``)."""

    def quote(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    return f"{quote(table.schema)}.{quote(table.name)}" if table.schema else quote(table.name)


#: The table's oid if it has the cache's three triggers, enabled (else no row, or NULL).
_TABLE_WITH_TRIGGERS = (
    "SELECT c.oid::bigint FROM pg_class c WHERE c.oid = to_regclass(%s) AND "
    "(SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = ANY(%s) "
    "AND t.tgenabled <> 'D') = %s"
)

#: The heartbeat, sent only while the table the listener started on (its oid) still has
#: its triggers, enabled: a row comes back when it was sent.
_PING = (
    "SELECT pg_notify(%s, %s) FROM pg_class c WHERE c.oid = %s::oid AND "
    "(SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = ANY(%s) "
    "AND t.tgenabled <> 'D') = %s"
)


def table_oid(connection: Any, table: sa.Table) -> int | None:
    """The session table's oid if it has the cache's triggers (see :mod:`sessions_cache.ddl`),
    enabled; else ``None``."""
    from .ddl import trigger_names

    names = list(trigger_names(table))
    cursor = connection.cursor()
    try:
        cursor.execute(_TABLE_WITH_TRIGGERS, (_regclass(table), names, len(names)))
        row = cursor.fetchone()
    finally:
        cursor.close()
    return None if row is None else int(row[0])


def trigger_installed(connection: Any, table: sa.Table) -> bool:
    """Whether the session table has the cache's triggers (see :mod:`sessions_cache.ddl`)."""
    return table_oid(connection, table) is not None


class Listener:
    """One process's ``LISTEN`` connection for one session table (see the module's doc).

    :param connect: returns a new DBAPI connection (psycopg 3 or psycopg2),
        outside the pool.
    """

    def __init__(
        self,
        cache: RowCache,
        table: sa.Table,
        connect: Callable[[], Any],
        *,
        heartbeat: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self.table = table
        self.channel = channel_name(table)
        self.connect = connect
        self.heartbeat = heartbeat
        self.clock = clock
        #: clock() when a heartbeat sent then came back (``None``: not listening)
        self.alive_since: float | None = None
        #: the connection's backend pid while listening (tests terminate it)
        self.backend_pid: int | None = None
        #: connections made, for tests and listings
        self.connects = 0
        self.trigger_missing = False
        self._stop = threading.Event()
        self._connection: Any = None
        #: this listener's heartbeat payloads: ``ping <token> <n>``
        self._token = f"{os.getpid()}-{id(self):x}"
        self._ping: tuple[str, float] = ("", 0.0)
        #: whether the current connection answered a heartbeat (the back-off restarts)
        self._was_live = False
        self._thread = threading.Thread(
            target=self._run, name=f"sessions-cache {self.channel}", daemon=True
        )
        cache.live = self.live

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()
        self._thread.join(timeout=5)

    def forked(self) -> None:
        """In a child process just forked: this listener's thread does not run here, and its
        connection is the parent's. Stopped for good, and the connection kept, unclosed
        (closing it, or psycopg2 collecting it, would end the parent's)."""
        self._stop = threading.Event()
        self._stop.set()
        # kept, never collected: psycopg2 closes a connection it collects, in any process
        _INHERITED.append(self._connection)
        self._connection = None
        self.alive_since = None
        self.backend_pid = None

    def live(self) -> bool:
        """Whether every change committed up to a moment ago is known (entries may be served)."""
        since = self.alive_since
        return since is not None and self.clock() - since <= LIVENESS_BEATS * self.heartbeat

    # -- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        pause = self.heartbeat
        while not self._stop.is_set():
            self._was_live = False
            try:
                self._listen()
            except Exception as exc:
                if self._stop.is_set():
                    break
                log.warning(
                    "sessions-cache: the listener of %s lost its connection (%s); the cache "
                    "is bypassed until it is back",
                    self.channel,
                    exc,
                )
            finally:
                self._down()
            # the first reconnection soon; then back off, up to 5 s, while it keeps failing
            pause = self.heartbeat if self._was_live else min(pause * 2, 5.0)
            self._stop.wait(pause)

    def _down(self) -> None:
        self.alive_since = None
        self.backend_pid = None
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def _listen(self) -> None:
        connection = self._connection = self.connect()
        self.connects += 1
        driver = _driver(connection)
        driver.autocommit(connection)
        oid = table_oid(connection, self.table)
        if oid is None:
            if not self.trigger_missing:
                log.error(
                    "sessions-cache: the table %s has no change trigger, so other processes' "
                    "changes would go unseen: the cache is off. Install it with "
                    "'psessions <config.ini> ddl --apply' (or the SQL 'psessions <config.ini> "
                    "ddl' prints, in a migration); the cache turns on by itself once it is there.",
                    self.table.name,
                )
            self.trigger_missing = True
            while not self._stop.wait(self.heartbeat * 10):
                oid = table_oid(connection, self.table)
                if oid is not None:
                    break
            else:
                return
        self.trigger_missing = False
        from .ddl import trigger_names

        names = list(trigger_names(self.table))
        driver.execute(connection, f'LISTEN "{self.channel}"')
        self.backend_pid = driver.scalar(connection, "SELECT pg_backend_pid()")
        # Notifications sent before LISTEN took effect were never seen: start empty.
        self.cache.flush()
        beat = 0
        while not self._stop.is_set():
            # The heartbeat is a notification of our own, through the server: once it
            # comes back, every notification committed before it was sent has arrived
            # (they are delivered in commit order), and notifications do reach us (a
            # pooler in transaction mode, say, would lose them, and the ping with them).
            # It is sent only while the table still has its triggers: once they are
            # dropped or disabled, or the table dropped (and perhaps made again, a new
            # oid), changes go untold, so the cache stops serving now, and the listener
            # starts again, which empties it once the trigger is back.
            beat += 1
            sent = self.clock()
            self._ping = (f"ping {self._token} {beat}", sent)
            params = (self.channel, self._ping[0], oid, names, len(names))
            if driver.fetchone(connection, _PING, params) is None:
                self.alive_since = None
                log.warning(
                    "sessions-cache: the change trigger of %s is gone or disabled, or the "
                    "table was dropped: the cache is off until it is back",
                    self.table.name,
                )
                return
            end = sent + self.heartbeat
            while not self._stop.is_set():
                wait = end - self.clock()
                if wait <= 0:
                    break
                driver.wait(connection, wait, self._apply)

    def _apply(self, payload: str) -> None:
        if payload.startswith("ping "):  # a heartbeat: ours, or another process's
            expected, sent = self._ping
            if payload == expected:
                self.alive_since = sent
                self._was_live = True
            return
        self.cache.stats.notifications += 1
        if payload == "*":
            self.cache.flush()
        else:
            self.cache.learn(_parse(token) for token in payload.split())


def _parse(token: str) -> tuple[str, int | None]:
    """``<key>:<version>`` of a row updated, ``<key>:-`` of one deleted or given another key;
    a bare ``<key>`` (a version unknown) is an eviction all the same."""
    key, _, version = token.partition(":")
    if version == "-":
        return key, GONE
    return key, int(version) if version.isdigit() else None


# -- the two drivers' ways of listening --------------------------------------------------------
class _Psycopg3:
    @staticmethod
    def autocommit(connection: Any) -> None:
        connection.autocommit = True

    @staticmethod
    def fetchone(connection: Any, sql: str, params: tuple[Any, ...]) -> Any:
        return connection.execute(sql, params).fetchone()

    @staticmethod
    def execute(connection: Any, sql: str) -> None:
        connection.execute(sql)

    @staticmethod
    def scalar(connection: Any, sql: str) -> Any:
        row = connection.execute(sql).fetchone()
        return row[0]

    @staticmethod
    def wait(connection: Any, timeout: float, apply: Callable[[str], None]) -> None:
        """Apply each notification as it arrives, for up to ``timeout`` seconds; those
        received during other commands first (psycopg >= 3.2 keeps them)."""
        for notification in connection.notifies(timeout=timeout):
            apply(notification.payload)


class _Psycopg2:
    @staticmethod
    def autocommit(connection: Any) -> None:
        connection.autocommit = True

    @staticmethod
    def fetchone(connection: Any, sql: str, params: tuple[Any, ...]) -> Any:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()

    @staticmethod
    def execute(connection: Any, sql: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(sql)

    @staticmethod
    def scalar(connection: Any, sql: str) -> Any:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone()[0]

    @staticmethod
    def wait(connection: Any, timeout: float, apply: Callable[[str], None]) -> None:
        end = time.monotonic() + timeout
        while True:
            connection.poll()
            while connection.notifies:
                apply(connection.notifies.pop(0).payload)
            left = end - time.monotonic()
            if left <= 0:
                return
            select.select([connection], [], [], left)


def _driver(connection: Any) -> Any:
    module = type(connection).__module__
    if module.startswith("psycopg2"):
        return _Psycopg2
    if module.startswith("psycopg"):
        import psycopg

        if tuple(int(part) for part in psycopg.__version__.split(".")[:2]) < (3, 2):
            raise TypeError(
                f"sessions-cache needs psycopg 3.2 or later (installed: {psycopg.__version__}): "
                "older versions lose the notifications that arrive during a query. "
                "pip install 'psycopg>=3.2'"
            )
        return _Psycopg3
    raise TypeError(
        f"sessions-cache listens for changes with psycopg (3) or psycopg2; the engine's "
        f"driver gives {type(connection).__module__}.{type(connection).__name__}. Use a "
        "postgresql+psycopg:// (or postgresql+psycopg2://) URL."
    )
