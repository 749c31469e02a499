"""Events the kernel sends through ``request.registry.notify``.

Subscribe with Pyramid's ``config.add_subscriber(handler, SessionRejected)``.
``session_id`` is always the row key (the SHA-256 of the token), safe to log:
it cannot be turned back into a cookie.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "CookieRejected",
    "SessionCreated",
    "SessionEvent",
    "SessionInvalidated",
    "SessionMerged",
    "SessionNotFound",
    "SessionRegenerated",
    "SessionRejected",
]


@dataclass(frozen=True)
class SessionEvent:
    """Base of every session event."""

    request: Any
    #: ``True`` for an event sent while :meth:`SessionFactory.peek
    #: <sessions_kernel.SessionFactory.peek>` looked at the session: what a real request
    #: would have found, but nothing was done about it (no row deleted, no cookie sent).
    peek: ClassVar[bool] = False


@dataclass(frozen=True)
class CookieRejected(SessionEvent):
    """The session cookie failed to decrypt or authenticate (forged, damaged, old key)."""

    reason: str


@dataclass(frozen=True)
class SessionNotFound(SessionEvent):
    """A valid cookie named a session that does not exist (any longer)."""

    session_id: str


@dataclass(frozen=True)
class SessionRejected(SessionEvent):
    """A plugin's ``session_validate`` rejected a stored session; it was deleted."""

    session_id: str
    reason: str


@dataclass(frozen=True)
class SessionCreated(SessionEvent):
    """A new session row is being inserted."""

    session_id: str


@dataclass(frozen=True)
class SessionRegenerated(SessionEvent):
    """``regenerate_id()`` gave a session a new id (and cookie), keeping its data."""

    old_session_id: str
    session_id: str


@dataclass(frozen=True)
class SessionInvalidated(SessionEvent):
    """``invalidate()`` deleted a stored session."""

    session_id: str


@dataclass(frozen=True)
class SessionMerged(SessionEvent):
    """A concurrent request wrote the session first; this request's changes were merged.

    ``keys`` names what this request changed (data keys, flash queues as
    ``flash:<queue>``, plugin columns), applied onto the other request's write.
    """

    session_id: str
    keys: tuple[str, ...]
