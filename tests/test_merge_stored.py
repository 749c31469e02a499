"""What a merge decides is what is stored: every rule's answer, whichever side it favours.

Request A loads the session, request B of the same session writes and
commits, then A writes and commits: the kernel merges A over B. The stored
row must hold each rule's answer, also when the rule picks B's value (A's
own value must not be written again afterwards, by the kernel or by the
ORM's flush at commit). On every database and isolation level where a lost
write is merged (``merging_engine``).
"""

from __future__ import annotations

import json

import pytest
import ruled_plugin

from sessions_kernel.testing import Race, SessionTestApp, make_model


@pytest.fixture
def app(merging_engine):
    model = make_model(ruled_plugin.RuledMixin)
    model.metadata.drop_all(merging_engine)
    model.metadata.create_all(merging_engine)
    app = SessionTestApp(
        model,
        merging_engine,
        plugins=[ruled_plugin],
        configure=ruled_plugin.configure,
        settings={"lock_contended_for": "0"},
    )
    yield app
    model.metadata.drop_all(merging_engine)


def race_a_over_b(app, a_body, b_body):
    """A loads, B runs to its commit, A commits: returns both racers."""
    with Race(app) as race:
        a = race.start("/op", json=a_body)
        b = race.start("/op", json=b_body)
        b.finish()
        a.finish()
    assert (a.response.status_int, b.response.status_int) == (200, 200), a.response
    return a, b


# rule, A wrote, B wrote, the rule's answer (the table, and both sides of each rule)
CASES = [
    ("c_latest", 100, 200, 200),
    ("c_latest", 200, 100, 200),
    ("c_earliest", 200, 100, 100),
    ("c_earliest", 100, 200, 100),
    ("c_theirs", "mine", "theirs", "theirs"),
]


@pytest.mark.parametrize(("column", "mine", "theirs", "answer"), CASES)
def test_the_stored_column_is_the_rules_answer(app, column, mine, theirs, answer):
    app.post_json("/op", {"data": {"start": 1}, "set": {column: None}})
    a, _ = race_a_over_b(app, {"set": {column: mine}}, {"set": {column: theirs}})
    assert a.attempts == 1  # merged, not run again
    assert getattr(app.row(), column) == answer


def test_add_both_adds_both(app):
    app.post_json("/op", {"set": {"c_add": 0}})
    race_a_over_b(app, {"add": {"c_add": 1}}, {"add": {"c_add": 1}})
    assert app.row().c_add == 2


@pytest.mark.parametrize(
    ("mine", "theirs", "answer"),
    [((5, 50), (3, 30), (5, 50)), ((3, 30), (5, 50), (5, 50)), ((4, 40), (4, 41), (4, 41))],
)
def test_a_group_rule_stores_its_answer_for_every_column(app, mine, theirs, answer):
    app.post_json("/op", {"data": {"start": 1}, "set": {"g_level": 1, "g_at": 1}})
    race_a_over_b(
        app,
        {"set": dict(zip(ruled_plugin.GROUP, mine, strict=True))},
        {"set": dict(zip(ruled_plugin.GROUP, theirs, strict=True))},
    )
    row = app.row()
    assert (row.g_level, row.g_at) == answer


def test_data_keeps_both_requests_keys_whichever_side_the_rules_favour(app):
    app.post_json("/op", {"data": {"start": 1}})
    race_a_over_b(
        app,
        {"data": {"a": 1}, "set": {"c_latest": 1, "c_theirs": "mine"}},
        {"data": {"b": 2}, "set": {"c_latest": 2, "c_theirs": "theirs"}},
    )
    row = app.row()
    assert json.loads(row.data) == {"start": 1, "a": 1, "b": 2}
    assert (row.c_latest, row.c_theirs) == (2, "theirs")


def test_the_session_reads_what_was_stored_after_a_merge(app):
    """The next request of either browser sees the rules' answers and both keys."""
    app.post_json("/op", {"data": {"start": 1}})
    a, b = race_a_over_b(
        app, {"data": {"a": 1}, "set": {"c_latest": 1}}, {"data": {"b": 2}, "set": {"c_latest": 2}}
    )
    for browser in (a.browser, b.browser):
        assert browser.get("/read").json["data"] == {"start": 1, "a": 1, "b": 2}
    assert app.row().c_latest == 2


def test_after_a_merge_the_request_holds_what_was_stored(app):
    """Read after the commit (a response callback), the merged data, not this request's own."""
    app.post_json("/op", {"data": {"start": 1}})
    a, _ = race_a_over_b(app, {"data": {"a": 1}}, {"data": {"b": 2}})
    assert json.loads(a.response.headers["X-Session-Data"]) == {"a": 1, "b": 2, "start": 1}


@pytest.mark.parametrize("hold", ["hold", True])
def test_a_regenerated_id_merges_over_a_concurrent_write(app, hold):
    """The new id's UPDATE must not take the version the concurrent write gave the row."""
    app.post_json("/op", {"data": {"start": 1}})
    a, b = race_a_over_b(app, {"regenerate": hold, "data": {"a": 1}}, {"data": {"b": 2}})
    assert json.loads(app.row().data) == {"start": 1, "a": 1, "b": 2}
    assert a.browser.get("/read").json["data"] == {"start": 1, "a": 1, "b": 2}
    assert b.browser.get("/read").json["new"] is True  # the old id stopped working


@pytest.mark.parametrize("hold", ["hold", True])
def test_what_was_assigned_before_a_regenerate_is_stored(app, hold):
    app.post_json("/op", {"data": {"start": 1}, "set": {"c_plain": 1}})
    browser = app.new_browser()
    browser.set_cookie("session", app.cookies["session"])
    body = {"data": {"a": 1}, "set": {"c_plain": 2, "c_theirs": "x"}, "then_regenerate": hold}
    browser.post_json("/op", body)
    row = app.row()
    assert (json.loads(row.data), row.c_plain, row.c_theirs) == ({"start": 1, "a": 1}, 2, "x")
