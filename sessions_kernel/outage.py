"""A database outage (a restart, a failover, a killed connection): run the request again where
that is safe, else answer ``503 Service Unavailable`` with ``Retry-After``, never a traceback.

``config.include("sessions_kernel")`` includes this module (turn it off with the setting
``sessions_kernel.outage_tween = false``); an application that sets its session factory
by hand includes it itself: ``config.include("sessions_kernel.outage")``. It adds a tween
over pyramid_tm that looks at the error a request failed with:

* :func:`classify_error` says what the database error means, for every driver the kernel
  is tested with: psycopg (and psycopg2) by SQLSTATE, PyMySQL, mysqlclient and MariaDB
  Connector/Python by error number, and any other driver whose broken connection
  SQLAlchemy recognised (``connection_invalidated``);
* :func:`error_phase` says where it happened. A connection that broke while connecting,
  during a statement or during a rollback committed nothing: the request runs again
  (pyramid_retry). One that broke during ``COMMIT`` may have committed: running the
  request again could apply it twice, so it is answered 503 at once;
* the tween marks the safe ones retryable for pyramid_retry, and answers 503 with
  ``Retry-After`` when the last attempt fails too, or when the outcome is unknown.

SQLAlchemy invalidates a connection that broke, and the pool's other connections with
it, so the next attempt connects afresh (``pool_pre_ping=True`` saves that attempt for
connections that died while idle in the pool).
"""

from __future__ import annotations

import contextlib
import logging
import re
import traceback
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Literal, cast

import sqlalchemy as sa
from transaction.interfaces import TransientError

__all__ = [
    "DISCONNECT_CODES",
    "PHASE_ATTRIBUTE",
    "POSTGRESQL_DISCONNECT_STATES",
    "POSTGRESQL_RETRYABLE_STATES",
    "POSTGRESQL_UNAVAILABLE_STATES",
    "RETRYABLE_CODES",
    "UNAVAILABLE_CODES",
    "classify_error",
    "error_code",
    "error_phase",
    "includeme",
    "is_retryable",
    "outage_tween_factory",
    "sqlstate",
    "track_error_phase",
]

log = logging.getLogger(__name__)

#: What an error means: ``"retry"`` (the server rolled the transaction back: run the
#: request again), ``"unavailable"`` (the database could not be reached or refused to
#: start the work: nothing was done, run it again), ``"unknown-outcome"`` (the
#: connection broke during ``COMMIT``: it may have committed; not run again) or ``"busy"``
#: (no pooled connection came free in time: nothing was done; not run again at once).
Kind = Literal["retry", "unavailable", "unknown-outcome", "busy"]
#: Where an error happened: ``"connect"``, ``"statement"``, ``"commit"`` or ``"rollback"``.
Phase = Literal["connect", "statement", "commit", "rollback"]

#: Set by :func:`track_error_phase` on SQLAlchemy's exception: the :data:`Phase`.
PHASE_ATTRIBUTE = "sessions_kernel_phase"

# -- MySQL and MariaDB (PyMySQL, mysqlclient, MariaDB Connector/Python) -------------------

#: The transaction was rolled back by the server; running it again is safe.
RETRYABLE_CODES = {
    1213: "deadlock, or a Galera certification conflict (ER_LOCK_DEADLOCK)",
    1205: "lock wait timeout (ER_LOCK_WAIT_TIMEOUT)",
    1180: "error during COMMIT (ER_ERROR_DURING_COMMIT)",
    1020: "record changed since last read (ER_CHECKREAD, snapshot isolation)",
}
#: The server refused the statement or could not be reached: nothing was done.
UNAVAILABLE_CODES = {
    1040: "too many connections (ER_CON_COUNT_ERROR)",
    1047: "WSREP has not yet prepared node for application use (ER_UNKNOWN_COM_ERROR)",
    1053: "server shutdown in progress (ER_SERVER_SHUTDOWN)",
    2002: "cannot connect through the socket (CR_CONNECTION_ERROR)",
    2003: "cannot connect to the server (CR_CONN_HOST_ERROR)",
    4031: "disconnected by the server for inactivity (ER_CLIENT_INTERACTION_TIMEOUT)",
}
#: The connection broke: safe to run again unless it broke during ``COMMIT``.
DISCONNECT_CODES = {
    2006: "server has gone away (CR_SERVER_GONE_ERROR)",
    2013: "lost connection to server during query (CR_SERVER_LOST)",
    2055: "lost connection to server, system error (CR_SERVER_LOST_EXTENDED)",
    1927: "connection was killed (ER_CONNECTION_KILLED)",
}

_MYSQL_DRIVERS = ("pymysql", "MySQLdb", "mariadb", "mysql.connector")

