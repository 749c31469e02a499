"""The lifecycle hooks: ``session_regenerated`` and ``session_invalidated``, in their order.

A plugin learns that the id changed (with the old and the new id, also on a
session that has no row yet) and that the session ended (``invalidate()``, a
rejection at validate), without comparing ids itself. On SQLite, PostgreSQL
and MariaDB.
"""

from __future__ import annotations

import types
from typing import Any

import pytest
from pyramid.interfaces import ISessionFactory

import sessions_kernel
from sessions_kernel.factory import RequestHooks, _no_implementation
from sessions_kernel.hookspecs import INVALIDATED
from sessions_kernel.testing import TEST_SECRET_KEY, make_model


class LifecycleMixin:
    """Activates the recording plugin; adds no column."""


class Recorder:
    """A plugin recording every per-request hook it gets, with what it was given."""

    __name__ = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.reject: str | None = None  # a reason to reject every stored row with
        self.flash_on_rejection = False

    @sessions_kernel.hookimpl
    def session_mixins(self) -> list[type]:
        return [LifecycleMixin]

    @sessions_kernel.hookimpl
    def session_load(self, session: Any) -> None:
        self.calls.append(("load",))

    @sessions_kernel.hookimpl
    def session_validate(self, session: Any) -> str | None:
        self.calls.append(("validate",))
        return self.reject

    @sessions_kernel.hookimpl
    def session_extend(self, session: Any) -> None:
        self.calls.append(("extend",))

    @sessions_kernel.hookimpl
    def session_renew(self, session: Any) -> None:
        self.calls.append(("renew",))

    @sessions_kernel.hookimpl
    def session_persist(self, session: Any) -> None:
        self.calls.append(("persist",))

    @sessions_kernel.hookimpl
    def session_regenerated(self, session: Any, old_id: str, new_id: str) -> None:
        assert session.session_id == new_id
        self.calls.append(("regenerated", old_id, new_id, session.new))

    @sessions_kernel.hookimpl
    def session_invalidated(self, session: Any, reason: str, old_row: Any) -> None:
        assert session.new and session.row is None and dict(session) == {}
        old_id = None if old_row is None else old_row.id
        self.calls.append(("invalidated", reason, old_id, old_row and old_row.data))
        if self.flash_on_rejection and reason != INVALIDATED:
            session.flash(f"you were logged out: {reason}")

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [call for call in self.calls if call[0] == name]


def views(recorder: Recorder):
    def configure(config: Any) -> None:
        def view(path: str, func: Any) -> None:
            name = path.strip("/")
            config.add_route(name, path)
            config.add_view(func, route_name=name, renderer="json")

        def seen_by_the_view(request: Any) -> Any:
            new = request.session.new
            recorder.calls.append(("view",))
            return {"new": new, "flash": request.session.peek_flash()}

        def regenerate_new_session(request: Any) -> Any:
            session = request.session
            before = session.session_id
            session.regenerate_id()
            session["stored"] = True
            return {"before": before, "after": session.session_id}

        def regenerate_held(request: Any) -> Any:
            request.session.regenerate_id(hold=True)
            return {"after": request.session.session_id}

        def peek(request: Any) -> Any:
            result = request.registry.queryUtility(ISessionFactory).peek(request)
            return {"reason": result.reason}

        view("/seen", seen_by_the_view)
        view("/regenerate_new_session", regenerate_new_session)
        view("/regenerate_held", regenerate_held)
        view("/peek", peek)

    return configure


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def app(session_app, recorder):
    return session_app(make_model(LifecycleMixin), plugins=[recorder], configure=views(recorder))


def test_regenerate_id_of_a_stored_session_reports_the_old_and_the_new_id(app, recorder):
    app.post_json("/set", {"a": 1})
    stored = app.row().id
    recorder.calls.clear()
    app.get("/regenerate")
    new = app.row().id
    assert new != stored
    assert recorder.calls == [
        ("load",),
        ("validate",),
        ("regenerated", stored, new, False),
        ("extend",),
        ("renew",),
        ("persist",),
    ]


