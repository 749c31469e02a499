"""Limits hold on what is stored, not on what one request wrote; no session becomes unwritable.

The review's attack: parallel writes, each to a key of its own and each under
``max_data_size`` alone, merged into one row far over it (10.8 MB under a
1 MiB limit), after which every write of that session failed. And two
settings edits, each valid, merged into a pair that is not. On every database
and isolation level where a lost write is merged (``merging_engine``).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import ruled_plugin
from sessions_renewal import ConfigRenewalMixin

from sessions_kernel import hookimpl
from sessions_kernel.testing import Race, SessionTestApp, make_model

LIMIT = 8192


def make(engine, *mixins, **settings):
    return ruled_plugin.make_app(engine, *mixins, **settings)


@pytest.fixture
def app(merging_engine):
    app = make(merging_engine, max_data_size=str(LIMIT))
    yield app
    app.model.metadata.drop_all(merging_engine)


def stored_size(app):
    row = app.row()
    return len(row.data or b"") + len(row.flash or b"")


def test_parallel_writes_each_under_the_limit_cannot_store_more_than_it(app):
    app.post_json("/op", {"data": {"start": 1}})
    with Race(app) as race:
        racers = [race.start("/op", json={"data": {f"k{i}": "x" * 3000}}) for i in range(6)]
        for racer in racers:
            racer.finish()
    statuses = [racer.response.status_int for racer in racers]
    # two values fit beside each other (6,000 bytes and the keys), a third does not
    assert statuses == [200, 200, 500, 500, 500, 500]
    for racer in racers[2:]:
        error = racer.response.json["error"]
        assert "merged with a concurrent request's write" in error
        assert f"over session.max_data_size = {LIMIT}" in error
        assert "the concurrent write stands" in error
        assert racer.attempts == 1  # refused, not retried: a retry could not fit either
    assert stored_size(app) <= LIMIT
    assert set(json.loads(app.row().data)) == {"start", "k0", "k1"}
    # the session is still writable: a write that fits is stored
    assert app.post_json("/op", {"data": {"small": 1}}).status_int == 200


def test_a_refused_merge_stores_nothing_of_the_request(app):
    app.post_json("/op", {"data": {"start": 1}, "set": {"c_plain": 1}})
    with Race(app) as race:
        a = race.start("/op", json={"data": {"a": "x" * 5000}, "set": {"c_plain": 2}})
        b = race.start("/op", json={"data": {"b": "y" * 5000}})
        b.finish()
        a.finish()
    assert a.response.status_int == 500
    row = app.row()
    assert json.loads(row.data) == {"start": 1, "b": "y" * 5000}  # B's write stands
    assert row.c_plain == 1  # and nothing of A's


def test_a_burst_of_parallel_writes_stays_under_the_limit(merging_engine):
    """12 threads at once, each writing 90 kB to a key of its own, under a 100 kB limit."""
    app = make(merging_engine, max_data_size="100000")
    try:
        app.post_json("/op", {"data": {"start": 1}})
        cookie = app.cookies["session"]

        def write(i):
            browser = app.new_browser()
            browser.set_cookie("session", cookie)
            body = {"data": {f"k{i}": "x" * 90_000}}
            return browser.post_json("/op", body, expect_errors=True).status_int

        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(write, range(12)))
        assert statuses.count(200) >= 1 and set(statuses) <= {200, 500}, statuses
        assert stored_size(app) <= 100_000
        assert app.post_json("/op", {"data": {"small": 1}}).status_int == 200
    finally:
        app.model.metadata.drop_all(merging_engine)


def test_a_session_stored_over_a_lowered_limit_stays_readable_and_writable(app):
    app.post_json("/op", {"data": {"big": "x" * 7000, "small": 1}})
    lowered = SessionTestApp(
        app.model,
        app.engine,
        plugins=[ruled_plugin],
        configure=ruled_plugin.configure,
        settings={"max_data_size": "4096"},
        clock=app.clock,
    )
    browser = lowered.new_browser()
    browser.set_cookie("session", app.cookies["session"])
    assert browser.get("/read").json["data"]["small"] == 1  # readable
    # a write of a plugin's column, or one that leaves the data alone, is stored
    assert browser.post_json("/op", {"set": {"c_plain": 5}}).status_int == 200
    assert app.row().c_plain == 5
    # a write that leaves it over the limit is refused, and says how to fix it
    response = browser.post_json("/op", {"data": {"small": 2}}, expect_errors=True)
    assert response.status_int == 500
    error = response.json["error"]
    assert "over session.max_data_size = 4096" in error and "delete keys" in error
    assert json.loads(app.row().data)["small"] == 1
    # a write that brings it under is stored
    assert browser.post_json("/op", {"data": {"big": None, "small": 3}}).status_int == 200
    assert json.loads(app.row().data) == {"small": 3}


def test_two_valid_settings_edits_never_merge_into_an_invalid_pair(merging_engine):
    """Each edit passes the cross-setting check alone; merged, the pair would fail it."""
    app = make(merging_engine, ConfigRenewalMixin, renewal_timeout="60", renewal_try_every="5")
    try:
        app.post_json("/op", {"data": {"start": 1}})
        with Race(app) as race:
            a = race.start("/settings", json={"renewal_try_every": 50})  # valid with 60
            b = race.start("/settings", json={"renewal_timeout": 30})  # valid with 5
            b.finish()
            a.finish()
        assert b.response.status_int == 200
        assert a.attempts == 2  # a conflict: run again on the newer row, where it is refused
        assert a.error is not None and "renewal_try_every" in str(a.error)
        row = app.row()
        assert (row.renewal_timeout, row.renewal_try_every) == (30, None)
    finally:
        app.model.metadata.drop_all(merging_engine)


# -- the cookie's own bound --------------------------------------------------------------------


class BulkyMixin:
    """No column: a model that lists it activates ``Bulky``."""


class Bulky:
    """Keeps eight extras of 255 bytes in the cookie when asked: more than a cookie may carry."""

    @hookimpl
    def session_mixins(self):
        return [BulkyMixin]

    @hookimpl
    def session_renew(self, session):
        if "bulky" in session.request.params:
            for i in range(8):
                session.cookie_extras[f"bulky{i}"] = b"x" * 255


def test_a_cookie_the_kernel_would_refuse_to_read_is_never_sent(session_app):
    """The kernel reads no cookie over 2048 characters: it must not write one either."""
    app = session_app(make_model(BulkyMixin), plugins=[Bulky()])
    app.post_json("/set", {"a": 1})
    cookie = app.cookies["session"]
    response = app.post_json("/set?bulky=1", {"a": 2}, expect_errors=True)
    assert response.status_int == 500
    assert "cookie cannot be made" in response.json["error"]
    assert "over the 2048" in response.json["error"]
    assert "Set-Cookie" not in response.headers
    assert json.loads(app.row().data) == {"a": 1}  # nothing stored
    assert app.cookies["session"] == cookie
    assert app.get("/read").json["data"] == {"a": 1}  # the session goes on
