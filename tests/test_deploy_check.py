"""``psessions CONFIG check``: each weak production setting of a real ini file, and its fix.

Every test writes an application and its ini file into ``tmp_path`` and runs
``psessions`` on it (in this process through ``cli.main``, and once as a
subprocess for the exit code CI sees). The secure file passes with exit 0;
each weakness alone gives exactly its finding and exit 3. Only the timeout
plugins are loaded (``SESSIONS_KERNEL_LOAD_PLUGINS``), so that what the other
installed plugins report does not change these tests.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sessions_kernel import cli, deploy, generate_secret_key, hookimpl, session_factory
from sessions_kernel.deploy import Finding
from sessions_kernel.plugins import LOAD_PLUGINS_ENV
from sessions_kernel.testing import TEST_SECRET_KEY, make_model

APP = """
import sqlalchemy as sa
import zope.sqlalchemy
from pyramid.config import Configurator
from pyramid.settings import asbool
from sqlalchemy.orm import DeclarativeBase, sessionmaker

from sessions_absolute_timeout import AbsoluteMixin
from sessions_idle_timeout import IdleMixin
from sessions_kernel import BaseMixin


class Base(DeclarativeBase):
    pass


def created_index(name):
    return (sa.Index(f"ix_{name}_created", "created"),)


class Session(IdleMixin, AbsoluteMixin, BaseMixin, Base):
    __tablename__ = "session"
    __table_args__ = created_index("session")


class AbsoluteOnly(AbsoluteMixin, BaseMixin, Base):
    __tablename__ = "session_absolute"
    __table_args__ = created_index("session_absolute")


class KernelOnly(BaseMixin, Base):
    __tablename__ = "session_kernel"
    __table_args__ = created_index("session_kernel")


class Unindexed(IdleMixin, AbsoluteMixin, BaseMixin, Base):
    __tablename__ = "session_unindexed"


class Policy:
    def identity(self, request):
        return None

    def authenticated_userid(self, request):
        return None

    def permits(self, request, context, permission):
        return True

    def remember(self, request, userid, **kw):
        return []

    def forget(self, request, **kw):
        return []


def main(global_config, **settings):
    engine = sa.engine_from_config(settings, "sqlalchemy.")
    maker = sessionmaker(bind=engine)
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        if asbool(settings.get("deployapp.retry", True)):
            config.include("pyramid_retry")
        if asbool(settings.get("deployapp.toolbar", False)):
            config.include("pyramid_debugtoolbar")
        if asbool(settings.get("deployapp.security_policy", True)):
            config.set_security_policy(Policy())

        def dbsession(request):
            db = maker(info={"request": request})
            zope.sqlalchemy.register(db, transaction_manager=request.tm)
            return db

        config.add_request_method(dbsession, reify=True)
        config.include("sessions_kernel")
        return config.make_wsgi_app()
"""

# A stand-in for pyramid_debugtoolbar (not installed here): a tween of that package's name.
TOOLBAR = """
def toolbar_tween_factory(handler, registry):
    return handler


def includeme(config):
    config.add_tween("pyramid_debugtoolbar.toolbar_tween_factory")
