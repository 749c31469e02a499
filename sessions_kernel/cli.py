"""``psessions``: look after an application's sessions from the command line.

Like ``pshell`` and ``proutes``, it takes the application's ``config_uri``,
bootstraps the application and uses the session factory it configured::

    psessions development.ini gc             # delete expired sessions (a progress bar
                                             # on a terminal; --progress/--no-progress)
    psessions development.ini gc --dry-run   # count them
    psessions development.ini plugins        # installed plugins, active ones, settings
    psessions development.ini indexes        # indexes the active plugins need
    psessions development.ini ddl --apply    # triggers the active plugins need (sessions-cache)
    psessions production.ini check           # settings too weak for production

and, with no config file, starts a plugin of your own (:mod:`sessions_kernel.scaffold`)::

    psessions new-plugin login-alerts        # ./sessions-login-alerts, tests included

Installed plugins add commands of their own
(:func:`~sessions_kernel.hookspecs.session_commands`), e.g. sessions-migrate's
``psessions development.ini migrate``; ``psessions --help`` lists them.

Exit codes, for schedulers and CI: 0 done (also when nothing was expired,
and ``check`` found nothing), 1 the database failed, 2 bad usage or an
application without a sessions_kernel factory, 3 ``check`` found weak settings.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any, cast

import sqlalchemy as sa

from . import deploy, maintenance
from .factory import SessionFactory
from .model import model_table

__all__ = ["Command", "UsageError", "main", "progress_bar", "wants_progress"]

EXIT_OK, EXIT_DATABASE, EXIT_USAGE, EXIT_FINDINGS = 0, 1, 2, 3

#: The kernel's own commands: a plugin's command may take none of these names.
KERNEL_COMMANDS = ("gc", "plugins", "indexes", "ddl", "check", "new-plugin")
#: What a plugin's ``Command.run`` may ask for, by parameter name (it gets only those).
RUN_ARGUMENTS = ("args", "factory", "bind", "out", "registry", "config_uri")
_COMMAND_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*\Z")


class UsageError(Exception):
    """Something the user can fix in the command line or the application.

    ``psessions`` prints the message after ``psessions:`` on stderr and exits
    2; a plugin's command (:class:`Command`) may raise it too.
    """


@dataclass(frozen=True)
class Command:
    """A ``psessions`` subcommand of a plugin's
    (:func:`~sessions_kernel.hookspecs.session_commands`).

    ``name``: the subcommand, ``psessions CONFIG <name>`` (lower case letters,
    digits and dashes). ``help``: one line for ``psessions --help``.
    ``run``: called once the application started, with the arguments it
    names among ``args``, ``factory``, ``bind``, ``out``, ``registry`` and
    ``config_uri`` (see the hook); returns the exit code.
    ``add_arguments``: adds the command's options to its
    :class:`argparse.ArgumentParser` (``None``: it has none).
    ``description``: the text of ``psessions CONFIG <name> --help`` (``None``: ``help``).
    """

    name: str
    help: str
    run: Callable[..., int]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    description: str | None = None


@dataclass(frozen=True)
class _PluginCommand:
    """A plugin's command, as the parser knows it: the plugin's name, label and mixins."""

    plugin: str
    label: str
    mixins: tuple[type, ...]
    command: Command


def plugin_commands() -> list[_PluginCommand]:
    """The commands every installed plugin adds, by plugin name; :class:`UsageError` if one
    is not a :class:`Command`, is misnamed, or takes a name the kernel or another plugin has.

    A plugin whose entry point fails to import adds none (``psessions plugins``
    shows its error; the application's start reports it).
    """
    from pyramid.exceptions import ConfigurationError

    from .plugins import _manager_of, discover

    try:
        installed = [info for info in discover(strict=False) if info.plugin is not None]
    except ConfigurationError:  # two plugins of one name...: the start-up says it better
        return []
    by_name = {info.name: info for info in installed}
    found: list[_PluginCommand] = []
    taken: dict[str, str] = {name: "the kernel (sessions-kernel)" for name in KERNEL_COMMANDS}
    pm = _manager_of(installed)
    for impl in sorted(pm.hook.session_commands.get_hookimpls(), key=lambda i: i.plugin_name):
        info = by_name[impl.plugin_name]
        try:
            answer = list(cast("Sequence[Any] | None", impl.function()) or ())
        except Exception as exc:
            raise UsageError(
                f"session plugin {info.label}: its session_commands hook raised "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        for command in answer:
            if not isinstance(command, Command):
                raise UsageError(
                    f"session plugin {info.label}: session_commands returned {command!r}, "
                    "which is not a sessions_kernel.cli.Command"
                )
            if not isinstance(command.name, str) or not _COMMAND_NAME.match(command.name):
                raise UsageError(
                    f"session plugin {info.label}: command name {command.name!r} is not lower "
                    "case letters, digits and dashes"
                )
            if command.name in taken:
                raise UsageError(
                    f"session plugin {info.label} adds the command {command.name!r}, which "
                    f"{taken[command.name]} has already: uninstall one of them, or rename the "
                    "plugin's command"
                )
            unknown = _unknown_run_arguments(command.run)
            if unknown:
                raise UsageError(
                    f"session plugin {info.label}: the run function of its command "
                    f"{command.name!r} asks for {', '.join(unknown)}; psessions gives "
                    f"{', '.join(RUN_ARGUMENTS)}"
                )
            taken[command.name] = f"session plugin {info.label}"
            found.append(_PluginCommand(info.name, info.label, info.mixins, command))
    return found


def _unknown_run_arguments(run: Callable[..., int]) -> list[str]:
    try:
        parameters = inspect.signature(run).parameters.values()
    except (TypeError, ValueError):
        return ["arguments psessions cannot read (not a function)"]
    return [
        p.name
        for p in parameters
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and p.name not in RUN_ARGUMENTS
        and p.default is p.empty
    ]


def _run_plugin_command(found: _PluginCommand, given: dict[str, Any]) -> int:
    """Call the command's ``run`` with the arguments it names, by name."""
    parameters = inspect.signature(found.command.run).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        wanted = dict(given)
    else:
        wanted = {name: value for name, value in given.items() if name in parameters}
    return int(found.command.run(**wanted))


def _parser(extra: Sequence[_PluginCommand] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="psessions",
        description="Look after the server-side sessions of a Pyramid application.",
        epilog="Exit codes: 0 done, 1 database error, 2 usage or configuration error, "
        "3 check found weak settings. "
        "To start a plugin of your own: psessions new-plugin NAME (see --help there).",
    )
    parser.add_argument("config_uri", help="the application's config file, e.g. development.ini")
    parser.add_argument(
        "--app-name", default="main", help="the app section of the config file (default: main)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gc = commands.add_parser("gc", help="delete expired sessions in batches")
    gc.add_argument(
        "--batch-size",
        type=int,
        default=5000,
        help="rows per batch; each batch is its own transaction (default: %(default)s)",
    )
    gc.add_argument(
        "--retries",
        type=int,
        default=5,
        help="run a batch the database aborted (deadlock, cluster conflict) again, up to N "
        "times (default 5)",
    )
    gc.add_argument("--dry-run", action="store_true", help="count expired sessions, delete none")
    gc.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr, with the total, rate and time left (counting "
        "the expired sessions first, one COUNT); by default only when stderr is a terminal",
    )
    gc.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing but errors (no progress bar)"
    )

    plugins = commands.add_parser("plugins", help="list installed plugins and what is active")
    plugins.add_argument("--json", action="store_true", help="print JSON")

    indexes = commands.add_parser("indexes", help="list the indexes the active plugins need")
    indexes.add_argument("--sql", action="store_true", help="print CREATE INDEX for missing ones")

    ddl = commands.add_parser(
        "ddl", help="print (or run) the SQL the active plugins need: functions, triggers"
    )
    ddl.add_argument(
        "--apply", action="store_true", help="run it, in one transaction (safe to run again)"
    )

    check = commands.add_parser(
        "check",
        help="report the settings that are weak for production, each with its fix",
        description="Report the settings that are weak for production, each with its fix; "
        "exit 3 when there is any, so that CI can run it. Silence a finding on purpose with "
        f"--ignore ID or {deploy.SILENCE_SETTING} = ID ... in the app section.",
    )
    check.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="ID",
        help="silence the finding ID (repeat, or separate ids with commas)",
    )
    check.add_argument(
        "--server-name",
        default="main",
        help="the server section that counts the workers, [server:NAME] (default: main)",
    )
    check.add_argument("--json", action="store_true", help="print JSON")

    for found in extra:
        command = found.command
        sub = commands.add_parser(
            command.name,
            help=f"{command.help} [{found.label}]",
            description=command.description or command.help,
        )
        if command.add_arguments is not None:
            command.add_arguments(sub)
        sub.set_defaults(plugin_command=found)
    return parser


