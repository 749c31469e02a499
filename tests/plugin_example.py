"""A third-party session plugin that lives in the test suite only (never shipped).

It proves that a plugin can add a column, settings with validators and a
``session_validate`` hook without touching the kernel. The feature: an
"epoch" stamped on every new session; raising ``session.example_epoch``
rejects every session created under an older epoch (log everybody out).
``ConfigExampleMixin`` makes ``example_note`` runtime-configurable.

The tests register it through an entry point of a temporary distribution
(see ``kernel_support.install_distribution``); hook calls are recorded in
:data:`CALLS` as ``(hook, model name)`` so tests can tell which factory ran it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from sessions_kernel import Setting, hookimpl
from sessions_kernel.settings import integer, optional

#: (hook name, model class name) for every pipeline hook call.
CALLS: list[tuple[str, str]] = []


class ExampleMixin:
    """Stamps the epoch a session was created under."""

    example_created_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ConfigExampleMixin(ExampleMixin):
    """Adds a per-session ``example_note`` (NULL = the global value)."""

    example_note: Mapped[str | None] = mapped_column(String(20), nullable=True)


def _note(value: Any) -> str:
    """up to 20 letters"""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z]{1,20}", value.strip()):
        raise ValueError(f"expected up to 20 letters, got {value!r}")
    return value.strip()


@hookimpl
def session_mixins() -> list[type]:
    return [ExampleMixin, ConfigExampleMixin]


@hookimpl
def session_settings() -> list[Setting]:
    return [
        Setting(
            "example_epoch",
            0,
            integer(0, 1000),
            "sessions created under an older epoch are rejected",
        ),
        Setting("example_note", None, optional(_note), "a note shown with the session"),
    ]


@hookimpl
def session_check_settings(settings: Mapping[str, Any]) -> list[str]:
    if settings.get("example_note") == "locked" and not settings.get("example_epoch"):
        return ["example_note = 'locked' needs example_epoch of at least 1"]
    return []


@hookimpl
def session_load(session: Any) -> None:
    CALLS.append(("session_load", session.model.__name__))


@hookimpl
def session_validate(session: Any) -> str | None:
    CALLS.append(("session_validate", session.model.__name__))
    epoch = session.row.example_created_epoch or 0
    current = session.settings.example_epoch
    if epoch < current:
        return f"created under epoch {epoch}, the current epoch is {current}"
    return None


@hookimpl
def session_persist(session: Any, row: Any) -> None:
    CALLS.append(("session_persist", session.model.__name__))
    if session.new:
        row.example_created_epoch = session.settings.example_epoch
