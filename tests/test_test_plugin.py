"""A third-party plugin (tests/plugin_example.py), found through an entry point of a
temporary distribution, adds a column, settings and a validate hook without touching
the kernel."""

from __future__ import annotations

import pytest
from kernel_support import EventLog, factory_of, set_cookies

from sessions_kernel import ConfigurationError, events, session_factory
from sessions_kernel.testing import TEST_SECRET_KEY, SessionTestApp, make_model


def test_plugin_is_discovered_and_activated_by_its_mixin(session_app, example_plugin):
    app = session_app(make_model(example_plugin.ExampleMixin))
    factory = factory_of(app)
    [info] = [i for i in factory.config.active if i.name == "example"]
    assert (info.distribution, info.version) == ("sessions-example-plugin", "1.0")
    assert "example_created_epoch" in factory.config.column_names
    app.post_json("/set", {"a": 1})
    assert app.row().example_created_epoch == 0
    assert ("session_persist", "Session") in example_plugin.CALLS


def test_plugin_setting_is_parsed_and_validated(example_plugin):
    model = make_model(example_plugin.ExampleMixin)
    factory = session_factory(model_class=model, secret_key=TEST_SECRET_KEY, example_epoch="7")
    assert factory.config.values["example_epoch"] == 7
    with pytest.raises(ConfigurationError) as info:
        session_factory(model_class=model, secret_key=TEST_SECRET_KEY, example_epoch="-1")
    assert str(info.value) == (
        "session.example_epoch = '-1': expected a whole number from 0 to 1000, got -1. "
        "(sessions created under an older epoch are rejected; default: 0)"
    )


def test_plugin_cross_setting_check(example_plugin):
    model = make_model(example_plugin.ConfigExampleMixin)
    with pytest.raises(ConfigurationError, match="example_note = 'locked' needs example_epoch"):
        session_factory(model_class=model, secret_key=TEST_SECRET_KEY, example_note="locked")


def test_rejected_session_is_deleted_and_a_fresh_one_starts(session_app, example_plugin):
    app = session_app(make_model(example_plugin.ExampleMixin))
    app.post_json("/set", {"a": 1})
    old = app.row()
    log = EventLog()
    bumped = SessionTestApp(
        app.model,
        app.engine,
        settings={"example_epoch": "1"},
        clock=app.clock,
        configure=log.configure,
    )
    bumped.set_cookie("session", app.cookies["session"])
    with bumped.count() as sql:
        response = bumped.get("/read")
    assert sql.kinds() == ["SELECT", "DELETE"], sql.statements
    assert response.json["new"] is True and response.json["data"] == {}
    assert set_cookies(response)[0].startswith("session=; Max-Age=0")
    assert bumped.rows() == []
    [event] = log.of(events.SessionRejected)
    assert event.session_id == old.id
    assert event.reason == "created under epoch 0, the current epoch is 1"
    # the fresh session is stored under the new epoch (WebTest's jar keeps a cookie
    # added with set_cookie despite the deletion, so empty it as a browser would)
    bumped.reset()
    with bumped.count() as sql:
        bumped.post_json("/set", {"b": 2})
    assert sql.kinds() == ["INSERT"]
    assert bumped.row().example_created_epoch == 1
    assert bumped.get("/read").json["data"] == {"b": 2}


def test_rejected_session_replaced_in_the_same_request(session_app, example_plugin):
    app = session_app(make_model(example_plugin.ExampleMixin))
    app.post_json("/set", {"a": 1})
    old_id = app.row().id
    bumped = SessionTestApp(app.model, app.engine, settings={"example_epoch": "2"})
    bumped.set_cookie("session", app.cookies["session"])
    with bumped.count() as sql:
        response = bumped.post_json("/set", {"b": 2})
    assert sorted(sql.kinds()) == ["DELETE", "INSERT", "SELECT"], sql.statements
    assert response.json["data"] == {"b": 2}
    assert "Max-Age=0" not in set_cookies(response)[0]
    assert bumped.row().id != old_id
