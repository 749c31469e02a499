"""``psessions CONFIG migrate``: copy every live old session now, for an old store emptied at once.

The lazy path moves each session on its user's next visit; this command
moves the others without waiting. For each id the source lists
(:meth:`Source.live_ids <sessions_migrate.source.Source.live_ids>`), it runs
one request through the application's own pipeline, exactly as a first visit
would, but naming the old session in the request's environ
(:data:`~sessions_migrate.BULK_ENVIRON`, which no browser can set) instead of
in a cookie: ``session_fallback_token`` derives the same token, ``session_load``
reads, carries and takes the old session, every plugin fills its columns
(``session_migrated``: the user id, the CSRF token), and the kernel inserts
the row at the commit. The browser's old cookie then finds that row by its
token, and the lazy path only deletes the old cookie.

One transaction per session: a request of the application is bound to one
transaction of ``request.tm`` with a SQLAlchemy session (a connection) of its
own, so that a session that fails (a conflict with the user's own first
visit, a database error) costs only its own transaction, is run again up to
``--retries`` times, and never stops the run. The derived token makes it
idempotent: a second run, or a retry after a commit whose outcome was lost,
finds the copy and copies nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.orm import Session as DBSession
from transaction.interfaces import TransientError

from sessions_kernel.cli import (
    EXIT_DATABASE,
    EXIT_OK,
    UsageError,
    progress_bar,
    wants_progress,
)

from .outcome import ALREADY, COPIED, GONE, NOT_MIGRATED, OUTCOME, Outcome
from .source import ClaimedElsewhere, Unrepresentable

if TYPE_CHECKING:
    from pyramid.registry import Registry

    from sessions_kernel import SessionFactory

    from . import Migration

__all__ = ["BulkReport", "add_arguments", "copy_session", "migrate_all", "run"]

log = logging.getLogger("sessions_migrate")

DESCRIPTION = (
    "Copy every live session of the old store (session.migrate_from) into the session "
    "table now, each through the application's own request pipeline in a transaction of "
    "its own, and delete it from the old store. Old cookies keep working through the lazy "
    "path until session.migrate_until: they find the copy. A session that cannot be moved "
    "is counted, logged and left in the old store; running the command again copies what "
    "is left. Exit codes: 0 done, 1 a session or the old store failed with a database "
    "error or a conflict (run it again), 2 bad usage or the cut-off has passed."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``psessions CONFIG migrate``."""
    parser.add_argument(
        "--batch",
        type=int,
        default=500,
        metavar="N",
        help="list the old sessions N at a time: the listing's own transaction ends after "
        "each N (each session is copied in a transaction of its own; default %(default)s)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        metavar="N",
        help="copy a session again that a conflict or a transient database error aborted, "
        "up to N times (default %(default)s)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run each session through the pipeline and roll it back: say what would be "
        "copied, change nothing",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr, with the total (the source counts the live "
        "sessions first), rate and time left; by default only when stderr is a terminal",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing but errors (no progress bar)"
    )


@dataclass
class BulkReport:
    """What a run did: the count of each outcome, and the reasons of those not migrated."""

    dry_run: bool = False
    counts: Counter[str] = field(default_factory=Counter)
    #: reason -> how many sessions were not migrated for it
    reasons: Counter[str] = field(default_factory=Counter)
    #: old sessions already copied that the old store still held (deleted now)
    leftovers: int = 0
    seconds: float = 0.0

    def add(self, outcome: Outcome) -> None:
        self.counts[outcome.kind] += 1
        if outcome.kind == NOT_MIGRATED:
            self.reasons[outcome.reason or "unknown"] += 1

    @property
    def failed(self) -> int:
        """Sessions that a conflict or an error stopped: another run may copy them."""
        return self.reasons["conflict"] + self.reasons["error"]

    def line(self) -> str:
        """The summary: ``copied N, already copied M, expired or gone K, not migrated F``."""
        copied = self.counts[COPIED]
        reasons = ", ".join(f"{reason} {n:,}" for reason, n in sorted(self.reasons.items()))
        parts = [
            f"{'would copy' if self.dry_run else 'copied'} {copied:,}",
            f"already copied {self.counts[ALREADY]:,}",
            f"expired or gone {self.counts[GONE]:,}",
            f"not migrated {self.counts[NOT_MIGRATED]:,}" + (f" ({reasons})" if reasons else ""),
        ]
        text = ", ".join(parts)
        if self.leftovers:
            text += f"; {self.leftovers:,} already copied deleted from the old store"
        if self.dry_run:
            return f"dry run, nothing changed: {text}"
        rate = copied / self.seconds if self.seconds else 0.0
        return f"{text} in {self.seconds:.1f} s ({rate:,.0f} sessions/s)"


def run(
    args: argparse.Namespace,
    factory: SessionFactory,
    bind: sa.Engine,
    out: IO[str],
    registry: Registry,
) -> int:
    """``psessions CONFIG migrate``: the command's run (see :mod:`sessions_migrate.bulk`)."""
    from . import migration_of

    if args.batch < 1:
        raise UsageError(f"--batch must be at least 1, got {args.batch}")
    if args.retries < 0:
        raise UsageError(f"--retries must not be negative, got {args.retries}")
    migration = migration_of(factory)
    now = int(factory.clock())  # the same moment for the count and the listing
    if now >= migration.until:
        day = datetime.fromtimestamp(migration.until, timezone.utc).date().isoformat()
        raise UsageError(
            f"session.migrate_until = {day} has passed: old cookies are no longer read, so "
            "nobody could reach a copy. Remove MigrateMixin and the session.migrate_* "
            "settings, then the old store's table or keys"
        )
    show = wants_progress(args)
    report = BulkReport(dry_run=args.dry_run)
    failure: Exception | None = None
    try:
        migrate_all(
            migration,
            registry,
            bind,
            now=now,
            report=report,
            batch=args.batch,
            retries=args.retries,
            dry_run=args.dry_run,
            show=show,
        )
    except sa.exc.SQLAlchemyError:
        raise
    except Exception as exc:  # the old store failed while listing (Redis down)
        failure = exc
    if failure is not None:
        print(
            f"psessions: the old store ({migration.source.name}) failed while listing its "
            f"sessions: {type(failure).__name__}: {failure}. So far: {report.line()}",
            file=sys.stderr,
        )
        return EXIT_DATABASE
    if not args.quiet:
        print(report.line(), file=out)
    if report.failed:
        if args.quiet:
            print(f"psessions: {report.line()}", file=sys.stderr)
        return EXIT_DATABASE
    return EXIT_OK


def migrate_all(
    migration: Migration,
    registry: Registry,
    bind: sa.Engine,
    *,
    now: int,
    report: BulkReport | None = None,
    batch: int = 500,
    retries: int = 3,
    dry_run: bool = False,
    show: bool = False,
) -> BulkReport:
    """Copy every session ``migration.source`` lists as live at ``now``; return the report.

    The ids are listed on a SQLAlchemy session of their own on ``bind``
    (a source outside the database ignores it), whose transaction ends after
    each ``batch`` ids, so that no snapshot is held for the whole run (the
    sources read their pages in full before they give them). Each id is
    copied by :func:`copy_session`. ``show``: a tqdm progress bar on stderr,
    its total counted first (``source.count``).
    """
    report = report if report is not None else BulkReport(dry_run=dry_run)
    source = migration.source
    start = time.perf_counter()
    with DBSession(bind) as listing:
        total = source.count(listing, now) if show else None
        listing.rollback()
        bar = progress_bar(total, f"migrate {source.name}") if show else None
        redirect = _redirect_logging() if bar is not None else nullcontext()
        try:
            with redirect:
                for listed, old_id in enumerate(source.live_ids(listing, now), 1):
                    report.add(
                        copy_session(
                            migration,
                            registry,
                            bind,
                            old_id,
                            retries=retries,
                            dry_run=dry_run,
                            report=report,
                        )
                    )
                    report.seconds = time.perf_counter() - start
                    if bar is not None:
                        bar.update(1)
                    if listed % batch == 0:
                        listing.rollback()  # MariaDB's REPEATABLE READ snapshot ends here
        finally:
            if bar is not None:
                bar.close()
    report.seconds = time.perf_counter() - start
    return report


def copy_session(
    migration: Migration,
    registry: Registry,
    bind: sa.Engine,
    old_id: str,
    *,
    retries: int = 3,
    dry_run: bool = False,
    report: BulkReport | None = None,
) -> Outcome:
    """Move the old session ``old_id`` through one request of the application; its outcome.

    The request's transaction commits only when the session was copied (and
    never with ``dry_run``); for any other outcome it is rolled back, so that
    an existing copy is not touched (its idle expiry is not extended). A
    conflict or a transient database error runs it again, up to ``retries``
    times; what still fails is :data:`~sessions_migrate.outcome.NOT_MIGRATED`
    with the reason ``conflict`` or ``error``, logged with a hash of the old
    id. An old session already copied that the old store still holds (its
    deletion after a Redis commit failed) is deleted (``report.leftovers``).
    """
    from . import _short

    for attempt in range(retries + 1):
        try:
            outcome = _one_request(registry, old_id, commit=not dry_run)
        except Exception as exc:
            _hide_parameters(exc)
            transient = _is_transient(exc)
            if transient and attempt < retries:
                time.sleep(min(0.05 * 2**attempt, 1.0))
                continue
            reason = "conflict" if transient else "error"
            detail = f"{type(exc).__name__}: {exc}"
            log.warning(
                "old %s session %s not migrated (%s): %s",
                migration.source.name,
                _short(old_id),
                reason,
                detail,
                exc_info=not transient,
            )
            return Outcome(NOT_MIGRATED, reason, detail)
        if outcome.kind == ALREADY and not dry_run and report is not None:
            try:
                if _delete_leftover(migration, bind, old_id):
                    report.leftovers += 1
            except Exception as exc:  # the copy is there: a leftover stays until its own expiry
                _hide_parameters(exc)
                log.exception("an already copied old session could not be deleted")
        return outcome
    raise AssertionError("unreachable")  # pragma: no cover


def _hide_parameters(error: BaseException) -> None:
    """Leave a SQL statement's parameters out of ``error``'s message and its chain's: they
    hold the old id (``WHERE namespace = ...``), which no log line shows in full."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa.exc.StatementError):
            current.hide_parameters = True
        current = current.__cause__ or current.__context__


def _one_request(registry: Registry, old_id: str, *, commit: bool) -> Outcome:
    """One request, as pyramid_tm's tween runs it, whose session is the old session's."""
    from pyramid.request import Request
    from pyramid.scripting import prepare

    from . import BULK_ENVIRON

    request = Request.blank("/", environ={BULK_ENVIRON: old_id})
    env = prepare(request=request, registry=registry)
    try:
        manager = request.tm
        request.environ["tm.active"] = True  # as pyramid_tm's tween marks its requests
        request.environ["tm.manager"] = manager
        manager.begin()
        try:
            session = request.session
            session.new  # noqa: B018  (the first use: the load stage, the plugin's session_load)
            outcome: Outcome | None = session.stash.get(OUTCOME, None)
            if outcome is None:  # pragma: no cover - the plugin records every outcome
                outcome = Outcome(NOT_MIGRATED, "error", "the session was not loaded as old")
            if commit and outcome.kind == COPIED:
                manager.commit()
            else:
                manager.abort()
        except BaseException:
            manager.abort()
            raise
        finally:
            request.environ.pop("tm.active", None)
            request.environ.pop("tm.manager", None)
    finally:
        env["closer"]()
    return outcome


def _delete_leftover(migration: Migration, bind: sa.Engine, old_id: str) -> bool:
    """Delete the old session ``old_id`` whose copy exists, if the old store still holds it."""
    source = migration.source
    now = int(migration.factory.clock())
    with DBSession(bind) as db:
        try:
            old = source.read(db, old_id, now)
        except Unrepresentable:
            return False
        if old is None:
            return False
        try:
            claim = source.take(db, old)
        except ClaimedElsewhere:
            return False
        try:
            db.commit()
        except BaseException:
            if claim.on_abort is not None:
                claim.on_abort()
            raise
    if claim.on_commit is not None:
        claim.on_commit()
    return True


def _is_transient(error: BaseException) -> bool:
    """Running the session's request again is safe and may succeed.

    A conflict (``SessionConflictError``, a concurrent first visit), a
    rolled-back or refused transaction, and a commit whose outcome is unknown:
    the derived token makes a second run find a copy that did commit.
    """
    from sessions_kernel.outage import classify_error

    if isinstance(error, TransientError):
        return True
    return classify_error(error) in ("retry", "unavailable", "unknown-outcome")


@contextmanager
def _redirect_logging() -> Iterator[None]:
    """Log lines above the bar, not through it (console handlers write through tqdm)."""
    from tqdm.contrib.logging import (  # type: ignore[import-untyped,unused-ignore]
        logging_redirect_tqdm,
    )

    with logging_redirect_tqdm():
        yield