"""

#: What a production ini file should say (SQLite, the one database every run has, with
#: one gunicorn worker of one thread).
SECURE = {
    "use": "call:deployapp:main",
    "sqlalchemy.url": "sqlite:///%(here)s/app.sqlite",
    "retry.attempts": "3",
    "tm.annotate_user": "false",
    "session.secret_key_file": "%(here)s/session.key",
    "session.model_class": "deployapp.Session",
    "session.cookie_name": "__Host-session",
    "session.cookie_secure": "true",
    "session.idle_timeout": "1800",
    "session.absolute_timeout": "28800",
}
GUNICORN = {"use": "egg:gunicorn#main", "workers": "1", "threads": "1"}


class DeployApp:
    """The application in ``tmp_path``: write its ini file, run ``psessions`` on it."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root = root
        self.ini = root / "production.ini"
        self.key = root / "session.key"
        self.capsys = capsys
        self.key.write_text(generate_secret_key() + "\n")
        self.key.chmod(0o600)

    def write(
        self,
        settings: dict[str, str | None] | None = None,
        server: dict[str, str] | None = GUNICORN,
    ) -> Path:
        app = {k: v for k, v in {**SECURE, **(settings or {})}.items() if v is not None}
        text = "[app:main]\n" + "".join(f"{k} = {v}\n" for k, v in app.items())
        if server is not None:
            text += "\n[server:main]\n" + "".join(f"{k} = {v}\n" for k, v in server.items())
        self.ini.write_text(text)
        return self.ini

    def run(
        self,
        settings: dict[str, str | None] | None = None,
        *args: str,
        server: dict[str, str] | None = GUNICORN,
    ) -> tuple[int, str, str]:
        """``psessions production.ini check ARGS``: (exit code, stdout, stderr)."""
        self.write(settings, server)
        out = io.StringIO()
        code = cli.main([str(self.ini), "check", *args], out=out)
        return code, out.getvalue(), self.capsys.readouterr().err

    def findings(
        self, settings: dict[str, str | None] | None = None, **kwargs: Any
    ) -> tuple[int, list[dict[str, str]]]:
        code, out, err = self.run(settings, "--json", **kwargs)
        assert out, err
        return code, json.loads(out)["findings"]

    def ids(self, settings: dict[str, str | None] | None = None, **kwargs: Any) -> list[str]:
        code, found = self.findings(settings, **kwargs)
        assert code == (3 if found else 0), found
        return [f["id"] for f in found]


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Any:
    (tmp_path / "deployapp.py").write_text(APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "idle_timeout,absolute_timeout")
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    monkeypatch.delenv("SESSIONS_TRACE_HOOKS", raising=False)
    # bootstrap would configure the root logger of this test process
    monkeypatch.setattr("pyramid.paster.setup_logging", lambda *args, **kwargs: None)
    yield DeployApp(tmp_path, capsys)
    for module in ("deployapp", "pyramid_debugtoolbar"):
        sys.modules.pop(module, None)


def test_a_secure_ini_passes(app):
    code, out, err = app.run()
    assert (code, out) == (0, f"{app.ini}: no weak session setting found\n"), err


WEAKNESSES = [
    # the cookie
    ({"session.cookie_name": "__Secure-session"}, ["kernel.cookie_prefix"]),
    # a cookie that is not Secure cannot have the __Host- prefix either (a start-up error)
    (
        {"session.cookie_secure": "false", "session.cookie_name": "session"},
        ["kernel.cookie_secure", "kernel.cookie_prefix"],
    ),
    ({"session.cookie_httponly": "false"}, ["kernel.cookie_httponly"]),
    ({"session.cookie_samesite": "None"}, ["kernel.cookie_samesite"]),
    ({"session.cookie_samesite": ""}, ["kernel.cookie_samesite"]),
    ({"session.cookie_max_age": "2592000"}, ["kernel.cookie_max_age"]),
    ({"session.cookie_max_age": "0"}, ["kernel.cookie_max_age"]),
    # the data
    ({"session.data_serializer": "pickle"}, ["kernel.data_serializer"]),
    ({"session.max_data_size": "none"}, ["kernel.max_data_size"]),
    ({"session.lock_contended_for": "0"}, ["kernel.lock_contended_for"]),
    ({"session.accept_unbound_cookies_until": "2020-01-31"}, ["kernel.unbound_cookies"]),
    ({"session.cookie_previous_name": "session"}, ["kernel.cookie_previous_name"]),
    # the timeouts: the plugins' own checks
    ({"session.idle_timeout": None}, ["idle_timeout.off"]),
    (
        {"session.idle_timeout": "172800", "session.absolute_timeout": "2592000"},
        ["idle_timeout.long"],
    ),
    ({"session.absolute_timeout": None}, ["absolute_timeout.off"]),
    ({"session.absolute_timeout": "5184000"}, ["absolute_timeout.long"]),
    # the idle-timeout plugin is installed, but the model lacks its mixin
    (
        {"session.model_class": "deployapp.AbsoluteOnly", "session.idle_timeout": None},
        ["idle_timeout.off"],
    ),
    ({"session.model_class": "deployapp.Unindexed"}, ["kernel.indexes"]),
    # the application
    ({"deployapp.retry": "false", "retry.attempts": None}, ["kernel.retry"]),
    ({"retry.attempts": "1"}, ["kernel.retry_attempts"]),
    ({"tm.annotate_user": None}, ["kernel.annotate_user"]),
    ({"tm.annotate_user": "true"}, ["kernel.annotate_user"]),
    # the key
    (
        {"session.secret_key_file": None, "session.secret_key": generate_secret_key()},
        ["kernel.secret_key_inline"],
    ),
    # the database
    ({"sqlalchemy.url": "sqlite://"}, ["kernel.sqlite_memory"]),
    (
        {
            "sqlalchemy.url": "postgresql+psycopg://app@127.0.0.1:1/app",
            "sqlalchemy.isolation_level": "REPEATABLE READ",
        },
        ["kernel.isolation"],
    ),
]


