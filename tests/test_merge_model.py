"""A model-based test of merging: generated requests in generated orders, against a model.

Two or three requests of one session load it and commit in an order
hypothesis chooses (every interleaving of their loads and commits), each
setting random data keys and random columns under random rules
(``ruled_plugin``: every stock rule, a group rule, a refusing rule, no
rule). The stored row must be what :func:`merge_model.run` computes from the
rules, and every request must succeed (a conflict runs again, once) or, where
the model says so, be refused. On every database and isolation level where a
lost write is merged.
"""

from __future__ import annotations

import json
import threading

import merge_model
import pytest
import ruled_plugin
from hypothesis import HealthCheck, given, note, settings

from sessions_kernel.testing import Race


@pytest.fixture
def app(merging_engine):
    app = ruled_plugin.make_app(merging_engine)
    yield app
    app.model.metadata.drop_all(merging_engine)


@pytest.fixture
def cached_app(merging_engine):
    """The same application with sessions-cache on: the requests load the row from the
    cache (its listener live on PostgreSQL), and their writes go from the cached copy."""
    sessions_cache = pytest.importorskip("sessions_cache")
    app = ruled_plugin.make_app(
        merging_engine, sessions_cache.CacheMixin, cache_max_staleness="300"
    )
    app.cache = sessions_cache.cache_of(app.factory)
    yield app
    sessions_cache.stop(app.factory)
    app.model.metadata.drop_all(merging_engine)


EXAMPLES = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@EXAMPLES
@given(scenario=merge_model.scenarios())
def test_the_stored_row_is_what_the_rules_decide(app, scenario):
    run_scenario(app, scenario)


@EXAMPLES
@given(scenario=merge_model.scenarios())
def test_the_stored_row_is_what_the_rules_decide_with_the_cache(cached_app, scenario):
    """Each request's load is served from the cache (a hit counted), so every write is
    made from a cached copy: the rules decide all the same."""
    run_scenario(cached_app, scenario, cache=cached_app.cache)


def run_scenario(app, scenario, cache=None):
    initial, request_ops, order = scenario
    note(f"order: {order}")
    with app.engine.begin() as connection:  # each example starts from an empty table
        connection.execute(app.model.__table__.delete())
    browser = app.new_browser()
    seed = {"data": initial["data"], "set": {n: initial[n] for n in ruled_plugin.COLUMNS}}
    browser.post_json("/op", seed)
    if cache is not None:
        wait_until_served(app, browser, cache)
        hits = cache.stats.hits
    with Race(app, browser, share_cookies=True) as race:  # one browser's page loads
        racers = {}
        for event, i in order:
            if event == "load":
                racers[i] = race.start("/op", json=request_ops[i], name=f"R{i}")
            else:
                racers[i].finish()
    if cache is not None:  # the first load at least came from the cache
        assert cache.stats.hits > hits
    expected, succeeded = merge_model.run(initial, request_ops, order)
    for i, racer in racers.items():
        assert racer.response is not None, racer.error
        if succeeded[i]:
            assert racer.response.status_int == 200, racer.response.json
            assert racer.attempts <= 2  # a conflict runs again once, alone
        else:  # no merge was right onto a new id another request gave the session
            assert racer.response.status_int == 500
            assert "gave it a new id" in racer.response.json["error"]
    row = app.row()
    stored = {"data": json.loads(row.data), **{n: getattr(row, n) for n in ruled_plugin.COLUMNS}}
    assert stored == expected


def wait_until_served(app, browser, cache, attempts=400):
    """Read until a read is served from the cache (the listener is live on PostgreSQL;
    its first connection empties the cache): an event, polled, not a duration."""
    pause = threading.Event()
    for _ in range(attempts):
        hits = cache.stats.hits
        browser.get("/read")
        if cache.stats.hits > hits:
            return
        pause.wait(0.025)
    raise AssertionError("the cache never served the session")
