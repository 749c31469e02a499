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
    app = ruled_plugin.make_app(merging_engine)
    yield app
    app.model.metadata.drop_all(merging_engine)


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


@pytest.mark.parametrize(("a_body", "b_body"), [("add", "reset"), ("reset", "add")])
def test_add_both_merges_an_increment_with_a_reset(app, a_body, b_body):
    bodies = {"add": {"add": {"c_add": 1}}, "reset": {"set": {"c_add": None}}}
    app.post_json("/op", {"data": {"start": 1}, "set": {"c_add": 3}})
    race_a_over_b(app, bodies[a_body], bodies[b_body])
    assert app.row().c_add == 1  # the reset, then the increment


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


@pytest.mark.parametrize("login", [True, "hold"])
@pytest.mark.parametrize("mine", ["write", "regenerate and write"])
def test_a_write_racing_a_login_merges_onto_the_new_id(app, login, mine):
    """B logs in (a new id) while A, loaded with the old id, writes: A's write is merged
    onto the session under its new id, and A's response leaves the browser B's cookie."""
    app.post_json("/op", {"data": {"start": 1}})
    a_body = {"data": {"a": 1}, **({"regenerate": True} if mine != "write" else {})}
    a, b = race_a_over_b(app, a_body, {"regenerate": login, "data": {"b": 2}})
    row = app.row()
    assert json.loads(row.data) == {"start": 1, "a": 1, "b": 2}
    assert "Set-Cookie" not in a.response.headers  # neither deleted nor replaced
    assert b.browser.get("/read").json["data"] == {"start": 1, "a": 1, "b": 2}
    assert a.browser.get("/read").json["new"] is True  # the old id stopped working


def test_a_group_rule_that_returns_part_of_its_group_is_a_clear_error(merging_engine):
    import types

    from sessions_kernel import hookimpl

    plugin = types.ModuleType("partial_rule")
    plugin.session_mixins = hookimpl(lambda: [ruled_plugin.RuledMixin])
    plugin.session_merge_rules = hookimpl(
        lambda: {ruled_plugin.GROUP: lambda base, mine, theirs: {"g_level": 1}}
    )
    model = make_model(ruled_plugin.RuledMixin)
    model.metadata.create_all(merging_engine)
    try:
        app = SessionTestApp(
            model, merging_engine, plugins=[plugin], configure=ruled_plugin.configure
        )
        app.post_json("/op", {"data": {"start": 1}})
        with Race(app) as race:
            a = race.start("/op", json={"set": {"g_level": 5}})
            b = race.start("/op", json={"set": {"g_at": 3}})
            b.finish()
            a.finish()
        message = str(a.error)
        assert "returned {'g_level': 1}" in message and "every column of the group" in message
        assert app.row().g_at == 3  # B's write stands, nothing of A's
    finally:
        model.metadata.drop_all(merging_engine)


def test_a_change_after_the_row_was_written_is_refused_not_lost(merging_engine):
    """A SessionMerged subscriber, or a response callback, that changes the session: the
    change would be written past the rules by the ORM's flush (a column) or lost (the data).
    It fails the request instead."""
    from sessions_kernel import SessionError
    from sessions_kernel.events import SessionMerged

    def configure(config):
        ruled_plugin.configure(config)

        def reassign(event):
            event.request.session.set_column("c_latest", 1)

        config.add_subscriber(reassign, SessionMerged)

        def late(request, response):
            request.session["late"] = 1

        def view(request):
            request.session["x"] = 1
            request.add_response_callback(late)
            return {}

        config.add_route("late", "/late")
        config.add_view(view, route_name="late", renderer="json")

    app = ruled_plugin.make_app(merging_engine, configure=configure)
    model = app.model
    try:
        app.post_json("/op", {"data": {"start": 1}})
        with Race(app) as race:
            a = race.start("/op", json={"set": {"c_latest": 5}, "data": {"a": 1}})
            b = race.start("/op", json={"set": {"c_latest": 9}})
            b.finish()
            a.finish()
        assert a.response.status_int == 500  # the test app's view of a RuntimeError
        assert "already written for this request" in a.response.json["error"]
        row = app.row()
        assert (row.c_latest, json.loads(row.data)) == (9, {"start": 1})  # B's write stands
        with pytest.raises(SessionError, match="already written for this request"):
            app.new_browser().get("/late")
    finally:
        model.metadata.drop_all(merging_engine)


def test_a_conflict_with_a_login_is_refused_not_run_again_into_a_new_session(app):
    """Run again, A would present the old id, find no session, and start a new one whose
    cookie replaces the one the login sent: A is refused instead, and stores nothing."""
    app.post_json("/op", {"data": {"k": 0}})
    with Race(app, share_cookies=True) as race:  # one browser's two requests
        a = race.start("/op", json={"data": {"k": 1}})
        b = race.start("/op", json={"regenerate": True, "data": {"k": 2}})
        b.finish()
        a.finish()
    assert a.response.status_int == 500 and a.attempts == 1
    assert "gave it a new id" in a.response.json["error"]
    assert "Set-Cookie" not in a.response.headers
    (row,) = app.rows()  # no second session
    assert json.loads(row.data) == {"k": 2}
    assert race.browser.get("/read").json["data"] == {"k": 2}  # the login's cookie stands


def test_bookkeeping_that_conflicts_with_a_login_gives_way(app):
    """A read whose only write is a plugin's column (a CSRF token sealed again after a key
    rotation, say) conflicts with a login that wrote it too: the read succeeds, its write
    gives way, and its response leaves the login's cookie alone."""
    app.post_json("/op", {"data": {"k": 0}, "set": {"c_plain": 1}})
    with Race(app, share_cookies=True) as race:
        a = race.start("/op", json={"set": {"c_plain": 2}})
        b = race.start("/op", json={"regenerate": True, "set": {"c_plain": 3}})
        b.finish()
        a.finish()
    assert a.response.status_int == 200 and a.attempts == 1
    assert "Set-Cookie" not in a.response.headers
    (row,) = app.rows()
    assert row.c_plain == 3
    assert race.browser.get("/read").json["data"] == {"k": 0}
