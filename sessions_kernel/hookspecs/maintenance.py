"""Maintenance hooks: called by tools and listings, never on the request path.

Garbage collection, indexes and other SQL (:func:`session_expired_conditions`,
:func:`session_indexes`, :func:`session_ddl`), listings (:func:`session_expires_at`,
:func:`session_last_active`, :func:`session_details`), ``psessions
check`` (:func:`session_deploy_checks`) and commands of a plugin's own
(:func:`session_commands`). Part of
:mod:`sessions_kernel.hookspecs`, which re-exports every hook: import them,
and refer to them, from there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import hookspec

if TYPE_CHECKING:
    import sqlalchemy as sa
    from pyramid.registry import Registry
    from sqlalchemy import ColumnElement

    from ..cli import Command
    from ..deploy import Finding
    from ..model import BaseMixin


@hookspec
def session_expired_conditions(
    model: type[BaseMixin], settings: Mapping[str, Any], now: int
) -> Sequence[ColumnElement[bool]] | None:
    """Return SQL conditions that are true for rows this plugin considers expired.

    :param model: the model class; build conditions from its columns.
    :param settings: the global settings in force.
    :param now: the current time in whole seconds.

    A row is expired when any condition of any active plugin holds; return
    ``None`` or nothing for "no rule of mine applies". Used by garbage
    collection (``psessions gc``) and by listings that leave expired rows out;
    never called per request. It must agree with :func:`session_validate`
    and :func:`session_expires_at`.
    """


@hookspec
def session_indexes(model: type[BaseMixin]) -> Sequence[str | Sequence[str]] | None:
    """Return the indexes the session table needs for this plugin's queries.

    :param model: the model class.

    Return column names (one single-column index each) or sequences of
    column names (one composite index each, in that order). The kernel names
    them ``ix_<table>_<columns>``, leaves out those the table already has
    (an index or primary key starting with those columns), and offers the
    rest to the model through ``sessions_kernel.add_indexes(Model)`` and to
    ``psessions indexes``. Called by tools, never per request.
    """


@hookspec
def session_ddl(model: type[BaseMixin], dialect: sa.Dialect) -> Sequence[str] | None:
    """Return the SQL this plugin needs on the session table besides its columns and indexes.

    :param model: the model class (``sa.inspect(model).local_table`` is its table).
    :param dialect: the SQLAlchemy dialect of the database (``dialect.name``:
        ``"postgresql"``, ``"mysql"``, ``"mariadb"``, ``"sqlite"``), whose
        ``identifier_preparer`` quotes names.

    Return the statements, as strings, that create what the feature needs
    there (functions, triggers), or ``None`` when it needs nothing on this
    database. Each must be safe to run again (``CREATE OR REPLACE``, ``DROP
    … IF EXISTS`` before ``CREATE``). ``psessions CONFIG ddl`` prints them
    for a migration, ``psessions CONFIG ddl --apply`` runs them in one
    transaction, and :func:`~sessions_kernel.add_ddl` has ``metadata.create_all``
    run them after it created the table. Called by tools, never per request.
    """


@hookspec
def session_expires_at(row: BaseMixin, settings: Mapping[str, Any]) -> int | None:
    """Return when a stored row expires under this plugin's rule, or ``None``.

    :param row: a model instance read from the database (not the request's).
    :param settings: the settings in force for that row: the global values,
        with the row's own values for runtime-configurable settings.

    The kernel takes the earliest answer of all active plugins (see
    ``SessionFactory.describe``); listings such as "your sessions" show it.
    Issue no SQL. It must agree with :func:`session_validate` and
    :func:`session_expired_conditions`: a row is expired at and after the
    time returned.
    """


@hookspec
def session_last_active(row: BaseMixin, settings: Mapping[str, Any]) -> int | None:
    """Return the last time the row's session was used, if this plugin records it.

    :param row: a model instance read from the database.
    :param settings: as for :func:`session_expires_at`.

    The kernel records ``row.updated`` only when the session's own content
    changed; a plugin that writes on read-only activity (an idle extension)
    knows a later time. The kernel shows the latest of ``row.updated`` and
    every answer. Issue no SQL.
    """


@hookspec
def session_details(row: BaseMixin, settings: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Return what a listing should show of a stored row beyond the kernel's fields.

    :param row: a model instance read from the database (not the request's).
    :param settings: as for :func:`session_expires_at`.

    Return a mapping of small, displayable values (strings, numbers,
    ``None``) read from the plugin's own columns, or ``None``. The kernel
    merges every active plugin's answer into ``SessionInfo.details`` (see
    ``SessionFactory.describe``), which "your sessions" listings pass on.
    Prefix the keys with your plugin's name: two plugins reporting one key is
    a :class:`~sessions_kernel.SessionError`. Called with
    :func:`session_expires_at` and :func:`session_last_active`, by tools and
    listings only, never per request. Issue no SQL.
    """


@hookspec
def session_deploy_checks(
    settings: Mapping[str, Any],
    model: type[BaseMixin],
    registry: Registry | None,
    active: bool,
) -> Iterable[Finding] | None:
    """Report the settings of this plugin's feature that are weak for a production deployment.

    :param settings: the global settings in force, parsed (read-only). For an
        inactive plugin its own settings are absent: its feature is off.
    :param model: the factory's model class.
    :param registry: the Pyramid application's registry (``registry.settings``
        holds every setting of the ini file's app section, the execution
        policy, the tweens); ``None`` when a factory is checked on its own.
    :param active: whether ``model`` activates this plugin. Unlike every other
        hook, this one is called for each *installed* plugin, so that a plugin
        can say what is missing when the model lacks its mixin (a feature the
        application installed but never turned on). Return nothing when
        ``active`` is false unless that is a weakness.

    Return (or yield) :class:`~sessions_kernel.deploy.Finding` objects, one per
    weakness: ``id``, the name a user silences it by, as
    ``<your plugin's name>.<what>`` (the entry-point name ``psessions
    plugins`` lists; the kernel puts it in front of an id that lacks it, so
    that two plugins' ids never collide), ``setting``, the setting to change,
    ``message``, what is weak with the value in force and what an attacker
    or a failure gets from it, and ``fix``, what to set instead. Return
    ``None`` or nothing when all is well. Report choices that are legal, and
    may suit development, but are weak in production (a timeout left off, a
    long one); a combination that is wrong everywhere belongs in
    :func:`session_check_settings`, which stops the application before this
    hook could run. A user silences a finding on purpose by its id
    (``psessions.silenced_checks`` in the ini file, or ``--ignore ID``)::

        from sessions_kernel.deploy import Finding

        @hookimpl
        def session_deploy_checks(settings, active):
            if active and settings["ttl"] is None:
                yield Finding(
                    "ttl.off", "session.ttl", "session.ttl is not set: sessions never expire",
                    "set session.ttl, in seconds",
                )

    Called by ``psessions CONFIG check`` (:mod:`sessions_kernel.deploy`) after
    the application started, once per plugin, never per request. The kernel
    reports its own findings (cookie attributes, the key, the data format,
    the transaction and retry setup, the database and the server's workers,
    and ``kernel.expiry`` when no plugin's :func:`session_expiry_policy`
    answers), then the plugins', by plugin name; an exception a plugin's
    implementation raises is reported as ``<plugin>.check_failed``. Issue no
    SQL. Modelled on Django's system checks (``check --deploy``).
    """


@hookspec
def session_commands() -> Sequence[Command] | None:
    """Return the subcommands this plugin adds to ``psessions``.

    Called by ``psessions`` for each *installed* plugin when it builds its
    command line, before it reads the config file (so that ``psessions
    --help`` lists every command), never by an application. Return
    ``None`` or nothing when the plugin has no command. Each command is a
    :class:`sessions_kernel.cli.Command`::

        from sessions_kernel.cli import Command

        @hookimpl
        def session_commands():
            return [Command("audit-report", "summarise today's sessions", run, add_arguments)]

    ``name`` is the subcommand (lower case, digits and dashes); a name the
    kernel uses (``gc``, ``plugins``, ``indexes``, ``ddl``, ``check``,
    ``new-plugin``) or another installed plugin already took stops
    ``psessions`` with exit code 2 and a message naming both, whatever
    command was asked for. ``help`` is the line ``psessions --help`` shows.
    ``add_arguments(parser)``, if given, adds the command's options to its
    :class:`argparse.ArgumentParser`.

    ``run`` is called once the application started, as for ``psessions
    gc``, only when the model activates the plugin (else ``psessions``
    exits 2 and names the mixin to add to the model), with the arguments it
    names among: ``args`` (the parsed :class:`argparse.Namespace`),
    ``factory`` (the application's :class:`~sessions_kernel.SessionFactory`),
    ``bind`` (the engine of the session table), ``out`` (the text stream to
    print results to; errors go to ``sys.stderr``), ``registry`` (the
    application's Pyramid registry, from which
    ``pyramid.scripting.prepare(registry=registry)`` makes requests that run
    the application's own request pipeline, pyramid_tm's ``request.tm``
    included) and ``config_uri``. It
    returns the exit code: ``0`` done, ``1`` the database failed, ``2`` bad
    usage (or raise :class:`sessions_kernel.cli.UsageError` with the
    message; a :class:`sqlalchemy.exc.SQLAlchemyError` it lets through
    exits ``1``). Keep this hook cheap: import what the command needs in
    ``run``.
    """
