"""The transaction binding: how a request's session rides on the request's transaction.

The session joins the transaction of ``request.tm`` (pyramid_tm's, or one a
script or a test fixture began). :class:`TransactionBinding` registers the
hooks that run the rest of the pipeline before the commit and learn how it
ended, holds logouts (statements that must take effect even if the
transaction is then aborted, run again in a transaction of their own), and
serves the shared transaction of the SQLAlchemy starter's test fixtures. It
decides *when* the response's cookies may be sent; :mod:`~sessions_kernel.cookies`
builds them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm.attributes import instance_dict, set_committed_value
from transaction.interfaces import NoTransaction

from .changes import ChangeLog
from .cookies import make_private, vary_on_cookie
from .errors import SessionError

if TYPE_CHECKING:
    from pyramid.request import Request

    from .session import Session

__all__ = ["NextTransaction", "TransactionBinding", "find_transaction", "logout_unavailable"]

log = logging.getLogger("sessions_kernel")
# transaction.Transaction.status of a transaction one can still write into
_OPEN_STATUSES = frozenset({"Active", "Doomed"})


def find_transaction(request: Request, *, changed: bool, required: bool = True) -> Any:
    """The transaction of ``request.tm`` the session joins, or a SessionError saying why not.

    pyramid_tm's tween begins one for each request it handles; outside it
    (pshell, ``bootstrap``/``prepare`` scripts, tests sharing a transaction
    across requests) whoever manages ``request.tm`` must have begun one.
    ``changed`` tells the message whether the session was changed or first used;
    without ``required``, no transaction is ``None`` (the session then loads
    read-only: after the commit, in a response callback).
    """
    try:
        manager = request.tm
    except AttributeError:
        raise SessionError(
            "request.session needs request.tm, the request's transaction manager: "
            "include pyramid_tm (config.include('pyramid_tm'), as the SQLAlchemy "
            "starter's models/__init__.py does)"
        ) from None
    txn = None
    if request.environ.get("tm.active") or getattr(manager, "explicit", True):
        with contextlib.suppress(NoTransaction):
            txn = manager.get()
    elif getattr(getattr(manager, "manager", manager), "_txn", True) is not None:
        # an implicit manager's get() would begin a transaction nobody commits
        txn = manager.get()
    if txn is None and required:
        raise SessionError(
            f"request.session was {'changed' if changed else 'first used'} while "
            "request.tm has no transaction begun, so nothing could store it. After the "
            "request's transaction committed (a response callback, a NewResponse "
            "subscriber) the session can be read but not changed: change it in the view. In "
            "pshell, call request.tm.begin() first (the starter's pshell setup does) "
            "and request.tm.commit() to store the session; in a script, use it "
            "inside 'with request.tm:'; in "
            "a tween, add the tween under pyramid_tm's (over=EXCVIEW, "
            "under='pyramid_tm.tm_tween_factory')."
        )
    return txn


class NextTransaction:
    """Calls ``then(txn)`` once, when ``request.tm`` begins its next transaction.

    A synchronizer of the transaction manager (``registerSynch``: its
    ``newTransaction`` is called by ``begin()``), for a session used while
    ``request.tm`` had no transaction: read before pyramid_tm's tween began
    one (a tween over it, pshell before ``request.tm.begin()``), or after the
    commit (pshell's ``tm.commit()`` then ``tm.begin()``). It unregisters
    itself once called, and when the request finishes (a finished callback),
    so that a thread's manager (``transaction.manager``, pyramid_tm's default)
    never tells it of another request's transaction. The manager holds it
    weakly: its owner keeps it.
    """

    __slots__ = ("__weakref__", "manager", "then")

    def __init__(self, request: Request, then: Callable[[Any], None]) -> None:
        self.then = then
        manager = self.manager = request.tm
        register = getattr(manager, "registerSynch", None)
        if register is None:  # not a transaction package's manager: nothing to tell
            self.manager = None
            return
        request.add_finished_callback(lambda request: self.cancel())
        register(self)

    def newTransaction(self, txn: Any) -> None:  # ISynchronizer
        self.cancel()
        self.then(txn)

    def beforeCompletion(self, txn: Any) -> None:  # ISynchronizer
        pass

    def afterCompletion(self, txn: Any) -> None:  # ISynchronizer
        pass

    def cancel(self) -> None:
        manager, self.manager = self.manager, None
        if manager is not None:
            with contextlib.suppress(KeyError):
                manager.unregisterSynch(self)


def _will_be_retried(request: Request) -> bool:
    """Whether pyramid_retry runs the request again after this abort (the error that
    aborted it is retryable and attempts are left): the retried attempt does it all again."""
    try:
        from pyramid_retry import is_error_retryable
    except ImportError:  # pragma: no cover - a dependency of the kernel
        return False
    exc = getattr(request, "exception", None) or sys.exc_info()[1]
    return exc is not None and bool(is_error_retryable(request, exc))


def _literal_sql(statement: Any, dialect: Any) -> str:
    """A statement with its values in it, for a log line (its text alone if that fails)."""
    try:
        return str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    except Exception:
        return str(statement)


def logout_unavailable(response: Any) -> None:
    """Turn the response into a 503: a logout did not hold, and must not look as if it had.

    The browser keeps its cookie, so that the user can log out again once the
    database answers (``Retry-After``); a redirect's ``Location`` is dropped.
    """
    response.status = "503 Service Unavailable"
    response.content_type = "text/plain"
    response.charset = "utf-8"
    response.text = (
        "The logout could not be completed: the database did not answer. "
        "You are still logged in; please try again in a moment.\n"
    )
    dropped = {"location", "set-cookie", "cache-control", "retry-after"}
    response.headerlist[:] = [h for h in response.headerlist if h[0].lower() not in dropped]
    response.headerlist += [("Retry-After", "5"), ("Cache-Control", "no-store")]


class TransactionBinding:
    """One session's part in one transaction: made when the session joins it.

    A session whose browser sent a cookie joins at its first use; one that
    sent none, at its first change. :meth:`attach` registers the hooks once
    the load and validate stages ran.
    """

    __slots__ = (
        "aborted",
        "committed",
        "guarded",
        "held_changes",
        "logout_failed",
        "logouts",
        "persisted",
        "sealed",
        "session",
        "sharing",
        "stored",
        "txn",
    )

    def __init__(self, session: Session, txn: Any) -> None:
        self.session = session
        #: the transaction of ``request.tm`` the session joined
        self.txn = txn
        #: the before-commit hook ran (the pipeline's last stages), or runs now
        self.persisted = False
        #: the row was written (or not) for this request: a later change is an error
        self.sealed = False
        #: the transaction committed: the response may send the cookie
        self.committed = False
        #: the transaction was aborted: nothing of this request's session is stored
        self.aborted = False
        #: written into a transaction that goes on (see :meth:`in_shared_transaction`)
        self.sharing = False
        #: statements of logouts that must hold (see ``Session.execute_logout``)
        self.logouts: list[Any] = []
        #: what those statements change, announced once they ran again (see
        #: :meth:`replay_logouts`); ``None`` while nothing is held or nobody observes
        self.held_changes: ChangeLog | None = None
        #: a held logout could not be run again: the response says so (a 503)
        self.logout_failed = False
        #: the row's column values as the persist stage left them (see :meth:`keep_row`)
        self.stored: dict[str, Any] | None = None
        #: a later transaction that refuses a change made in place (:meth:`guard_later`),
        #: or the :class:`NextTransaction` that will add that refusal to the next one
        self.guarded: Any = None

    def attach(self) -> None:
        """Register the before-commit, after-commit and after-abort hooks."""
        txn = self.txn
        txn.addBeforeCommitHook(self.before_commit)
        txn.addAfterCommitHook(self.after_commit)
        txn.addAfterAbortHook(self.after_abort)

    def changes(self) -> ChangeLog | None:
        """The transaction's record of changed rows (``None`` while no plugin observes them:
        see :attr:`SessionFactory.observed <sessions_kernel.SessionFactory.observed>`)."""
        factory = self.session._factory
        return ChangeLog.of(self.txn, factory) if factory.observed else None

    def record(self, *, held: bool = False, **changes: Any) -> None:
        """Note rows this transaction changes (:meth:`ChangeLog.record
        <sessions_kernel.changes.ChangeLog.record>`), told once it committed.

        ``held``: the change is a held logout's, which runs again if the
        transaction aborts; what this binding holds is told after that
        replay, and nothing else of the transaction's log is (another
        request's write in a shared transaction was rolled back, another
        binding's logouts are told after their own replay).
        """
        log = self.changes()
        if log is None:
            return
        log.record(**changes)
        if held:
            if self.held_changes is None:
                self.held_changes = ChangeLog(self.session._factory)
            self.held_changes.record(**changes)

    def execute_logout(self, statement: Any, **changes: Any) -> Any:
        """Run a logout's statement now and hold it (see ``Session.execute_logout``).

        ``changes`` are what it changes (:meth:`record`); by default, any row.
        """
        session = self.session
        self.logouts.append(statement)
        self.record(held=True, **(changes or {"everything": True}))
        return session._factory.storage.execute(session._dbsession, statement)

    def guard_later(self) -> None:
        """The written session handed out a value that can change in place: refuse its change.

        In pshell or a script, ``request.tm.commit()`` (or ``abort()``), then
        ``request.session["cart"].append(...)``, ``request.tm.begin()`` and
        ``request.tm.commit()``: nothing would store that change. The
        transaction ``request.tm`` has now, or else the next one it begins
        (:class:`NextTransaction`), gets a before-commit hook that raises the
        error of :meth:`check_open` if the data or the flash messages are no
        longer what the request's transaction stored.
        """
        request = self.session.request
        txn = find_transaction(request, changed=True, required=False)
        if txn is None:
            if not isinstance(self.guarded, NextTransaction):  # told at the next begin()
                self.guarded = NextTransaction(request, self.guard)
            return
        self.guard(txn)

    def guard(self, txn: Any) -> None:
        if txn is self.txn or txn is self.guarded:
            return
        self.guarded = txn
        txn.addBeforeCommitHook(self.refuse_lost_change)

    def refuse_lost_change(self) -> None:
        session = self.session
        ser = session._factory.data_serializer
        row = session.__dict__.get("row")
        data, flash = session._data, session._flash
        if row is None:
            changed = bool(data or flash)
        else:
            changed = ser.dumps(data) != row.data or (ser.dumps(flash) if flash else None) != (
                row.flash
            )
        if changed:
            self.check_open()

    def check_open(self) -> None:
        """Raise :class:`SessionError` once the session was written for this request.

        From the row's write (or the decision not to write) until the request
        ends, every change raises, instead of being lost (the data, the flash)
        or written past the merge rules by the ORM's flush at commit (a
        plugin's column).
        """
        if self.sealed:
            if self.aborted:
                raise SessionError(
                    "request.session belongs to a transaction that was aborted (the view "
                    "raised, an exception view answered, or the commit failed): nothing of "
                    "this request's session was stored, and this change would not be "
                    "either (reading it still works). Make the change in the view and return "
                    "the response instead of raising it (a raised HTTPFound aborts too). In "
                    "pshell or a script, start a new request for the next change: env = "
                    "pyramid.scripting.prepare(registry=registry); request = env['request']."
                )
            if self.committed:
                raise SessionError(
                    "request.session was already written for this request, when its "
                    "transaction committed, so this change would not be stored (reading it "
                    "still works). Change the session in the view, not in a response "
                    "callback or a NewResponse subscriber. In pshell or a script, a request's "
                    "session is stored by one transaction: make every change before "
                    "request.tm.commit() (or inside one 'with request.tm:'), or start a new "
                    "request for the next change: env = pyramid.scripting.prepare("
                    "registry=registry); request = env['request'] (the browser's cookie in "
                    "request.headers['Cookie'] again)."
                )
            raise SessionError(
                "request.session was already written for this request (before its transaction "
                "committed), so this change would not be stored. Change the session in the view "
                "or in a hook before session_persist, not in a SessionMerged subscriber or a "
                "response callback; in pshell, change it before "
                "request.tm.commit(), or make a new request for the next change."
            )

    def before_commit(self) -> None:
        """The before-commit hook: the pipeline's extend, renew and persist stages (once)."""
        if self.persisted:  # already written into a shared transaction
            return
        self.persisted = True
        session = self.session
        pipeline = session._pipeline
        assert pipeline is not None  # made when the session joined
        try:
            pipeline.resume()
        except BaseException:
            # A failing before-commit hook stops the commit, but the transaction package
            # aborts nothing itself, and pyramid_tm aborts only if no exception view
            # rendered the error. Roll back now so no connection keeps its locks.
            dbsession = session.__dict__.get("_dbsession")
            if dbsession is not None:
                dbsession.rollback()
            raise

    def after_commit(self, status: bool) -> None:
        self.committed = status
        if status:
            self.keep_row()
        else:
            self.sealed = self.aborted = True
            self.log_discarded_flash()
            self.replay_logouts()

    def keep_row(self) -> None:
        """The transaction committed: the row holds what was stored, readable after it.

        The commit expired the row's attributes and zope.sqlalchemy closed the
        SQLAlchemy session: reading ``session.created`` (or a plugin's column)
        in a response callback would be a ``DetachedInstanceError``. The values
        the persist stage left are what the commit stored, so the row gets them
        back as loaded, without SQL.
        """
        values, self.stored = self.stored, None
        row = self.session.__dict__.get("row")
        if values is None or row is None:
            return
        held = instance_dict(row)
        for key, value in values.items():
            if key not in held:  # expired by the commit
                set_committed_value(row, key, value)

    def after_abort(self) -> None:
        # closed: a change made now (a response callback, pshell after tm.abort()) is lost
        self.sealed = self.aborted = True
        self.log_discarded_flash()
        self.replay_logouts()

    def log_discarded_flash(self) -> None:
        """Log at DEBUG the flash messages this request queued, which the abort discards.

        ``flash(); raise HTTPFound(...)`` loses the message: pyramid_tm aborts
        the transaction of a request that raised, the session's write with it.
        Says how many messages of which queues, never their content. Says
        nothing for an attempt pyramid_retry runs again (a deadlock, a
        serialization failure): the next attempt queues its messages again.
        """
        if not log.isEnabledFor(logging.DEBUG):
            return
        session = self.session
        flash = session.__dict__.get("_flash")
        state = session.__dict__.get("_state")
        if not flash or state is None:
            return
        if _will_be_retried(session.request):  # the retried attempt queues them again
            return
        base: dict[str, list[Any]] = {}
        if state.orig_flash is not None:
            base = session._factory.data_serializer.loads(state.orig_flash)
        added = {}
        for queue, messages in flash.items():
            before = base.get(queue, [])
            kept = messages[: len(before)] == before
            count = len(messages) - len(before) if kept else len(messages)
            if count > 0:
                added[queue] = count
        if added:
            log.debug(
                "the request's transaction was aborted: %d flash message(s) it queued were "
                "discarded (queues: %s). A raised HTTPException (HTTPFound included) aborts it: "
                "return the redirect instead of raising it to keep them.",
                sum(added.values()),
                ", ".join(repr(queue) for queue in added),
            )

    def replay_logouts(self) -> None:
        """The transaction did not commit: run its logouts again, in one of their own.

        Then the response still deletes (or, for a held regenerate, replaces)
        the browser's cookie, and a retried attempt of the request
        (pyramid_retry reuses the environ) sees the cookie the response sends.
        """
        held, self.logouts = self.logouts, []
        changes, self.held_changes = self.held_changes, None
        if not held:
            return
        session = self.session
        factory = session._factory
        dbsession = session._dbsession
        try:
            factory.storage.replay(dbsession, held)
        except Exception:
            # The sessions it was to end are still valid: say which, by the statements
            # (row keys and lineages are hashes, safe to log), not by this session's new id.
            dialect = dbsession.get_bind(factory.model).dialect
            log.exception(
                "a logout could not be run again after its request's transaction was "
                "aborted; these sessions stay valid until it runs (every id of a session "
                "starts with its lineage, the first 24 hex digits): %s",
                "; ".join(_literal_sql(statement, dialect) for statement in held),
            )
            self.logout_failed = True
            return
        cookies = session._cookies
        cookies.outgoing = list(cookies.held)
        self.committed = True  # what the response says is now what the database holds
        # A retried attempt must present the new id; a deleted session's cookie it
        # presents finds no row, and is deleted then.
        cookies.present_to_retry(session.request.environ)
        if changes is not None:  # last: the logout's response is settled whatever it does
            changes.announce("replay")

    def in_shared_transaction(self) -> bool:
        """Write the session into a transaction this request does not own; True if done.

        pyramid_tm's tween clears ``tm.active`` before it commits or aborts, so
        a response that still finds it set comes from a request whose
        transaction is someone else's: the starter's test fixtures put
        ``tm.active`` and ``tm.manager`` in the environ and share one
        transaction across requests. The stages run now, into that transaction
        (flushed, so the next request in it sees the row), and the cookie is
        sent; committing or aborting is the owner's business. As pyramid_tm
        would abort, a response an exception view rendered writes nothing.
        """
        request = self.session.request
        if not request.environ.get("tm.active"):
            return False
        if self.txn.status not in _OPEN_STATUSES:  # committed, or failed
            return False
        if getattr(request, "exc_info", None) is not None:
            return False  # an exception view answered: pyramid_tm would have aborted
        self.sharing = True
        self.before_commit()
        return True

    def respond(self, response: Any) -> None:
        """The response of a session that joined: its cookies, once they may be sent.

        They are sent once the transaction committed (or, in a transaction
        shared across requests, once the session was written into it). A
        response that sets a cookie or shows a stored session is kept from
        shared caches.
        """
        if self.logout_failed:  # see replay_logouts
            logout_unavailable(response)
            return
        vary_on_cookie(response)
        session = self.session
        cookies = session._cookies
        sending = (self.committed or self.in_shared_transaction()) and bool(cookies.outgoing)
        if not (sending or session.row is not None):
            return
        make_private(response)
        if sending:
            cookies.write(response)
