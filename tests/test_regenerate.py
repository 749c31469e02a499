"""regenerate_id(): new id and cookie, same data, the old id stops working."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from kernel_support import set_cookies

from sessions_kernel import events
from sessions_kernel.testing import make_model


def _views(config: Any) -> None:
    def login(request: Any) -> Any:
        request.session["user"] = "alice"
        request.session.regenerate_id()
        return {"session_id": request.session.session_id}

    def regenerate_then_invalidate(request: Any) -> Any:
        request.session.regenerate_id()
        request.session.invalidate()
        return {}

    def regenerate_and_query(request: Any) -> Any:
        request.session.regenerate_id()
        model = request.session.model
        # an ORM query autoflushes the row's new id before the kernel's persist stage
        ids = request.dbsession.scalars(sa.select(model.id)).all()
        return {"session_id": request.session.session_id, "ids": ids}

    for name, view in [
        ("login", login),
        ("regen_inval", regenerate_then_invalidate),
        ("regenerate_and_query", regenerate_and_query),
    ]:
        config.add_route(name, f"/{name}")
        config.add_view(view, route_name=name, renderer="json")


@pytest.fixture
def app(session_app, log):
    def configure(config: Any) -> None:
        _views(config)
        log.configure(config)

    return session_app(make_model(), configure=configure)


def test_regenerate_keeps_data_under_a_new_id(app, log):
    app.post_json("/set", {"a": 1})
    app.post_json("/flash", {"msg": "hi"})
    old_cookie = app.cookies["session"]
    old = app.row()
    app.clock.advance(7)
    with app.count() as sql:
        response = app.get("/regenerate")
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assert len(set_cookies(response)) == 1
    assert app.cookies["session"] != old_cookie
    new = app.row()  # one row: renamed, not copied
    assert new.id != old.id
    assert (new.data, new.flash, new.created) == (old.data, old.flash, old.created)
    assert new.updated == int(app.clock())
    [event] = log.of(events.SessionRegenerated)
    assert (event.old_session_id, event.session_id) == (old.id, new.id)
    assert app.get("/read").json["data"] == {"a": 1}
    assert app.get("/pop_flash").json == {"messages": ["hi"]}


def test_old_cookie_gives_a_fresh_session(app, log):
    app.post_json("/set", {"a": 1})
    old_cookie = app.cookies["session"]
    old_id = app.row().id
    app.get("/regenerate")
    thief = app.new_browser()
    thief.set_cookie("session", old_cookie)
    with app.count() as sql:
        response = thief.get("/read")
    # by its id, then by its lineage: a login's old id, whose session lives on
    assert sql.kinds() == ["SELECT", "SELECT"]
    assert response.json["new"] is True and response.json["data"] == {}
    # not deleted: the owner's own request sent before the login carries it too, and its
    # response must not replace (or delete) the cookie the browser holds by now
    assert set_cookies(response) == []
    assert [e.session_id for e in log.of(events.SessionNotFound)] == [old_id]
    assert app.get("/read").json["data"] == {"a": 1}  # the owner still has it


def test_regenerate_on_a_brand_new_session(app, log):
    with app.count() as sql:
        response = app.get("/login")
    assert sql.kinds() == ["INSERT"]
    assert len(set_cookies(response)) == 1
    row = app.row()
    assert row.id == response.json["session_id"]
    assert app.get("/read").json["data"] == {"user": "alice"}
    # no stored session was renamed, so no SessionRegenerated; the session is created
    assert log.of(events.SessionRegenerated) == []
    assert [e.session_id for e in log.of(events.SessionCreated)] == [row.id]


def test_regenerate_of_a_new_empty_session_stores_nothing(app):
    with app.count() as sql:
        response = app.get("/regenerate")
    assert sql.count == 0
    assert set_cookies(response) == []


def test_regenerate_then_invalidate_leaves_no_row(app):
    app.post_json("/set", {"a": 1})
    response = app.get("/regen_inval")
    assert app.rows() == []
    assert set_cookies(response)[0].startswith("session=; Max-Age=0")


def test_regenerate_id_sends_the_cookie_even_when_the_row_was_flushed_early(app):
    app.post_json("/set", {"a": 1})
    old_cookie = app.cookies["session"]
    old_id = app.row().id
    response = app.get("/regenerate_and_query")
    assert "Set-Cookie" in response.headers
    new_id = response.json["session_id"]
    assert new_id != old_id and response.json["ids"] == [new_id]
    assert app.row().id == new_id
    assert app.get("/read").json["data"] == {"a": 1}
    stale = app.new_browser()
    stale.set_cookie("session", old_cookie)
    assert stale.get("/read").json["new"] is True


def test_a_request_sent_before_a_login_leaves_the_new_cookie_alone(app):
    """A request of the browser's own, sent with the cookie of before the login and
    processed after it: its response must neither delete nor replace the new cookie."""
    app.post_json("/set", {"a": 1})
    stale = app.new_browser()
    stale.set_cookie("session", app.cookies["session"])
    app.get("/regenerate")
    response = stale.post_json("/set", {"draft": "autosave"})  # a write, after the login
    assert set_cookies(response) == []
    assert app.get("/read").json["data"] == {"a": 1}  # the browser's new cookie works