# -- PostgreSQL (psycopg, psycopg2) ----------------------------------------------------------

#: The server rolled the transaction back; running it again is safe.
POSTGRESQL_RETRYABLE_STATES = {
    "40001": "serialization_failure",
    "40P01": "deadlock_detected",
}
#: The server refused a new connection: nothing was done.
POSTGRESQL_UNAVAILABLE_STATES = {
    "57P03": "cannot_connect_now (the database system is starting up, shutting down, ...)",
    "53300": "too_many_connections",
    "08001": "sqlclient_unable_to_establish_sqlconnection",
    "08004": "sqlserver_rejected_establishment_of_sqlconnection",
}
#: The server ended the connection: safe to run again unless it ended during ``COMMIT``.
#: psycopg's own connection failures (refused, closed, reset), which have no SQLSTATE,
#: count as these too.
POSTGRESQL_DISCONNECT_STATES = {
    "57P01": "admin_shutdown (terminating connection due to administrator command)",
    "57P02": "crash_shutdown",
    "57P05": "idle_session_timeout",
    "25P03": "idle_in_transaction_session_timeout",
    "08000": "connection_exception",
    "08003": "connection_does_not_exist",
    "08006": "connection_failure",
}
#: The server says itself that it does not know whether the transaction committed.
POSTGRESQL_UNKNOWN_STATES = {"08007": "transaction_resolution_unknown"}

_POSTGRESQL_DRIVERS = ("psycopg",)  # psycopg (3) and psycopg2


def _driver_error(error: BaseException) -> BaseException | None:
    return getattr(error, "orig", None) if isinstance(error, sa.exc.DBAPIError) else error


def error_code(error: BaseException) -> int | None:
    """The server or client error number of a MySQL-family driver's error, else ``None``.

    Accepts SQLAlchemy's wrapper (``DBAPIError``) or the driver's own
    exception. PyMySQL and mysqlclient put the number first in ``args``;
    MariaDB Connector/Python and MySQL Connector/Python in ``errno``.
    """
    orig = _driver_error(error)
    if orig is None or not type(orig).__module__.startswith(_MYSQL_DRIVERS):
        return None
    code = getattr(orig, "errno", None)
    if isinstance(code, int) and code > 0:
        return code
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a PostgreSQL driver's error (psycopg's ``sqlstate``, psycopg2's
    ``pgcode``), else ``None``; also ``None`` for psycopg's own connection failures."""
    orig = _driver_error(error)
    if orig is None or not type(orig).__module__.startswith(_POSTGRESQL_DRIVERS):
        return None
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state if isinstance(state, str) else None


def _is_operational(error: BaseException) -> bool:
    """A DB-API ``OperationalError``: what drivers raise for a failed or broken connection."""
    return any(cls.__name__ == "OperationalError" for cls in type(error).__mro__)


def _kind_by_driver(error: BaseException) -> Kind | Literal["disconnect"] | None:
    """What the driver's error says by itself; ``"disconnect"`` depends on the phase."""
    code = error_code(error)
    if code is not None:
        if code in RETRYABLE_CODES:
            return "retry"
        if code in UNAVAILABLE_CODES:
            return "unavailable"
        if code in DISCONNECT_CODES:
            return "disconnect"
        return None
    orig = _driver_error(error)
    if orig is not None and type(orig).__module__.startswith(_POSTGRESQL_DRIVERS):
        state = sqlstate(orig)
        if state in POSTGRESQL_RETRYABLE_STATES:
            return "retry"
        if state in POSTGRESQL_UNAVAILABLE_STATES:
            return "unavailable"
        if state in POSTGRESQL_DISCONNECT_STATES:
            return "disconnect"
        if state in POSTGRESQL_UNKNOWN_STATES:
            return "unknown-outcome"
        if state is None and _is_operational(orig):
            return "disconnect"  # psycopg's own: refused, closed, reset, timed out
        return None
    if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
        return "disconnect"  # another driver: SQLAlchemy's dialect saw a broken connection
    return None


def classify_error(error: BaseException) -> Kind | None:
    """``"retry"``, ``"unavailable"``, ``"unknown-outcome"`` or ``None`` (not an outage).

    * ``"retry"``: the server rolled the transaction back (a deadlock, a
      serialization failure, a Galera conflict), or the connection broke during a
      statement or a rollback: nothing was committed, run the request again.
    * ``"unavailable"``: the server refused the connection or the statement (down,
      starting up, shutting down, too many connections, a Galera node not ready),
      or the connection broke while connecting: nothing was done; run it again.
    * ``"unknown-outcome"``: the connection broke during ``COMMIT`` (or where
      :func:`error_phase` cannot tell): the transaction may have committed. Running
      it again could apply it twice, so it is not retried.
    * ``"busy"``: no connection of the pool came free in time (SQLAlchemy's
      ``TimeoutError``): nothing was done, but running it again at once would
      only wait again, so it is not retried.

    An error of the application's own (a missing table, a constraint) is ``None``.
    """
    if isinstance(error, sa.exc.TimeoutError):
        return "busy"
    kind = _kind_by_driver(error)
    if kind != "disconnect":
        return kind
    phase = error_phase(error)
    if phase == "connect":
        return "unavailable"
    if phase in ("statement", "rollback"):
        return "retry"
    return "unknown-outcome"


