"""Reads that skip the database: a process-local cache of session rows, kept coherent.

Add :class:`CacheMixin` to the bases of the session model. A request whose
session row the cache holds reads it without SQL, takes no connection from
the pool and begins no database transaction (unless something else does);
its write is the kernel's usual versioned ``UPDATE``, which merges with a
concurrent write if the cached copy was behind.

The database stays the only truth, and the cache is served only while it
can know of every committed change (:mod:`sessions_cache.store`):

* **PostgreSQL**: a trigger (``psessions <ini> ddl --apply``) sends each
  committed change's keys with ``NOTIFY``; each process's listener evicts
  them (:mod:`sessions_cache.listener`). While the listener is down, or the
  trigger missing, nothing is served; once it is back, the cache is emptied.
* **MariaDB, SQLite**: no notifications. Within the process every change
  made through the kernel evicts at once (``session_rows_changed``); other
  processes' changes, ``psessions gc`` and the application's own SQL are
  seen within ``cache_max_staleness`` seconds, the bound on how long an
  entry is served after the read that filled it. Unset, the cache stays off
  there.

A process forked after its cache served (workers forked after a warm-up
request, ``multiprocessing``) starts with an empty cache and a listener of
its own at its first lookup; the parent's listener is left alone.

Settings (``session.`` prefix in the ini file): ``cache_max_entries``,
``cache_max_bytes``, ``cache_max_staleness``, ``cache_heartbeat``.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from sessions_kernel import RowChanges, Session, Setting, hookimpl
from sessions_kernel.settings import integer, optional

from . import ddl
from .listener import Listener, channel_name
from .store import CacheStats, RowCache, read_row

if TYPE_CHECKING:
    from sessions_kernel import SessionFactory
    from sessions_kernel.deploy import Finding

__all__ = [
    "SETTINGS",
    "CacheMixin",
    "CacheStats",
    "RowCache",
    "cache_of",
    "channel_name",
    "listener_of",
    "stop",
]

log = logging.getLogger("sessions_cache")


class CacheMixin:
    """Model mixin that turns the cache on; it adds no column."""


def _seconds(value: Any) -> float:
    """a number of seconds above 0 and at most 3600"""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number of seconds") from None
    if not 0 < seconds <= 3600:
        raise ValueError(f"{seconds} is not above 0 and at most 3600 seconds")
    return seconds


SETTINGS = (
    Setting(
        "cache_max_entries",
        10_000,
        integer(1, 10_000_000),
        "rows the cache of each process holds at most",
        runtime=False,
    ),
    Setting(
        "cache_max_bytes",
        64 * 1024 * 1024,
        integer(64 * 1024, 2**40),
        "bytes the cache of each process holds at most: the values' lengths, plus 100 per "
        "value and 500 per row",
        runtime=False,
    ),
    Setting(
        "cache_max_staleness",
        None,
        optional(_seconds),
        "seconds a cached row may be served after the read that filled it: required to "
        "cache on MariaDB and SQLite (another process's change shows within it), an "
        "extra bound on PostgreSQL",
        runtime=False,
    ),
    Setting(
        "cache_heartbeat",
        0.25,
        _seconds,
        "PostgreSQL: seconds between the listener's round trips; past 3 of them without "
        "an answer the cache is bypassed",
        runtime=False,
    ),
)


class _FactoryCache:
    """The cache of one factory, and what it learns on the first request (the engine)."""

    def __init__(self, factory: SessionFactory) -> None:
        values = factory.config.values
        # not the factory itself: it is this object's key in a WeakKeyDictionary
        self.model, self.storage = factory.model, factory.storage
        self.dbsession_name = factory.dbsession_name
        self.cache = RowCache(
            max_entries=values["cache_max_entries"],
            max_bytes=values["cache_max_bytes"],
            max_staleness=values["cache_max_staleness"],
            version_key=factory.storage.version_key,
            clock=factory.clock,  # the factory's clock: tests move it
        )
        # nothing is served or kept until the first request has vetted the engine (start)
        self.cache.live = lambda: False
        self.heartbeat: float = values["cache_heartbeat"]
        self.engine: sa.Engine | None = None
        self.listener: Listener | None = None
        #: why the cache is off for good in this process (``None``: it is not)
        self.off: str | None = None
        self.off_logged = False
        self._lock = threading.Lock()
        if not factory.storage.servable:
            self.off = (
                f"{self.model.__name__} maps more than its table's plain columns (an "
                "inherited or polymorphic mapper, a column property, an eager relationship "
                "or a load listener), which the kernel cannot build from cached values"
            )

    def start(self, session: Session) -> bool:
        """Learn the engine from the first request's SQLAlchemy session; start listening."""
        with self._lock:
            if self.off is not None and not self.off_logged:
                self.off_logged = True
                log.error("sessions-cache is off: %s", self.off)
            if self.engine is not None or self.off is not None:
                return self.off is None
            dbsession = getattr(session.request, self.dbsession_name)
            engine = dbsession.get_bind(self.model)
            if isinstance(engine, sa.Connection):
                engine = engine.engine
            dialect = engine.dialect.name
            if isinstance(engine.pool, (sa.pool.StaticPool, sa.pool.SingletonThreadPool)):
                # The cache's own reads would run on the request's connection: they would
                # see (and, turning autocommit on, commit) what its transaction wrote.
                self.off = (
                    f"the engine's {type(engine.pool).__name__} shares one connection, so "
                    "the cache cannot read committed rows apart from the request's "
                    "transaction; give the engine a pool of its own connections (a SQLite "
                    "file, not :memory:)"
                )
                log.error("sessions-cache is off: %s", self.off)
                self.off_logged = True
                return False
            if dialect == "postgresql":
                listener = Listener(
                    self.cache,
                    self.storage.table,
                    lambda: _detached_connection(engine),
                    heartbeat=self.heartbeat,
                )
                listener.start()
                self.listener = listener
            elif self.cache.max_staleness is None:
                self.off = (
                    f"on {dialect} no other process's change can be seen, so the cache needs "
                    "session.cache_max_staleness (seconds a cached row may be served after "
                    "its read; changes made through the kernel in this process are seen at "
                    "once)"
                )
                log.error("sessions-cache is off: %s", self.off)
                self.off_logged = True
                return False
            else:  # bounded by max_staleness alone
                self.cache.live = lambda: True
            self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")
            return True

    def lookup(self, session: Session, row_id: str) -> Mapping[str, Any] | None:
        cache = self.cache
        values = cache.get(row_id)
        if values is not None:
            return values
        if self.engine is None and not self.start(session):
            return None
        engine = self.engine
        if engine is None or not cache.live():
            return None
        started_at = cache.moment()
        read_at = cache.clock()
        values = read_row(self.storage, engine, row_id)
        if values is not None:
            cache.fill(row_id, values, started_at, read_at)
        return values

    def forked(self) -> None:
        """In a child process just forked (see :func:`_after_fork_in_child`)."""
        self._lock = threading.Lock()  # another thread of the parent may have held it
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.forked()
        self.engine = None  # learnt again, and a listener started, at the child's first lookup
        self.cache.forked()
        self.cache.live = lambda: False  # until then

    def close(self) -> None:
        with self._lock:
            self.off = self.off or "stopped"
            self.off_logged = True
            listener = self.listener
        if listener is not None:
            listener.stop()


