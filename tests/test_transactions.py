"""The session lives in the request's transaction: rollback writes nothing and sends no cookie."""

from __future__ import annotations

from typing import Any

import pytest
from kernel_support import set_cookies
from pyramid.httpexceptions import HTTPFound
from pyramid_retry import mark_error_retryable

from sessions_kernel.testing import make_model


class Conflict(Exception):
    """A retryable error, as a serialization failure would be."""


mark_error_retryable(Conflict)


def _views(config: Any) -> None:
    attempts: list[int] = []

    def flaky(request: Any) -> Any:
        attempts.append(1)
        request.session["attempt"] = len(attempts)
        request.session.setdefault("log", []).append(len(attempts))
        if len(attempts) == 1:
            raise Conflict("try again")
        return {"attempts": len(attempts)}

    def returned_redirect(request: Any) -> Any:
        request.session["went"] = "away"
        return HTTPFound(location="/read")

    config.add_route("flaky", "/flaky")
    config.add_view(flaky, route_name="flaky", renderer="json")
    config.add_route("returned_redirect", "/returned_redirect")
    config.add_view(returned_redirect, route_name="returned_redirect")


@pytest.fixture
def app(session_app):
    return session_app(make_model(), configure=_views)


def test_untouched_session_reads_nothing_and_sends_nothing(app):
    with app.count() as sql:
        response = app.get("/none")
    assert sql.count == 0
    assert set_cookies(response) == []
    assert "Vary" not in response.headers


def test_untouched_session_with_a_cookie_reads_nothing(app):
    app.post_json("/set", {"a": 1})
    with app.count() as sql:
        response = app.get("/none")
    assert sql.count == 0
    assert set_cookies(response) == []


def test_touched_empty_session_costs_nothing_and_varies_on_cookie(app):
    with app.count() as sql:
        response = app.get("/read")
    assert sql.count == 0
    assert set_cookies(response) == []
    assert response.headers["Vary"] == "Cookie"
    assert app.rows() == []


def test_failing_view_writes_nothing_and_sends_no_cookie(app):
    response = app.post_json("/fail", {"a": 1}, status=500)
    assert response.json == {"error": "the view failed after changing the session"}
    assert set_cookies(response) == []
    assert app.rows() == []


def test_raised_redirect_writes_nothing_and_sends_no_cookie(app):
    response = app.post_json("/redirect", {"a": 1}, status=302)
    assert set_cookies(response) == []
    assert app.rows() == []


def test_returned_redirect_commits(app):
    with app.count() as sql:
        response = app.get("/returned_redirect", status=302)
    assert sql.kinds() == ["INSERT"]
    assert len(set_cookies(response)) == 1
    assert response.follow().json["data"] == {"went": "away"}


def test_failing_write_to_existing_session_leaves_old_data(app):
    app.post_json("/set", {"a": 1})
    before = app.row()
    response = app.post_json("/fail", {"a": 2, "b": 3}, status=500)
    assert set_cookies(response) == []
    after = app.row()
    assert (after.id, after.data, after.updated) == (before.id, before.data, before.updated)
    assert app.get("/read").json["data"] == {"a": 1}


def test_raised_redirect_keeps_old_data(app):
    app.post_json("/set", {"a": 1})
    app.post_json("/redirect", {"a": 2}, status=302)
    assert app.get("/read").json["data"] == {"a": 1}


def test_retried_request_ends_with_one_row_and_one_cookie(app):
    with app.count() as sql:
        response = app.get("/flaky")
    assert response.json == {"attempts": 2}
    assert sql.kinds() == ["INSERT"], sql.statements  # the failed attempt wrote nothing
    assert len(set_cookies(response)) == 1
    row = app.row()
    assert app.get("/read").json["data"] == {"attempt": 2, "log": [2]}
    assert app.row().id == row.id


def test_retried_request_on_existing_session_applies_once(app):
    app.post_json("/set", {"log": [0]})
    row_id = app.row().id
    response = app.get("/flaky")
    # the browser's cookie did not change (no Max-Age to slide): nothing sent, not twice
    assert set_cookies(response) == []
    assert app.get("/read").json["data"] == {"attempt": 2, "log": [0, 2]}
    assert [row.id for row in app.rows()] == [row_id]
