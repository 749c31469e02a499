"""session_commands: plugins add ``psessions`` subcommands; the kernel names none of them.

Each test installs small plugins of its own (a ``*.dist-info`` with an entry
point in ``sessions_kernel.plugins``, under module names of the test's own)
and an application on a SQLite file, writes its ini file, and runs
``psessions`` in the process through :func:`sessions_kernel.cli.main` (once as a
subprocess). The database plays no part in what is tested here: SQLite only.
"""

from __future__ import annotations

import importlib
import io
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from sessions_kernel import cli, generate_secret_key

HERE = Path(__file__).resolve().parent

PLUGIN = '''
import sqlalchemy as sa
from pyramid.scripting import prepare

from sessions_kernel import hookimpl
from sessions_kernel.cli import Command, UsageError


class CountedMixin:
    """Activates this plugin."""


def add_arguments(parser):
    parser.add_argument("--label", default="rows")
    parser.add_argument("--store", type=int, default=0, help="store N sessions first")


def count(args, factory, bind, out, registry):
    if args.store < 0:
        raise UsageError(f"--store must not be negative, got {args.store}")
    for i in range(args.store):  # through the application's own pipeline and transaction
        env = prepare(registry=registry)
        try:
            request = env["request"]
            request.tm.begin()
            request.session["n"] = i
            request.tm.commit()
        finally:
            env["closer"]()
    with bind.connect() as conn:
        n = conn.scalar(sa.select(sa.func.count()).select_from(factory.model))
    print(f"{n} {args.label} in {factory.model.__tablename__}", file=out)
    return 0


def show_registry(registry, config_uri, out):
    print(f"registry of {config_uri}: {registry.settings['session.model_class']}", file=out)
    return 0


def fail(out):
    raise sa.exc.OperationalError("SELECT 1", {}, Exception("the database is down"))


@hookimpl
def session_mixins():
    return [CountedMixin]


@hookimpl
def session_commands():
    return COMMANDS


COMMANDS = [
    Command("count-rows", "count the session rows", count, add_arguments,
            description="Count the rows of the session table."),
    Command("registry", "show the registry's model class", show_registry),
    Command("fail", "fail as a database does", fail),
]
'''

APP = """
import zope.sqlalchemy
import sqlalchemy as sa
from pyramid.config import Configurator
from sqlalchemy.orm import DeclarativeBase, sessionmaker

from sessions_kernel import BaseMixin
{mixin_import}


class Base(DeclarativeBase):
    pass


class Session({mixin}BaseMixin, Base):
    __tablename__ = "session"


def main(global_config, **settings):
    engine = sa.engine_from_config(settings, "sqlalchemy.")
    Base.metadata.create_all(engine)
    maker = sessionmaker(bind=engine)
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")

        def dbsession(request):
            db = maker(info={{"request": request}})
            zope.sqlalchemy.register(db, transaction_manager=request.tm)
            return db

        config.add_request_method(dbsession, reify=True)
        config.include("sessions_kernel")
        return config.make_wsgi_app()
"""


class Installed:
    """Plugins and an application installed for one test; ``run(*args)`` runs psessions."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = tmp_path
        self.site = tmp_path / "site"
        self.site.mkdir()
        self.tag = secrets.token_hex(4)
        self.ini = tmp_path / "app.ini"
        self.entry_points: list[str] = []
        monkeypatch.syspath_prepend(str(self.site))

    def plugin(self, name: str, source: str = PLUGIN) -> str:
        """Install ``source`` as the plugin ``name``; return its module's name."""
        module = f"cmdplugin_{name}_{self.tag}"
        (self.site / f"{module}.py").write_text(source)
        self.entry_points.append(f"{name} = {module}")
        info = self.site / f"sessions_cmd_test_{self.tag}-1.0.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: sessions-cmd-test-{self.tag}\nVersion: 1.0\n"
        )
        lines = "".join(f"{line}\n" for line in self.entry_points)
        (info / "entry_points.txt").write_text(f"[sessions_kernel.plugins]\n{lines}")
        importlib.invalidate_caches()
        return module

    def app(self, mixin_from: str | None) -> Path:
        """The application, its model with ``CountedMixin`` of ``mixin_from`` (or without)."""
        module = f"cmdapp_{self.tag}"
        mixin_import = f"from {mixin_from} import CountedMixin" if mixin_from else ""
        source = APP.format(mixin_import=mixin_import, mixin="CountedMixin, " if mixin_from else "")
        (self.site / f"{module}.py").write_text(source)
        importlib.invalidate_caches()
        self.ini.write_text(
            "[app:main]\n"
            f"use = call:{module}:main\n"
            f"sqlalchemy.url = sqlite:///{self.root / 'app.sqlite'}\n"
            f"session.secret_key = {generate_secret_key()}\n"
            f"session.model_class = {module}.Session\n"
        )
        return self.ini

    def run(self, *args: str) -> tuple[int, str]:
        out = io.StringIO()
        code = cli.main([str(self.ini), *args], out)
        return code, out.getvalue()


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Installed:
    return Installed(tmp_path, monkeypatch)


