"""Every security-relevant event reaches subscribers added with config.add_subscriber."""

from __future__ import annotations

from typing import Any

from kernel_support import EventLog

from sessions_kernel import events
from sessions_kernel.testing import SessionTestApp, make_model


def test_events_in_a_real_application(session_app, example_plugin):
    log = EventLog()
    app = session_app(make_model(example_plugin.ExampleMixin), configure=log.configure)

    def names() -> list[str]:
        out = [type(e).__name__ for e in log]
        log.clear()
        return out

    app.get("/read")
    assert names() == []  # an empty new session is not created
    app.post_json("/set", {"a": 1})
    [created] = log.of(events.SessionCreated)
    assert names() == ["SessionCreated"]
    assert created.session_id == app.row().id and created.request is not None

    app.get("/regenerate")
    [regenerated] = log.of(events.SessionRegenerated)
    assert names() == ["SessionRegenerated"]
    assert (regenerated.old_session_id, regenerated.session_id) == (
        created.session_id,
        app.row().id,
    )

    current = app.row().id
    app.get("/invalidate")
    [invalidated] = log.of(events.SessionInvalidated)
    assert names() == ["SessionInvalidated"] and invalidated.session_id == current

    app.set_cookie("session", "forged")
    app.get("/read")
    [rejected_cookie] = log.of(events.CookieRejected)
    assert names() == ["CookieRejected"] and rejected_cookie.reason == "cookie too short"
    app.reset()  # WebTest's jar keeps a cookie added with set_cookie despite the deletion

    app.post_json("/set", {"a": 1})
    cookie, sid = app.cookies["session"], app.row().id
    names()
    other = app.new_browser()
    other.set_cookie("session", cookie)
    app.get("/invalidate")
    other.get("/read")
    [not_found] = log.of(events.SessionNotFound)
    assert names() == ["SessionInvalidated", "SessionNotFound"] and not_found.session_id == sid

    app.post_json("/set", {"a": 1})
    sid = app.row().id
    names()
    bumped = SessionTestApp(
        app.model,
        app.engine,
        settings={"example_epoch": "1"},
        clock=app.clock,
        configure=log.configure,
    )
    bumped.set_cookie("session", app.cookies["session"])
    bumped.get("/read")
    [rejected] = log.of(events.SessionRejected)
    assert names() == ["SessionRejected"]
    assert (rejected.session_id, rejected.reason) == (
        sid,
        "created under epoch 0, the current epoch is 1",
    )


def test_events_are_frozen_and_carry_the_request(session_app):
    seen: list[Any] = []
    app = session_app(
        make_model(),
        configure=lambda config: config.add_subscriber(seen.append, events.SessionCreated),
    )
    app.post_json("/set", {"a": 1})
    [event] = seen
    assert event.request.path == "/set"
    assert isinstance(event, events.SessionEvent)
