"""Maintenance: expired-session cleanup, the plugin listing, the indexes plugins need.

Nothing here runs on the request path. The ``psessions`` command
(:mod:`sessions_kernel.cli`) is a thin shell over these functions, which tests
and debug toolbars can call directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from .changes import RowChanges
from .factory import SessionFactory
from .model import BaseMixin, model_table
from .plugins import (
    FactoryConfig,
    PluginInfo,
    active_manager,
    discover,
    hidden_settings,
    hook_names,
)

__all__ = [
    "GCProgress",
    "GCResult",
    "PluginReport",
    "SettingReport",
    "add_indexes",
    "collect_garbage",
    "count_expired",
    "expired_condition",
    "index_name",
    "missing_indexes",
    "plugin_report",
    "required_indexes",
]


# -- garbage collection ------------------------------------------------------------------


def expired_condition(factory: SessionFactory, now: int | None = None) -> Any:
    """The SQL condition true for rows that some active plugin considers expired.

    The kernel's ``session.max_age`` counts as such a plugin while it is in
    force (no active plugin expires every session, or it was set explicitly).
    ``None`` when nothing expires sessions (``session.max_age = none`` and no
    timeout in force): then nothing is garbage.
    """
    config = factory.config
    now = int(factory.clock()) if now is None else now
    conditions = [
        condition
        for answer in config.hook.session_expired_conditions(
            model=config.model, settings=config.values, now=now
        )
        for condition in answer or ()
    ]
    return sa.or_(*conditions) if conditions else None


@dataclass(frozen=True)
class GCProgress:
    """Handed to a ``progress`` callback after each batch."""

    deleted: int
    batches: int
    seconds: float

    @property
    def rate(self) -> float:
        """Rows deleted per second so far."""
        return self.deleted / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class GCResult:
    """What :func:`collect_garbage` did (or, with ``dry_run``, would do)."""

    #: rows deleted, or for a dry run the rows that would be
    deleted: int
    batches: int
    seconds: float
    dry_run: bool = False
    #: ``False`` when nothing expires sessions (``session.max_age = none`` and no
    #: timeout plugin in force): nothing was looked at
    expiring: bool = True


def count_expired(factory: SessionFactory, bind: sa.Engine, now: int | None = None) -> int:
    """How many stored sessions are expired now (one ``COUNT``)."""
    condition = expired_condition(factory, now)
    if condition is None:
        return 0
    with bind.connect() as conn:
        query = sa.select(sa.func.count()).select_from(factory.model).where(condition)
        return int(conn.scalar(query) or 0)


def collect_garbage(
    factory: SessionFactory,
    bind: sa.Engine,
    *,
    batch_size: int = 5000,
    now: int | None = None,
    dry_run: bool = False,
    progress: Callable[[GCProgress], None] | None = None,
    retries: int = 5,
) -> GCResult:
    """Delete expired sessions in batches, each batch in a transaction of its own.

    A batch selects up to ``batch_size`` primary keys of expired rows, then
    deletes those rows by primary key, checking the condition again so that a
    session extended meanwhile by a request survives. No statement touches
    more than ``batch_size`` rows, so locks are short, and memory does not grow
    with the table. ``now`` defaults to the factory's clock, read once.

    A batch the database aborted (a deadlock, a lock wait timeout, a Galera
    certification conflict: error 1213; a serialization failure on
    PostgreSQL) is run again, up to ``retries`` times per batch with a short
    growing pause; the batch's own transaction is all that is lost.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    start = time.perf_counter()
    now = int(factory.clock()) if now is None else now
    condition = expired_condition(factory, now)
    if condition is None:
        return GCResult(0, 0, time.perf_counter() - start, dry_run, expiring=False)
    if dry_run:
        count = count_expired(factory, bind, now)
        return GCResult(count, 0, time.perf_counter() - start, dry_run=True)

    model = factory.model
    pk = sa.inspect(model).primary_key[0]
    select_batch = sa.select(pk).where(condition).limit(batch_size)
    deleted = batches = 0

    def batch() -> tuple[list[Any], int]:
        with bind.begin() as conn:
            ids = list(conn.scalars(select_batch))
            if not ids:
                return ids, 0
            return ids, conn.execute(sa.delete(model).where(pk.in_(ids), condition)).rowcount

    while True:
        for attempt in range(retries + 1):
            try:
                ids, count = batch()
                break
            except sa.exc.DBAPIError as exc:
                if attempt == retries or not _transient(exc):
                    raise
                time.sleep(min(0.05 * 2**attempt, 1.0))
        if not ids:
            break
        if count and factory.observed:  # committed: those that still expired are gone
            factory.announce(RowChanges(deleted=frozenset(ids), source="gc"))
        deleted += count
        batches += 1
        if progress is not None:
            progress(GCProgress(deleted, batches, time.perf_counter() - start))
        if len(ids) < batch_size:
            break
    return GCResult(deleted, batches, time.perf_counter() - start)


