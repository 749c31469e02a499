"""Renewal timeout with theft detection (OWASP session renewal) for sessions_kernel.

A *renewal id* (16 random bytes) travels inside the encrypted session cookie,
beside the session token, under the cookie extra :data:`COOKIE_KEY`. The row
stores only SHA-256 hashes of renewal ids. The protocol, for one session:

1. The first cookie of a session carries its first renewal id. A stored
   session without one (created before the feature was turned on) is
   *adopted*: it gets an id at its next request, which is no violation.
2. ``renewal_timeout`` seconds after the current id was issued, a request
   carrying it gets a *candidate* id in a new cookie (the *offer*). The
   current id stays valid while the offer is pending.
3. The first request carrying the candidate *acknowledges* it: the candidate
   becomes the current id and the old one becomes the *previous* id.
4. Until then, the offer is repeated (the same candidate) every
   ``renewal_try_every`` seconds, and in every response that sends a cookie
   anyway.
5. *Grace*: for ``renewal_try_every`` seconds after the acknowledgement, a
   request carrying the previous id is accepted and answered with the
   current cookie. These are the browser's own requests that were in flight
   when it stored the new cookie.
6. Any other id (the previous one after the grace window, an unknown one, a
   missing one) means two copies of one cookie are in use: the session is
   rejected with the reason ``"renewal violation"`` (the kernel deletes it and
   starts a new one, so every copy is logged out) and :class:`RenewalViolation`
   is notified.

The candidate for an id is derived from it, ``HMAC-SHA256(id, label)``
truncated to 16 bytes (:func:`next_renewal_id`), so that a re-offer sends the
same candidate and a request in the grace window can be given the current id,
while the row holds hashes only. The first id of a chain is random. Only the
server reads renewal ids (they are inside the AES-GCM cookie), so deriving
one from the other gives nothing to anybody who lacks the cookie key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from sessions_kernel import Session, Setting, StashKey, hookimpl
from sessions_kernel.events import SessionEvent
from sessions_kernel.merge import MergeConflict, MergeRule, droppable
from sessions_kernel.settings import integer, optional

__all__ = [
    "COLUMNS",
    "COOKIE_KEY",
    "ID_BYTES",
    "REASON",
    "ConfigRenewalMixin",
    "RenewalMixin",
    "RenewalViolation",
    "merge_states",
    "next_renewal_id",
    "renewal_digest",
]

#: Name of the cookie extra that carries the renewal id.
COOKIE_KEY = "renewal"
#: Length of a renewal id in bytes (128 bits).
ID_BYTES = 16
#: The reason ``session_validate`` gives for a violation (see ``SessionRejected``).
REASON = "renewal violation"

_NEXT_LABEL = b"sessions_renewal: next renewal id"
MAX_RENEWAL_TIMEOUT = 365 * 24 * 3600
MAX_TRY_EVERY = 24 * 3600


class RenewalMixin:
    """Model mixin: renewal timeout with theft detection (settings global only).

    Columns (every one nullable, so existing tables can gain them):

    ``renewal_id``
        SHA-256 (hex) of the current renewal id; ``NULL`` for a session that
        predates the feature (it is adopted at its next request).
    ``renewal_at``
        when the current id was issued (creation, adoption or acknowledgement).
    ``renewal_candidate``
        SHA-256 of the offered candidate; ``NULL`` when no offer is pending.
    ``renewal_offered_at``
        when the candidate was last sent.
    ``renewal_previous``
        SHA-256 of the id the last acknowledgement replaced, accepted until
        ``renewal_at + renewal_try_every``; cleared by the next offer.
    """

    renewal_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    renewal_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    renewal_candidate: Mapped[str | None] = mapped_column(String(64), nullable=True)
    renewal_offered_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    renewal_previous: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ConfigRenewalMixin(RenewalMixin):
    """:class:`RenewalMixin` plus per-session ``renewal_timeout`` and ``renewal_try_every``.

    ``NULL`` in either column means the global setting. Change them with
    ``request.session.settings`` (validated like at start-up).
    """

    renewal_timeout: Mapped[int | None] = mapped_column(Integer, nullable=True)
    renewal_try_every: Mapped[int | None] = mapped_column(Integer, nullable=True)


@dataclass(frozen=True)
class RenewalViolation(SessionEvent):
    """A renewal id that is no longer (or never was) valid arrived: the cookie was copied.

    Sent before the kernel deletes the session (it then also sends
    ``SessionRejected`` with the reason ``"renewal violation"``).

    :ivar session_id: the row key (SHA-256 of the token), safe to log.
    :ivar detail: ``"previous id after the grace window"``, ``"unknown id"`` or
        ``"missing id"``.
    """

    session_id: str
    detail: str


def renewal_digest(renewal_id: bytes) -> str:
    """The value stored in the row for a renewal id: its SHA-256, hex encoded."""
    return hashlib.sha256(renewal_id).hexdigest()


def next_renewal_id(renewal_id: bytes) -> bytes:
    """The candidate that replaces ``renewal_id``: ``HMAC-SHA256(renewal_id, label)[:16]``."""
    return hmac.new(renewal_id, _NEXT_LABEL, hashlib.sha256).digest()[:ID_BYTES]


def _same(digest: str, stored: str | None) -> bool:
    return stored is not None and hmac.compare_digest(digest.encode(), stored.encode())


# What a loaded row and the id its cookie carries amount to.
_ADOPT = "adopt"  # the row has no renewal id yet
_CURRENT = "current"
_ACK = "acknowledgement"
_PREVIOUS = "previous"  # the previous id inside the grace window
_ADOPTION_GRACE = "adoption grace"  # no id, shortly after the row adopted one
# violations
_STALE = "previous id after the grace window"
_UNKNOWN = "unknown id"
_MISSING = "missing id"
_VIOLATIONS = frozenset({_STALE, _UNKNOWN, _MISSING})


def _classify(row: Any, presented: bytes | None, now: int, try_every: int) -> str:
    if row.renewal_id is None:
        return _ADOPT
    in_grace = now < (row.renewal_at or 0) + try_every
    if presented is None:
        # Only a cookie made before the adoption lacks an id; requests of the adopting
        # browser that were already in flight get the same grace as after a renewal.
        return _ADOPTION_GRACE if in_grace and row.renewal_previous is None else _MISSING
    digest = renewal_digest(presented)
    if _same(digest, row.renewal_id):
        return _CURRENT
    if _same(digest, row.renewal_candidate):
        return _ACK
    if _same(digest, row.renewal_previous):
        return _PREVIOUS if in_grace else _STALE
    return _UNKNOWN


#: What ``session_validate`` classified the presented id as, and under which
#: ``renewal_try_every``: ``session_renew`` reuses it instead of hashing the id again.
_CLASSIFIED = StashKey[tuple[str, int]]("sessions_renewal: the presented id, classified")


def _classified(session: Session, presented: bytes | None, try_every: int) -> str:
    """The classification of the presented id: validate's, unless the grace window changed.

    A setting saved in this request may have changed ``renewal_try_every``
    (the grace window) since validate; renewal may also have been turned on
    in it, with no classification made at all. Then it is made now.
    """
    classified = session.stash.get(_CLASSIFIED, None)
    if classified is not None and classified[1] == try_every:
        return classified[0]
    return _classify(session.row, presented, session.now, try_every)


def _assign(row: Any, name: str, value: Any) -> None:
    """Set a column only if it changes, so the kernel's UPDATE lists real changes only."""
    if getattr(row, name) != value:
        setattr(row, name, value)