def _bootstrap(config_uri: str, app_name: str) -> tuple[SessionFactory, Any, Any, Any]:
    from pyramid.interfaces import ISessionFactory
    from pyramid.paster import bootstrap, setup_logging

    if not os.path.exists(config_uri.split("#", 1)[0]):
        raise UsageError(f"no such config file: {config_uri}")
    setup_logging(config_uri)
    env = bootstrap(f"{config_uri}#{app_name}" if "#" not in config_uri else config_uri)
    registry, request = env["registry"], env["request"]
    factory = registry.queryUtility(ISessionFactory)
    if not isinstance(factory, SessionFactory):
        env["closer"]()
        raise UsageError(
            f"{config_uri} does not configure a sessions_kernel session factory: add "
            "config.include('sessions_kernel') to the application (found "
            f"{type(factory).__name__ if factory is not None else 'no session factory'})"
        )
    dbsession = getattr(request, factory.dbsession_name)
    bind = dbsession.get_bind(mapper=sa.inspect(factory.model))
    return factory, bind, env["closer"], registry


def _gc(args: argparse.Namespace, factory: SessionFactory, bind: Any, out: IO[str]) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    table = model_table(factory.model).name
    show = wants_progress(args)
    now = int(factory.clock())  # the same moment for the count and for the deletes
    bar = None
    if show and not args.dry_run and maintenance.expired_condition(factory, now) is not None:
        bar = progress_bar(lambda: maintenance.count_expired(factory, bind, now), f"gc {table}")

    def progress(p: maintenance.GCProgress) -> None:
        assert bar is not None
        bar.update(p.deleted - bar.n)

    try:
        result = maintenance.collect_garbage(
            factory,
            bind,
            batch_size=args.batch_size,
            now=now,
            dry_run=args.dry_run,
            progress=progress if bar is not None else None,
            retries=max(args.retries, 0),
        )
    finally:
        if bar is not None:
            bar.close()
    if args.quiet:
        return EXIT_OK
    if not result.expiring:
        print(
            f"nothing to do: sessions of {factory.model.__name__} never expire "
            "(session.max_age = none, and no active plugin expires sessions)",
            file=out,
        )
    elif result.dry_run:
        print(f"{result.deleted:,} expired sessions in {table} would be deleted", file=out)
    else:
        rate = result.deleted / result.seconds if result.seconds else 0
        print(
            f"deleted {result.deleted:,} expired sessions from {table} in {result.batches} "
            f"batches, {result.seconds:.1f} s ({rate:,.0f} rows/s)",
            file=out,
        )
    return EXIT_OK


