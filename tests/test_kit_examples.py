"""The test kit's examples that docs/testing.rst shows (included from this file)."""

from __future__ import annotations

from typing import Any

from sessions_kernel import Session, hookimpl
from sessions_kernel.testing import make_model


class TraceMixin:
    """No column: a model that lists it activates the tracer."""


class Tracer:
    """A plugin object, not installed: records the stages the kernel runs."""

    def __init__(self) -> None:
        self.stages: list[str] = []

    @hookimpl
    def session_mixins(self) -> list[type]:
        return [TraceMixin]

    @hookimpl
    def session_load(self, session: Session) -> None:
        self.stages.append("load")

    @hookimpl
    def session_validate(self, session: Session) -> None:
        self.stages.append("validate")

    @hookimpl
    def session_extend(self, session: Session) -> None:
        self.stages.append("extend")

    @hookimpl
    def session_persist(self, session: Session, row: Any) -> None:
        self.stages.append("persist (insert)" if session.new else "persist (update)")


def test_the_stages_of_a_new_session_and_of_a_read(session_app):
    tracer = Tracer()
    app = session_app(make_model(TraceMixin), plugins=[tracer])
    app.post_json("/set", {"a": 1})
    assert tracer.stages == ["load", "persist (insert)"]
    tracer.stages.clear()
    app.get("/read")
    assert tracer.stages == ["load", "validate", "extend"]
    tracer.stages.clear()
    app.post_json("/set", {"a": 2})
    assert tracer.stages == ["load", "validate", "extend", "persist (update)"]


def test_a_plugin_object_is_inactive_without_its_mixin(session_app):
    tracer = Tracer()
    app = session_app(make_model(), plugins=[tracer])
    app.post_json("/set", {"a": 1})
    assert tracer.stages == []
    assert "Tracer" not in {info.name for info in app.factory.config.active}