def _timing(session: Session) -> tuple[int | None, int]:
    settings = session.settings
    return settings["renewal_timeout"], settings["renewal_try_every"]


# -- configuration ------------------------------------------------------------------


SETTINGS = (
    Setting(
        "renewal_timeout",
        None,
        optional(integer(2, MAX_RENEWAL_TIMEOUT)),
        "seconds after which the renewal id in the cookie is replaced; None turns renewal off",
    ),
    Setting(
        "renewal_try_every",
        5,
        integer(1, MAX_TRY_EVERY),
        "seconds between offers of a new renewal id until the browser sends it back; "
        "also how long the replaced id stays acceptable",
    ),
)


@hookimpl
def session_mixins() -> list[type]:
    return [RenewalMixin, ConfigRenewalMixin]


@hookimpl
def session_settings() -> tuple[Setting, ...]:
    return SETTINGS


@hookimpl
def session_check_settings(settings: Mapping[str, Any]) -> list[str]:
    timeout = settings.get("renewal_timeout")
    try_every = settings.get("renewal_try_every")
    if timeout is not None and try_every is not None and try_every >= timeout:
        return [
            f"renewal_try_every = {try_every} must be less than renewal_timeout = {timeout}: "
            "offers are repeated every renewal_try_every seconds within one renewal period. "
            "Lower renewal_try_every or raise renewal_timeout."
        ]
    return []


