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


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=merge_model.scenarios())
def test_the_stored_row_is_what_the_rules_decide(app, scenario):
    initial, request_ops, order = scenario
    note(f"order: {order}")
    with app.engine.begin() as connection:  # each example starts from an empty table
        connection.execute(app.model.__table__.delete())
    browser = app.new_browser()
    seed = {"data": initial["data"], "set": {n: initial[n] for n in ruled_plugin.COLUMNS}}
    browser.post_json("/op", seed)
    with Race(app, browser, share_cookies=True) as race:  # one browser's page loads
        racers = {}
        for event, i in order:
            if event == "load":
                racers[i] = race.start("/op", json=request_ops[i], name=f"R{i}")
            else:
                racers[i].finish()
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
