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
from sessions_cache.store import (
    ENTRY_OVERHEAD,
    GONE,
    KNOWN_CHANGES,
    VALUE_OVERHEAD,
    RowCache,
)

from sessions_kernel import RowChanges


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**kwargs):
    options = {"max_entries": 100, "max_bytes": 1_000_000, "max_staleness": 60.0}
    options["version_key"] = "v"
    options.update(kwargs)
    return RowCache(clock=FakeClock(), **options)


def key(lineage: int, n: int = 0) -> str:
    return f"{lineage:024x}{n:040x}"


def test_the_entry_bound_holds():
    cache = make(max_entries=10)
    for n in range(25):
        assert cache.fill(key(n), {"id": key(n), "data": b"x", "v": 1}, cache.moment(), 1000.0)
    assert len(cache) == 10
    # the least recently used went first
    assert cache.get(key(0)) is None and cache.get(key(24)) is not None


def test_the_byte_bound_holds():
    cache = make(max_entries=1000, max_bytes=100_000)
    for n in range(50):
        cache.fill(key(n), {"id": key(n), "data": b"x" * 10_000, "v": 1}, cache.moment(), 1000.0)
    assert cache.bytes <= 100_000
    assert len(cache) == 100_000 // (10_000 + 64 + ENTRY_OVERHEAD + 3 * VALUE_OVERHEAD)
    # a row larger than the whole cache is not kept
    assert not cache.fill(key(99), {"data": b"x" * 200_000, "v": 1}, cache.moment(), 1000.0)


def test_a_fill_racing_a_change_of_its_row_is_refused():
    cache = make()
    since = cache.moment()
    cache.evict([key(1)])  # a change of unknown version while the fill's read ran
    assert not cache.fill(key(1), {"v": 1}, since, 1000.0)
    assert cache.stats.refused == 1
    assert cache.fill(key(1), {"v": 1}, cache.moment(), 1000.0)  # read after it: fine
    # another row's change does not concern it
    since = cache.moment()
    cache.evict([key(2)])
    assert cache.fill(key(3), {"v": 2}, since, 1000.0)


def test_a_known_newer_version_or_a_deletion_refuses_older_values_whenever_read():
    cache = make()
    cache.learn([(key(1), 5), (key(2), GONE)])
    assert not cache.fill(key(1), {"v": 4}, cache.moment(), 1000.0)
    assert cache.fill(key(1), {"v": 5}, cache.moment(), 1000.0)
    assert not cache.fill(key(2), {"v": 9}, cache.moment(), 1000.0)  # keys are never reused
    # an older fill does not replace a newer entry
    assert cache.fill(key(1), {"v": 3}, -1.0, 1000.0) is False
    assert cache.get(key(1)) == {"v": 5}


def test_a_change_of_the_version_held_keeps_the_entry():
    """This process's own write, kept when it committed, told again by its notification."""
    cache = make()
    cache.fill(key(1), {"v": 2}, cache.moment(), 1000.0)
    cache.learn([(key(1), 2)])
    assert cache.get(key(1)) == {"v": 2}
    cache.learn([(key(1), 3)])
    assert cache.get(key(1)) is None
    assert cache.stats.evictions == 1


def test_a_committed_write_is_kept_unless_a_newer_change_is_known():
    cache = make()
    written = RowChanges(
        written=frozenset({key(1)}), rows={key(1): {"v": 2}}, recorded_at=cache.moment()
    )
    cache.fill(key(1), {"v": 1}, cache.moment(), 1000.0)
    cache.evict_changes(written)
    assert cache.get(key(1)) == {"v": 2}
    # told late (another thread's announcement), after a newer change was learnt
    cache.learn([(key(1), 3)])
    cache.evict_changes(written)
    assert cache.get(key(1)) is None


def test_a_flush_and_forgotten_changes_refuse_every_older_fill():
    cache = make()
    since = cache.moment()
    cache.flush()
    assert not cache.fill(key(1), {"v": 1}, since, 1000.0)
    since = cache.moment()
    cache.evict(key(9, n) for n in range(KNOWN_CHANGES + 1))  # one is forgotten
    assert not cache.fill(key(1), {"v": 1}, since, 1000.0)
    assert cache.fill(key(1), {"v": 1}, cache.moment(), 1000.0)


