"""``sessions-audit``: one log line for each committed change of the session rows.

The application installs it and lists :class:`AuditMixin` among its model's
bases. After every transaction that changed session rows commits (a request,
a logout run again after an abort, a batch of ``psessions gc``), the kernel
calls :func:`session_rows_changed` once, and the plugin writes one line to
the logger ``sessions_audit``, for instance::

    source=request written=<new key> rekeyed=<old key>><new key>

Only the non-empty fields are written. Row keys are the SHA-256 of the
cookie's token, so they are safe to log: nobody can turn one back into a
cookie. Changes made by another process, or by the application's own SQL on
the table, are not seen here (see ``session_rows_changed``).

Its distribution declares the entry point ``audit = "sessions_audit"`` in
the group ``sessions_kernel.plugins``.
"""

from __future__ import annotations

import logging

from sessions_kernel import RowChanges, SessionFactory, hookimpl

log = logging.getLogger("sessions_audit")


class AuditMixin:
    """Activates the plugin; adds no column."""


def audit_line(changes: RowChanges) -> str:
    """The line for one committed change: its source, then each field that is not empty."""
    fields = [f"source={changes.source}"]
    if changes.written:
        fields.append("written=" + ",".join(sorted(changes.written)))
    if changes.deleted:
        fields.append("deleted=" + ",".join(sorted(changes.deleted)))
    if changes.rekeyed:
        fields.append("rekeyed=" + ",".join(f"{old}>{new}" for old, new in changes.rekeyed))
    if changes.lineages:
        fields.append("lineages=" + ",".join(sorted(changes.lineages)))
    if changes.everything:
        fields.append("everything=yes")
    return " ".join(fields)


@hookimpl
def session_mixins() -> list[type]:
    return [AuditMixin]


@hookimpl
def session_rows_changed(factory: SessionFactory, changes: RowChanges) -> None:
    # Called after the commit: an exception raised here would reach the caller of
    # the commit although the change stands. Log it instead.
    try:
        log.info("%s", audit_line(changes))
    except Exception:
        log.exception("sessions-audit could not log a committed change")