def test_regenerate_id_of_a_session_without_a_row_reports_both_ids(app, recorder):
    ids = app.get("/regenerate_new_session").json
    assert ids["before"] != ids["after"]
    assert recorder.of("regenerated") == [("regenerated", ids["before"], ids["after"], True)]
    assert app.row().id == ids["after"]  # inserted under the new id
    assert recorder.names() == ["load", "regenerated", "renew", "persist"]


def test_a_held_regenerate_reports_the_id_written_at_once(app, recorder):
    app.post_json("/set", {"a": 1})
    stored = app.row().id
    recorder.calls.clear()
    after = app.get("/regenerate_held").json["after"]
    assert recorder.of("regenerated") == [("regenerated", stored, after, False)]
    assert app.row().id == after


def test_invalidate_reports_the_deleted_row_and_the_reason(app, recorder):
    app.post_json("/set", {"a": 1})
    stored = app.row()
    recorder.calls.clear()
    app.get("/invalidate")
    assert recorder.calls == [
        ("load",),
        ("validate",),
        ("invalidated", INVALIDATED, stored.id, stored.data),
    ]  # the new session stores nothing: no renew, no persist
    assert app.rows() == []


def test_invalidate_of_a_session_without_a_row_reports_no_row(app, recorder):
    app.get("/invalidate")
    assert recorder.calls == [("load",), ("invalidated", INVALIDATED, None, None)]


def test_a_rejected_row_is_reported_before_the_view_runs(app, recorder):
    app.post_json("/set", {"a": 1})
    stored = app.row()
    recorder.calls.clear()
    recorder.reject = "probe says no"
    assert app.get("/seen").json["new"] is True
    assert recorder.calls == [
        ("load",),
        ("validate",),
        ("invalidated", "probe says no", stored.id, stored.data),
        ("view",),
    ]
    assert app.rows() == []


def test_the_kernels_own_rejection_is_reported_with_its_reason(session_app):
    recorder = Recorder()
    app = session_app(
        make_model(LifecycleMixin), {"max_age": "60"}, plugins=[recorder], configure=views(recorder)
    )
    app.post_json("/set", {"a": 1})
    stored = app.row()
    app.clock.advance(61)
    recorder.calls.clear()
    app.get("/seen")
    assert recorder.of("invalidated") == [("invalidated", "max age", stored.id, stored.data)]


def test_a_plugin_may_leave_something_in_the_new_session(app, recorder):
    app.post_json("/set", {"a": 1})
    recorder.reject, recorder.flash_on_rejection = "idle timeout", True
    flashed = app.get("/seen").json["flash"]
    assert flashed == ["you were logged out: idle timeout"]
    recorder.reject = None
    assert app.get("/seen").json == {"new": False, "flash": ["you were logged out: idle timeout"]}


def test_a_peek_reports_no_lifecycle(app, recorder):
    app.post_json("/set", {"a": 1})
    recorder.calls.clear()
    recorder.reject = "probe says no"
    assert app.get("/peek").json["reason"] == "probe says no"
    assert recorder.names() == ["load", "validate"]
    assert len(app.rows()) == 1


def test_lifecycle_hooks_nobody_implements_cost_nothing():
    factory = sessions_kernel.session_factory(
        model_class=make_model(), secret_key=TEST_SECRET_KEY, max_age=None
    )
    assert isinstance(factory.stages, RequestHooks)
    assert factory.stages.session_regenerated is _no_implementation
    assert factory.stages.session_invalidated is _no_implementation


def test_an_implementation_may_take_fewer_arguments(session_app):
    seen = []

    @sessions_kernel.hookimpl
    def session_regenerated(new_id):
        seen.append(new_id)

    plugin = types.SimpleNamespace(
        __name__="newidonly",
        session_mixins=sessions_kernel.hookimpl(lambda: [LifecycleMixin]),
        session_regenerated=session_regenerated,
    )
    app = session_app(make_model(LifecycleMixin), plugins=[plugin])
    app.post_json("/set", {"a": 1})
    app.get("/regenerate")
    assert seen == [app.row().id]
