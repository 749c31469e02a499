"""Renewal timeout with theft detection (OWASP session renewal) for sessions_kernel.

A *renewal id* (16 random bytes) travels inside the encrypted session cookie,
beside the session token, under the cookie extra :data:`COOKIE_KEY`. The row
stores only SHA-256 hashes of renewal ids. The protocol, for one session:

1. The first cookie of a session carries its first renewal id, and so does
   the cookie of a new session id (``regenerate_id()``: a new chain, since the
   old token's cookies are dead anyway). A stored session without one (created
   before the feature was turned on) is *adopted*: it gets an id at its next
   request, which is no violation.
2. ``renewal_timeout`` seconds after the current id was issued, a request
   carrying it gets a *candidate* id in a new cookie (the *offer*). The
   current id stays valid while the offer is pending.
3. The first request carrying the candidate *acknowledges* it: the candidate
   becomes the current id and the old one becomes the *previous* id.
4. Until then, a request carrying the current id at least
   ``renewal_try_every`` seconds after the last offer gets a *new* candidate
   (a *re-offer*); the one it replaces is from then on an unknown id. No
   other response hands out a candidate: a request carrying the current id
   while an offer is pending (not yet due again) keeps the browser's cookie
   (:meth:`~sessions_kernel.Session.keep_cookie`), so that it neither gives a
   second holder of the cookie the candidate nor puts the current id back
   into a browser that holds the candidate by now.
5. *Grace*: for ``renewal_try_every`` seconds after the acknowledgement, a
   request carrying the previous id is served (the browser's own requests
   that were in flight when it stored the new cookie), and its response keeps
   the browser's cookie: it never carries the current id (that would hand it
   to a thief replaying the old cookie) nor the previous one (that would put
   it back into the owner's browser).
6. Any other id (the previous one after the grace window, an unknown one, a
   missing one) means two copies of one cookie are in use: the session is
   rejected with the reason ``"renewal violation"`` (the kernel deletes it and
   starts a new one, so every copy is logged out) and :class:`RenewalViolation`
   is notified.

So every id is handed to one request only, except the first offer, which
concurrent requests that loaded the same state (a page's parallel loads at the
renewal time) all get: it is derived from the current id alone. Two holders
of one cookie therefore part at the first renewal after the copy was made:
whichever acknowledges first, the other one's next request shows an id that is
previous (after the grace window) or unknown. A copy is caught within one
renewal period of the first renewal after it was made, whatever the rhythm of
either holder's requests; it can be used until then.

Candidates are derived, so that concurrent requests that loaded the same state
offer the same one, while the row holds hashes only: the first offer for an id
is ``HMAC-SHA256(id, label)`` truncated to 16 bytes, each re-offer
``HMAC-SHA256(id, label' || digest of the candidate it replaces)``
(:func:`next_renewal_id`). Only a request that shows the current id can derive
either. The first id of a chain is random. Only the server reads renewal ids
(they are inside the AES-GCM cookie), so deriving one from the other gives
nothing to anybody who lacks the cookie key.

A request whose write was merged onto a concurrent one keeps the browser's
cookie unless the stored protocol state is the one it wrote: its offer may
have lost to a concurrent acknowledgement, or the id it carries may have
become the previous one meanwhile.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from sessions_kernel import Session, Setting, StashKey, hookimpl
from sessions_kernel.events import SessionEvent, SessionMerged
from sessions_kernel.merge import MergeConflict, MergeRule, droppable
from sessions_kernel.settings import integer, optional

if TYPE_CHECKING:
    from pyramid.config import Configurator

    from sessions_kernel import SessionFactory

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
_REOFFER_LABEL = b"sessions_renewal: renewal id offered again, replacing "
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
        when the candidate was offered (the last re-offer, if any).
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


def next_renewal_id(renewal_id: bytes, replacing: str | None = None) -> bytes:
    """The candidate offered to replace ``renewal_id``.

    The first offer: ``HMAC-SHA256(renewal_id, label)[:16]``, a function of
    the id alone, so that every request that loaded the session in the same
    state offers the same candidate. A re-offer (``replacing``, the stored
    digest of the candidate it replaces):
    ``HMAC-SHA256(renewal_id, label' || replacing)[:16]``, new at every
    re-offer and again the same for requests that loaded the same state.
    """
    message = _NEXT_LABEL if replacing is None else _REOFFER_LABEL + replacing.encode("ascii")
    return hmac.new(renewal_id, message, hashlib.sha256).digest()[:ID_BYTES]


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


def _state(row: Any) -> tuple[Any, ...]:
    return tuple(getattr(row, name) for name in COLUMNS)


@droppable
def merge_states(
    base: Mapping[str, Any], mine: Mapping[str, Any], theirs: Mapping[str, Any]
) -> Mapping[str, Any]:
    """Two requests of one session moved the protocol at once: the state first stored stands.

    The concurrent request (``theirs``) committed first: its response, and the
    id it carries, are on their way to a browser, and only the state it
    stored accepts that id for sure. This request can still take its own
    cookie back (the plugin's ``SessionMerged`` subscriber keeps the browser's
    cookie when the stored state is not the one this request wrote). So the
    stored state stands, except where this request's step applies to it
    unchanged:

    * this request acknowledged the candidate the stored state still offers:
      the acknowledgement is stored;
    * this request gave the session a new id (``regenerate_id()``, which
      starts a new chain): every cookie of the old token, the other request's
      too, names no session any more, so the new chain is stored.

    Two requests that adopted one old session (each with a random first id)
    cannot both stand: :class:`~sessions_kernel.merge.MergeConflict`, and the
    request is retried. Droppable: where the database refuses the write
    outright, the concurrent state stands, as here.
    """
    if dict(mine) == dict(theirs):
        return theirs
    current, candidate = base["renewal_id"], base["renewal_candidate"]
    if mine["renewal_id"] not in (current, candidate):  # a new chain
        if current is None:
            raise MergeConflict("two requests started different renewal chains")
        return mine
    acknowledged = mine["renewal_id"] == candidate and mine["renewal_previous"] == current
    if (
        acknowledged
        and theirs["renewal_id"] == current
        and theirs["renewal_candidate"] == mine["renewal_id"]
    ):
        return mine
    return theirs


@hookimpl
def session_merge_rules() -> dict[tuple[str, ...], MergeRule]:
    return {COLUMNS: merge_states}


@hookimpl
def session_includeme(config: Configurator, factory: SessionFactory) -> None:
    config.add_subscriber(_after_merge, SessionMerged)


#: The protocol state this request writes (set just before its write).
_WRITING = StashKey[tuple[Any, ...]]("sessions_renewal: the state this request writes")
#: ``regenerate_id()`` was called in this request: its new id starts a new chain.
_REGENERATED = StashKey[bool]("sessions_renewal: the session id was regenerated")


def _after_merge(event: SessionMerged) -> None:
    """Keep the browser's cookie when the merged state is not the one this request wrote.

    A ``SessionMerged`` subscriber: a concurrent request wrote the row after
    this one read it, and the kernel stored what the rules decided
    (:func:`merge_states`). If that is not the state this request wrote, the
    renewal id in its cookie may be one the stored state refuses (an offer
    that lost to an acknowledgement) or the previous id (the concurrent
    request acknowledged a candidate): either would log the owner out, or
    hand an id to a second holder. The browser's cookie is then left as it is.
    """
    session = event.request.session
    if not isinstance(session, Session):
        return
    writing = session.stash.get(_WRITING, None)
    if writing is not None and session.row is not None and _state(session.row) != writing:
        session.keep_cookie()


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
def session_regenerated(session: Session) -> None:
    session.stash[_REGENERATED] = True


def _start_chain(session: Session, row: Any) -> None:
    """A random first id: a new session's, an adopted one's, or a new session id's."""
    first = os.urandom(ID_BYTES)
    session.cookie_extras[COOKIE_KEY] = first
    _assign(row, "renewal_id", renewal_digest(first))
    _assign(row, "renewal_at", session.now)
    for name in ("renewal_candidate", "renewal_offered_at", "renewal_previous"):
        _assign(row, name, None)


def _offer(session: Session, row: Any, candidate: bytes) -> None:
    _assign(row, "renewal_candidate", renewal_digest(candidate))
    _assign(row, "renewal_previous", None)
    row.renewal_offered_at = session.now
    session.cookie_extras[COOKIE_KEY] = candidate


@hookimpl
def session_renew(session: Session) -> None:
    timeout, try_every = _timing(session)
    if timeout is None:
        return
    row, now = session.row, session.now
    if session.new or row.renewal_id is None or session.stash.get(_REGENERATED, False):
        # A new session's first cookie, the adoption of a session stored before the
        # feature was on, or a new session id (no cookie of the old one works any more).
        _start_chain(session, row)
        return
    presented = session.cookie_extras.get(COOKIE_KEY)
    kind = _classified(session, presented, try_every)
    if kind == _ACK:
        row.renewal_previous = row.renewal_id
        row.renewal_id = row.renewal_candidate
        row.renewal_candidate = None
        row.renewal_offered_at = None
        row.renewal_at = now
    elif kind == _CURRENT:
        assert presented is not None
        if row.renewal_candidate is None:
            if now >= (row.renewal_at or 0) + timeout:
                _offer(session, row, next_renewal_id(presented))
        elif now >= (row.renewal_offered_at or 0) + try_every:
            # a new candidate: whoever holds the one it replaces shows an unknown id
            _offer(session, row, next_renewal_id(presented, row.renewal_candidate))
        else:
            # The browser may hold the pending candidate by now: sending the current id
            # would replace it, and sending the candidate would hand it to a second
            # holder of the current id.
            session.keep_cookie()
    elif kind in (_PREVIOUS, _ADOPTION_GRACE):
        # A request the browser sent before it stored its newer cookie, or a copy of
        # the old cookie: its response hands out no id (neither the current one, which
        # a thief would keep, nor its own, which would replace the browser's).
        session.keep_cookie()
    # A violation never gets here (validate rejected it), unless this request's saved
    # settings shortened the grace.


@hookimpl
def session_persist(session: Session, row: Any) -> None:
    """Note the protocol state this request writes, for :func:`_after_merge`."""
    if not session.new and _timing(session)[0] is not None:
        session.stash[_WRITING] = _state(row)


# -- maintenance ------------------------------------------------------------------------


@hookimpl
def session_last_active(row: Any) -> int | None:
    """An acknowledgement or an offer happens on a request, often a read-only one."""
    times = [t for t in (row.renewal_at, row.renewal_offered_at) if t is not None]
    return max(times) if times else None


# -- deploy checks (``psessions CONFIG check``) --------------------------------------------

if TYPE_CHECKING:
    from sessions_kernel.deploy import Finding


@hookimpl
def session_deploy_checks(settings: Mapping[str, Any], active: bool) -> list[Finding]:
    """``renewal.off``: the model has the renewal columns but ``renewal_timeout`` is not set.

    A plugin installed and left out of the model is the application's choice:
    it reports nothing then.
    """
    from sessions_kernel.deploy import Finding

    if not active or settings.get("renewal_timeout") is not None:
        return []
    return [
        Finding(
            "renewal.off",
            "session.renewal_timeout",
            "session.renewal_timeout is not set: the model has the renewal columns, but the "
            "renewal id in the cookie never changes, so a copied cookie in use beside the "
            "original is never detected",
            "set session.renewal_timeout, e.g. 900 (15 minutes)",
        )
    ]