def wants_progress(args: argparse.Namespace) -> bool:
    """Whether a command shows a progress bar: as ``--progress``/``--no-progress`` say,
    else when stderr is a terminal; never with ``-q`` (``args.progress``, ``args.quiet``).
    For plugins' commands too (``psessions migrate``)."""
    return not args.quiet and (args.progress if args.progress is not None else _is_terminal())


def progress_bar(total: int | Callable[[], int] | None, desc: str) -> Any:
    """A tqdm bar of sessions on stderr, as ``psessions gc`` shows it (total, rate, time left).

    ``total`` may be a function that counts: it is called once tqdm imported, so that a
    missing tqdm is said before any SQL runs.
    """
    from tqdm import tqdm

    return tqdm(
        total=total() if callable(total) else total,
        unit=" sessions",
        desc=desc,
        file=sys.stderr,
        disable=False,
        dynamic_ncols=True,
    )


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


def _plugins(args: argparse.Namespace, factory: SessionFactory | None, out: IO[str]) -> int:
    reports = maintenance.plugin_report(factory)
    if args.json:
        json.dump([_report_dict(r) for r in reports], out, indent=2, default=repr)
        print(file=out)
        return EXIT_OK
    for r in reports:
        version = f" {r.version}" if r.version else ""
        dist = f" ({r.distribution}{version})" if r.distribution else ""
        if r.error:
            state = f"BROKEN: {r.error}"
        elif r.active:
            state = f"active through {r.active_mixin}"
            state += ", runtime-configurable" if r.configurable else ""
        else:
            state = f"inactive (add {' or '.join(r.mixins) or 'its mixin'} to the model)"
        print(f"{r.name}{dist}: {state}", file=out)
        if r.hooks:
            print(f"    hooks: {', '.join(r.hooks)}", file=out)
        for s in r.settings:
            value = f" = {s.value!r}" if r.active and not s.secret else ""
            flag = " [per session]" if s.configurable else ""
            print(f"    {s.name}{value} (default {s.default!r}){flag}", file=out)
    if factory is not None:
        print(f"expiry: {factory.config.expiry}", file=out)
    return EXIT_OK