def test_a_plugin_command_runs_with_its_options_in_the_started_application(installed, capsys):
    module = installed.plugin("counted")
    installed.app(module)
    assert installed.run("count-rows", "--label", "sessions") == (0, "0 sessions in session\n")
    code, out = installed.run("registry")  # a run() that asks for other arguments
    assert code == 0
    assert out == f"registry of {installed.ini}: cmdapp_{installed.tag}.Session\n"
    # with that registry, requests through the application's pipeline store sessions
    assert installed.run("count-rows", "--store", "2") == (0, "2 rows in session\n")
    assert installed.run("count-rows", "--store", "-1")[0] == cli.EXIT_USAGE
    assert "psessions: --store must not be negative, got -1" in capsys.readouterr().err
    assert installed.run("fail")[0] == cli.EXIT_DATABASE
    assert "psessions: database error:" in capsys.readouterr().err


def test_help_lists_the_plugins_commands_without_reading_the_config(installed, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps to the terminal's width
    installed.plugin("counted")
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "count-rows" in text and "count the session rows [counted (sessions-cmd-test-" in text
    for kernel in ("gc", "plugins", "indexes", "ddl", "check"):
        assert kernel in text
    with pytest.raises(SystemExit):
        cli.main(["missing.ini", "count-rows", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Count the rows of the session table." in text and "--label LABEL" in text


def test_a_command_of_a_plugin_the_model_does_not_activate_exits_2(installed, capsys):
    installed.plugin("counted")
    installed.app(None)
    assert installed.run("count-rows") == (cli.EXIT_USAGE, "")
    err = capsys.readouterr().err
    assert "count-rows is a command of the session plugin counted (sessions-cmd-test-" in err
    assert "which Session does not activate: add CountedMixin to the bases of Session" in err
    assert installed.run("gc", "--dry-run")[0] == cli.EXIT_OK  # the kernel's still work


BROKEN = {
    "clash": (
        "COMMANDS = [Command('gc', 'my gc', lambda out: 0)]",
        "adds the command 'gc', which the kernel (sessions-kernel) has already",
    ),
    "not a command": (
        "COMMANDS = [('count-rows', 'x')]",
        "session_commands returned ('count-rows', 'x'), which is not a sessions_kernel.cli.Command",
    ),
    "bad name": (
        "COMMANDS = [Command('Count rows', 'x', lambda out: 0)]",
        "command name 'Count rows' is not lower case letters, digits and dashes",
    ),
    "unknown argument": (
        "COMMANDS = [Command('count-rows', 'x', lambda out, request: 0)]",
        "the run function of its command 'count-rows' asks for request; psessions gives "
        "args, factory, bind, out, registry, config_uri",
    ),
    "hook raises": (
        "def session_commands():\n    raise RuntimeError('no commands today')\n"
        "session_commands = hookimpl(session_commands)",
        "its session_commands hook raised RuntimeError: no commands today",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_command_stops_psessions_at_the_parser(installed, capsys, case):
    change, message = BROKEN[case]
    installed.app(installed.plugin("broken", f"{PLUGIN}\n{change}\n"))
    for args in (["count-rows"], ["gc"], ["plugins"]):
        assert installed.run(*args) == (cli.EXIT_USAGE, "")
        err = capsys.readouterr().err
        assert err.startswith("psessions: session plugin broken (sessions-cmd-test-"), err
        assert message in err


def test_two_plugins_with_one_command_name_stop_psessions(installed, capsys):
    installed.plugin("alpha")
    installed.app(installed.plugin("beta"))
    assert installed.run("gc") == (cli.EXIT_USAGE, "")
    err = capsys.readouterr().err
    assert "session plugin beta (sessions-cmd-test-" in err
    assert "adds the command 'count-rows', which session plugin alpha (" in err


def test_a_plugin_command_as_a_subprocess(installed):
    installed.app(installed.plugin("counted"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed.site), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-m", "sessions_kernel.cli", str(installed.ini), "count-rows"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, "0 rows in session\n"), done.stderr
