"""Garbage collection, the plugin listing and indexes, through functions and ``psessions``."""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from pyramid.interfaces import ISessionFactory

from sessions_kernel import generate_secret_key, maintenance
from sessions_kernel.testing import make_model

HERE = Path(__file__).resolve().parent
# an ini file holds text: the kit's TEST_SECRET_KEY is accepted only as its object
INI_KEY = generate_secret_key()


def install_distribution(root: Path, name: str, entry_points: dict[str, str]) -> Path:
    """Write a minimal installed distribution (``*.dist-info``) under ``root``."""
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[sessions_kernel.plugins]\n{lines}")
    return root


@pytest.fixture
def ttl_installed(tmp_path, monkeypatch):
    """Install tests/ttl_plugin.py as the distribution ``sessions-ttl-test``."""
    root = install_distribution(tmp_path / "site", "sessions-ttl-test", {"ttl": "ttl_plugin"})
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.syspath_prepend(str(HERE))
    importlib.invalidate_caches()
    return root


@pytest.fixture
def ttl_app(ttl_installed, session_app):
    from ttl_plugin import ConfigTTLMixin

    return session_app(make_model(ConfigTTLMixin), {"ttl": "100"})


def factory_of(app):
    return app.wsgi.registry.queryUtility(ISessionFactory)


def make_sessions(app, count, *, browser=None):
    for _ in range(count):
        (browser or app.new_browser()).post_json("/set", {"a": 1})


def test_gc_deletes_rows_past_each_boundary_only(ttl_app):
    app = ttl_app
    make_sessions(app, 3)  # expire at t0 + 100
    app.clock.advance(50)
    make_sessions(app, 2)  # expire at t0 + 150
    factory = factory_of(app)
    app.clock.advance(49)  # t0 + 99: one second before the first boundary
    assert maintenance.collect_garbage(factory, app.engine).deleted == 0
    app.clock.advance(1)  # t0 + 100: the first three expire
    result = maintenance.collect_garbage(factory, app.engine, batch_size=2)
    assert (result.deleted, result.batches) == (3, 2)
    assert len(app.rows()) == 2
    app.clock.advance(49)  # t0 + 149
    assert maintenance.collect_garbage(factory, app.engine).deleted == 0
    app.clock.advance(1)
    assert maintenance.collect_garbage(factory, app.engine).deleted == 2
    assert app.rows() == []


def test_gc_honours_per_session_timeouts(ttl_app):
    app = ttl_app
    make_sessions(app, 2)
    app.post_json("/set", {"b": 2})
    app.post_json("/settings", {"ttl": 1000})  # this browser's session lives longer
    app.clock.advance(100)
    factory = factory_of(app)
    assert maintenance.count_expired(factory, app.engine) == 2
    assert maintenance.collect_garbage(factory, app.engine).deleted == 2
    (survivor,) = app.rows()
    assert survivor.ttl == 1000
    assert app.get("/read").json["data"] == {"b": 2}


def test_gc_dry_run_counts_and_deletes_nothing(ttl_app):
    make_sessions(ttl_app, 4)
    ttl_app.clock.advance(100)
    result = maintenance.collect_garbage(factory_of(ttl_app), ttl_app.engine, dry_run=True)
    assert (result.dry_run, result.deleted) == (True, 4)
    assert len(ttl_app.rows()) == 4


def test_gc_statements_stay_within_one_batch(ttl_app):
    make_sessions(ttl_app, 5)
    ttl_app.clock.advance(100)
    with ttl_app.count() as sql:
        result = maintenance.collect_garbage(factory_of(ttl_app), ttl_app.engine, batch_size=2)
    assert result.deleted == 5
    statements = [s for s in sql.statements if s.split()[0] in {"SELECT", "DELETE"}]
    # 3 batches of SELECT ids + DELETE by id; the last batch was short, so no extra SELECT
    assert [s.split()[0] for s in statements] == ["SELECT", "DELETE"] * 3
    assert all("LIMIT" in s.upper() for s in statements if s.startswith("SELECT"))


def test_gc_when_sessions_never_expire_deletes_nothing(session_app):
    app = session_app(make_model(), {"max_age": "none"})  # chosen by the application
    make_sessions(app, 2)
    app.clock.advance(10 * 365 * 24 * 3600)
    result = maintenance.collect_garbage(factory_of(app), app.engine)
    assert (result.expiring, result.deleted) == (False, 0)
    assert len(app.rows()) == 2


