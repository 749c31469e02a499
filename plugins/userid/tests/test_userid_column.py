"""request.session.userid on the mixin's default integer column."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sessions_userid import UseridMixin

from sessions_kernel.events import SessionRegenerated
from sessions_kernel.testing import make_model


def _views(config):
    regenerated = config.registry.settings.setdefault("test.regenerated", [])
    config.add_subscriber(lambda event: regenerated.append(event.session_id), SessionRegenerated)

    def set_userid(request):
        body = request.json_body
        try:
            request.session.userid = body["userid"]
        except TypeError as exc:
            return {"error": str(exc)}
        return {"userid": request.session.userid, "session_id": request.session.session_id}

    def get_userid(request):
        return {"userid": request.session.userid, "data": dict(request.session)}

    def login_then_invalidate(request):
        request.session.userid = 7
        request.session.invalidate()
        return {"userid": request.session.userid}

    for name, view in [
        ("set_userid", set_userid),
        ("get_userid", get_userid),
        ("login_then_invalidate", login_then_invalidate),
    ]:
        config.add_route(name, f"/{name}")
        config.add_view(view, route_name=name, renderer="json")


@pytest.fixture
def app(session_app):
    return session_app(make_model(UseridMixin), configure=_views)


def test_userid_is_none_for_anonymous_and_new_sessions(app):
    with app.count() as sql:
        assert app.get("/get_userid").json == {"userid": None, "data": {}}
    assert sql.count == 0
    app.post_json("/set", {"a": 1})
    assert app.get("/get_userid").json == {"userid": None, "data": {"a": 1}}


def test_setting_userid_on_a_new_session_stores_it_in_one_insert(app):
    with app.count() as sql:
        response = app.post_json("/set_userid", {"userid": 42})
    assert sql.kinds() == ["INSERT"], sql.statements
    assert response.json["userid"] == 42
    row = app.row()
    assert (row.userid, row.id) == (42, response.json["session_id"])
    assert app.get("/get_userid").json == {"userid": 42, "data": {}}


def test_setting_another_userid_regenerates_the_id_and_keeps_the_data(app):
    app.post_json("/set", {"cart": [1, 2]})
    old_cookie, old_id = app.cookies["session"], app.row().id
    with app.count() as sql:
        response = app.post_json("/set_userid", {"userid": 42})
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assert "Set-Cookie" in response.headers
    row = app.row()
    assert row.id == response.json["session_id"] != old_id
    assert row.userid == 42
    assert app.wsgi.registry.settings["test.regenerated"] == [row.id]
    assert app.get("/get_userid").json == {"userid": 42, "data": {"cart": [1, 2]}}
    # the old cookie names a row that no longer exists: a new, empty session
    attacker = app.new_browser()
    attacker.set_cookie("session", old_cookie)
    assert attacker.get("/get_userid").json == {"userid": None, "data": {}}


def test_setting_the_same_userid_does_nothing(app):
    app.post_json("/set_userid", {"userid": 42})
    session_id = app.row().id
    with app.count() as sql:
        response = app.post_json("/set_userid", {"userid": 42})
    assert sql.kinds() == ["SELECT"], sql.statements
    assert "Set-Cookie" not in response.headers
    assert app.row().id == session_id
    assert app.wsgi.registry.settings["test.regenerated"] == []


def test_setting_none_logs_out_keeps_the_data_and_regenerates(app):
    app.post_json("/set", {"theme": "dark"})
    app.post_json("/set_userid", {"userid": 42})
    logged_in_id = app.row().id
    response = app.post_json("/set_userid", {"userid": None})
    assert response.json["userid"] is None
    row = app.row()
    assert row.userid is None and row.id != logged_in_id
    assert app.get("/get_userid").json == {"userid": None, "data": {"theme": "dark"}}


def test_a_wrongly_typed_userid_is_refused_with_the_fix(app):
    error = app.post_json("/set_userid", {"userid": "42"}).json["error"]
    assert "holds int values, got str" in error and "int('42')" in error
    assert "holds int" in app.post_json("/set_userid", {"userid": True}).json["error"]
    assert app.rows() == []


def test_invalidate_forgets_a_userid_set_in_the_same_request(app):
    with app.count() as sql:
        assert app.get("/login_then_invalidate").json == {"userid": None}
    assert sql.count == 0
    assert app.rows() == []


def test_the_default_column_is_indexed(app):
    indexes = sa.inspect(app.engine).get_indexes(app.model.__tablename__)
    assert [ix["column_names"] for ix in indexes] == [["userid"]]