def is_retryable(error: BaseException) -> bool:
    """Whether running the transaction again is safe and may succeed."""
    return classify_error(error) in ("retry", "unavailable")


# -- where an error happened -----------------------------------------------------------------

_DIALECT_PHASES: dict[str, Phase] = {
    "connect": "connect",
    "do_ping": "connect",
    "_do_ping_w_event": "connect",
    "do_begin": "statement",
    "do_begin_twophase": "statement",
    "do_execute": "statement",
    "do_executemany": "statement",
    "do_execute_no_params": "statement",
    "do_commit": "commit",
    "do_prepare_twophase": "commit",
    "do_commit_twophase": "commit",
    "do_rollback": "rollback",
    "do_rollback_twophase": "rollback",
    "do_rollback_to_savepoint": "rollback",
}
_COMMIT_STATEMENT = re.compile(r"\s*(COMMIT|END|XA\s+COMMIT)\b", re.IGNORECASE)


def _phase_of_statement(statement: Any) -> Phase | None:
    if not isinstance(statement, str):
        return None
    return "commit" if _COMMIT_STATEMENT.match(statement) else "statement"


def _phase_from_traceback(error: BaseException) -> Phase | None:
    """The phase of the innermost SQLAlchemy call the error came through.

    The dialect's methods (``connect``, ``do_execute``, ``do_commit``,
    ``do_rollback``, ... of :class:`sqlalchemy.engine.Dialect`) and a pool entry
    connecting (:class:`sqlalchemy.pool.ConnectionPoolEntry`) name it.
    """
    frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)]
    for frame in reversed(frames):
        owner = frame.f_locals.get("self")
        if isinstance(owner, sa.engine.Dialect):
            phase = _DIALECT_PHASES.get(frame.f_code.co_name)
            if phase == "statement":
                return _phase_of_statement(frame.f_locals.get("statement")) or "statement"
            if phase is not None:
                return phase
        elif isinstance(owner, sa.pool.ConnectionPoolEntry):
            return "connect"  # a new connection's setup (connect events included)
    return None


def error_phase(error: BaseException) -> Phase | None:
    """Where ``error`` happened: ``"connect"``, ``"statement"``, ``"commit"``, ``"rollback"``.

    From the phase :func:`track_error_phase` recorded, else from the SQLAlchemy
    calls in the error's traceback, else from its SQL statement (``COMMIT`` or
    another). ``None`` when none says: a broken connection is then taken as broken
    at ``COMMIT``.
    """
    recorded = getattr(error, PHASE_ATTRIBUTE, None)
    if recorded is not None:
        return cast(Phase, recorded)
    return _phase_from_traceback(error) or _phase_of_statement(getattr(error, "statement", None))


def track_error_phase(engine: sa.Engine) -> sa.Engine:
    """Record on each of ``engine``'s errors where it happened, for :func:`classify_error`.

    Sets the ``sessions_kernel_phase`` attribute of SQLAlchemy's exception (and
    the driver's) to ``"connect"``, ``"statement"``, ``"commit"`` or
    ``"rollback"``, from SQLAlchemy's events. :func:`error_phase` reads the same
    from the error's traceback without it; this is for errors whose traceback was
    dropped or never went through SQLAlchemy's calls. ``galera_engine`` calls it.
    Returns ``engine``.
    """
    committing: weakref.WeakSet[Any] = weakref.WeakSet()

    @sa.event.listens_for(engine, "begin")
    def begin(conn: Any) -> None:
        committing.discard(conn)

    @sa.event.listens_for(engine, "commit")
    def commit(conn: Any) -> None:
        committing.add(conn)

    @sa.event.listens_for(engine, "handle_error")
    def phase(context: Any) -> None:
        where: Phase
        if context.statement is not None:
            where = _phase_of_statement(context.statement) or "statement"
        elif context.connection is None:
            where = "connect"
        elif context.connection in committing:
            where = "commit"
        else:
            where = "rollback"
        for error in (context.sqlalchemy_exception, context.original_exception):
            if error is not None:
                with contextlib.suppress(AttributeError, TypeError):  # a type with __slots__
                    setattr(error, PHASE_ATTRIBUTE, where)

    return engine