#: The columns that hold the protocol's state; they merge together.
COLUMNS = (
    "renewal_id",
    "renewal_at",
    "renewal_candidate",
    "renewal_offered_at",
    "renewal_previous",
)


@droppable
def merge_states(
    base: Mapping[str, Any], mine: Mapping[str, Any], theirs: Mapping[str, Any]
) -> Mapping[str, Any]:
    """Two requests of one session moved the protocol at once: keep the state further on.

    Both requests carried ids of one chain, and every candidate is derived
    from the id before it, so the two states differ only by how far each got:
    an offer (``renewal_offered_at`` later) or an acknowledgement
    (``renewal_at`` later). The state further on accepts the cookie either
    request sent: an offer's candidate is the acknowledged id, and the
    acknowledged request's own id is its ``renewal_previous``. Two different
    chains (two requests adopting one old session, each with a random first
    id) cannot both stand: :class:`~sessions_kernel.merge.MergeConflict`, and
    the request is retried. Droppable: where the database refuses the write
    outright, the concurrent state stands and the browser keeps the cookie
    it has, which that state accepts (the same id, or the previous one
    within the grace window).
    """
    if dict(mine) == dict(theirs):
        return theirs

    def progress(state: Mapping[str, Any]) -> tuple[int, int]:
        return (state["renewal_at"] or -1, state["renewal_offered_at"] or -1)

    ahead, behind = (mine, theirs) if progress(mine) > progress(theirs) else (theirs, mine)
    if behind["renewal_id"] not in (ahead["renewal_id"], ahead["renewal_previous"]):
        raise MergeConflict("two requests started different renewal chains")
    return ahead


@hookimpl
def session_merge_rules() -> dict[tuple[str, ...], MergeRule]:
    return {COLUMNS: merge_states}


# -- the request pipeline -------------------------------------------------------------


@hookimpl
def session_validate(session: Session) -> str | None:
    timeout, try_every = _timing(session)
    if timeout is None:
        return None
    row = session.row
    kind = _classify(row, session.cookie_extras.get(COOKIE_KEY), session.now, try_every)
    session.stash[_CLASSIFIED] = (kind, try_every)
    if kind not in _VIOLATIONS:
        return None
    session.notify(RenewalViolation(session.request, row.id, kind))
    return REASON


@hookimpl
def session_renew(session: Session) -> None:
    timeout, try_every = _timing(session)
    if timeout is None:
        return
    row, now, extras = session.row, session.now, session.cookie_extras
    if session.new or row.renewal_id is None:
        # A new session's first cookie, or the adoption of a session stored before
        # the feature was on: start a chain with a random id.
        first = os.urandom(ID_BYTES)
        extras[COOKIE_KEY] = first
        _assign(row, "renewal_id", renewal_digest(first))
        _assign(row, "renewal_at", now)
        for name in ("renewal_candidate", "renewal_offered_at", "renewal_previous"):
            _assign(row, name, None)
        return
    presented = extras.get(COOKIE_KEY)
    kind = _classified(session, presented, try_every)
    if kind == _ACK:
        row.renewal_previous = row.renewal_id
        row.renewal_id = row.renewal_candidate
        row.renewal_candidate = None
        row.renewal_offered_at = None
        row.renewal_at = now
    elif kind == _PREVIOUS:
        # Answer with the current id so that this response, if it arrives last,
        # cannot put the replaced id back into the browser.
        assert presented is not None
        current = next_renewal_id(presented)
        if _same(renewal_digest(current), row.renewal_id):
            extras[COOKIE_KEY] = current
    elif kind == _CURRENT:
        assert presented is not None
        if row.renewal_candidate is None:
            due = now >= (row.renewal_at or 0) + timeout
        else:
            due = session.dirty or now >= (row.renewal_offered_at or 0) + try_every
        if due:
            candidate = next_renewal_id(presented)
            _assign(row, "renewal_candidate", renewal_digest(candidate))
            _assign(row, "renewal_previous", None)
            row.renewal_offered_at = now
            extras[COOKIE_KEY] = candidate
    # _ADOPTION_GRACE: accepted as it is. A violation never gets here (validate
    # rejected it), unless this request's saved settings shortened the grace.


# -- maintenance ------------------------------------------------------------------------


@hookimpl
def session_last_active(row: Any) -> int | None:
    """An acknowledgement or an offer happens on a request, often a read-only one."""
    times = [t for t in (row.renewal_at, row.renewal_offered_at) if t is not None]
    return max(times) if times else None
