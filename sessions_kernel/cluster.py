"""What a MariaDB Galera cluster (or any MySQL-family cluster) needs from the application.

Two things, each usable alone:

* :func:`galera_engine` (or :func:`install_sync_wait` on an engine you built):
  every connection runs ``SET SESSION wsrep_sync_wait = 1``, so that a read
  on one node sees every write the cluster committed before it. Without it a
  session written through one node and read through another right after can
  be missing, and the kernel would delete the visitor's cookie (a logout).
* ``config.include("sessions_kernel.cluster")``: what a failover needs of the
  requests, which :mod:`sessions_kernel.outage` does for every database (and
  ``config.include("sessions_kernel")`` includes by default): conflicts (1213),
  refused or lost connections and nodes not ready (1047, 2003, 2006, 2013) are run
  again by pyramid_retry where that is safe, and answered ``503 Service
  Unavailable`` with ``Retry-After`` otherwise, never a traceback. Including both
  adds the tween once.

:func:`classify_error`, :func:`is_retryable`, :func:`error_code` and
:func:`track_error_phase` are :mod:`sessions_kernel.outage`'s, under their
former names here.

``collect_garbage`` (``psessions gc``) uses :func:`classify_error` to run a
batch again that a conflict aborted.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .outage import (
    DISCONNECT_CODES,
    PHASE_ATTRIBUTE,
    RETRYABLE_CODES,
    UNAVAILABLE_CODES,
    classify_error,
    error_code,
    is_retryable,
    outage_tween_factory,
    track_error_phase,
)

__all__ = [
    "DISCONNECT_CODES",
    "PHASE_ATTRIBUTE",
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

#: The tween's former name: :func:`sessions_kernel.outage.outage_tween_factory`.
cluster_tween_factory = outage_tween_factory


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


def includeme(config: Any) -> None:
    """``config.include("sessions_kernel.cluster")``: the outage tween, over pyramid_tm.

    The same as ``config.include("sessions_kernel.outage")`` (see
    :mod:`sessions_kernel.outage`), here for applications that included it by
    this name, and kept on when ``sessions_kernel.outage_tween`` is false.
    Include ``pyramid_tm`` and ``pyramid_retry`` too (``retry.attempts`` of 3
    or more).
    """
    config.include("sessions_kernel.outage")
