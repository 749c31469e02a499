"""The process's copy of recently read session rows, and the rules that keep it coherent.

:class:`RowCache` holds, per session factory, the committed column values of
rows it read, bounded by entries and by bytes (cachetools' LRU). It serves
them only while it can know of every committed change: on PostgreSQL while
its listener (:mod:`sessions_cache.listener`) is connected and answered a
heartbeat recently, elsewhere only entries younger than
``cache_max_staleness``. Every change it learns of (this process's commits
through ``session_rows_changed``, other processes' through ``NOTIFY``)
evicts the rows named, and a fill whose read may predate such a change is
refused (:meth:`RowCache.fill`).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import cachetools
import sqlalchemy as sa

from sessions_kernel import RowChanges
from sessions_kernel.storage import RowStorage

__all__ = ["CacheStats", "Entry", "RowCache"]

log = logging.getLogger("sessions_cache")

#: Hex digits of a row key shared by every id of one session (the kernel's LINEAGE_CHARS).
LINEAGE_CHARS = 24
#: Evictions remembered one by one, so that a fill racing one of them is refused; past
#: this many, fills that began before the oldest forgotten eviction are refused.
RECENT_EVICTIONS = 8192
#: Bytes counted per entry beyond its values' lengths: the entry, its dict, its key, the
#: LRU's and the lineage index's bookkeeping (CPython 3.11, measured with tracemalloc).
ENTRY_OVERHEAD = 500
#: Bytes counted per column value beyond a string's length (the object, the dict slot).
VALUE_OVERHEAD = 100
_IMMUTABLE = (str, bytes, int, float, bool, type(None))


@dataclass(frozen=True)
class Entry:
    """One cached row: its values, when they may be served until, and what they weigh."""

    values: Mapping[str, Any]
    #: ``time.monotonic()`` after which it is not served (``inf``: until evicted)
    until: float
    size: int
    #: values holding mutable objects (a JSON column's dict) are copied when served
    mutable: bool


@dataclass
class CacheStats:
    """What the cache did, counted (for tests, ``psessions``-style listings and benchmarks)."""

    hits: int = 0
    misses: int = 0
    #: reads not served because the cache could not know of every change (fail closed)
    bypassed: int = 0
    fills: int = 0
    #: fills refused: a change may have committed while their read ran
    refused: int = 0
    evictions: int = 0
    #: times the whole cache was emptied (the listener (re)connected, everything changed)
    flushes: int = 0
    #: change notifications received from the database (PostgreSQL)
    notifications: int = 0


def _weigh(values: Mapping[str, Any]) -> tuple[int, bool]:
    size, mutable = ENTRY_OVERHEAD + VALUE_OVERHEAD * len(values), False
    for value in values.values():
        if isinstance(value, (str, bytes)):
            size += len(value)
        elif not isinstance(value, _IMMUTABLE):
            mutable = True
            size += len(repr(value))
    return size, mutable


class RowCache:
    """The rows of one session factory this process read lately (see the module's doc).

    :param max_entries: at most this many rows.
    :param max_bytes: at most this many bytes, each entry counted as its
        ``str``/``bytes`` values' lengths, plus :data:`VALUE_OVERHEAD` per
        value and :data:`ENTRY_OVERHEAD` per entry.
    :param max_staleness: seconds an entry may be served after the read that
        filled it (``None``: until a change evicts it, which needs a live
        listener).
    :param clock: ``time.monotonic`` by default.
    """

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        max_staleness: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_staleness = max_staleness
        self.clock = clock
        # Bounded by bytes; each entry weighs at least max_bytes / max_entries, so
        # that the bytes bound also keeps the count at or under max_entries.
        floor = max_bytes / max_entries

        def weight(entry: Entry) -> float:
            return max(entry.size, floor)

        self._entries: cachetools.LRUCache[str, Entry] = _IndexedLRU(
            maxsize=max_bytes, getsizeof=weight, on_evict=self._unindex
        )
        self._by_lineage: defaultdict[str, set[str]] = defaultdict(set)
        self._lock = threading.Lock()
        #: counts every eviction; a fill records it before its read (see fill)
        self._generation = 0
        #: generation of the last flush (or eviction of a whole lineage)
        self._flushed_at = 0
        #: row key -> generation of its latest eviction, the latest RECENT_EVICTIONS
        self._evicted: OrderedDict[str, int] = OrderedDict()
        #: generation of the newest eviction dropped from _evicted
        self._forgotten_at = 0
        #: whether entries may be served now (a source of changes is known to be live);
        #: set by the listener, or always True for a cache bounded by max_staleness alone
        self.live: Callable[[], bool] = lambda: self.max_staleness is not None
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        """The bytes the entries are counted as (see ``max_bytes``)."""
        with self._lock:
            return sum(entry.size for entry in self._entries.values())

    # -- serving ----------------------------------------------------------------------------
    def get(self, row_id: str) -> Mapping[str, Any] | None:
        """The cached values of ``row_id`` if they may be served now, else ``None``."""
        if not self.live():
            self.stats.bypassed += 1
            return None
        with self._lock:
            entry = self._entries.get(row_id)
            if entry is not None and entry.until < self.clock():
                del self._entries[row_id]  # past max_staleness: read again
                entry = None
        if entry is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return copy.deepcopy(entry.values) if entry.mutable else entry.values

    def generation(self) -> int:
        """Take before reading a row to :meth:`fill` with (see there)."""
        return self._generation

    def fill(self, row_id: str, values: Mapping[str, Any], since: int, read_at: float) -> bool:
        """Keep ``values`` of ``row_id``, read after ``generation()`` returned ``since``.

        Refused (``False``) if a change that may concern the row was learnt of
        since: its read may have seen the row before that change committed
        and would then keep a stale copy. A change committed before the read
        began is in what it read; one committed after is learnt of later and
        evicts the entry. ``read_at`` (``clock()`` before the read) starts the
        entry's ``max_staleness``.
        """
        size, mutable = _weigh(values)
        until = float("inf") if self.max_staleness is None else read_at + self.max_staleness
        with self._lock:
            if (
                not self.live()
                or self._flushed_at > since
                or self._forgotten_at > since
                or self._evicted.get(row_id, 0) > since
                or size > self.max_bytes
            ):
                self.stats.refused += 1
                return False
            self._entries[row_id] = Entry(values, until, size, mutable)
            self._by_lineage[row_id[:LINEAGE_CHARS]].add(row_id)
            self.stats.fills += 1
            return True

    def forked(self) -> None:
        """In a child process just forked: empty, with a lock of its own, and not served until
        a source of changes of the child's is live (see ``sessions_cache``'s fork handler)."""
        self._lock = threading.Lock()
        self.live = lambda: self.max_staleness is not None
        self.flush()

    # -- learning of changes ------------------------------------------------------------------
    def evict(self, row_ids: Iterable[str]) -> None:
        """Forget these rows: a change of them committed (or may have)."""
        with self._lock:
            for row_id in row_ids:
                self._evict_one(row_id)

    def evict_changes(self, changes: RowChanges) -> None:
        """Forget every row a committed :class:`~sessions_kernel.RowChanges` names."""
        if changes.everything:
            self.flush()
            return
        with self._lock:
            for row_id in (*changes.written, *changes.deleted):
                self._evict_one(row_id)
            for old, new in changes.rekeyed:
                self._evict_one(old)
                self._evict_one(new)
            for lineage in changes.lineages:
                for row_id in list(self._by_lineage.get(lineage, ())):
                    self._evict_one(row_id)
                # a row of the lineage may be mid-fill under a key not seen yet
                self._generation += 1
                self._flushed_at = self._generation

    def flush(self) -> None:
        """Forget every row (a change not known row by row, or the listener reconnected)."""
        with self._lock:
            self._entries.clear()
            self._by_lineage.clear()
            self._generation += 1
            self._flushed_at = self._generation
            self.stats.flushes += 1

    def _evict_one(self, row_id: str) -> None:
        self._generation += 1
        evicted = self._evicted
        evicted[row_id] = self._generation
        evicted.move_to_end(row_id)
        while len(evicted) > RECENT_EVICTIONS:
            _, generation = evicted.popitem(last=False)
            self._forgotten_at = max(self._forgotten_at, generation)
        if self._entries.pop(row_id, None) is not None:
            self.stats.evictions += 1

    def _unindex(self, row_id: str) -> None:
        ids = self._by_lineage.get(row_id[:LINEAGE_CHARS])
        if ids is not None:
            ids.discard(row_id)
            if not ids:
                del self._by_lineage[row_id[:LINEAGE_CHARS]]


class _IndexedLRU(cachetools.LRUCache):  # type: ignore[type-arg]
    """cachetools' LRU that tells :class:`RowCache` of every key it drops, so the
    lineage index stays in step (eviction for room, ``pop``, ``del``, ``clear``)."""

    def __init__(self, *, on_evict: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_evict = on_evict

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._on_evict(key)


def read_row(storage: RowStorage, engine: sa.Engine, row_id: str) -> Mapping[str, Any] | None:
    """The row's committed values, read on a connection of the pool in autocommit: never
    the request's transaction, whose uncommitted writes must not be cached."""
    with engine.connect() as connection:
        return storage.read_values(connection, row_id)
