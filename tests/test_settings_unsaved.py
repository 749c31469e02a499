"""Unsaved runtime settings edits end with the request: hooks before commit never see them."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Integer
from sqlalchemy.orm import mapped_column

from sessions_kernel import hookimpl
from sessions_kernel.testing import make_model


class RecorderMixin:
    """Activates the recording plugin below."""


class Recorder:
    """A plugin that records the settings its persist hook reads."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    @hookimpl
    def session_mixins(self) -> list[type]:
        return [RecorderMixin]

    @hookimpl
    def session_persist(self, session: Any, row: Any) -> None:
        self.seen.append(session.settings["cookie_max_age"])


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def app(session_app, recorder):
    model = make_model(RecorderMixin, cookie_max_age=mapped_column(Integer, nullable=True))

    def edit_without_saving(request):
        request.session["a"] = 1
        request.session.settings.edit()
        request.session.settings.cookie_max_age = 999
        return {"editing": request.session.settings.cookie_max_age}

    def configure(config):
        config.add_route("edit_unsaved", "/edit_unsaved")
        config.add_view(edit_without_saving, route_name="edit_unsaved", renderer="json")

    return session_app(model, {"cookie_max_age": "60"}, plugins=[recorder], configure=configure)


def test_unsaved_edit_is_dropped_before_the_persist_hooks(app, recorder):
    response = app.get("/edit_unsaved")
    assert response.json == {"editing": 999}  # the view itself sees its pending edit
    assert recorder.seen == [60]  # hooks before commit see the settings in force
    assert "Max-Age=60" in response.headers["Set-Cookie"]
    assert app.row().cookie_max_age is None
    assert app.get("/settings").json["cookie_max_age"] == 60
