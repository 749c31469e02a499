"""What became of the old session a request named: what ``psessions migrate`` counts.

The plugin's ``session_load`` records it in the request's
``session.stash`` under :data:`OUTCOME`, for the lazy path and the bulk path
alike; ``psessions migrate`` reads it after each session's load.
"""

from __future__ import annotations

from dataclasses import dataclass

from sessions_kernel import StashKey

__all__ = ["ALREADY", "COPIED", "GONE", "NOT_MIGRATED", "OUTCOME", "Outcome"]

#: carried into the new session (stored at the commit)
COPIED = "copied"
#: the new session existed already (an earlier run, or the browser's own first visit)
ALREADY = "already copied"
#: the old store no longer has it, or its own rules expired it
GONE = "expired or gone"
#: the new store cannot hold it, or a plugin refused its part: the old session stays
NOT_MIGRATED = "not migrated"


@dataclass(frozen=True)
class Outcome:
    """``kind``: one of the four above. For :data:`NOT_MIGRATED`, ``reason`` is a short
    category (``unrepresentable``, ``refused by a plugin``) and ``detail`` the message the
    log shows (never the old id)."""

    kind: str
    reason: str | None = None
    detail: str | None = None


#: Where ``session_load`` records the :class:`Outcome` of the request's old session.
OUTCOME = StashKey[Outcome]("sessions_migrate: what became of the old session the request named")
