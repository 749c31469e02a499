"""The data column: JSON by default, pickle when named, inconsistent rows reported clearly."""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any

import pytest
import sqlalchemy as sa
from kernel_support import cookie_for, factory_of, set_cookies

from sessions_kernel import InconsistentDataError, SessionError, session_factory
from sessions_kernel.crypto import session_id_for
from sessions_kernel.testing import TEST_SECRET_KEY, make_model


def _views(config: Any) -> None:
    def store_date(request: Any) -> Any:
        request.session["when"] = datetime.date(2024, 1, 2)
        return {}

    def store_set(request: Any) -> Any:
        request.session["tags"] = {"a"}
        return {}

    def inspect(request: Any) -> Any:
        """What a user's code sees when it reads the session."""
        results = []
        for _ in range(2):  # the second use reports the same error
            try:
                request.session.get("x")
            except Exception as exc:
                results.append({"type": type(exc).__name__, "message": str(exc)})
        return results

    def session_error(exc: Exception, request: Any) -> Any:
        request.response.status = 500
        return {"type": type(exc).__name__, "error": str(exc)}

    config.add_exception_view(session_error, context=SessionError, renderer="json")
    for name, view in [("store_date", store_date), ("store_set", store_set), ("inspect", inspect)]:
        config.add_route(name, f"/{name}")
        config.add_view(view, route_name=name, renderer="json")


def test_data_is_json_by_default(session_app):
    app = session_app(make_model(), configure=_views)
    app.post_json("/set", {"a": 1, "b": ["x", {"c": None}], "é": "ü"})
    assert app.row().data == '{"a":1,"b":["x",{"c":null}],"é":"ü"}'.encode()
    assert app.get("/read").json["data"] == {"a": 1, "b": ["x", {"c": None}], "é": "ü"}


def test_non_json_value_is_a_clear_error_and_nothing_is_written(session_app):
    app = session_app(make_model(), configure=_views)
    response = app.get("/store_date", status=500)
    assert response.json["type"] == "SessionError"
    message = response.json["error"]
    assert "JSONSerializer cannot store" in message
    assert "date is not JSON serializable" in message
    assert "convert it" in message and "session.data_serializer" in message
    assert set_cookies(response) == []
    assert app.rows() == []


def test_pickle_when_named(session_app):
    app = session_app(make_model(), {"data_serializer": "pickle"}, configure=_views)
    app.post_json("/flash", {"msg": "hi"})
    app.get("/store_date")
    app.get("/store_set")
    assert app.row().data.startswith(b"\x80")  # a pickle, not JSON
    session = factory_of(app).data_serializer.loads(app.row().data)
    assert session == {"when": datetime.date(2024, 1, 2), "tags": {"a"}}
    assert app.get("/pop_flash").json == {"messages": ["hi"]}


@pytest.mark.parametrize(
    "serializer", ["pickle", " Pickle ", "sessions_kernel.serializers.PickleSerializer"]
)
def test_pickle_logs_a_warning_at_start_up(serializer, caplog):
    model = make_model()
    with caplog.at_level(logging.WARNING, logger="sessions_kernel"):
        session_factory(model_class=model, secret_key=TEST_SECRET_KEY, data_serializer=serializer)
    [record] = [r for r in caplog.records if r.name == "sessions_kernel"]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert message.startswith("session.data_serializer = pickle: whoever can write to the table")
    assert model.__tablename__ in message and "can run code" in message


def test_json_logs_no_warning(caplog):
    with caplog.at_level(logging.DEBUG, logger="sessions_kernel"):
        session_factory(model_class=make_model(), secret_key=TEST_SECRET_KEY)
        session_factory(
            model_class=make_model(), secret_key=TEST_SECRET_KEY, data_serializer="json"
        )
    assert [r for r in caplog.records if r.name == "sessions_kernel"] == []


def test_nested_mutation_is_caught(session_app):
    app = session_app(make_model())
    app.post_json("/set", {"cart": {"items": [1]}})
    app.post_json("/append", {"item": 2})
    app.post_json("/append", {"item": {"deep": [3]}})
    assert app.get("/read").json["data"] == {"cart": {"items": [1]}, "items": [2, {"deep": [3]}]}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"{not json", "column 'data' cannot be read"),
        (b"\xff\xfe", "column 'data' cannot be read"),
        (b"[1, 2]", "column 'data' holds list, not a dict"),
        (b"null", "column 'data' holds NoneType, not a dict"),
        (b'"text"', "column 'data' holds str, not a dict"),
    ],
)
def test_inconsistent_row_raises_inconsistent_data_error(session_app, data, problem):
    app = session_app(make_model(), configure=_views)
    token = os.urandom(32)
    sid = session_id_for(token)
    with app.engine.begin() as db:
        db.execute(
            sa.insert(app.model).values(
                id=sid, created=int(app.clock()), updated=int(app.clock()), data=data
            )
        )
    app.set_cookie("session", cookie_for(factory_of(app), token))
    response = app.get("/inspect")
    first, second = response.json
    assert first["type"] == "InconsistentDataError"
    assert first["message"].startswith(f"session {sid[:12]}… (Session): {problem}")
    assert "Delete the row or repair the column" in first["message"]
    assert second == first
    assert issubclass(InconsistentDataError, RuntimeError)


@pytest.mark.parametrize(
    ("flash", "problem"),
    [
        (b"{oops", "column 'flash' cannot be read"),
        (b'{"": "not a list"}', "column 'flash' does not map queues to lists"),
    ],
)
def test_inconsistent_flash_raises_inconsistent_data_error(session_app, flash, problem):
    app = session_app(make_model(), configure=_views)
    token = os.urandom(32)
    with app.engine.begin() as db:
        db.execute(
            sa.insert(app.model).values(
                id=session_id_for(token),
                created=int(app.clock()),
                updated=int(app.clock()),
                data=b"{}",
                flash=flash,
            )
        )
    app.set_cookie("session", cookie_for(factory_of(app), token))
    first, _ = app.get("/inspect").json
    assert first["type"] == "InconsistentDataError"
    assert problem in first["message"]