def _transient(error: sa.exc.DBAPIError) -> bool:
    """An error after which running the batch again is safe and may succeed."""
    from .cluster import is_retryable

    if is_retryable(error):
        return True
    sqlstate = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return isinstance(sqlstate, str) and sqlstate.startswith("40")  # PostgreSQL class 40


# -- the plugin listing ------------------------------------------------------------------


@dataclass(frozen=True)
class SettingReport:
    """One setting in :class:`PluginReport`."""

    name: str
    default: Any
    doc: str
    #: whether ``request.session.settings`` shows it
    runtime: bool
    #: whether the model lets it be changed per session
    configurable: bool = False
    #: the value in force (``None`` too when the plugin is not active, and always for a
    #: secret setting)
    value: Any = None
    #: a secret (a key, a password, the cookie's serializer): its value is never reported
    secret: bool = False


@dataclass(frozen=True)
class PluginReport:
    """One installed plugin, as ``psessions plugins`` lists it."""

    name: str
    distribution: str | None
    version: str | None
    #: the import error of an entry point that failed to load, else ``None``
    error: str | None
    #: the mixin through which the model activates the plugin, else ``None``
    active_mixin: str | None
    mixins: tuple[str, ...]
    hooks: tuple[str, ...]
    settings: tuple[SettingReport, ...] = field(default=())

    @property
    def active(self) -> bool:
        return self.active_mixin is not None

    @property
    def configurable(self) -> bool:
        """Whether any of its settings can be changed per session with this model."""
        return any(s.configurable for s in self.settings)


def _report(info: PluginInfo, config: FactoryConfig | None) -> PluginReport:
    active = info.activated_by(config.model) if config and info.plugin is not None else None
    configurable = config.configurable if config else frozenset()
    values = config.values if config and active else {}
    hidden = hidden_settings([info])
    return PluginReport(
        name=info.name,
        distribution=info.distribution,
        version=info.version,
        error=info.error,
        active_mixin=active.__name__ if active else None,
        mixins=tuple(m.__name__ for m in info.mixins),
        # what runs in the factory (its own manager: a plugin blocked there shows none),
        # else what the plugin implements where the kernel discovered it
        hooks=hook_names(config.pm, info.plugin) if config and active else info.hooks,
        settings=tuple(
            SettingReport(
                name=s.name,
                default=s.default,
                doc=s.doc,
                runtime=s.runtime,
                configurable=s.name in configurable,
                value=None if s.name in hidden else values.get(s.name),
                secret=s.name in hidden,
            )
            for s in info.settings
        ),
    )


def plugin_report(factory: SessionFactory | None = None) -> list[PluginReport]:
    """Every installed plugin, the kernel's own first, and what ``factory`` makes of it.

    Without a factory, only what is installed (no plugin is marked active).
    An entry point that fails to import is listed with its ``error`` instead
    of raising, so a listing shows what is broken.
    """
    config = factory.config if factory is not None else None
    return [_report(info, config) for info in discover(strict=False)]


