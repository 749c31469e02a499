"""Plugin columns set on a session before its row exists, and regenerate_id under autoflush."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from sessions_kernel import SessionError
from sessions_kernel.testing import make_model


class NoteMixin:
    """A plugin-style column (no plugin needed for set_column/get_column)."""

    note: Mapped[str | None] = mapped_column(sa.String(20), nullable=True)


def _views(config):
    def set_note(request):
        request.session.set_column("note", request.params.get("note"))
        return {"note": request.session.get_column("note"), "dirty": request.session.dirty}

    def note_then_invalidate(request):
        request.session.set_column("note", "dropped")
        request.session.invalidate()
        return {"note": request.session.get_column("note"), "dirty": request.session.dirty}

    def regenerate_and_query(request):
        request.session.regenerate_id()
        model = request.session.model
        # an ORM query autoflushes the row's new id before the kernel's persist stage
        ids = request.dbsession.scalars(sa.select(model.id)).all()
        return {"session_id": request.session.session_id, "ids": ids}

    def bad_column(request):
        try:
            request.session.set_column(request.params["name"], 1)
        except SessionError as exc:
            return {"error": str(exc)}
        return {"error": None}

    for name, view in [
        ("set_note", set_note),
        ("note_then_invalidate", note_then_invalidate),
        ("regenerate_and_query", regenerate_and_query),
        ("bad_column", bad_column),
    ]:
        config.add_route(name, f"/{name}")
        config.add_view(view, route_name=name, renderer="json")


@pytest.fixture
def app(session_app):
    return session_app(make_model(NoteMixin), configure=_views)


def test_set_column_on_new_session_stores_it_without_data(app):
    with app.count() as sql:
        response = app.get("/set_note", {"note": "hello"})
    assert response.json == {"note": "hello", "dirty": True}
    assert sql.kinds() == ["INSERT"], sql.statements
    assert app.row().note == "hello"
    assert app.row().data  # the empty dict, serialized


def test_set_column_on_existing_row_is_one_update(app):
    app.post_json("/set", {"a": 1})
    with app.count() as sql:
        app.get("/set_note", {"note": "later"})
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assert app.row().note == "later"


def test_invalidate_forgets_columns_set_on_a_new_session(app):
    with app.count() as sql:
        response = app.get("/note_then_invalidate")
    assert response.json == {"note": None, "dirty": False}
    assert sql.count == 0
    assert app.rows() == []


def test_set_column_refuses_kernel_and_unknown_columns(app):
    for name in ("id", "data", "updated", "nope"):
        error = app.get("/bad_column", {"name": name}).json["error"]
        assert error and repr(name) in error


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
