"""RowCache alone: its bounds, its lineage index, and the rule that keeps a fill from going stale.

The property test interleaves, as hypothesis chooses, reads that fill the
cache, commits of the row and the delivery of each commit's eviction (a
notification may arrive before or after a read that began earlier): once
a commit's eviction was delivered, no get ever returns a version older than
that commit's.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sessions_cache.store import ENTRY_OVERHEAD, RECENT_EVICTIONS, VALUE_OVERHEAD, RowCache

from sessions_kernel import RowChanges


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**kwargs):
    options = {"max_entries": 100, "max_bytes": 1_000_000, "max_staleness": 60.0}
    options.update(kwargs)
    return RowCache(clock=FakeClock(), **options)


def key(lineage: int, n: int = 0) -> str:
    return f"{lineage:024x}{n:040x}"


def test_the_entry_bound_holds():
    cache = make(max_entries=10)
    for n in range(25):
        assert cache.fill(key(n), {"id": key(n), "data": b"x"}, cache.generation(), 1000.0)
    assert len(cache) == 10
    # the least recently used went first
    assert cache.get(key(0)) is None and cache.get(key(24)) is not None


def test_the_byte_bound_holds():
    cache = make(max_entries=1000, max_bytes=100_000)
    for n in range(50):
        cache.fill(key(n), {"id": key(n), "data": b"x" * 10_000}, cache.generation(), 1000.0)
    assert cache.bytes <= 100_000
    assert len(cache) == 100_000 // (10_000 + 64 + ENTRY_OVERHEAD + 2 * VALUE_OVERHEAD)
    # a row larger than the whole cache is not kept
    assert not cache.fill(key(99), {"data": b"x" * 200_000}, cache.generation(), 1000.0)


def test_a_fill_racing_an_eviction_of_its_row_is_refused():
    cache = make()
    since = cache.generation()
    cache.evict([key(1)])  # the row changed while the fill's read ran
    assert not cache.fill(key(1), {"v": 1}, since, 1000.0)
    assert cache.stats.refused == 1
    # another row's eviction does not concern it
    since = cache.generation()
    cache.evict([key(2)])
    assert cache.fill(key(1), {"v": 2}, since, 1000.0)


def test_a_flush_and_forgotten_evictions_refuse_every_older_fill():
    cache = make()
    since = cache.generation()
    cache.flush()
    assert not cache.fill(key(1), {"v": 1}, since, 1000.0)
    since = cache.generation()
    cache.evict(key(9, n) for n in range(RECENT_EVICTIONS + 1))  # one is forgotten
    assert not cache.fill(key(1), {"v": 1}, since, 1000.0)
    assert cache.fill(key(1), {"v": 1}, cache.generation(), 1000.0)


def test_changes_evict_rows_by_key_by_rekey_and_by_lineage():
    cache = make()
    for lineage, n in [(1, 0), (1, 1), (2, 0), (3, 0), (4, 0)]:
        cache.fill(key(lineage, n), {"v": 1}, cache.generation(), 1000.0)
    cache.evict_changes(RowChanges(lineages=frozenset({key(1)[:24]}), rekeyed=((key(2), key(5)),)))
    assert [cache.get(key(lineage, n)) for lineage, n in [(1, 0), (1, 1), (2, 0)]] == [None] * 3
    assert cache.get(key(3)) is not None
    cache.evict_changes(RowChanges(everything=True))
    assert len(cache) == 0


def test_the_lineage_index_follows_evictions_for_room():
    cache = make(max_entries=2)
    for n in range(3):
        cache.fill(key(n), {"v": 1}, cache.generation(), 1000.0)
    assert set(cache._by_lineage) == {key(1)[:24], key(2)[:24]}


def test_mutable_values_are_served_as_copies():
    cache = make()
    cache.fill(key(1), {"json": {"a": [1]}}, cache.generation(), 1000.0)
    served = cache.get(key(1))
    served["json"]["a"].append(2)
    assert cache.get(key(1)) == {"json": {"a": [1]}}


def test_max_staleness_ends_an_entry():
    cache = make(max_staleness=5.0)
    clock = cache.clock
    cache.fill(key(1), {"v": 1}, cache.generation(), clock())
    clock.now += 5
    assert cache.get(key(1)) == {"v": 1}
    clock.now += 0.5
    assert cache.get(key(1)) is None
    assert len(cache) == 0


def test_nothing_is_served_while_it_is_not_live():
    cache = make()
    cache.fill(key(1), {"v": 1}, cache.generation(), 1000.0)
    cache.live = lambda: False
    assert cache.get(key(1)) is None
    assert cache.stats.bypassed == 1
    assert not cache.fill(key(2), {"v": 1}, cache.generation(), 1000.0)


@pytest.mark.parametrize("staleness", [None, 60.0])
def test_without_staleness_it_serves_only_with_a_live_source(staleness):
    cache = make(max_staleness=staleness)
    assert cache.live() is (staleness is not None)


class FillRaces(RuleBasedStateMachine):
    """One row, committed again and again; reads fill from whatever version they saw."""

    def __init__(self) -> None:
        super().__init__()
        self.cache = make(max_staleness=None)
        self.cache.live = lambda: True  # a listener that is up
        self.version = 0  # the committed version
        self.undelivered: list[int] = []  # commits whose eviction has not arrived yet
        self.delivered = 0  # every commit up to this version has been evicted
        self.reads: list[tuple[int, int]] = []  # (since, version read)

    @rule()
    def commit(self):
        self.version += 1
        self.undelivered.append(self.version)

    @precondition(lambda self: self.undelivered)
    @rule()
    def deliver(self):
        version = self.undelivered.pop(0)
        self.cache.evict([key(1)])
        self.delivered = version

    @rule()
    def begin_read(self):
        self.reads.append((self.cache.generation(), self.version))

    @precondition(lambda self: self.reads)
    @rule(index=st.integers(0, 10))
    def finish_read(self, index):
        since, version = self.reads.pop(index % len(self.reads))
        self.cache.fill(key(1), {"id": key(1), "version": version}, since, 1000.0)

    @invariant()
    def never_older_than_a_delivered_commit(self):
        served = self.cache.get(key(1))
        if served is not None:
            assert served["version"] >= self.delivered


FillRaces.TestCase.settings = settings(max_examples=300, stateful_step_count=30, deadline=None)
test_fills_never_outlive_a_delivered_commit = FillRaces.TestCase