def test_changes_evict_rows_by_key_by_rekey_and_by_lineage():
    cache = make()
    for lineage, n in [(1, 0), (1, 1), (2, 0), (3, 0), (4, 0)]:
        cache.fill(key(lineage, n), {"v": 1}, cache.moment(), 1000.0)
    cache.evict_changes(RowChanges(lineages=frozenset({key(1)[:24]}), rekeyed=((key(2), key(5)),)))
    assert [cache.get(key(lineage, n)) for lineage, n in [(1, 0), (1, 1), (2, 0)]] == [None] * 3
    assert cache.get(key(3)) is not None
    cache.evict_changes(RowChanges(everything=True))
    assert len(cache) == 0


def test_the_lineage_index_follows_evictions_for_room():
    cache = make(max_entries=2)
    for n in range(3):
        cache.fill(key(n), {"v": 1}, cache.moment(), 1000.0)
    assert set(cache._by_lineage) == {key(1)[:24], key(2)[:24]}


def test_mutable_values_are_served_as_copies():
    cache = make()
    cache.fill(key(1), {"json": {"a": [1]}, "v": 1}, cache.moment(), 1000.0)
    served = cache.get(key(1))
    served["json"]["a"].append(2)
    assert cache.get(key(1)) == {"json": {"a": [1]}, "v": 1}


def test_max_staleness_ends_an_entry():
    cache = make(max_staleness=5.0)
    clock = cache.clock
    cache.fill(key(1), {"v": 1}, cache.moment(), clock())
    clock.now += 5
    assert cache.get(key(1)) == {"v": 1}
    clock.now += 0.5
    assert cache.get(key(1)) is None
    assert len(cache) == 0


def test_nothing_is_served_while_it_is_not_live():
    cache = make()
    cache.fill(key(1), {"v": 1}, cache.moment(), 1000.0)
    cache.live = lambda: False
    assert cache.get(key(1)) is None
    assert cache.stats.bypassed == 1
    assert not cache.fill(key(2), {"v": 1}, cache.moment(), 1000.0)


@pytest.mark.parametrize("staleness", [None, 60.0])
def test_without_staleness_it_serves_only_with_a_live_source(staleness):
    cache = make(max_staleness=staleness)
    assert cache.live() is (staleness is not None)


class FillRaces(RuleBasedStateMachine):
    """One row, written again and again by this process (its committed values kept) and by
    others; reads fill from whatever version they saw; notifications arrive late, in
    commit order, also for this process's own writes."""

    def __init__(self) -> None:
        super().__init__()
        self.cache = make(max_staleness=None)
        self.cache.live = lambda: True  # a listener that is up
        self.version = 1  # the committed version (0: deleted)
        self.undelivered: list[int] = []  # notifications not arrived yet, in commit order
        self.delivered = 0  # every change up to this version has been learnt
        self.gone = False
        self.reads: list[tuple[float, int]] = []  # (started_at, version read)
        self.announcing: list[RowChanges] = []  # own commits not announced yet

    @precondition(lambda self: not self.gone)
    @rule(own=st.booleans())
    def commit(self, own):
        recorded_at = self.cache.moment()
        self.version += 1
        self.undelivered.append(self.version)
        if own:
            self.announcing.append(
                RowChanges(
                    written=frozenset({key(1)}),
                    rows={key(1): {"id": key(1), "v": self.version}},
                    recorded_at=recorded_at,
                )
            )

    @precondition(lambda self: not self.gone)
    @rule()
    def delete(self):
        self.gone = True
        self.undelivered.append(GONE)

    @precondition(lambda self: self.announcing)
    @rule(index=st.integers(0, 10))
    def announce(self, index):
        changes = self.announcing.pop(index % len(self.announcing))
        self.cache.evict_changes(changes)

    @precondition(lambda self: self.undelivered)
    @rule()
    def deliver(self):
        version = self.undelivered.pop(0)
        self.cache.learn([(key(1), version)])
        self.delivered = version

    @precondition(lambda self: not self.gone)
    @rule()
    def begin_read(self):
        self.reads.append((self.cache.moment(), self.version))

    @precondition(lambda self: self.reads)
    @rule(index=st.integers(0, 10))
    def finish_read(self, index):
        started_at, version = self.reads.pop(index % len(self.reads))
        self.cache.fill(key(1), {"id": key(1), "v": version}, started_at, 1000.0)

    @rule()
    def look(self):
        self.cache.get(key(1))

    @invariant()
    def never_older_than_a_delivered_change(self):
        served = self.cache.get(key(1))
        if served is None:
            return
        assert self.delivered != GONE, "a deleted row served after its deletion arrived"
        assert served["v"] >= self.delivered


FillRaces.TestCase.settings = settings(max_examples=400, stateful_step_count=40, deadline=None)
test_fills_never_outlive_a_delivered_change = FillRaces.TestCase
