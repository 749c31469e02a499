"""The hooks of the stored rows: where a row may come from, and what committed.

:func:`session_row_lookup` lets a plugin serve a stored row without SQL (a
cache); :func:`session_rows_changed` tells plugins of every committed change
of the session rows (a cache's eviction, an audit log, a metrics exporter).
Part of :mod:`sessions_kernel.hookspecs`, which re-exports every hook: import
them, and refer to them, from there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import hookspec

if TYPE_CHECKING:
    from ..changes import RowChanges
    from ..factory import SessionFactory
    from ..session import Session


@hookspec(firstresult=True)
def session_fallback_token(session: Session) -> bytes | None:
    """The request sent no session cookie: name the token of a session it continues, or ``None``.

    :param session: the request's session, at its first use, before anything
        is loaded: read only ``session.request``, ``session.now``,
        ``session.factory`` and ``session.stash``.

    For a plugin that continues sessions kept elsewhere before this one
    existed (an old session store's cookie: sessions-migrate). Called at the
    first use of ``request.session`` when the request presented no cookie of
    the session's name and ``request.tm`` has a transaction begun (never
    for a read-only load after the commit), before :func:`session_row_lookup`
    and :func:`session_load`. Return ``None`` (the usual answer: nothing to
    continue) and the session starts new, as for any request without a
    cookie. Return a token (:data:`~sessions_kernel.crypto.TOKEN_BYTES`
    random-looking bytes) and the load stage runs as if the cookie had
    carried it:

    * the row that token names (``row_id(token)``) is fetched, in one
      statement; if it is stored, the session is that row, validated as
      usual, and its cookie is sent with the response (the browser has none);
    * if it is not, the session starts new with that token: its row, if it
      stores anything, is inserted under ``row_id(token)``, so two requests
      that name one token at once store one row (the second insert fails,
      and pyramid_retry runs that request again, which finds the row).

    The token is the key to the session: derive it only from what proves
    the browser holds the session (an authenticated old cookie), with a
    secret of the server's (``session.derived_keys``), never from what a
    browser can choose alone. A plugin that decides in :func:`session_load`
    that nothing continues after all calls ``session.regenerate_id()``, so
    that the new session does not keep the derived token. Issue no SQL.
    The first non-``None`` answer wins.
    """


@hookspec(firstresult=True)
def session_row_lookup(
    factory: SessionFactory, session: Session, row_id: str
) -> Mapping[str, Any] | None:
    """Serve the stored row ``row_id`` without SQL; return its column values, or ``None``.

    :param factory: the request's :class:`~sessions_kernel.SessionFactory`
        (``factory.storage.read_values`` reads a row's values on a connection
        of your own).
    :param session: the request's session, loading (``session.row`` is not
        set yet; ``session.request`` and ``session.model`` are).
    :param row_id: the primary key the request's cookie names.

    Called by the load stage before the row's ``SELECT``, for each session
    cookie the request presented, before :func:`session_load`. Return a
    mapping of every column attribute of the model (the version included) to
    its value **as committed** in the database, and the kernel uses it
    instead of the ``SELECT``: it builds the row as a load would (persistent,
    unmodified), and the pipeline runs as for a row it read. Return ``None``
    (no such row known) and the kernel reads the row itself. The first
    non-``None`` answer wins.

    When :func:`session_validate` rejects a row served this way, the
    kernel reads the stored row and validates that instead: a served copy
    may be behind it (another process's renewal offer or idle extension not
    heard of yet), and only what the stored row fails is deleted.

    What is returned must be committed state, never a value a transaction
    wrote and might roll back: the kernel's later write of the row is a
    versioned ``UPDATE`` on the version returned, so a stale version makes
    that write merge with what is stored instead of overwriting it, but a
    read served from a stale answer is served as the truth (a logged-out
    session served as logged in). Forget a row when
    :func:`session_rows_changed` names it.

    Not called, and the kernel reads the row itself: for a row this
    transaction already changed (a fixture sharing one transaction across
    requests, pshell), for a request whose transaction a database session
    already joined (the view queried first, pshell ran SQL, the starter's
    test fixtures share one transaction: the row is read in it, on the
    connection it holds, and as it sees it), for a retried
    attempt and a contended row (those load it locked, ``SELECT … FOR
    UPDATE``), for a peek
    (``SessionFactory.peek``), for a row the request's SQLAlchemy session
    already holds, and for a model the kernel cannot build from column
    values alone (a column property, a deferred column, an inherited or
    polymorphic mapper, a ``load`` listener). Called on the request path:
    keep it to a dictionary lookup. Issue SQL only to fill what you serve,
    and never in the request's transaction (see sessions-cache).
    """


@hookspec
def session_rows_changed(factory: SessionFactory, changes: RowChanges) -> None:
    """Session rows of ``factory`` changed, and the change is committed.

    :param factory: the :class:`~sessions_kernel.SessionFactory` whose table changed.
    :param changes: a :class:`~sessions_kernel.RowChanges`: the rows
        written, deleted and re-keyed, by key; lineages whose rows may have
        been deleted or re-keyed; ``everything`` when a statement the kernel
        cannot see into ran (``Session.execute_logout`` of a plugin's own
        ``DELETE``: "log out everywhere else"); and its ``source``.

    Called once per committed transaction that changed rows through the
    kernel, after the commit (pyramid_tm's, a script's ``request.tm``, a
    pshell ``request.tm.commit()``, a test fixture's shared transaction
    once its owner commits it), never for one that was aborted; once per
    committed batch of :func:`~sessions_kernel.maintenance.collect_garbage` (``psessions
    gc``, ``source="gc"``); after the logouts of an aborted request
    were run again in a transaction of their own (``source="replay"``); and
    when a SQLAlchemy session of this process that flushed changes of the
    model's rows through the ORM commits (a column the application
    assigned on ``session.row`` that an autoflush wrote, a row it deleted
    with ``dbsession.delete``).
    Called in the process that committed, in the thread that committed,
    before the response is sent.

    Not seen here: what another process committed, and SQL the application
    runs on the table itself (Core statements, ORM bulk ``update``/``delete``).
    A plugin that must know of those needs the database to tell it
    (sessions-cache's PostgreSQL trigger and ``LISTEN``).
    An exception raised here cannot undo the commit, which stands: after a
    transaction's commit and after a replay the kernel logs it (logger
    ``sessions_kernel``) and the request goes on, its response unchanged;
    from ``collect_garbage`` it propagates after its batch's commit, and
    the later batches do not run. Catch and log your own. The return value
    is ignored.
    """
