"""What a MariaDB Galera cluster (or any MySQL-family cluster) needs from the application.

Three things, each usable alone:

* :func:`galera_engine` (or :func:`install_sync_wait` on an engine you built):
  every connection runs ``SET SESSION wsrep_sync_wait = 1``, so that a read
  on one node sees every write the cluster committed before it. Without it a
  session written through one node and read through another right after can
  be missing, and the kernel would delete the visitor's cookie (a logout).
* :func:`classify_error`: which errors of the MySQL drivers (PyMySQL,
  mysqlclient, MariaDB Connector/Python) mean "run the request again" and
  which mean "the database is unavailable". zope.sqlalchemy knows only
  PyMySQL's deadlock (1213); Galera reports certification conflicts as 1213
  too, and a failover brings 1047, 2003, 2006 and 2013.
* ``config.include("sessions_kernel.cluster")``: a tween over pyramid_tm that
  marks those errors retryable for pyramid_retry, and answers
  ``503 Service Unavailable`` (with ``Retry-After``) instead of a 500 and a
  traceback when the last attempt fails with one of them (or with another
  transient error, such as the kernel's ``SessionConflictError``), or when a
  failing connection made pyramid_tm raise ``NoTransaction`` in place of the
  database's error.

``collect_garbage`` (``psessions gc``) uses :func:`classify_error` to run a
batch again that a conflict aborted.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from transaction.interfaces import TransientError

__all__ = [
    "DISCONNECT_CODES",
    "RETRYABLE_CODES",
    "UNAVAILABLE_CODES",
    "classify_error",
    "error_code",
    "galera_engine",
    "includeme",
    "install_sync_wait",
    "is_retryable",
    "track_error_phase",
]

log = logging.getLogger(__name__)

#: Set by :func:`track_error_phase` on SQLAlchemy's exception: ``"connect"``,
#: ``"statement"``, ``"commit"`` or ``"rollback"``.
PHASE_ATTRIBUTE = "sessions_kernel_phase"

#: The transaction was rolled back by the server; running it again is safe.
RETRYABLE_CODES = {
    1213: "deadlock, or a Galera certification conflict (ER_LOCK_DEADLOCK)",
    1205: "lock wait timeout (ER_LOCK_WAIT_TIMEOUT)",
    1180: "error during COMMIT (ER_ERROR_DURING_COMMIT)",
    1020: "record changed since last read (ER_CHECKREAD, snapshot isolation)",
}
#: The node refused the statement or could not be reached: nothing was done.
UNAVAILABLE_CODES = {
    1047: "WSREP has not yet prepared node for application use (ER_UNKNOWN_COM_ERROR)",
    1053: "server shutdown in progress (ER_SERVER_SHUTDOWN)",
    2002: "cannot connect through the socket (CR_CONNECTION_ERROR)",
    2003: "cannot connect to the server (CR_CONN_HOST_ERROR)",
    4031: "disconnected by the server for inactivity (ER_CLIENT_INTERACTION_TIMEOUT)",
}
#: The connection broke. During a statement the server rolled the transaction
#: back: safe to run again. During ``COMMIT`` nobody knows whether it committed:
#: not retried, answered 503.
DISCONNECT_CODES = {
    2006: "server has gone away (CR_SERVER_GONE_ERROR)",
    2013: "lost connection to server during query (CR_SERVER_LOST)",
    1927: "connection was killed (ER_CONNECTION_KILLED)",
}

_MYSQL_DRIVERS = ("pymysql", "MySQLdb", "mariadb", "mysql.connector")


def error_code(error: BaseException) -> int | None:
    """The server or client error number of a MySQL-family driver's error, else ``None``.

    Accepts SQLAlchemy's wrapper (``DBAPIError``) or the driver's own
    exception. PyMySQL and mysqlclient put the number first in ``args``;
    MariaDB Connector/Python and MySQL Connector/Python in ``errno``.
    """
    orig = getattr(error, "orig", error) if isinstance(error, sa.exc.DBAPIError) else error
    if orig is None or not type(orig).__module__.startswith(_MYSQL_DRIVERS):
        return None
    code = getattr(orig, "errno", None)
    if isinstance(code, int) and code > 0:
        return code
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None


def classify_error(error: BaseException) -> str | None:
    """``"retry"``, ``"unavailable"``, ``"unknown-outcome"`` or ``None`` (not ours).

    * ``"retry"``: the server rolled the transaction back (1213, 1205, ...), or
      the connection broke while a statement ran (the server rolls back what
      was not committed): run the request again.
    * ``"unavailable"``: the node refused the statement or could not be reached
      (1047, 2003, ...): nothing was written; run the request again, on another
      node if the pool or the proxy picks one.
    * ``"unknown-outcome"``: the connection broke during ``COMMIT``: the
      transaction may have committed. Running it again could apply a change
      twice, so it is not retried; the client gets a 503.
    """
    code = error_code(error)
    if code is None:
        return None
    if code in RETRYABLE_CODES:
        return "retry"
    if code in UNAVAILABLE_CODES:
        return "unavailable"
    if code in DISCONNECT_CODES:
        phase = getattr(error, PHASE_ATTRIBUTE, None)
        if phase == "connect":
            return "unavailable"
        if phase == "statement" or (phase is None and _in_statement(error)):
            return "retry"
        if phase == "rollback":
            return "retry"
        return "unknown-outcome"
    return None


def _in_statement(error: BaseException) -> bool:
    statement = getattr(error, "statement", None)
    return statement is not None and not statement.lstrip().upper().startswith("COMMIT")


def is_retryable(error: BaseException) -> bool:
    """Whether running the transaction again is safe and may succeed."""
    return classify_error(error) in ("retry", "unavailable")


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from or while handling."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _database_error(error: BaseException) -> tuple[BaseException, str] | None:
    """The classified database error in ``error``'s chain, with its class.

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


