"""What each kind of request costs, in SQL statements, on every database."""

from __future__ import annotations

import json
import os

import pytest
from pyramid.interfaces import ISessionFactory
from sqlalchemy import event
from sqlalchemy.orm import Session as OrmSession

from sessions_kernel import AESGCMCookieSerializer, generate_secret_key
from sessions_kernel.builtin import DEFAULT_MAX_AGE
from sessions_kernel.crypto import encode_payload, parse_secret_keys
from sessions_kernel.testing import make_model


@pytest.fixture
def app(session_app):
    return session_app(make_model())


def test_untouched_session_costs_nothing(app):
    with app.count() as sql:
        response = app.get("/none")
    assert sql.count == 0
    assert "Set-Cookie" not in response.headers
    assert "Vary" not in response.headers


def test_touched_but_empty_session_is_never_written(app):
    with app.count() as sql:
        response = app.get("/touch")
    assert sql.count == 0
    assert response.json == {"new": True}
    assert "Set-Cookie" not in response.headers
    assert response.headers["Vary"] == "Cookie"
    assert app.rows() == []


def test_new_session_with_data_is_one_insert(app):
    with app.count() as sql:
        response = app.post_json("/set", {"a": 1})
    assert sql.kinds() == ["INSERT"], sql.statements
    assert response.headers["Set-Cookie"].startswith("session=")
    assert app.row().created == int(app.clock())


def test_read_of_existing_session_is_one_select_and_no_write(app):
    app.post_json("/set", {"a": 1})
    app.clock.advance(10)
    with app.count() as sql:
        response = app.get("/read")
    assert sql.kinds() == ["SELECT"], sql.statements
    assert response.json["data"] == {"a": 1}
    assert response.json["new"] is False
    assert "Set-Cookie" not in response.headers


def test_change_is_select_plus_update_of_changed_columns_only(app):
    app.post_json("/set", {"a": 1})
    with app.count() as sql:
        app.get("/incr/a")
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    update = sql.statements[1]
    assert "data=" in update.replace(" ", "") and "flash" not in update.split("WHERE")[0]
    assert app.get("/read").json["data"] == {"a": 2}


def test_nested_mutation_is_saved_without_changed(app):
    app.post_json("/append", {"item": "x"})
    with app.count() as sql:
        app.post_json("/append", {"item": "y"})
    assert sql.kinds() == ["SELECT", "UPDATE"]
    assert app.get("/read").json["data"] == {"items": ["x", "y"]}


@pytest.mark.parametrize("cookie", ["garbage", "", "x" * 10_000, "c2Vzc2lvbg"])
def test_bad_cookie_costs_nothing_and_is_deleted(app, cookie):
    app.set_cookie("session", cookie)
    with app.count() as sql:
        response = app.get("/read")
    assert sql.count == 0
    assert response.json["new"] is True
    assert response.headers["Set-Cookie"].startswith("session=; Max-Age=0")


def test_describe_reads_a_stored_row_without_sql(app):
    app.post_json("/set", {"a": 1})
    created = int(app.clock())
    app.clock.advance(30)
    app.get("/incr/a")
    factory = app.wsgi.registry.queryUtility(ISessionFactory)
    row = app.row()
    with app.count() as sql:
        info = factory.describe(row)
    assert sql.count == 0
    assert info.session_id == row.id
    # no timeout plugin: the kernel's session.max_age, counted from the creation
    assert (info.created, info.last_active, info.expires) == (
        created,
        created + 30,
        created + DEFAULT_MAX_AGE,
    )


def test_invalidate_is_select_plus_delete(app):
    app.post_json("/set", {"a": 1})
    with app.count() as sql:
        response = app.get("/invalidate")
    assert sql.kinds() == ["SELECT", "DELETE"], sql.statements
    assert response.headers["Set-Cookie"].startswith("session=; Max-Age=0")


def test_regenerate_is_select_plus_update(app):
    app.post_json("/set", {"a": 1})
    with app.count() as sql:
        app.get("/regenerate")
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements


def test_cookie_made_with_another_key_costs_nothing(app):
    forged = AESGCMCookieSerializer(parse_secret_keys(generate_secret_key()))
    app.set_cookie("session", forged.dumps(encode_payload(os.urandom(32), {})))
    with app.count() as sql:
        response = app.get("/read")
    assert sql.count == 0
    assert response.json["new"] is True


def test_valid_cookie_of_a_deleted_session_is_two_selects(app):
    app.post_json("/set", {"a": 1})
    cookie = app.cookies["session"]
    app.get("/invalidate")
    browser = app.new_browser()
    browser.set_cookie("session", cookie)
    with app.count() as sql:
        browser.get("/read")
    assert sql.kinds() == ["SELECT", "SELECT"]  # by its id, then by its lineage


def test_flash_and_pop_flash_cost_a_select_and_an_update(app):
    app.post_json("/set", {"a": 1})
    with app.count() as sql:
        app.post_json("/flash", {"msg": "hi"})
    assert sql.kinds() == ["SELECT", "UPDATE"]
    with app.count() as sql:
        app.get("/pop_flash")
    assert sql.kinds() == ["SELECT", "UPDATE"]


def test_reading_a_setting_no_session_can_change_costs_no_sql(session_app):
    """The global value answers: the session is not loaded for it."""

    def configure(config):
        def httponly(request):
            return {"cookie_httponly": request.session.settings["cookie_httponly"]}

        config.add_route("cookie_httponly", "/cookie-httponly")
        config.add_view(httponly, route_name="cookie_httponly", renderer="json")

    app = session_app(make_model(), configure=configure)
    app.post_json("/set", {"a": 1})
    with app.count() as sql:
        response = app.get("/cookie-httponly")
    assert response.json == {"cookie_httponly": True}
    assert sql.count == 0


@pytest.fixture
def flushes():
    """How many times an ORM session flushed its unit of work."""
    counted = []

    def count(session, context, instances):
        counted.append(session)

    event.listen(OrmSession, "before_flush", count)
    yield counted
    event.remove(OrmSession, "before_flush", count)


def test_the_kernels_own_writes_leave_the_orm_nothing_to_flush(app, flushes):
    """The kernel writes the row itself; the commit must not run a flush that finds nothing."""
    app.post_json("/set", {"a": 1})  # INSERT
    app.get("/incr/a")  # versioned UPDATE
    assert flushes == []
    assert app.get("/read").json["data"] == {"a": 2}


def test_a_new_sessions_row_reads_after_the_commit_without_sql(session_app):
    """The INSERTed row holds what was stored: nothing to expire at commit, nothing to reload.

    A response callback (which runs after pyramid_tm committed) reads it; had the
    row joined the SQLAlchemy session, the commit would have expired it and the
    session would be closed: a DetachedInstanceError.
    """

    def configure(config):
        def store(request):
            request.session["a"] = 1
            seen = {}

            def after_commit(request, response):
                row = request.session.row
                seen.update(id=row.id, version=row.version, flash=row.flash, data=row.data)
                response.headers["X-Row"] = json.dumps({**seen, "data": seen["data"].decode()})

            request.add_response_callback(after_commit)
            return {}

        config.add_route("store", "/store")
        config.add_view(store, route_name="store", renderer="json")

    app = session_app(make_model(), configure=configure)
    with app.count() as sql:
        response = app.get("/store")
    assert sql.kinds() == ["INSERT"], sql.statements
    stored = app.row()
    assert json.loads(response.headers["X-Row"]) == {
        "id": stored.id,
        "version": 1,
        "flash": None,
        "data": '{"a":1}',
    }