def _report_dict(r: maintenance.PluginReport) -> dict[str, Any]:
    return {
        "name": r.name,
        "distribution": r.distribution,
        "version": r.version,
        "error": r.error,
        "active": r.active,
        "active_mixin": r.active_mixin,
        "configurable": r.configurable,
        "mixins": list(r.mixins),
        "hooks": list(r.hooks),
        "settings": [
            {
                "name": s.name,
                "default": s.default,
                "value": None if s.secret else s.value,
                "runtime": s.runtime,
                "configurable": s.configurable,
                "doc": s.doc,
            }
            for s in r.settings
        ],
    }


def _indexes(args: argparse.Namespace, factory: SessionFactory, bind: Any, out: IO[str]) -> int:
    model = factory.model
    table = model_table(model)
    required = maintenance.required_indexes(model)
    missing = maintenance.missing_indexes(model)
    in_database = {
        tuple(index["column_names"]) for index in sa.inspect(bind).get_indexes(table.name)
    }
    if not required:
        print(f"the active plugins of {model.__name__} need no index", file=out)
        return EXIT_OK
    for columns in required:
        declared = "missing from the model" if columns in missing else "declared in the model"
        stored = "present" if columns in in_database else "absent"
        print(f"({', '.join(columns)}): {declared}, {stored} in the database", file=out)
    if args.sql:
        copy = table.to_metadata(sa.MetaData())
        for columns in required:
            if columns in in_database:
                continue
            index = sa.Index(maintenance.index_name(table, columns), *(copy.c[c] for c in columns))
            ddl = sa.schema.CreateIndex(index).compile(dialect=bind.dialect)
            print(f"{str(ddl).strip()};", file=out)
    if missing:
        print(
            f"add them with sessions_kernel.add_indexes({model.__name__}) after the class, "
            "then create_all() or an Alembic revision (--autogenerate)",
            file=out,
        )
    return EXIT_OK


def _ddl(args: argparse.Namespace, factory: SessionFactory, bind: Any, out: IO[str]) -> int:
    model = factory.model
    statements = maintenance.required_ddl(model, bind.dialect)
    if not statements:
        print(
            f"the active plugins of {model.__name__} need no SQL on {bind.dialect.name}",
            file=out,
        )
        return EXIT_OK
    if not args.apply:
        for statement in statements:
            print(f"{statement.strip()};\n", file=out)
        return EXIT_OK
    with bind.begin() as connection:
        for statement in statements:
            connection.exec_driver_sql(statement)
    print(f"applied {len(statements)} statements to {model_table(model).name}", file=out)
    return EXIT_OK