def test_gc_without_timeout_plugins_collects_by_max_age(session_app):
    app = session_app(make_model(), {"max_age": "1000"})
    make_sessions(app, 2)
    app.clock.advance(999)
    assert maintenance.collect_garbage(factory_of(app), app.engine).deleted == 0
    app.clock.advance(1)
    result = maintenance.collect_garbage(factory_of(app), app.engine)
    assert (result.expiring, result.deleted) == (True, 2)
    assert app.rows() == []


def test_gc_with_timeout_off_deletes_nothing(ttl_installed, session_app):
    from ttl_plugin import TTLMixin

    app = session_app(make_model(TTLMixin))  # ttl left at None: rows never expire
    make_sessions(app, 2)
    app.clock.advance(10**6)
    assert maintenance.collect_garbage(factory_of(app), app.engine).deleted == 0


def test_bad_batch_size_is_refused(ttl_app):
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        maintenance.collect_garbage(factory_of(ttl_app), ttl_app.engine, batch_size=0)


def fail_deletes(engine, errors):
    """Make the next DELETEs on ``engine`` fail with ``errors``, one each, in order."""

    def fail(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("DELETE") and errors:
            raise errors.pop(0)

    sa.event.listen(engine, "before_cursor_execute", fail)
    return fail


def deadlock(code=1213):
    import pymysql

    return sa.exc.OperationalError("DELETE", {}, pymysql.err.OperationalError(code, "Deadlock"))


def test_gc_runs_a_batch_again_that_a_conflict_aborted(ttl_app):
    """Galera reports a certification conflict as 1213, at the DELETE or at COMMIT."""
    make_sessions(ttl_app, 5)
    ttl_app.clock.advance(100)
    errors = [deadlock(), deadlock(1205), deadlock()]
    fail_deletes(ttl_app.engine, errors)
    result = maintenance.collect_garbage(factory_of(ttl_app), ttl_app.engine, batch_size=2)
    assert errors == []
    assert (result.deleted, result.batches) == (5, 3)
    assert ttl_app.rows() == []


def test_gc_gives_up_after_its_retries_and_on_other_errors(ttl_app):
    make_sessions(ttl_app, 2)
    ttl_app.clock.advance(100)
    factory = factory_of(ttl_app)
    fail_deletes(ttl_app.engine, [deadlock(), deadlock(), deadlock()])
    with pytest.raises(sa.exc.OperationalError, match="Deadlock"):
        maintenance.collect_garbage(factory, ttl_app.engine, retries=2)
    fail_deletes(ttl_app.engine, [deadlock(1146)])  # no such table: not transient
    with pytest.raises(sa.exc.OperationalError):
        maintenance.collect_garbage(factory, ttl_app.engine)
    assert len(ttl_app.rows()) == 2


# -- the plugin listing --------------------------------------------------------------------


def test_plugin_report_lists_installed_active_and_configurable(ttl_app):
    reports = {r.name: r for r in maintenance.plugin_report(factory_of(ttl_app))}
    kernel, ttl = reports["sessions_kernel"], reports["ttl"]
    assert kernel.active and kernel.active_mixin == "BaseMixin"
    assert (ttl.distribution, ttl.version, ttl.active_mixin) == (
        "sessions-ttl-test",
        "1.0",
        "ConfigTTLMixin",
    )
    assert ttl.configurable
    setting = {s.name: s for s in ttl.settings}["ttl"]
    assert (setting.default, setting.value, setting.configurable) == (None, 100, True)
    assert "session_expired_conditions" in ttl.hooks


def test_plugin_report_lists_hooks_offered_by_other_plugins():
    reports = {report.name: report for report in maintenance.plugin_report()}
    assert "session_user_changed" in reports["csrf"].hooks
    assert "session_addhooks" in reports["userid"].hooks
    assert "session_expiry_policy" in reports["idle_timeout"].hooks


SPECNAME_PLUGIN = """\
from sessions_kernel import hookimpl


class SpecnameMixin:
    pass


@hookimpl
def session_mixins():
    return [SpecnameMixin]


@hookimpl(specname="session_validate")
def reject_nothing(session):
    return None
"""


def test_plugin_report_lists_hooks_as_pluggy_registered_them(tmp_path, monkeypatch):
    (tmp_path / "specname_plugin.py").write_text(SPECNAME_PLUGIN)
    install_distribution(tmp_path, "sessions-specname", {"specname": "specname_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    reports = {r.name: r for r in maintenance.plugin_report()}
    # the implementation of session_validate is a function of another name
    assert reports["specname"].hooks == ("session_mixins", "session_validate")


def test_plugin_report_lists_the_hooks_that_run_in_the_factory(ttl_app):
    factory = factory_of(ttl_app)
    factory.config.pm.set_blocked("ttl")
    reports = {r.name: r for r in maintenance.plugin_report(factory)}
    assert reports["ttl"].active and reports["ttl"].hooks == ()
    assert "session_renew" in reports["sessions_kernel"].hooks


def test_plugin_report_lists_a_broken_entry_point(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('needs libfoo')\n")
    install_distribution(tmp_path, "sessions-broken", {"broken": "broken_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    reports = {r.name: r for r in maintenance.plugin_report()}
    assert reports["broken"].distribution == "sessions-broken"
    assert reports["broken"].error == "ImportError: needs libfoo"
    assert not reports["broken"].active


# -- indexes -------------------------------------------------------------------------------


def test_required_and_missing_indexes(ttl_installed):
    from ttl_plugin import TTLMixin

    model = make_model(TTLMixin, tablename="ix_test")
    assert maintenance.required_indexes(model) == [("ttl_expire",), ("created", "ttl_expire")]
    assert maintenance.missing_indexes(model) == [("ttl_expire",), ("created", "ttl_expire")]
    added = maintenance.add_indexes(model)
    assert [i.name for i in added] == ["ix_ix_test_ttl_expire", "ix_ix_test_created_ttl_expire"]
    assert maintenance.missing_indexes(model) == []
    assert maintenance.add_indexes(model) == []


def test_add_indexes_feeds_create_all(ttl_installed, session_engine):
    from ttl_plugin import TTLMixin

    model = make_model(TTLMixin)
    maintenance.add_indexes(model)
    model.metadata.drop_all(session_engine)
    model.metadata.create_all(session_engine)
    try:
        found = {
            tuple(i["column_names"])
            for i in sa.inspect(session_engine).get_indexes(model.__tablename__)
        }
        assert {("ttl_expire",), ("created", "ttl_expire")} <= found
    finally:
        model.metadata.drop_all(session_engine)


def test_add_indexes_is_exported_under_the_name_the_docs_and_psessions_print():
    import sessions_kernel

    assert sessions_kernel.add_indexes is maintenance.add_indexes


def test_an_index_the_model_declares_is_not_asked_again(ttl_installed):
    from ttl_plugin import TTLMixin

    model = make_model(
        TTLMixin, tablename="ix_test2", __table_args__=(sa.Index("mine", "ttl_expire", "data"),)
    )
    assert maintenance.missing_indexes(model) == [("created", "ttl_expire")]


# -- psessions, as a subprocess on a real ini file -----------------------------------------

APP = """
import sqlalchemy as sa
import zope.sqlalchemy
from pyramid.config import Configurator
from sqlalchemy.orm import DeclarativeBase, sessionmaker

from sessions_kernel import BaseMixin
from ttl_plugin import ConfigTTLMixin


class Base(DeclarativeBase):
    pass


class Session(ConfigTTLMixin, BaseMixin, Base):
    __tablename__ = "session"


def main(global_config, **settings):
    engine = sa.engine_from_config(settings, "sqlalchemy.")
    Base.metadata.create_all(engine)
    maker = sessionmaker(bind=engine)
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")

        def dbsession(request):
            db = maker(info={"request": request})
            zope.sqlalchemy.register(db, transaction_manager=request.tm)
            return db

        config.add_request_method(dbsession, reify=True)
        config.include("sessions_kernel")
        return config.make_wsgi_app()
"""


@pytest.fixture
def ini_app(tmp_path, ttl_installed):
    (tmp_path / "opsapp.py").write_text(APP)
    db = tmp_path / "app.sqlite"
    ini = tmp_path / "app.ini"

    def write(**settings):
        lines = {
            "use": "call:opsapp:main",
            "sqlalchemy.url": f"sqlite:///{db}",
            "session.secret_key": INI_KEY,
            "session.model_class": "opsapp.Session",
            "session.ttl": "60",
            **settings,
        }
        body = "".join(f"{k} = {v}\n" for k, v in lines.items() if v is not None)
        ini.write_text(f"[app:main]\n{body}")
        return ini

    write()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ttl_installed), str(HERE)]),
    }

    def run(*args, stderr=subprocess.PIPE, **settings):
        if settings:
            write(**settings)
        return subprocess.run(
            [sys.executable, "-m", "sessions_kernel.cli", str(ini), *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            timeout=60,
        )

    run.db = db
    return run


def fill(db: Path, expired: int, live: int, now: int) -> None:
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO session (id, created, updated, data, ttl_expire, version) "
                "VALUES (:id, 0, 0, :data, :expire, 1)"
            ),
            [
                {
                    "id": f"{i:064x}",
                    "data": b"{}",
                    "expire": now - 1 if i < expired else now + 10**9,
                }
                for i in range(expired + live)
            ],
        )
    engine.dispose()


def test_psessions_gc_subprocess(ini_app):
    import time

    assert ini_app("gc", "--dry-run").returncode == 0  # creates the table on start
    fill(ini_app.db, expired=7, live=3, now=int(time.time()))
    dry = ini_app("gc", "--dry-run")
    assert (dry.returncode, dry.stdout.strip()) == (
        0,
        "7 expired sessions in session would be deleted",
    )
    done = ini_app("gc", "--batch-size", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("deleted 7 expired sessions from session in 3 batches")
    again = ini_app("gc")
    assert again.stdout.startswith("deleted 0 expired sessions")


def _in_a_terminal(run, *args):
    """``run(*args)`` with stderr on a pseudo-terminal 100 columns wide; (result, stderr text)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        result = run(*args, stderr=slave)
    finally:
        os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other side is closed and all was read
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return result, b"".join(chunks).decode()


def test_psessions_gc_shows_a_bar_with_the_total_on_a_terminal(ini_app):
    import time

    assert ini_app("gc", "--dry-run").returncode == 0
    fill(ini_app.db, expired=7, live=3, now=int(time.time()))
    done, terminal = _in_a_terminal(ini_app, "gc", "--batch-size", "3")
    assert done.returncode == 0, terminal
    assert done.stdout.startswith("deleted 7 expired sessions from session in 3 batches")
    # tqdm's bar: the total counted first, then the rate and the time left
    assert "gc session:   0%|" in terminal and "0/7 [" in terminal
    assert "gc session: 100%|" in terminal and "7/7 [" in terminal
    assert "sessions/s]" in terminal
    quiet = ini_app("gc", "--dry-run")  # nothing left; -q/--no-progress below print no bar
    assert quiet.stdout.startswith("0 expired sessions")
    fill(ini_app.db, expired=2, live=0, now=int(time.time()) - 10**6)
    for flag in ("--no-progress", "--quiet"):
        again, terminal = _in_a_terminal(ini_app, "gc", flag)
        assert again.returncode == 0 and "%|" not in terminal, (flag, terminal)


def test_psessions_gc_piped_shows_no_bar_unless_asked(ini_app):
    import time

    assert ini_app("gc", "--dry-run").returncode == 0
    fill(ini_app.db, expired=5, live=0, now=int(time.time()))
    piped = ini_app("gc", "--batch-size", "2")
    assert piped.returncode == 0
    assert "%|" not in piped.stderr and "\r" not in piped.stderr + piped.stdout
    assert piped.stdout.startswith("deleted 5 expired sessions from session in 3 batches")
    fill(ini_app.db, expired=0, live=2, now=0)  # expired long ago (ids after the first 5)
    asked = ini_app("gc", "--progress")
    assert asked.returncode == 0 and "2/2 [" in asked.stderr


def test_gc_bar_counts_once_then_follows_the_batches(ttl_app, capsys):
    """On each database: one COUNT for the total, then the batches; the bar reaches it."""
    from argparse import Namespace

    from sessions_kernel import cli

    make_sessions(ttl_app, 5)
    ttl_app.clock.advance(100)
    args = Namespace(batch_size=2, retries=0, dry_run=False, quiet=False, progress=True)
    out = io.StringIO()
    with ttl_app.count() as sql:
        assert cli._gc(args, factory_of(ttl_app), ttl_app.engine, out) == cli.EXIT_OK
    kinds = [s.split()[0] for s in sql.statements if s.split()[0] in {"SELECT", "DELETE"}]
    assert kinds == ["SELECT"] + ["SELECT", "DELETE"] * 3
    assert "count(" in sql.statements[0].lower()
    assert out.getvalue().startswith("deleted 5 expired sessions")
    bar = capsys.readouterr().err
    assert "0/5 [" in bar and "5/5 [" in bar
    assert ttl_app.rows() == []


def test_psessions_gc_collects_by_max_age_without_timeout(ini_app):
    import time

    assert ini_app("gc", "--dry-run", **{"session.ttl": None}).returncode == 0
    fill(ini_app.db, expired=0, live=4, now=int(time.time()))  # created in 1970
    done = ini_app("gc")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("deleted 4 expired sessions from session in 1 batches")


def test_psessions_gc_usage_errors(ini_app):
    bad = ini_app("gc", "--batch-size", "0")
    assert bad.returncode == 2 and "--batch-size must be at least 1" in bad.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "sessions_kernel.cli", "/nonexistent.ini", "gc"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "no such config file" in missing.stderr
    broken = ini_app("gc", **{"session.ttl": "soon"})
    assert broken.returncode == 2 and "session.ttl = 'soon'" in broken.stderr


def test_psessions_plugins_subprocess(ini_app):
    text = ini_app("plugins")
    assert text.returncode == 0, text.stderr
    assert "ttl (sessions-ttl-test 1.0): active through ConfigTTLMixin, runtime-configurable" in (
        text.stdout
    )
    assert "secret_key" in text.stdout and INI_KEY not in text.stdout
    assert text.stdout.endswith("expiry: sessions expire by ttl 60 s\n")
    listed = json.loads(ini_app("plugins", "--json").stdout)
    ttl = next(p for p in listed if p["name"] == "ttl")
    assert ttl["active"] and ttl["settings"][0]["value"] == 60


def test_psessions_indexes_subprocess(ini_app):
    result = ini_app("indexes", "--sql")
    assert result.returncode == 0, result.stderr
    assert "(ttl_expire): missing from the model, absent in the database" in result.stdout
    assert "CREATE INDEX ix_session_ttl_expire ON session (ttl_expire);" in result.stdout
    assert "sessions_kernel.add_indexes(Session)" in result.stdout


def test_plugin_report_hides_the_keys_and_the_serializer_that_holds_them():
    from sessions_kernel import AESGCMCookieSerializer, session_factory
    from sessions_kernel.crypto import parse_secret_keys

    serializer = AESGCMCookieSerializer(parse_secret_keys(generate_secret_key()))
    factory = session_factory(model_class=make_model(), serializer=serializer)
    [kernel] = [r for r in maintenance.plugin_report(factory) if r.name == "sessions_kernel"]
    shown = {s.name: s for s in kernel.settings}
    for name in ("secret_key", "secret_key_file", "secret_key_env", "serializer"):
        assert shown[name].secret and shown[name].value is None, name
    assert shown["cookie_name"].value == "session" and not shown["cookie_name"].secret


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["missing.ini", "gc", "--help"],
        ["missing.ini", "plugins", "--help"],
        ["missing.ini", "indexes", "--help"],
        ["missing.ini", "ddl", "--help"],
        ["missing.ini", "check", "--help"],
        ["new-plugin", "--help"],
    ],
    ids=lambda args: " ".join(a for a in args if a != "missing.ini"),
)
def test_psessions_help_prints_usage_and_does_nothing_else(tmp_path, args):
    """--help reads no config file, touches no database and writes no file."""
    # Pyramid 2.1 imports pkg_resources, which setuptools 81 and later warn about on
    # stderr: that warning is Pyramid's, not a side effect of --help
    quiet = "ignore:pkg_resources is deprecated as an API:UserWarning"
    run = subprocess.run(
        [sys.executable, "-m", "sessions_kernel.cli", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": quiet},
    )
    assert (run.returncode, run.stderr) == (0, "")
    assert run.stdout.startswith("usage: psessions")
    assert list(tmp_path.iterdir()) == []