# -- engines -----------------------------------------------------------------------------


def install_sync_wait(engine: sa.Engine, level: int = 1) -> sa.Engine:
    """Make every new connection of ``engine`` run ``SET SESSION wsrep_sync_wait = level``.

    ``1`` makes reads (``SELECT``, ``SHOW``, ``BEGIN``) wait until the node has
    applied every write the cluster committed before them: a causal read. It
    costs a round of the cluster's group communication per read (measured
    here: read p99 from 6 to 28 ms under write load). Returns ``engine``.
    """
    if not isinstance(level, int) or not 0 <= level <= 15:
        raise ValueError(f"wsrep_sync_wait is a bit mask from 0 to 15, got {level!r}")

    @sa.event.listens_for(engine, "connect")
    def set_sync_wait(dbapi_connection: Any, connection_record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"SET SESSION wsrep_sync_wait = {level}")
        finally:
            cursor.close()

    return engine


def track_error_phase(engine: sa.Engine) -> sa.Engine:
    """Record on each of ``engine``'s errors where it happened, for :func:`classify_error`.

    A broken connection (2006, 2013) is safe to retry when it broke while
    connecting, during a statement or during a rollback, and not during a
    ``COMMIT`` (which may have committed). SQLAlchemy's exception does not say
    which; this sets its ``sessions_kernel_phase`` attribute to ``"connect"``,
    ``"statement"``, ``"commit"`` or ``"rollback"``. Without it, a broken
    connection outside a statement counts as broken at ``COMMIT`` (a 503, no
    retry). :func:`galera_engine` calls it. Returns ``engine``.
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
        if context.statement is not None:
            where = "statement"
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


def galera_engine(url: str | sa.URL, *, sync_wait: int = 1, **kwargs: Any) -> sa.Engine:
    """``sqlalchemy.create_engine`` with what a Galera cluster needs.

    * ``wsrep_sync_wait`` on every connection (see :func:`install_sync_wait`;
      ``sync_wait=0`` turns it off);
    * ``pool_pre_ping=True`` unless given: after a failover the pool's
      connections to the dead node are replaced before use instead of failing
      a request;
    * the phase of each error recorded (:func:`track_error_phase`);
    * ``isolation_level="READ COMMITTED"`` unless given. Galera certifies
      writes whatever the level; READ COMMITTED lets the kernel merge two
      requests of one session instead of running one again.

    Other keyword arguments go to ``create_engine``. Point ``url`` at the
    proxy (HAProxy, MaxScale) that sends every write to one node.
    """
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("isolation_level", "READ COMMITTED")
    engine = sa.create_engine(url, **kwargs)
    track_error_phase(engine)
    if sync_wait:
        install_sync_wait(engine, sync_wait)
    return engine


# -- requests ----------------------------------------------------------------------------


def _unavailable(request: Any, error: BaseException, kind: str) -> Any:
    from pyramid.httpexceptions import HTTPServiceUnavailable

    label = {
        "retry": "conflict",
        "unavailable": "database unavailable",
        "unknown-outcome": "database connection lost at COMMIT",
    }[kind]
    log.warning(
        "%s (%s) after %s attempt(s): %s",
        label,
        error_code(error) or type(error).__name__,
        request.environ.get("retry.attempt", 0) + 1,
        error,
    )
    response = HTTPServiceUnavailable(
        detail="The database could not complete the request (a conflict between concurrent "
        "requests, or a node failing over); try again in a moment."
    )
    response.headers["Retry-After"] = "1"
    return response


def cluster_tween_factory(handler: Callable[[Any], Any], registry: Any) -> Callable[[Any], Any]:
    """Over pyramid_tm: retryable database errors are marked so, the rest become 503s."""
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

    def cluster_tween(request: Any) -> Any:
        try:
            response = handler(request)
        except Exception as error:
            answer = retry_or_unavailable(request, error)
            if answer is None:
                raise
            return answer
        # an exception view rendered an error (pyramid_tm then aborted): pyramid_retry
        # retries it if it is marked, else the rendered response stands
        rendered = getattr(request, "exception", None)
        if rendered is not None and _database_error(rendered) is not None:
            answer = retry_or_unavailable(request, rendered)
            if answer is not None and response.status_int >= 500:
                return answer
        return response

    return cluster_tween


def includeme(config: Any) -> None:
    """``config.include("sessions_kernel.cluster")``: the tween, over pyramid_tm.

    Include ``pyramid_tm`` and ``pyramid_retry`` too (``retry.attempts`` of 3
    or more).
    """
    config.add_tween(
        "sessions_kernel.cluster.cluster_tween_factory", over="pyramid_tm.tm_tween_factory"
    )