@pytest.mark.parametrize(("settings", "expected"), WEAKNESSES, ids=lambda v: str(v)[:60])
def test_each_weakness_alone_gives_exactly_its_finding(app, settings, expected):
    assert app.ids(settings) == expected


def test_each_finding_names_the_setting_what_is_weak_and_the_fix(app):
    code, out, _ = app.run({"session.cookie_httponly": "false", "session.max_data_size": "none"})
    assert code == 3
    lines = out.splitlines()
    assert lines == [
        "kernel.cookie_httponly [session.cookie_httponly]: session.cookie_httponly = false: any "
        "script on your pages, an injected one included, can read the session cookie and send "
        "it away. Fix: remove session.cookie_httponly (true by default).",
        "kernel.max_data_size [session.max_data_size]: session.max_data_size = none: one session "
        "may hold any amount of data, which every later request of it loads. Fix: remove "
        "session.max_data_size (1 MiB by default), or give a limit in bytes.",
        f"{app.ini}: 2 weak settings",
    ]


def test_the_cookie_prefix_fix_says_what_the_prefix_needs(app):
    _, found = app.findings({"session.cookie_secure": "false", "session.cookie_name": "sid"})
    prefix = next(f for f in found if f["id"] == "kernel.cookie_prefix")
    assert prefix["fix"].startswith(
        "session.cookie_name = __Host-sid (which also needs session.cookie_secure = true)"
    )
    _, found = app.findings(
        {"session.cookie_name": "__Secure-sid", "session.cookie_domain": "example.com"}
    )
    [prefix] = found
    assert "__Host-sid (which also needs no session.cookie_domain)" in prefix["fix"]
    assert "every host under cookie_domain = 'example.com' gets the cookie" in prefix["message"]


def test_no_expiry_at_all_is_the_kernels_finding(app, monkeypatch):
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "")  # no timeout plugin installed
    kernel_only = {
        "session.model_class": "deployapp.KernelOnly",
        "session.idle_timeout": None,
        "session.absolute_timeout": None,
    }
    _, [expiry] = app.findings(kernel_only)
    assert expiry["id"] == "kernel.expiry"
    assert expiry["message"].startswith(
        "no active plugin expires sessions: each ends only 30 days after its creation"
    )
    _, [expiry] = app.findings({**kernel_only, "session.max_age": "none"})
    assert expiry["id"] == "kernel.expiry"
    assert expiry["message"].startswith("stored sessions never expire")


def test_timeout_plugins_installed_but_not_in_the_model_say_so(app):
    kernel_only = {
        "session.model_class": "deployapp.KernelOnly",
        "session.idle_timeout": None,
        "session.absolute_timeout": None,
    }
    _, found = app.findings(kernel_only)
    assert [f["id"] for f in found] == ["kernel.expiry", "absolute_timeout.off", "idle_timeout.off"]
    assert "the model lacks IdleMixin" in found[2]["message"]
    assert found[2]["setting"] == "the session model"


def test_annotate_user_matters_only_with_a_security_policy(app):
    assert app.ids({"tm.annotate_user": None, "deployapp.security_policy": "false"}) == []


def test_the_debug_toolbar_is_found(app):
    (app.root / "pyramid_debugtoolbar.py").write_text(TOOLBAR)
    assert app.ids({"deployapp.toolbar": "true"}) == ["kernel.debugtoolbar"]


