"""The test kit's examples that docs/testing.rst shows (included from this file)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from sessions_kernel import Session, hookimpl
from sessions_kernel.merge import latest
from sessions_kernel.testing import Race, make_model


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


class VisitMixin:
    last_visit: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)


class Visits:
    """Records the time of the session's last request; parallel requests keep the latest."""

    @hookimpl
    def session_mixins(self) -> list[type]:
        return [VisitMixin]

    @hookimpl
    def session_merge_rules(self) -> dict[str, Any]:
        return {"last_visit": latest}

    @hookimpl
    def session_extend(self, session: Session) -> None:
        session.row.last_visit = session.now


def test_the_later_visit_stands_whichever_request_commits_last(session_app):
    app = session_app(make_model(VisitMixin), plugins=[Visits()])
    app.post_json("/set", {"a": 1})
    start = int(app.clock())
    with Race(app) as race:
        early = race.start("/read")  # loads the session at `start`, then waits
        app.clock.advance(10)
        late = race.start("/read")  # loads it 10 s later
        late.finish()  # the later visit commits first
        early.finish()  # the earlier one commits over it: a merge
    assert early.response.status_int == late.response.status_int == 200
    assert early.attempts == 1  # merged by the rule, not run again
    assert app.row().last_visit == start + 10  # latest: the rule's answer is stored