# -- indexes -----------------------------------------------------------------------------


def required_indexes(model: type[BaseMixin]) -> list[tuple[str, ...]]:
    """The indexes the plugins active for ``model`` ask for, as tuples of column names.

    Plugins answer the ``session_indexes`` hook; the answers are merged in
    plugin order without repeats. When no active plugin can expire every
    session (none implements ``session_expiry_policy``), the kernel's
    ``session.max_age`` is in force by default and ``gc`` selects by
    ``created``: the kernel asks for that index first. An index that is the
    leading part of another one asked for is left out (the longer one serves).
    """
    pm = active_manager(model)
    wanted: list[tuple[str, ...]] = []
    if not pm.hook.session_expiry_policy.get_hookimpls():
        wanted.append(("created",))
    for answer in reversed(pm.hook.session_indexes(model=model)):
        for item in answer or ():
            columns = (item,) if isinstance(item, str) else tuple(item)
            if columns not in wanted:
                wanted.append(columns)
    return [
        columns
        for columns in wanted
        if not any(
            len(other) > len(columns) and other[: len(columns)] == columns for other in wanted
        )
    ]


def missing_indexes(model: type[BaseMixin]) -> list[tuple[str, ...]]:
    """:func:`required_indexes` that ``model``'s table does not declare yet.

    An index (or primary key) whose leading columns are the ones asked for
    counts as present.
    """
    table = model_table(model)
    present = [tuple(c.name for c in index.columns) for index in table.indexes]
    present.append(tuple(c.name for c in table.primary_key.columns))
    return [
        columns
        for columns in required_indexes(model)
        if not any(have[: len(columns)] == columns for have in present)
    ]


def index_name(table: sa.Table, columns: tuple[str, ...]) -> str:
    """``ix_<table>_<column>[_<column>...]``, the name :func:`add_indexes` gives."""
    return "_".join(("ix", table.name, *columns))


def add_indexes(model: type[BaseMixin]) -> list[sa.Index]:
    """Add to ``model``'s table the indexes its active plugins need; return those added.

    Call it once, right after the model's class statement, so that
    ``metadata.create_all()`` and Alembic's autogenerate see them::

        class Session(ConfigIdleMixin, UseridMixin, BaseMixin, Base):
            __tablename__ = "session"

        sessions_kernel.add_indexes(Session)

    Calling it again adds nothing.
    """
    table = model_table(model)
    return [
        sa.Index(index_name(table, columns), *(table.c[name] for name in columns))
        for columns in missing_indexes(model)
    ]


def required_ddl(model: type[BaseMixin], dialect: sa.Dialect) -> list[str]:
    """The SQL the active plugins need on ``model``'s table for ``dialect``
    (:func:`~sessions_kernel.hookspecs.session_ddl`), in the plugins' order."""
    pm = active_manager(model)
    statements: list[str] = []
    for answer in reversed(pm.hook.session_ddl(model=model, dialect=dialect)):
        statements.extend(answer or ())
    return statements


def add_ddl(model: type[BaseMixin]) -> None:
    """Have ``metadata.create_all()`` run the SQL the active plugins need after it creates
    ``model``'s table (:func:`~sessions_kernel.hookspecs.session_ddl`: a trigger, say).

    Call it once, right after the model's class statement, beside
    :func:`add_indexes`. Alembic runs no such event: put what ``psessions
    CONFIG ddl`` prints in a migration (``op.execute``) instead.
    """
    table = model_table(model)
    if table.info.get("sessions_kernel.ddl"):
        return
    table.info["sessions_kernel.ddl"] = True

    def create(target: sa.Table, connection: sa.Connection, **kwargs: Any) -> None:
        for statement in required_ddl(model, connection.dialect):
            connection.exec_driver_sql(statement)

    sa.event.listen(table, "after_create", create)
