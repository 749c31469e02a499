"""Hooks that run before commit see the settings in force, never a view's unsaved edits."""

from __future__ import annotations

from sqlalchemy import Integer
from sqlalchemy.orm import mapped_column

from sessions_kernel import BaseMixin, hookimpl
from sessions_kernel.testing import make_model


class SeenSettings:
    """A test plugin that records what ``session.settings`` says in the renew stage."""

    __name__ = "seen_settings"

    def __init__(self) -> None:
        self.seen: list[object] = []

    @hookimpl
    def session_mixins(self) -> list[type]:
        return [BaseMixin]

    @hookimpl
    def session_renew(self, session) -> None:
        self.seen.append(session.settings["cookie_max_age"])


def test_unsaved_edits_are_dropped_before_the_persist_hooks(session_app):
    model = make_model(cookie_max_age=mapped_column(Integer, nullable=True))
    plugin = SeenSettings()

    def configure(config):
        def edit_without_save(request):
            request.session["a"] = 1
            request.session.settings.edit()
            request.session.settings.cookie_max_age = "not a number"
            return {"edited": request.session.settings.cookie_max_age}

        config.add_route("edit_without_save", "/edit_without_save")
        config.add_view(edit_without_save, route_name="edit_without_save", renderer="json")

    app = session_app(model, plugins=[plugin], configure=configure)
    response = app.get("/edit_without_save")
    assert response.json == {"edited": "not a number"}
    assert plugin.seen == [None]
    assert "Max-Age" not in response.headers["Set-Cookie"]
    assert app.row().cookie_max_age is None