# -- the key file ---------------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="file modes")
@pytest.mark.parametrize(
    ("mode", "open_to"),
    [(0o600, None), (0o400, None), (0o640, "its group"), (0o644, "its group and every user")],
)
def test_a_key_file_others_can_read_is_a_finding(app, mode, open_to):
    app.key.chmod(mode)
    code, found = app.findings()
    if open_to is None:
        assert (code, found) == (0, [])
        return
    assert code == 3
    [finding] = found
    assert finding["id"] == "kernel.secret_key_file"
    assert f"(mode {mode:04o}) is open to {open_to} of the machine" in finding["message"]
    assert finding["fix"] == f"chmod 600 {app.key} (owned by the application's user)"
    assert app.key.read_text().strip() not in json.dumps(found)


def test_a_key_from_the_environment_passes(app, monkeypatch):
    monkeypatch.setenv("DEPLOYAPP_SESSION_KEY", generate_secret_key())
    env_key = {"session.secret_key_file": None, "session.secret_key_env": "DEPLOYAPP_SESSION_KEY"}
    assert app.ids(env_key) == []


def test_an_inline_key_is_never_printed(app):
    key = generate_secret_key()
    code, out, err = app.run({"session.secret_key_file": None, "session.secret_key": key})
    assert code == 3 and "kernel.secret_key_inline" in out
    assert key not in out + err


# -- SQLite and the server's workers -----------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "serves"),
    [
        ({"use": "egg:waitress#main", "listen": "*:6543"}, "waitress, 4 threads"),
        ({"use": "egg:gunicorn#main", "workers": "4"}, "gunicorn, 4 worker(s) of 1 thread(s)"),
        ({"use": "egg:gunicorn#main", "threads": "8"}, "gunicorn, 1 worker(s) of 8 thread(s)"),
        (
            {"use": "egg:gunicorn#main", "config": "gunicorn.conf.py"},
            "gunicorn reads its workers from gunicorn.conf.py",
        ),
        (None, "the ini file has no server section"),
    ],
)
def test_sqlite_with_several_workers_or_an_unknown_count(app, server, serves):
    _, [finding] = app.findings(server=server)
    assert finding["id"] == "kernel.sqlite"
    assert serves in finding["message"]


@pytest.mark.parametrize(
    "server",
    [
        {"use": "egg:waitress#main", "threads": "1"},
        {"use": "egg:gunicorn#main"},  # 1 worker of 1 thread by default
    ],
)
def test_sqlite_with_one_worker_of_one_thread_passes(app, server):
    assert app.ids(server=server) == []


def test_gunicorn_workers_from_web_concurrency(app, monkeypatch):
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    _, [finding] = app.findings(server={"use": "egg:gunicorn#main"})
    assert "gunicorn, 3 worker(s) of 1 thread(s)" in finding["message"]


def test_server_name_picks_the_section(app):
    app.write(server={"use": "egg:waitress#main"})
    with app.ini.open("a") as f:
        f.write("\n[server:prod]\nuse = egg:waitress#main\nthreads = 1\n")
    out = io.StringIO()
    assert cli.main([str(app.ini), "check", "--server-name", "prod"], out=out) == 0


# -- silencing ------------------------------------------------------------------------------


def test_ignore_silences_findings_by_id(app):
    weak = {"session.cookie_httponly": "false", "session.max_data_size": "none"}
    code, out, _ = app.run(weak, "--ignore", "kernel.cookie_httponly")
    assert code == 3
    assert out.splitlines()[-1] == f"{app.ini}: 1 weak setting (1 silenced: kernel.cookie_httponly)"
    code, out, _ = app.run(weak, "--ignore", "kernel.cookie_httponly,kernel.max_data_size")
    assert code == 0
    assert out == (
        f"{app.ini}: no weak session setting found (2 silenced: kernel.cookie_httponly, "
        "kernel.max_data_size)\n"
    )


def test_the_ini_file_silences_findings(app):
    settings = {
        "session.cookie_httponly": "false",
        "psessions.silenced_checks": "\n    kernel.cookie_httponly\n    kernel.sqlite",
    }
    code, out, _ = app.run(settings, server={"use": "egg:waitress#main"})
    assert code == 0, out
    code, found = app.findings(settings)
    assert (code, found) == (0, [])
    _, out, _ = app.run(settings, "--json")
    assert [f["id"] for f in json.loads(out)["silenced"]] == ["kernel.cookie_httponly"]


