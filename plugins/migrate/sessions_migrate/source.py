"""What a source of old sessions gives the migration: one adapter per old store.

A *source* is the old session store an application is switching from. It
knows three things the migration cannot: how the old store's cookie is
verified (its signature or encryption, with the old secret), where an old
session is kept and when it expired by the old store's own rules, and how the
old session's data is decoded. Everything else (the cut-off date, carrying
the data into the new session, the user id, the CSRF token, the progress of
``psessions migrate``, deleting the old cookie after the commit) is the
plugin's, the same for every source.

An adapter is a class with the methods of :class:`Source`, registered in the
entry-point group ``sessions_migrate.sources`` (or given to
``session.migrate_from`` by its dotted name). The built-in ones are in
:mod:`sessions_migrate.sources`.

Nothing here issues SQL outside the application's transaction: every method
that touches a SQL store is given the request's SQLAlchemy session (the one
``request.dbsession`` is), so that reading, claiming and deleting the old
session commit or roll back with the new session's ``INSERT``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

__all__ = [
    "Claim",
    "ClaimHeld",
    "ClaimedElsewhere",
    "OldSession",
    "Source",
    "SourceOptions",
    "Unrepresentable",
]


class ClaimedElsewhere(Exception):
    """A concurrent request took the old session first (two first visits with one cookie).

    The plugin turns it into a retryable
    :class:`~sessions_kernel.SessionConflictError`: pyramid_retry runs the
    request again, and it finds the session the other request stored.
    """


class ClaimHeld(Exception):
    """The old session is claimed by a request that did not end within the wait.

    A process that died holding a claim (``kill -9``, a deployment) leaves it
    until it expires. The plugin lets this request go on without the old
    session (a new, empty one; the old cookie is kept), and a request after
    the claim's expiry migrates it: the browser is not failed meanwhile.
    """


class Unrepresentable(ValueError):
    """The old session holds something the migration cannot carry over.

    Raised by a source's decoding (a pickled object of a class outside the
    allowed ones) or by the plugin (a value the new data serializer cannot
    store). That one session is not migrated: the reason is logged, the
    request goes on with a new, empty session, and the old session is left
    where it is.
    """


@dataclass(frozen=True)
class SourceOptions:
    """What the application configured for its source (the ``session.migrate_*`` settings).

    ``secrets`` are the old store's secrets, read from the file or the
    environment variable the settings name, newest first; never logged or
    shown. ``cookie_name`` is the old store's cookie name (``None``: the
    source's default). ``url`` is where a store outside the application's
    database is (a Redis URL). ``table`` is the old store's table name
    (``None``: the source's default). ``timeout`` is the old store's session
    timeout in seconds, where the old store's rows or cookies do not record it
    (``None``: the source's default). ``options`` holds the remaining
    ``session.migrate_options`` pairs (``key=value``), as strings, for what only one source
    knows (each source documents its own).
    """

    secrets: Sequence[bytes] = field(repr=False)
    cookie_name: str | None = None
    url: str | None = field(default=None, repr=False)
    table: str | None = None
    timeout: int | None = None
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass
class OldSession:
    """One live session of the old store, decoded, ready to become a new session.

    ``id`` is the old store's key for it (never shown whole in logs).
    ``data`` is what the application stored, without the keys the old store
    or Pyramid used for their own bookkeeping: those are taken out into the
    fields below. ``created`` and ``accessed`` are seconds since the epoch
    (``None`` when the old store did not record them). ``userid`` is the
    logged-in user (``None``: nobody), as the old application's security
    policy stored it. ``csrf_token`` is the CSRF token the browser's pages
    hold (``None``: none). ``flash`` maps a queue name to its messages.
    ``settings`` holds per-session values of the new store's runtime settings
    (``idle_timeout``, ``absolute_timeout``, ...) where the old store kept
    them per session. ``expires_at``: when the old store would have ended it.
    ``handle`` is whatever the source needs to delete it later.

    Its ``repr`` (what the kernel's hook trace, ``SESSIONS_TRACE_HOOKS``, prints of
    ``session_migrated``'s argument) leaves out ``id``, ``data``, ``handle`` (a source's
    handle may be the id) and ``csrf_token``.
    """

    id: str = field(repr=False)  # the old store's key: never in a repr
    data: dict[str, Any] = field(repr=False)
    created: int | None = None
    accessed: int | None = None
    userid: Any = None
    csrf_token: str | None = field(default=None, repr=False)
    flash: dict[str, list[Any]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    expires_at: int | None = None
    handle: Any = field(default=None, repr=False)

    def is_empty(self) -> bool:
        """Whether nothing in it is worth a new session."""
        return not (self.data or self.userid is not None or self.csrf_token or self.flash)


@dataclass
class Claim:
    """A taken old session: this transaction is the only one to migrate it.

    ``on_commit`` and ``on_abort`` are callables without arguments, what the
    source must do once the request's transaction ended (delete a Redis key;
    release a claim); either may be ``None``. A SQL source deletes its row
    inside the transaction when it takes it, and needs neither.
    """

    on_commit: Callable[[], None] | None = None
    on_abort: Callable[[], None] | None = None


@runtime_checkable
class Source(Protocol):
    """An old session store: the adapter the migration reads through.

    ``name`` is the name ``session.migrate_from`` takes. The class is built
    once per session factory with ``Source(options, clock)`` (the factory's clock): check the
    options there and raise :class:`ValueError` with the fix in the message
    (the plugin turns it into a ``ConfigurationError`` naming the setting).
    """

    name: ClassVar[str]
    #: the cookie name when ``session.migrate_cookie_name`` is not set
    default_cookie_name: ClassVar[str]

    def cookie_name(self) -> str:
        """The old store's cookie name."""
        ...

    def cookie_attributes(self) -> Mapping[str, Any]:
        """``path`` and ``domain`` of the old cookie, to delete it (``Response.delete_cookie``)."""
        ...

    def open_cookie(self, value: str) -> str | None:
        """The old session's id that the cookie ``value`` carries, or ``None``.

        Verify it with the old store's secrets and rules, without any I/O: a
        forged, damaged or unsigned cookie, one signed with another secret,
        or one the old store would refuse for its age gives ``None``. Never
        unpickle anything here: the cookie comes from the browser.
        """
        ...

    def read(self, dbsession: Any, old_id: str, now: int) -> OldSession | None:
        """The live old session ``old_id``, decoded; ``None`` when it is gone or expired.

        Expired means by the old store's own rules at ``now`` (seconds since
        the epoch). Writes nothing. Raise :class:`Unrepresentable` when its
        data cannot be decoded safely (a pickle naming a class:
        :func:`sessions_migrate.unpickle.safe_loads`). ``dbsession`` is the
        request's SQLAlchemy session (a store outside the database ignores it).
        """
        ...

    def take(self, dbsession: Any, old: OldSession) -> Claim:
        """Take ``old`` for this request's migration: exactly one request may.

        A SQL source deletes the row in ``dbsession``'s transaction
        (``DELETE`` by its key), so that a rollback keeps it; a row count of
        0 means a concurrent request took it first: raise
        :class:`ClaimedElsewhere`. A store outside the database takes an
        atomic claim (Redis ``SET ... NX``), returns what to do after the
        commit (delete the old session) and after an abort (release the
        claim, so that pyramid_retry's next attempt can take it), and raises
        :class:`ClaimedElsewhere` when the claim was held and ended meanwhile
        (the other request committed: the next attempt finds its session), or
        :class:`ClaimHeld` when it is still held after a wait.
        """
        ...

    def count(self, dbsession: Any, now: int) -> int:
        """How many ids :meth:`live_ids` gives (the total of ``psessions migrate``'s progress
        bar, asked only when the bar is shown)."""
        ...

    def live_ids(self, dbsession: Any, now: int) -> Iterator[str]:
        """The ids of the old store's live sessions at ``now``, for ``psessions migrate``.

        ``dbsession`` is a SQLAlchemy session of the command's own on the
        application's database, not a request's. The command copies (and so
        takes) each session while it iterates, and ends ``dbsession``'s
        transaction after every few ids (``--batch``), so that no snapshot
        lasts the whole run: read in pages, each fetched in full before its
        ids are given (no cursor open across a ``yield``). An id may be given
        that :meth:`read` then refuses (expired meanwhile, or undecodable):
        the command counts and reports it.
        """
        ...
