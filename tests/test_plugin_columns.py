"""``session.get_column`` / ``set_column``: a plugin's own column, also before the row exists."""

from __future__ import annotations

import pytest
from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from sessions_kernel import SessionError
from sessions_kernel.testing import make_model


class NoteMixin:
    note: Mapped[str | None] = mapped_column(String(40), nullable=True)


def add_note_views(config):
    def get(request):
        return {"note": request.session.get_column("note"), "dirty": request.session.dirty}

    def put(request):
        request.session.set_column("note", request.json_body["note"])
        return get(request)

    def put_then_invalidate(request):
        request.session.set_column("note", "dropped")
        request.session.invalidate()
        return get(request)

    def put_then_regenerate(request):
        request.session.set_column("note", "kept")
        request.session.regenerate_id()
        return get(request)

    def put_name(request):
        name = request.json_body["name"]
        try:
            request.session.set_column(name, "x")
        except SessionError as exc:
            return {"error": str(exc)}
        return {"error": None}

    for name, view in [
        ("note_get", get),
        ("note_put", put),
        ("note_put_invalidate", put_then_invalidate),
        ("note_put_regenerate", put_then_regenerate),
        ("note_put_name", put_name),
    ]:
        config.add_route(name, "/" + name)
        config.add_view(view, route_name=name, renderer="json")


@pytest.fixture
def app(session_app):
    return session_app(make_model(NoteMixin), configure=add_note_views)


def test_column_on_new_session_inserts_the_row(app):
    with app.count() as sql:
        response = app.post_json("/note_put", {"note": "hello"})
    assert sql.kinds() == ["INSERT"], sql.statements
    assert response.json == {"note": "hello", "dirty": True}
    assert response.headers["Set-Cookie"].startswith("session=")
    assert app.row().note == "hello"
    assert app.get("/note_get").json == {"note": "hello", "dirty": False}


def test_none_on_new_session_stores_nothing(app):
    with app.count() as sql:
        response = app.post_json("/note_put", {"note": None})
    assert sql.count == 0
    assert response.json == {"note": None, "dirty": False}
    assert "Set-Cookie" not in response.headers
    assert app.rows() == []


def test_column_on_existing_row_updates_that_column_only(app):
    app.post_json("/set", {"a": 1})
    updated = app.row().updated
    app.clock.advance(60)
    with app.count() as sql:
        response = app.post_json("/note_put", {"note": "later"})
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assigned = sql.statements[1].split("WHERE")[0].replace(" ", "")
    assert "note=" in assigned
    assert not any(f"{c}=" in assigned for c in ("data", "flash", "updated", "created"))
    assert response.json == {"note": "later", "dirty": True}
    row = app.row()
    assert (row.note, row.updated) == ("later", updated)


def test_invalidate_drops_a_value_set_before_it(app):
    with app.count() as sql:
        response = app.post("/note_put_invalidate")
    assert sql.count == 0
    assert response.json == {"note": None, "dirty": False}
    assert app.rows() == []


def test_invalidate_of_a_stored_session_drops_its_column(app):
    app.post_json("/note_put", {"note": "hello"})
    app.post("/invalidate")
    assert app.rows() == []
    assert app.get("/note_get").json == {"note": None, "dirty": False}


def test_regenerate_keeps_a_value_of_a_new_session(app):
    response = app.post("/note_put_regenerate")
    assert response.json == {"note": "kept", "dirty": True}
    assert app.row().note == "kept"
    assert app.get("/note_get").json["note"] == "kept"


def test_regenerate_of_a_stored_session_keeps_its_column(app):
    app.post_json("/note_put", {"note": "hello"})
    old_id = app.row().id
    app.post("/regenerate")
    row = app.row()
    assert (row.note, row.id != old_id) == ("hello", True)
    assert app.get("/note_get").json["note"] == "hello"


@pytest.mark.parametrize("name", ["data", "id", "updated", "nonexistent"])
def test_only_plugin_columns_can_be_set(app, name):
    error = app.post_json("/note_put_name", {"name": name}).json["error"]
    assert f"no plugin column {name!r}" in error
    assert "add the mixin" in error
    assert app.rows() == []


class CookiePathMixin:
    cookie_path: Mapped[str | None] = mapped_column(String(200), nullable=True)


def test_runtime_setting_columns_go_through_settings(session_app):
    app = session_app(make_model(NoteMixin, CookiePathMixin), configure=add_note_views)
    error = app.post_json("/note_put_name", {"name": "cookie_path"}).json["error"]
    assert "'cookie_path' is a runtime setting" in error
    assert "request.session.settings" in error
    assert app.post_json("/note_put_name", {"name": "note"}).json["error"] is None