def _detached_connection(engine: sa.Engine) -> Any:
    """A DBAPI connection made as the engine's pool makes them (its ``connect`` events
    included), then taken out of the pool: the listener keeps it."""
    proxied = engine.raw_connection()
    connection = proxied.driver_connection
    proxied.detach()
    return connection


_CACHES: weakref.WeakKeyDictionary[Any, _FactoryCache] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def _of(factory: SessionFactory) -> _FactoryCache:
    found = _CACHES.get(factory)
    if found is None:
        if SETTINGS[0].name not in factory.config.values:
            raise ValueError(
                f"the session factory of {factory.model.__name__} has no cache: the plugin "
                "sessions-cache is not active for it (add sessions_cache.CacheMixin to the "
                "model's bases, and check that the plugin is installed and not filtered out)"
            )
        with _CACHES_LOCK:
            found = _CACHES.get(factory)
            if found is None:
                found = _CACHES[factory] = _FactoryCache(factory)
                weakref.finalize(factory, found.close)
    return found


def _after_fork_in_child() -> None:
    """A process forked from one whose caches were serving (a server's workers forked after
    a warm-up request, ``multiprocessing``): the parent's listener threads do not run in the
    child, and their connections are the parent's. Each cache forgets its entries (nothing
    tells the child of changes for them) and its listener, without closing the connection,
    which would end the parent's; the child's first lookup starts a listener of its own."""
    global _CACHES_LOCK
    _CACHES_LOCK = threading.Lock()
    for found in list(_CACHES.values()):
        found.forked()


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def cache_of(factory: SessionFactory) -> RowCache:
    """The process's :class:`RowCache` of ``factory`` (its ``stats``, ``len()``, ``flush()``).

    Raises ``ValueError`` when the cache is not active for ``factory`` (its model
    lacks :class:`CacheMixin`).
    """
    return _of(factory).cache


