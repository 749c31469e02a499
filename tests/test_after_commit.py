"""The session after the request's transaction committed: readable, not changeable.

pyramid_tm commits before Pyramid runs response callbacks and ``NewResponse``
subscribers. There the session reads what was committed (the data, flash
messages peeked, its id and creation time), also when it is first used there
(a read-only load: one SELECT, no write, no transaction), and a change raises
a :class:`~sessions_kernel.SessionError` that says where to make it. On
SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from kernel_support import set_cookies
from pyramid.events import NewResponse
from pyramid.interfaces import INewResponse
from zope.interface import implementedBy

from sessions_kernel import SessionError
from sessions_kernel.testing import make_model


def _shown(session: Any) -> dict[str, Any]:
    return {
        "data": dict(session),
        "flash": session.peek_flash(),
        "id": session.session_id,
        "new": session.new,
        "created": session.created,
    }


def _views(config: Any) -> None:
    def shown_after_commit(event: Any) -> None:
        request = event.request
        if request.path.startswith("/after/"):
            event.response.headers["X-Session"] = json.dumps(_shown(request.session))

    config.add_subscriber(shown_after_commit, NewResponse)

    def view(path: str, func: Any) -> None:
        name = path.strip("/").replace("/", "_")
        config.add_route(name, path)
        config.add_view(func, route_name=name, renderer="json")

    def changed_in_view(request: Any) -> Any:
        request.session["n"] = request.session.get("n", 0) + 1
        request.session.flash("saved")
        return _shown(request.session)

    def read_in_view(request: Any) -> Any:
        return {"n": request.session.get("n")}

    def first_used_in_callback(request: Any) -> Any:
        def read(request: Any, response: Any) -> None:
            response.headers["X-Callback"] = json.dumps(_shown(request.session))

        request.add_response_callback(read)
        return {}

    def changed_in_callback(request: Any) -> Any:
        if request.params.get("touch"):
            request.session.get("n")

        def change(request: Any, response: Any) -> None:
            request.session.get("n")  # reading works
            kind = request.params["change"]
            if kind == "set":
                request.session["late"] = 1
            elif kind == "flash":
                request.session.flash("late")
            elif kind == "pop_flash":
                request.session.pop_flash()
            elif kind == "invalidate":
                request.session.invalidate()

        request.add_response_callback(change)
        return {}

    view("/after/changed", changed_in_view)
    view("/after/read", read_in_view)
    view("/after/none", lambda request: {})
    view("/callback/read", first_used_in_callback)
    view("/callback/change", changed_in_callback)


@pytest.fixture
def app(session_app):
    return session_app(make_model(), configure=_views)


def test_a_session_changed_in_the_view_reads_the_same_after_the_commit(app):
    with app.count() as sql:
        response = app.get("/after/changed")
    assert sql.kinds() == ["INSERT"]  # nothing more for the read after the commit
    assert len(set_cookies(response)) == 1
    after = json.loads(response.headers["X-Session"])
    assert after == response.json
    assert after["data"] == {"n": 1} and after["flash"] == ["saved"]
    # a stored session changed: its row's values, expired by the commit, still read
    with app.count() as sql:
        response = app.get("/after/changed")
    assert sql.kinds() == ["SELECT", "UPDATE"]
    assert set_cookies(response) == []
    after = json.loads(response.headers["X-Session"])
    assert after == response.json
    assert after["data"] == {"n": 2} and after["flash"] == ["saved", "saved"]
    assert after["id"] == app.row().id and after["created"] == app.row().created


def test_a_session_read_in_the_view_reads_the_same_after_the_commit(app):
    app.get("/after/changed")
    with app.count() as sql:
        response = app.get("/after/read")
    assert sql.kinds() == ["SELECT"]
    assert set_cookies(response) == []
    after = json.loads(response.headers["X-Session"])
    assert after["data"] == {"n": 1} and after["flash"] == ["saved"]
    assert (after["id"], after["created"], after["new"]) == (app.row().id, app.row().created, False)


def test_a_session_first_used_after_the_commit_loads_read_only(app):
    app.get("/after/changed")
    row = app.row()
    with app.count() as sql:
        response = app.get("/after/none")  # first used in the NewResponse subscriber
    assert sql.kinds() == ["SELECT"]  # the load, no write, no transaction of its own
    assert set_cookies(response) == []
    after = json.loads(response.headers["X-Session"])
    assert after == {
        "data": {"n": 1},
        "flash": ["saved"],
        "id": row.id,
        "new": False,
        "created": row.created,
    }
    assert app.row().version == row.version  # nothing written


def test_a_session_first_used_in_a_response_callback_loads_read_only(app):
    app.get("/after/changed")
    row = app.row()
    with app.count() as sql:
        response = app.get("/callback/read")
    assert sql.kinds() == ["SELECT"]
    assert set_cookies(response) == []
    assert response.headers["Cache-Control"] == "private"  # it shows a stored session
    assert "Cookie" in response.headers["Vary"]
    assert json.loads(response.headers["X-Callback"])["data"] == {"n": 1}
    assert app.row().version == row.version


def test_a_new_visitor_first_used_after_the_commit_costs_nothing(app):
    with app.count() as sql:
        response = app.get("/callback/read")
    assert sql.count == 0
    assert set_cookies(response) == []
    assert json.loads(response.headers["X-Callback"])["data"] == {}
    assert app.rows() == []


@pytest.mark.parametrize("touch", ["", "1"], ids=["first_used_there", "used_in_view"])
@pytest.mark.parametrize("change", ["set", "flash", "pop_flash", "invalidate"])
def test_a_change_after_the_commit_raises_and_says_where_to_make_it(app, change, touch):
    app.get("/after/changed")
    row = app.row()
    with app.count() as sql, pytest.raises(SessionError) as raised:
        app.get("/callback/change", {"change": change, "touch": touch})
    message = str(raised.value)
    assert "response callback" in message and "view" in message
    assert [kind for kind in sql.kinds() if kind != "SELECT"] == []  # nothing written
    assert len(sql.kinds()) <= 1
    stored = app.row()
    assert (stored.id, stored.version, stored.data) == (row.id, row.version, row.data)


def test_a_new_visitor_changing_the_session_after_the_commit_raises(app):
    with pytest.raises(SessionError, match="response callback"):
        app.get("/callback/change", {"change": "set"})
    assert app.rows() == []


# -- a session first used in a NewResponse subscriber: the response is kept private -----------


def _first_used_by_an_interface_subscriber(config: Any) -> None:
    def shown(event: Any) -> None:  # subscribed to the interface, not the class
        if event.request.path == "/iface":
            event.response.headers["X-Data"] = json.dumps(dict(event.request.session))

    config.add_subscriber(shown, INewResponse)
    config.add_route("iface", "/iface")
    config.add_view(lambda request: {}, route_name="iface", renderer="json")


@pytest.mark.parametrize("path", ["/after/none", "/iface"], ids=["class", "interface"])
def test_a_session_first_used_in_a_subscriber_makes_the_response_private(session_app, path):
    app = session_app(
        make_model(),
        configure=lambda config: (_views(config), _first_used_by_an_interface_subscriber(config)),
    )
    app.post_json("/set", {"n": 1})
    with app.count() as sql:
        response = app.get(path)
    assert sql.kinds() == ["SELECT"]  # the read-only load, nothing more
    assert response.headers["Cache-Control"] == "private"
    assert "Cookie" in response.headers["Vary"]
    assert set_cookies(response) == []


def test_a_new_visitor_first_used_in_a_subscriber_varies_on_cookie_only(app):
    with app.count() as sql:
        response = app.get("/after/none")
    assert sql.kinds() == []
    assert "Cache-Control" not in response.headers
    assert "Cookie" in response.headers["Vary"]


def test_the_kernel_adds_no_subscriber_to_an_application_without_any(session_app):
    """Pyramid skips notify() while nothing subscribed: the kernel keeps it so."""
    app = session_app(make_model())
    registry = app.wsgi.registry
    assert registry.adapters.subscriptions([implementedBy(NewResponse)], None) == []


def test_a_first_use_after_the_commit_of_a_gone_row_costs_two_selects(app):
    """The docs' count: the row by its key, then its lineage under a newer id."""
    app.post_json("/set", {"n": 1})
    with app.engine.begin() as conn:  # logged out meanwhile
        conn.execute(sa.delete(app.model.__table__))
    with app.count() as sql:
        response = app.get("/callback/read")
    assert sql.kinds() == ["SELECT", "SELECT"]
    assert json.loads(response.headers["X-Callback"])["data"] == {}