# -- the command ------------------------------------------------------------------------------


def test_an_application_that_does_not_start_is_a_usage_error(app):
    code, out, err = app.run({"session.idle_timeout": "soon"})
    assert (code, out) == (2, "")
    assert "the application does not start" in err and "session.idle_timeout = 'soon'" in err


def test_the_exit_code_of_the_console_command(app):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(app.root), *sys.path]),
        LOAD_PLUGINS_ENV: "idle_timeout,absolute_timeout",
    }
    command = [sys.executable, "-m", "sessions_kernel.cli", str(app.ini), "check"]
    app.write()
    assert subprocess.run(command, env=env, capture_output=True, timeout=120).returncode == 0
    app.write({"session.cookie_httponly": "false"})
    weak = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert weak.returncode == 3, weak.stderr
    assert weak.stdout.startswith("kernel.cookie_httponly [session.cookie_httponly]: ")


# -- the hook, through the Python API -----------------------------------------------------------


class CheckedMixin:
    pass


class Checking:
    """A plugin with a deploy check: records what it was given."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    @hookimpl
    def session_mixins(self) -> list[type]:
        return [CheckedMixin]

    @hookimpl
    def session_deploy_checks(self, settings: Any, model: Any, registry: Any, active: bool) -> Any:
        self.calls.append({"settings": settings, "model": model, "active": active})
        yield Finding("weak", "session.something", "something is weak", "change it")


class Broken:
    @hookimpl
    def session_mixins(self) -> list[type]:
        return [CheckedMixin]

    @hookimpl
    def session_deploy_checks(self) -> Any:
        raise RuntimeError("no luck")


def test_plugins_are_asked_active_or_not_and_their_ids_are_prefixed(monkeypatch):
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "")
    plugin = Checking()
    for model, active in ((make_model(CheckedMixin), True), (make_model(), False)):
        plugin.calls.clear()
        factory = session_factory([plugin], model_class=model, secret_key=TEST_SECRET_KEY)
        assert deploy.plugin_findings(factory) == [
            Finding("Checking.weak", "session.something", "something is weak", "change it")
        ]
        [call] = plugin.calls
        assert call["active"] is active and call["model"] is model
        assert call["settings"]["cookie_name"] == "session"
        with pytest.raises(TypeError):
            call["settings"]["cookie_name"] = "other"  # read-only


def test_a_plugin_whose_check_raises_is_a_finding(monkeypatch):
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "")
    factory = session_factory(
        [Broken()], model_class=make_model(CheckedMixin), secret_key=TEST_SECRET_KEY
    )
    [failed] = deploy.plugin_findings(factory)
    assert failed.id == "Broken.check_failed"
    assert "raised RuntimeError: no luck" in failed.message


def test_a_factory_checked_on_its_own(monkeypatch):
    """No registry, no bind: only what the factory's settings say."""
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "")
    factory = session_factory(model_class=make_model(), secret_key=TEST_SECRET_KEY)
    report = deploy.run_checks(factory, ignore=["kernel.cookie_prefix"])
    assert [f.id for f in report.findings] == [
        "kernel.cookie_secure",
        "kernel.expiry",
        "kernel.indexes",
    ]
    assert [f.id for f in report.silenced] == ["kernel.cookie_prefix"]
    assert not report.ok


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(90, "90 s"), (120, "2 minutes"), (3600, "1 hour"), (28800, "8 hours"), (2592000, "30 days")],
)
def test_durations(seconds, shown):
    assert deploy.duration(seconds) == shown


def test_the_operations_page_lists_every_id_the_tests_produce():
    page = (Path(__file__).resolve().parent.parent / "docs" / "operations.rst").read_text()
    produced = {i for _, ids in WEAKNESSES for i in ids} | {
        "kernel.expiry",
        "kernel.debugtoolbar",
        "kernel.secret_key_file",
        "kernel.sqlite",
    }
    assert {i for i in produced if f"``{i}``" not in page} == set()