def listener_of(factory: SessionFactory) -> Listener | None:
    """The process's PostgreSQL listener of ``factory``, once a request started it.

    Raises ``ValueError`` as :func:`cache_of` does.
    """
    return _of(factory).listener


def stop(factory: SessionFactory) -> None:
    """Stop ``factory``'s listener and close its connection (tests; a process's shutdown).

    The cache is bypassed from then on. It is also done when the factory is
    garbage-collected.
    """
    _of(factory).close()


# -- hooks -------------------------------------------------------------------------------------
@hookimpl
def session_mixins() -> list[type]:
    return [CacheMixin]


@hookimpl
def session_settings() -> tuple[Setting, ...]:
    return SETTINGS


@hookimpl
def session_check_settings(settings: Mapping[str, Any]) -> list[str]:
    problems = []
    heartbeat = settings.get("cache_heartbeat")
    staleness = settings.get("cache_max_staleness")
    if heartbeat is not None and heartbeat < 0.01:
        problems.append(
            f"cache_heartbeat ({heartbeat}) must be at least 0.01 seconds: the listener sends "
            "one notification to itself each heartbeat"
        )
    if heartbeat is not None and heartbeat > 10:
        problems.append(
            f"cache_heartbeat ({heartbeat}) must be at most 10 seconds: a listener silent for "
            "3 heartbeats stops the cache, and the revocation delay when its connection "
            "hangs is that long"
        )
    if staleness is not None and staleness > 300:
        problems.append(
            f"cache_max_staleness ({staleness}) must be at most 300 seconds: it is how long "
            "another process may serve a session after its logout"
        )
    return problems


@hookimpl
def session_row_lookup(factory: SessionFactory, session: Session, row_id: str) -> Any:
    """Serve the row from this process's cache, or read it (outside the request's
    transaction) and keep it; ``None`` while the cache cannot know of every change."""
    found = _of(factory)
    if found.off is not None:
        if not found.off_logged:
            found.start(session)  # says why, once
        return None
    return found.lookup(session, row_id)


@hookimpl
def session_rows_changed(factory: SessionFactory, changes: RowChanges) -> None:
    """This process committed changes: forget the rows at once (other processes learn of
    them through the trigger's ``NOTIFY``, or within ``cache_max_staleness``)."""
    _of(factory).cache.evict_changes(changes)


@hookimpl
def session_ddl(model: type, dialect: sa.Dialect) -> Sequence[str] | None:
    """PostgreSQL: the trigger that notifies every process of each committed change."""
    if dialect.name != "postgresql":
        return None
    mapper: Any = sa.inspect(model)
    return ddl.statements(mapper.local_table, dialect, mapper.version_id_col.name)


@hookimpl
def session_deploy_checks(
    settings: Mapping[str, Any], registry: Any, active: bool
) -> list[Finding]:
    """The cache left off: no ``cache_max_staleness`` on a database without notifications."""
    from sessions_kernel.deploy import Finding

    url = str((registry.settings or {}).get("sqlalchemy.url", "")) if registry else ""
    if not active or not url or url.startswith("postgresql"):
        return []
    if settings.get("cache_max_staleness") is not None:
        return []
    return [
        Finding(
            "cache.off",
            "session.cache_max_staleness",
            f"the database ({url.split(':', 1)[0]}) sends no change notifications, and "
            "session.cache_max_staleness is unset, so the cache is off: every read goes "
            "to the database",
            "set session.cache_max_staleness to the seconds another process may serve a "
            "session after its logout (1 to 5 is usual), or drop CacheMixin",
        )
    ]
