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

Exit codes, for schedulers and CI: 0 done (also when nothing was expired,
and ``check`` found nothing), 1 the database failed, 2 bad usage or an
application without a sessions_kernel factory, 3 ``check`` found weak settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import IO, Any

import sqlalchemy as sa

from . import deploy, maintenance
from .factory import SessionFactory
from .model import model_table

__all__ = ["main"]

EXIT_OK, EXIT_DATABASE, EXIT_USAGE, EXIT_FINDINGS = 0, 1, 2, 3


class UsageError(Exception):
    """Something the user can fix in the command line or the application."""


def _parser() -> argparse.ArgumentParser:
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
    show = not args.quiet and (args.progress if args.progress is not None else _is_terminal())
    now = int(factory.clock())  # the same moment for the count and for the deletes
    bar = None
    if show and not args.dry_run and maintenance.expired_condition(factory, now) is not None:
        from tqdm import tqdm

        bar = tqdm(
            total=maintenance.count_expired(factory, bind, now),
            unit=" sessions",
            desc=f"gc {table}",
            file=sys.stderr,
            disable=False,
            dynamic_ncols=True,
        )

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
    args = _parser().parse_args(argv)
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


if __name__ == "__main__":
    main_entry()
