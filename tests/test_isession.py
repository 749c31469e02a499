"""request.session honours pyramid.interfaces.ISession, on every database."""

from __future__ import annotations

from typing import Any

import pytest
from kernel_support import set_cookies
from pyramid.interfaces import ISession
from zope.interface.verify import verifyObject

from sessions_kernel import events
from sessions_kernel.testing import make_model


def _views(config: Any) -> None:
    def dict_api(request: Any) -> Any:
        s = request.session
        s["a"] = 1
        s.update({"b": 2}, c=3)
        assert s.setdefault("d", [1]) == [1]
        s.setdefault("d", []).append(2)  # the stored list, not the default
        assert s.pop("c") == 3
        assert s.pop("missing", "x") == "x"
        del s["b"]
        with pytest.raises(KeyError):
            s["missing"]
        with pytest.raises(KeyError):
            del s["missing"]
        return {
            "get": [s.get("a"), s.get("missing"), s.get("missing", 5)],
            "contains": ["a" in s, "b" in s],
            "iter": sorted(s),
            "len": len(s),
            "keys": sorted(s.keys()),
            "values": sorted(map(str, s.values())),
            "items": sorted([k, v] for k, v in s.items()),
        }

    def verify(request: Any) -> Any:
        return {"verified": verifyObject(ISession, request.session)}

    def created(request: Any) -> Any:
        return {"created": request.session.created, "new": request.session.new}

    def changed(request: Any) -> Any:
        request.session.changed()
        return {}

    def invalidate_then_write(request: Any) -> Any:
        request.session.invalidate()
        assert request.session.new and dict(request.session) == {}
        request.session["after"] = True
        return {}

    for name, view in [
        ("dict_api", dict_api),
        ("verify", verify),
        ("created_view", created),
        ("changed", changed),
        ("invalidate_then_write", invalidate_then_write),
    ]:
        config.add_route(name, f"/{name}")
        config.add_view(view, route_name=name, renderer="json")


@pytest.fixture
def app(session_app, log):
    def configure(config: Any) -> None:
        _views(config)
        log.configure(config)

    return session_app(make_model(), configure=configure)


def test_verify_object_against_isession(app):
    assert app.get("/verify").json == {"verified": True}


def test_dict_api(app):
    assert app.get("/dict_api").json == {
        "get": [1, None, 5],
        "contains": [True, False],
        "iter": ["a", "d"],
        "len": 2,
        "keys": ["a", "d"],
        "values": ["1", "[1, 2]"],
        "items": [["a", 1], ["d", [1, 2]]],
    }
    assert app.get("/read").json["data"] == {"a": 1, "d": [1, 2]}


def test_new_and_created(app):
    assert app.get("/created_view").json == {"created": int(app.clock()), "new": True}
    first = int(app.clock())
    app.post_json("/set", {"a": 1})
    app.clock.advance(100)
    assert app.get("/created_view").json == {"created": first, "new": False}


def test_changed_writes_an_unchanged_session(app):
    app.post_json("/set", {"a": 1})
    app.clock.advance(5)
    with app.count() as sql:
        app.get("/changed")
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assert app.row().updated == int(app.clock())


def test_changed_on_a_new_session_stores_it(app):
    response = app.get("/changed")
    assert set_cookies(response)
    assert app.row().data == b"{}"


def test_invalidate_deletes_row_and_cookie(app, log):
    app.post_json("/set", {"a": 1})
    old_cookie = app.cookies["session"]
    row_id = app.row().id
    with app.count() as sql:
        response = app.get("/invalidate")
    assert sql.kinds() == ["SELECT", "DELETE"], sql.statements
    assert app.rows() == []
    [cookie] = set_cookies(response)
    assert cookie.startswith("session=; Max-Age=0; Path=/")
    assert [e.session_id for e in log.of(events.SessionInvalidated)] == [row_id]
    assert response.json["new"] is True
    # the old cookie names nothing any more
    browser = app.new_browser()
    browser.set_cookie("session", old_cookie)
    assert browser.get("/read").json == {
        "data": {},
        "new": True,
        "created": int(app.clock()),
        "flash": {},
    }
    assert [e.session_id for e in log.of(events.SessionNotFound)] == [row_id]


def test_write_after_invalidate_starts_a_new_session(app, log):
    app.post_json("/set", {"a": 1})
    old_cookie = app.cookies["session"]
    old_id = app.row().id
    with app.count() as sql:
        response = app.get("/invalidate_then_write")
    assert sorted(sql.kinds()) == ["DELETE", "INSERT", "SELECT"], sql.statements
    row = app.row()
    assert row.id != old_id
    [cookie] = set_cookies(response)
    assert "Max-Age=0" not in cookie
    assert app.cookies["session"] != old_cookie
    assert app.get("/read").json["data"] == {"after": True}
    assert [e.session_id for e in log.of(events.SessionCreated)] == [old_id, row.id]


def test_invalidate_of_a_new_session_sends_nothing(app):
    with app.count() as sql:
        response = app.get("/invalidate")
    assert sql.count == 0
    assert set_cookies(response) == []


def test_flash_queues_and_duplicates(app):
    app.post_json("/flash", {"msg": "hello"})
    app.post_json("/flash", {"msg": "hello"})
    app.post_json("/flash", {"msg": "hello", "allow_duplicate": False})
    app.post_json("/flash", {"msg": "oops", "queue": "error"})
    app.post_json("/flash", {"msg": "oops", "queue": "error", "allow_duplicate": False})
    state = app.get("/read").json
    assert state["flash"] == {"": ["hello", "hello"], "error": ["oops"]}
    assert state["data"] == {}  # flash messages are not data
    with app.count() as sql:  # peek does not consume
        assert app.get("/read").json["flash"]["error"] == ["oops"]
    assert sql.kinds() == ["SELECT"]
    with app.count() as sql:
        assert app.get("/pop_flash?queue=error").json == {"messages": ["oops"]}
    assert sql.kinds() == ["SELECT", "UPDATE"]
    assert app.get("/pop_flash?queue=error").json == {"messages": []}
    assert app.get("/pop_flash").json == {"messages": ["hello", "hello"]}
    assert app.row().flash is None  # no queue left: the column is emptied


def test_clear_leaves_flash_messages(app):
    app.post_json("/set", {"a": 1, "b": 2})
    app.post_json("/flash", {"msg": "kept"})
    with app.count() as sql:
        response = app.get("/clear")
    assert sql.kinds() == ["SELECT", "UPDATE"]
    assert response.json["data"] == {}
    assert app.get("/read").json["flash"] == {"": ["kept"]}


def test_flash_alone_creates_a_session(app):
    with app.count() as sql:
        response = app.post_json("/flash", {"msg": "hi"})
    assert sql.kinds() == ["INSERT"]
    assert set_cookies(response)
    assert app.row().data == b"{}"