# -- requests ----------------------------------------------------------------------------


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from or while handling."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _database_error(error: BaseException) -> tuple[BaseException, Kind] | None:
    """The classified database error in ``error``'s chain, with its kind.

    A :class:`transaction.interfaces.TransientError` (the kernel's
    ``SessionConflictError``, say) counts as ``"retry"``.
    """
    for item in _chain(error):
        kind = classify_error(item)
        if kind is None and isinstance(item, TransientError):
            kind = "retry"
        if kind is not None:
            return item, kind
    return None


_LABELS: dict[Kind, str] = {
    "retry": "conflict or lost connection",
    "unavailable": "database unavailable",
    "unknown-outcome": "database connection lost at COMMIT",
    "busy": "no database connection free",
}
_DETAILS: dict[Kind, str] = {
    "retry": "The database could not complete the request (concurrent requests conflicted, "
    "or the connection was lost); try again in a moment.",
    "unavailable": "The database is unavailable (restarting, failing over or unreachable); "
    "try again in a moment.",
    "unknown-outcome": "The connection to the database was lost while the request was being "
    "committed: its changes may or may not have been saved. Check before trying again.",
    "busy": "The server is busy (no database connection came free in time); try again in a moment.",
}


def _reason(error: BaseException) -> str:
    """The driver's message, first line: never the SQL parameters (session data)."""
    orig = _driver_error(error) or error
    text = str(orig).strip().splitlines()
    return text[0][:200] if text else type(orig).__name__


def _unavailable(request: Any, error: BaseException, kind: Kind) -> Any:
    from pyramid.httpexceptions import HTTPServiceUnavailable

    code = error_code(error) or sqlstate(error) or type(_driver_error(error) or error).__name__
    log.warning(
        "%s (%s) after %s attempt(s): %s",
        _LABELS[kind],
        code,
        request.environ.get("retry.attempt", 0) + 1,
        _reason(error),
    )
    response = HTTPServiceUnavailable(detail=_DETAILS[kind])
    response.headers["Retry-After"] = "1"
    return response


def outage_tween_factory(handler: Callable[[Any], Any], registry: Any) -> Callable[[Any], Any]:
    """Over pyramid_tm: outage errors safe to run again are marked retryable, the rest 503."""
    try:
        from pyramid_retry import is_error_retryable, mark_error_retryable
    except ImportError:  # pragma: no cover - pyramid_retry is optional
        is_error_retryable = mark_error_retryable = None

    def retry_or_unavailable(request: Any, error: BaseException) -> Any:
        """A 503 response, or ``None``: ``error`` is not ours, or pyramid_retry retries it."""
        found = _database_error(error)
        if found is None:
            return None
        db_error, kind = found
        if kind in ("retry", "unavailable") and mark_error_retryable is not None:
            mark_error_retryable(error)
            if is_error_retryable(request, error):
                return None  # pyramid_retry runs the request again
        return _unavailable(request, db_error, kind)

    def outage_tween(request: Any) -> Any:
        try:
            response = handler(request)
        except Exception as error:
            answer = retry_or_unavailable(request, error)
            if answer is None:
                raise
            return answer
        # an exception view rendered an error (pyramid_tm then aborted): pyramid_retry
        # retries it if it is marked, else the rendered response stands, or our 503
        rendered = getattr(request, "exception", None)
        if rendered is not None and _database_error(rendered) is not None:
            answer = retry_or_unavailable(request, rendered)
            if answer is not None and response.status_int >= 500:
                return answer
        return response

    return outage_tween


#: The setting that turns off what ``config.include("sessions_kernel")`` includes from here.
SETTING = "sessions_kernel.outage_tween"


def includeme(config: Any) -> None:
    """``config.include("sessions_kernel.outage")``: the tween, over pyramid_tm.

    Include ``pyramid_tm`` and ``pyramid_retry`` too (``retry.attempts`` of 3 or
    more); without pyramid_retry every outage error is answered 503 at once.
    Included twice (by ``sessions_kernel`` and ``sessions_kernel.cluster``, say),
    the tween is added once.
    """
    from pyramid.tweens import EXCVIEW

    config.add_tween(
        "sessions_kernel.outage.outage_tween_factory",
        over=("pyramid_tm.tm_tween_factory", EXCVIEW),
    )


def include_by_default(config: Any) -> None:
    """What ``config.include("sessions_kernel")`` runs: :func:`includeme`, unless the
    setting ``sessions_kernel.outage_tween`` is false."""
    from pyramid.settings import asbool

    if asbool(config.get_settings().get(SETTING, True)):
        config.include("sessions_kernel.outage")