def _server_section(config_uri: str, name: str) -> dict[str, str] | None:
    """The settings of the ini file's ``[server:NAME]`` section, or ``None`` if it has none."""
    from pyramid.paster import get_config_loader

    section = f"server:{name}"
    loader = get_config_loader(config_uri.split("#", 1)[0])
    if section not in loader.get_sections():
        return None
    return dict(loader.get_settings(section))


def _check(
    args: argparse.Namespace, factory: SessionFactory, bind: Any, registry: Any, out: IO[str]
) -> int:
    deployment = deploy.Deployment(
        registry=registry,
        bind=bind,
        server=_server_section(args.config_uri, args.server_name),
        server_section=f"server:{args.server_name}",
    )
    ignore = [i for given in args.ignore for i in given.replace(",", " ").split()]
    report = deploy.run_checks(factory, deployment, ignore=ignore)
    source = args.config_uri
    if args.json:
        json.dump(
            {
                "config": source,
                "ok": report.ok,
                "findings": [f.as_dict() for f in report.findings],
                "silenced": [f.as_dict() for f in report.silenced],
            },
            out,
            indent=2,
        )
        print(file=out)
        return EXIT_OK if report.ok else EXIT_FINDINGS
    for finding in report.findings:
        print(finding.line(), file=out)
    silenced = (
        f" ({len(report.silenced)} silenced: {', '.join(f.id for f in report.silenced)})"
        if report.silenced
        else ""
    )
    if report.ok:
        print(f"{source}: no weak session setting found{silenced}", file=out)
        return EXIT_OK
    count = len(report.findings)
    print(f"{source}: {count} weak setting{'s' if count > 1 else ''}{silenced}", file=out)
    return EXIT_FINDINGS


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    """Run ``psessions``; return its exit code."""
    from pyramid.exceptions import ConfigurationError

    out = out or sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["new-plugin"]:  # takes no config file
        from . import scaffold

        return scaffold.main(argv[1:], out)
    try:
        parser = _parser(plugin_commands())
    except UsageError as exc:
        print(f"psessions: {exc}", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    closer = None
    try:
        try:
            factory, bind, closer, registry = _bootstrap(args.config_uri, args.app_name)
        except ConfigurationError as exc:
            if args.command != "plugins":
                raise UsageError(f"the application does not start: {exc}") from exc
            # List what is installed anyway: a broken plugin is what the user wants to see.
            print(f"psessions: the application does not start: {exc}", file=sys.stderr)
            _plugins(args, None, out)
            return EXIT_USAGE
        found = getattr(args, "plugin_command", None)
        if found is not None:
            if found.plugin not in {info.name for info in factory.config.active}:
                mixins = " or ".join(m.__name__ for m in found.mixins) or "its mixin"
                raise UsageError(
                    f"{args.command} is a command of the session plugin {found.label}, which "
                    f"{factory.model.__name__} does not activate: add {mixins} to the bases "
                    f"of {factory.model.__name__}"
                )
            given = {
                "args": args,
                "factory": factory,
                "bind": bind,
                "out": out,
                "registry": registry,
                "config_uri": args.config_uri,
            }
            return _run_plugin_command(found, given)
        if args.command == "gc":
            return _gc(args, factory, bind, out)
        if args.command == "plugins":
            return _plugins(args, factory, out)
        if args.command == "check":
            return _check(args, factory, bind, registry, out)
        if args.command == "ddl":
            return _ddl(args, factory, bind, out)
        return _indexes(args, factory, bind, out)
    except UsageError as exc:
        print(f"psessions: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except sa.exc.SQLAlchemyError as exc:
        print(f"psessions: database error: {exc}", file=sys.stderr)
        return EXIT_DATABASE
    finally:
        if closer is not None:
            closer()


def main_entry() -> None:
    """The ``psessions`` console script."""
    sys.exit(main())


if __name__ == "__main__":  # python -m sessions_kernel.cli
    # through the module plugins import (sessions_kernel.cli.Command), not this __main__ copy
    from sessions_kernel.cli import main_entry as _main_entry

    _main_entry()
