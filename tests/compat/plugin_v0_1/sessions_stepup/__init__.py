"""sessions-stepup: a re-authentication window ("sudo mode"), a plugin written for 0.1.

Add :class:`StepUpMixin` to the session model and
``config.include("sessions_stepup")`` to the application (for the view
predicate). After the user confirmed their password, the view calls
``request.session.step_up()``; for ``session.stepup_window`` seconds (300
by default) ``request.session.stepped_up`` is true and views registered with
``stepped_up=True`` are found. The step-up belongs to the session id that
made it: a login, a logout or ``regenerate_id()`` gives the session a new id
and ends it.

Written from the 0.1.0 documentation only, and kept unchanged: see this
distribution's README.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from sessions_kernel import Session, Setting, hookimpl
from sessions_kernel.settings import integer

__all__ = ["SETTINGS", "StepUpMixin", "SteppedUpPredicate", "includeme"]

SETTINGS = (
    Setting(
        "stepup_window",
        default=300,
        parse=integer(1, 86400),
        doc="seconds a step-up (a re-authentication) lasts",
    ),
)


class StepUpMixin:
    """The step-up: for which session id it was made, and when."""

    stepup_session_id: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    stepup_at: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)


def _stepped_up(session: Any) -> bool:
    granted_to = session.get_column("stepup_session_id")
    at = session.get_column("stepup_at")
    if granted_to is None or at is None:
        return False
    # the step-up holds for the id that made it, inside the window
    return granted_to == session.session_id and session.now - at < session.settings.stepup_window


def _step_up(session: Any) -> None:
    session.set_column("stepup_session_id", session.session_id)
    session.set_column("stepup_at", session.now)


class SteppedUpPredicate:
    """The view predicate ``stepped_up=True``: the view is found only inside a step-up."""

    def __init__(self, value: bool, config: Any) -> None:
        self.value = bool(value)

    def text(self) -> str:
        return f"stepped_up = {self.value}"

    phash = text

    def __call__(self, context: Any, request: Any) -> bool:
        return request.session.stepped_up == self.value


def includeme(config: Any) -> None:
    """``config.include("sessions_stepup")``: the view predicate ``stepped_up``."""
    config.add_view_predicate("stepped_up", SteppedUpPredicate)


@hookimpl
def session_mixins() -> Sequence[type]:
    return [StepUpMixin]


@hookimpl
def session_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def session_attributes() -> Mapping[str, Any]:
    return {"stepped_up": property(_stepped_up), "step_up": _step_up}


@hookimpl
def session_load(session: Session) -> None:
    # the id this request arrived with, to notice a new id before commit
    session.stepup_arrived_id = session.session_id if session.row is not None else None


@hookimpl
def session_extend(session: Session) -> None:
    row = session.row
    if row.stepup_session_id is None:
        return
    arrived = session.stepup_arrived_id
    # the step-up was made for the id this request arrived with, and the id changed since
    moved = row.stepup_session_id == arrived and session.session_id != arrived
    expired = session.now - row.stepup_at >= session.settings.stepup_window
    if moved or expired:
        row.stepup_session_id = None
        row.stepup_at = None


@hookimpl
def session_details(row: Any) -> Mapping[str, Any]:
    return {"stepup_at": row.stepup_at}
