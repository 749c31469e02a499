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

import logging
import math
import pickle
import sys
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

__all__ = ["GONE", "CacheStats", "Entry", "RowCache"]

log = logging.getLogger("sessions_cache")

#: Hex digits of a row key shared by every id of one session (the kernel's LINEAGE_CHARS).
LINEAGE_CHARS = 24
#: Rows whose latest committed change is remembered, so that a fill racing one is refused;
#: past this many, fills that began before the oldest one was forgotten are refused.
KNOWN_CHANGES = 8192
#: Bytes counted per entry beyond its values' lengths: the entry, its dict, its key, the
#: LRU's and the lineage index's bookkeeping (CPython 3.11, measured with tracemalloc).
ENTRY_OVERHEAD = 500
#: Bytes counted per column value beyond a string's length (the object, the dict slot).
VALUE_OVERHEAD = 100
_IMMUTABLE = (str, bytes, int, float, bool, type(None))
#: What an empty str takes: a str is counted by what it takes beyond that (1, 2 or 4 bytes
#: a character, as CPython stores it), which is its length for ASCII.
_EMPTY_STR = sys.getsizeof("")


@dataclass(frozen=True)
class Entry:
    """One cached row: its values, when they may be served until, and what they weigh."""

    values: Mapping[str, Any]
    #: ``clock()`` after which it is not served (``inf``: until evicted)
    until: float
    size: int
    #: the row's version in ``values``
    version: int
    #: the keys whose value is kept pickled (anything but str, bytes, numbers and None: a
    #: JSON column's dict): served as a copy of its own to each request, never shared with
    #: the request whose read filled the entry, and counted by what it takes
    pickled: tuple[str, ...] = ()
    #: ``clock()`` when the read that filled it began: a clock that went back before it
    #: (a wall clock stepped back) ends the entry, as ``until`` alone would not
    read_at: float = -math.inf


#: A row's version when it was deleted or given another key (:meth:`RowCache.learn`).
GONE = -1
#: A new key whose values come with the change itself (not a change to learn).
UNSEEN = -2


class _Known:
    """What was learnt of one row's committed changes (see :meth:`RowCache.fill`)."""

    __slots__ = ("gone", "unknown_at", "version")

    def __init__(self) -> None:
        #: the row was deleted (keys are never used again)
        self.gone = False
        #: the newest version a change committed
        self.version = -1
        #: moment() a change of unknown version was learnt
        self.unknown_at = -math.inf

    def add(self, version: int | None, now: float) -> None:
        if version is None:
            self.unknown_at = now
        elif version == GONE:
            self.gone = True
        else:
            self.version = max(self.version, version)

    def allows(self, version: int, started_at: float) -> bool:
        """Whether values of ``version``, read after ``started_at``, may be as new as this."""
        return not self.gone and version >= self.version and self.unknown_at < started_at


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


def _freeze(values: Mapping[str, Any]) -> tuple[dict[str, Any], int, tuple[str, ...]]:
    """The values as the cache keeps them, what they weigh, and the keys kept pickled.

    A value that is not a str, bytes, number or ``None`` (a JSON column's dict or
    list) is kept as its pickle: the request whose read filled the entry keeps
    the objects it was handed, free to change them in place without changing
    what the cache serves, and the byte bound counts the pickle's length, which
    is what it takes (``len(repr())`` of nested containers is a fraction of it).
    Raises what pickling raises for a value that cannot be pickled.
    """
    kept = dict(values)
    size = ENTRY_OVERHEAD + VALUE_OVERHEAD * len(kept)
    pickled = []
    for key, value in kept.items():
        if isinstance(value, str):
            size += sys.getsizeof(value) - _EMPTY_STR
        elif isinstance(value, bytes):
            size += len(value)
        elif not isinstance(value, _IMMUTABLE):
            kept[key] = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
            size += len(kept[key])
            pickled.append(key)
    return kept, size, tuple(pickled)


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
        version_key: str = "version",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_staleness = max_staleness
        #: the attribute key of the model's version column (in every row's values)
        self.version_key = version_key
        #: the clock of ``max_staleness`` (the factory's: tests move it)
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
        #: row key -> what is known of its latest committed changes, the latest
        #: KNOWN_CHANGES of them (see fill)
        self._known: OrderedDict[str, _Known] = OrderedDict()
        #: moment() of the latest loss of knowledge: a flush, a lineage evicted, a row
        #: dropped from _known; a fill whose read began before it is refused
        self._lost_at = -math.inf
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
            if entry is not None and not entry.read_at <= self.clock() <= entry.until:
                # past max_staleness, or the clock went back before the read: read again
                del self._entries[row_id]
                entry = None
        if entry is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        if not entry.pickled:
            return entry.values
        served = dict(entry.values)
        for key in entry.pickled:
            served[key] = pickle.loads(served[key])
        return served

    @staticmethod
    def moment() -> float:
        """Take before reading a row to :meth:`fill` with (``time.monotonic()``)."""
        return time.monotonic()

    def fill(
        self, row_id: str, values: Mapping[str, Any], started_at: float, read_at: float
    ) -> bool:
        """Keep ``values`` of ``row_id``: committed state, read after ``started_at``.

        ``started_at`` is :meth:`moment` before the read began (or before the
        transaction that wrote ``values`` committed): every change of the
        row committed before it is in ``values``, every change committed
        after it is learnt of after it. Refused (``False``) when what was
        learnt says ``values`` may be old: a newer version, the row deleted,
        a change of unknown version learnt after ``started_at``, or knowledge
        lost after it (a flush, a forgotten change). An entry of a newer
        version is kept. ``read_at`` (:attr:`clock`) starts ``max_staleness``.
        """
        version = values[self.version_key]
        try:
            kept, size, pickled = _freeze(values)
        except Exception as exc:  # a value of a type pickle cannot copy: not kept
            log.debug("sessions-cache: row %s… not kept: %s", row_id[:12], exc)
            self.stats.refused += 1
            return False
        until = math.inf if self.max_staleness is None else read_at + self.max_staleness
        with self._lock:
            known = self._known.get(row_id)
            if (
                not self.live()
                or self._lost_at >= started_at
                or size > self.max_bytes
                or (known is not None and not known.allows(version, started_at))
            ):
                self.stats.refused += 1
                return False
            held = self._entries.get(row_id)
            if held is not None and held.version >= version:
                return True  # as new already
            self._entries[row_id] = Entry(kept, until, size, version, pickled, read_at)
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
    def learn(self, changes: Iterable[tuple[str, int | None]]) -> None:
        """Committed changes: ``(row key, version after it)``; :data:`GONE` for a row deleted
        (or given another key), ``None`` for a change of unknown version.

        An entry older than what is learnt is evicted; one of that version (this
        process's own write, told again by its notification) is kept.
        """
        now = self.moment()
        with self._lock:
            for row_id, version in changes:
                self._learn(row_id, version, now)

    def evict(self, row_ids: Iterable[str]) -> None:
        """Forget these rows: a change of unknown version of them committed (or may have)."""
        self.learn((row_id, None) for row_id in row_ids)

    def evict_changes(self, changes: RowChanges) -> None:
        """Learn what a committed :class:`~sessions_kernel.RowChanges` names, and keep the
        rows it carries the values of (this process's own writes: the next read is a hit)."""
        if changes.everything:
            self.flush()
            return
        learnt: list[tuple[str, int | None]] = [(row_id, GONE) for row_id in changes.deleted]
        for old, new in changes.rekeyed:
            learnt += [(old, GONE), (new, None if new not in changes.rows else UNSEEN)]
        for row_id in changes.written:
            values = changes.rows.get(row_id)
            learnt.append((row_id, None if values is None else values[self.version_key]))
        now = self.moment()
        with self._lock:
            for row_id, version in learnt:
                if version is not UNSEEN:
                    self._learn(row_id, version, now)
            for lineage in changes.lineages:
                for row_id in list(self._by_lineage.get(lineage, ())):
                    self._learn(row_id, None, now)
                # a row of the lineage may be mid-fill under a key not seen yet
                self._lost_at = now
        for row_id, values in changes.rows.items():
            self.fill(row_id, values, changes.recorded_at, self.clock())

    def flush(self) -> None:
        """Forget every row (a change not known row by row, or the listener reconnected)."""
        with self._lock:
            self._entries.clear()
            self._by_lineage.clear()
            self._lost_at = self.moment()
            self.stats.flushes += 1

    def _learn(self, row_id: str, version: int | None, now: float) -> None:
        known = self._known.get(row_id)
        if known is None:
            known = self._known[row_id] = _Known()
            while len(self._known) > KNOWN_CHANGES:
                self._known.popitem(last=False)
                self._lost_at = now
        else:
            self._known.move_to_end(row_id)
        known.add(version, now)
        held = self._entries.get(row_id)
        # evicted unless the change is of the version it holds (its own write, told again)
        if held is not None and (version is None or version == GONE or held.version < version):
            del self._entries[row_id]
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
