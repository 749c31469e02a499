"""``psessions CONFIG migrate``: every live old session copied at once, with real old sessions.

The old sessions are made by real applications of the old stores, as in
``test_source_beaker.py`` (pyramid_beaker on Beaker's ``ext:database``, in the
database under test: SQLite, PostgreSQL, MariaDB) and ``test_source_redis.py``
(pyramid_session_redis, in the test Redis). The new application is a module
written for each test with its ini file: the kernel with sessions-migrate,
sessions-userid's security policy, sessions-csrf's token column and the idle
timeout, on the same database. ``psessions`` runs through
:func:`sessions_kernel.cli.main`, and as a real subprocess. After it, a browser
holding only its old cookie visits the new application (built from the same
ini file) and finds its copy through the lazy path.
"""

from __future__ import annotations

import datetime
import fractions
import io
import math
import os
import pickle
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import webtest
from pyramid.interfaces import ISessionFactory
from pyramid.paster import get_app
from sessions_migrate import migration_of
from sessions_migrate.bulk import copy_session
from sessions_migrate.outcome import GONE
from test_source_beaker import CART, TIMEOUT, Beaker
from test_source_redis import log_in, new_secret, old_app

from sessions_kernel import cli, generate_secret_key
from sessions_kernel.cookies import row_id

APP = """
import sqlalchemy as sa
import zope.sqlalchemy
from pyramid.config import Configurator
from pyramid.csrf import check_csrf_token
from sqlalchemy.orm import DeclarativeBase, mapped_column, sessionmaker

from sessions_csrf import ColumnCSRFStoragePolicy, CSRFMixin
from sessions_idle_timeout import IdleMixin
from sessions_kernel import BaseMixin
from sessions_migrate import MigrateMixin
from sessions_userid import UseridMixin, UserSessionSecurityPolicy

#: the engines main() made, disposed by the test
ENGINES = []


class Base(DeclarativeBase):
    pass


class Session(MigrateMixin, IdleMixin, CSRFMixin, UseridMixin, BaseMixin, Base):
    __tablename__ = "{table}"
    userid = mapped_column({userid_type}, nullable=True, index=True)


def whoami(request):
    session = request.session
    return {{
        "userid": request.authenticated_userid,
        "cart": session.get("cart"),
        "flash": session.peek_flash(),
        "warnings": session.peek_flash("warnings"),
        "created": session.created,
    }}


def checkout(request):
    check_csrf_token(request)
    return {{"ok": True}}


def main(global_config, **settings):
    engine = sa.engine_from_config(settings, "sqlalchemy.")
    ENGINES.append(engine)
    Base.metadata.create_all(engine)
    maker = sessionmaker(bind=engine)
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_retry")

        def dbsession(request):
            db = maker(info={{"request": request}})
            zope.sqlalchemy.register(db, transaction_manager=request.tm)
            return db

        config.add_request_method(dbsession, reify=True)
        config.include("sessions_kernel")
        config.set_security_policy(UserSessionSecurityPolicy())
        config.set_csrf_storage_policy(ColumnCSRFStoragePolicy())
        config.add_route("whoami", "/whoami")
        config.add_view(whoami, route_name="whoami", renderer="json")
        config.add_route("checkout", "/checkout")
        config.add_view(checkout, route_name="checkout", renderer="json", request_method="POST")
        return config.make_wsgi_app()
"""

DAY = 24 * 3600
#: the test Redis (conftest.py's r fixture skips without it); read here, not imported from
#: conftest, which names the kernel's tests/conftest.py when both folders are collected
REDIS_URL = os.environ.get("SESSIONS_TEST_REDIS_URL")
SECRET_ENV = "TEST_BULK_REDIS_SECRET"


def cut_off(days: int = 30) -> str:
    moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days)
    return moment.date().isoformat()


class NewApp:
    """The application after the switch: its module, its ini file, ``psessions`` on it."""

    def __init__(self, root: Path, url: str, engine: sa.Engine) -> None:
        self.root = root
        self.url = url
        self.engine = engine
        self.module = f"bulkapp_{secrets.token_hex(4)}"
        self.table = f"session_{secrets.token_hex(4)}"
        self.ini = root / "app.ini"
        self.settings: dict[str, str] = {}
        self.made: list[webtest.TestApp] = []

    def write(self, userid_type: str = "sa.String(64)", **settings: str) -> Path:
        """Write the module and the ini file (``settings``: ``session.*`` beyond the kernel's)."""
        source = APP.format(table=self.table, userid_type=userid_type)
        (self.root / f"{self.module}.py").write_text(source)
        self.settings = settings
        lines = {
            "use": f"call:{self.module}:main",
            "sqlalchemy.url": self.url,
            "session.secret_key": generate_secret_key(),
            "session.model_class": f"{self.module}.Session",
            "session.cookie_name": "sid",
            "session.idle_timeout": str(TIMEOUT),
            **{f"session.{k}": v for k, v in settings.items()},
        }
        body = "".join(f"{k} = {v}\n" for k, v in lines.items())
        self.ini.write_text(f"[app:main]\n{body}")
        return self.ini

    def psessions(self, *args: str) -> tuple[int, str]:
        """``psessions app.ini migrate ARGS`` in this process: its exit code and stdout."""
        out = io.StringIO()
        code = cli.main([str(self.ini), "migrate", *args], out)
        return code, out.getvalue()

    def subprocess(self, *args: str, stderr: Any = subprocess.PIPE) -> Any:
        """The same as a process of its own (``python -m sessions_kernel.cli``)."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(self.root), *sys.path])}
        return subprocess.run(
            [sys.executable, "-m", "sessions_kernel.cli", str(self.ini), "migrate", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            timeout=120,
        )

    def browser(self) -> webtest.TestApp:
        """A new browser on the application the ini file configures."""
        browser = webtest.TestApp(get_app(str(self.ini)))
        self.made.append(browser)
        return browser

    def factory(self) -> Any:
        return self.browser().app.registry.queryUtility(ISessionFactory)

    def rows(self) -> dict[str, Any]:
        """The new table's rows by id."""
        table = sa.Table(self.table, sa.MetaData(), autoload_with=self.engine)
        with self.engine.connect() as conn:
            return {row.id: row for row in conn.execute(sa.select(table))}

    def close(self) -> None:
        module = sys.modules.get(self.module)
        for engine in getattr(module, "ENGINES", []):
            engine.dispose()
        with self.engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {self.table}"))


@pytest.fixture
def new_app(
    tmp_path: Path, session_db_url: str, session_engine: sa.Engine, monkeypatch: Any
) -> Iterator[NewApp]:
    monkeypatch.syspath_prepend(str(tmp_path))
    app = NewApp(tmp_path, session_db_url, session_engine)
    yield app
    app.close()


def beaker_settings(beaker: Beaker, tmp_path: Path, **more: str) -> dict[str, str]:
    secret_file = tmp_path / "beaker_secret"
    secret_file.write_text(beaker.secret + "\n")
    return {
        "migrate_from": "beaker",
        "migrate_until": cut_off(),
        "migrate_secret_file": str(secret_file),
        "migrate_table": beaker.table,
        "migrate_timeout": str(TIMEOUT),
        **more,
    }


def expected_rows(app: NewApp, old_ids: list[str]) -> set[str]:
    migration = migration_of(app.factory())
    return {row_id(migration.token_for(old_id)) for old_id in old_ids}


def assert_switched(response: Any, old_cookie: str) -> None:
    """The response deletes the old cookie and sets ours (WebTest's jar keeps a cookie set by
    ``set_cookie`` for ``.localhost`` beside the deletion for ``localhost``: the headers tell)."""
    cookies = response.headers.getall("Set-Cookie")
    assert any(c.startswith(f"{old_cookie}=;") and "Max-Age=0" in c for c in cookies), cookies
    assert any(c.startswith("sid=") for c in cookies), cookies


def summary(copied: int, already: int, gone: int, refused: int, reasons: str = "") -> str:
    line = (
        f"copied {copied}, already copied {already}, expired or gone {gone}, not migrated {refused}"
    )
    return f"{line} ({reasons})" if reasons else line


# -- Beaker, on every database ---------------------------------------------------------------


@pytest.fixture
def beaker(session_engine: sa.Engine, session_db_url: str) -> Iterator[Beaker]:
    """test_source_beaker's: pyramid_beaker applications on the database, Beaker's table."""
    made = Beaker(session_engine, session_db_url)
    yield made
    with session_engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {made.table}"))


@pytest.fixture
def beaker_sessions(beaker: Beaker) -> dict[str, Any]:
    """Three logged-in Beaker browsers, one holding a pickle of another class, one expired
    by Beaker's timeout, one logged out by Beaker's delete(); their cookies, ids and tokens."""
    beaker.values["fraction"] = lambda: fractions.Fraction(1, 3)
    made: dict[str, Any] = {}
    for name in ("alice", "bob", "carol", "unreadable", "expired", "deleted"):
        browser, cookie, token = beaker.log_in(name)
        if name == "unreadable":
            browser.post("/store", {"kind": "fraction"})
        elif name == "deleted":
            browser.post("/logout", {"how": "delete"})
        made[name] = {"cookie": cookie, "id": cookie[40:], "token": token}
    beaker.set_accessed(made["expired"]["id"], time.time() - TIMEOUT - 60)
    for name in ("alice", "bob", "carol"):
        made[name]["created"] = math.floor(
            beaker.beaker_session(made[name]["id"])["_creation_time"]
        )
    return made


def test_every_live_beaker_session_is_copied_and_its_old_cookie_finds_it(
    beaker: Beaker, beaker_sessions: dict[str, Any], new_app: NewApp, tmp_path: Path
) -> None:
    new_app.write(**beaker_settings(beaker, tmp_path))
    live = [beaker_sessions[n]["id"] for n in ("alice", "bob", "carol")]
    assert beaker.rows() == 6

    # a dry run: each session through the pipeline, rolled back
    assert new_app.psessions("--dry-run") == (
        0,
        "dry run, nothing changed: would copy 3, already copied 0, expired or gone 0, "
        "not migrated 1 (unrepresentable 1)\n",
    )
    assert beaker.rows() == 6 and new_app.rows() == {}

    code, out = new_app.psessions()
    assert code == 0, out
    assert out.startswith(summary(3, 0, 0, 1, "unrepresentable 1") + " in "), out
    assert out.rstrip().endswith("sessions/s)")
    # the live ones left Beaker's table; the unreadable, expired and empty ones are there
    assert all(beaker.rows(old_id) == 0 for old_id in live)
    for name in ("unreadable", "expired", "deleted"):
        assert beaker.rows(beaker_sessions[name]["id"]) == 1, name
    # one row each, under the token the old id derives, with the user and the start
    rows = new_app.rows()
    assert set(rows) == expected_rows(new_app, live)
    migration = migration_of(new_app.factory())
    for name in ("alice", "bob", "carol"):
        row = rows[row_id(migration.token_for(beaker_sessions[name]["id"]))]
        assert row.userid == name
        assert row.created == beaker_sessions[name]["created"]
        assert row.csrf_token and beaker_sessions[name]["token"] not in row.csrf_token  # sealed
        assert row.idle_expire is not None

    # again: nothing is left to copy
    code, out = new_app.psessions()
    assert (code, out.split(" in ")[0]) == (0, summary(0, 0, 0, 1, "unrepresentable 1"))
    assert len(new_app.rows()) == 3

    # a browser holding its Beaker cookie: logged in, its cart, flash and CSRF token
    for name in ("alice", "bob"):
        browser = new_app.browser()
        browser.set_cookie("beaker.session.id", beaker_sessions[name]["cookie"])
        response = browser.get("/whoami")
        page = response.json
        assert page == {
            "userid": name,
            "cart": CART,
            "flash": ["Welcome back"],
            "warnings": ["Card expires soon"],
            "created": beaker_sessions[name]["created"],
        }
        assert_switched(response, "beaker.session.id")
        browser.post("/checkout", {"csrf_token": beaker_sessions[name]["token"]})
        browser.post("/checkout", {"csrf_token": "0" * 40}, status=400)
    assert len(new_app.rows()) == 3  # the copies, found; nothing new

    # the unrepresentable one: a new, empty session; Beaker's row left for a look
    browser = new_app.browser()
    browser.set_cookie("beaker.session.id", beaker_sessions["unreadable"]["cookie"])
    assert browser.get("/whoami").json["userid"] is None
    assert beaker.rows(beaker_sessions["unreadable"]["id"]) == 1


def test_psessions_migrate_as_a_process_with_a_bar(
    beaker: Beaker, beaker_sessions: dict[str, Any], new_app: NewApp, tmp_path: Path
) -> None:
    new_app.write(**beaker_settings(beaker, tmp_path))
    piped = new_app.subprocess()  # stderr a pipe: no bar
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.startswith(summary(3, 0, 0, 1, "unrepresentable 1") + " in ")
    assert "%|" not in piped.stderr and "\r" not in piped.stderr
    assert len(new_app.rows()) == 3
    asked = new_app.subprocess("--progress", "--batch", "1")
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.startswith(summary(0, 0, 0, 1, "unrepresentable 1"))
    # tqdm's bar: the source counted the live sessions first (the unreadable one)
    assert "migrate beaker:   0%|" in asked.stderr and "0/1 [" in asked.stderr
    assert "migrate beaker: 100%|" in asked.stderr and "1/1 [" in asked.stderr


def _in_a_terminal(run: Callable[..., Any], *args: str) -> tuple[Any, str]:
    """``run(*args)`` with stderr on a pseudo-terminal 100 columns wide; (result, its text)."""
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


def test_on_a_terminal_the_bar_shows_unless_told_not_to(
    beaker: Beaker, beaker_sessions: dict[str, Any], new_app: NewApp, tmp_path: Path
) -> None:
    if new_app.engine.dialect.name != "sqlite":
        pytest.skip("the bar is the same on every database: test_psessions_migrate_as_a_process")
    new_app.write(**beaker_settings(beaker, tmp_path))
    done, terminal = _in_a_terminal(new_app.subprocess, "--dry-run")
    assert done.returncode == 0, terminal
    assert "migrate beaker:   0%|" in terminal and "0/4 [" in terminal
    assert "migrate beaker: 100%|" in terminal and "4/4 [" in terminal
    assert "sessions/s]" in terminal
    for flag in ("--no-progress", "--quiet"):
        again, terminal = _in_a_terminal(new_app.subprocess, "--dry-run", flag)
        assert again.returncode == 0 and "%|" not in terminal, (flag, terminal)
        if flag == "--quiet":
            assert again.stdout == ""
        else:
            assert again.stdout.startswith("dry run, nothing changed: would copy 3")
    assert beaker.rows() == 6


def test_an_old_session_left_after_its_copy_is_deleted_by_the_next_run(
    beaker: Beaker, beaker_sessions: dict[str, Any], new_app: NewApp, tmp_path: Path
) -> None:
    """As after a crash between a Redis commit and the key's deletion: the copy exists and
    the old store still holds the session. The run finds the copy, changes nothing of it,
    and deletes the old one."""
    new_app.write(**beaker_settings(beaker, tmp_path))
    table = sa.Table(beaker.table, sa.MetaData(), autoload_with=beaker.engine)
    alice = beaker_sessions["alice"]["id"]
    with beaker.engine.connect() as conn:
        saved = conn.execute(sa.select(table).where(table.c.namespace == alice)).mappings().one()
    assert new_app.psessions()[0] == 0
    before = new_app.rows()
    with beaker.engine.begin() as conn:
        conn.execute(sa.insert(table).values(**saved))
    code, out = new_app.psessions()
    assert code == 0
    assert out.startswith(
        summary(0, 1, 0, 1, "unrepresentable 1")
        + "; 1 already copied deleted from the old store in "
    )
    assert beaker.rows(alice) == 0
    assert new_app.rows() == before  # the copy untouched (its idle expiry not extended)
    assert new_app.psessions()[1].startswith(summary(0, 0, 0, 1, "unrepresentable 1") + " in ")


def test_a_user_id_the_column_cannot_hold_is_refused_and_the_rest_copied(
    beaker: Beaker, new_app: NewApp, tmp_path: Path
) -> None:
    _, seven, _ = beaker.log_in("7")
    _, alice, _ = beaker.log_in("alice")
    new_app.write(userid_type="sa.Integer", **beaker_settings(beaker, tmp_path))
    code, out = new_app.psessions()
    assert code == 0
    assert out.startswith(summary(1, 0, 0, 1, "refused by a plugin 1") + " in ")
    assert [row.userid for row in new_app.rows().values()] == [7]
    assert beaker.rows(seven[40:]) == 0 and beaker.rows(alice[40:]) == 1


def test_a_session_gone_since_the_listing_is_counted_as_gone(
    beaker: Beaker, beaker_sessions: dict[str, Any], new_app: NewApp, tmp_path: Path
) -> None:
    new_app.write(**beaker_settings(beaker, tmp_path))
    browser = new_app.browser()  # the application, as psessions bootstraps it
    factory = browser.app.registry.queryUtility(ISessionFactory)
    gone = beaker_sessions["alice"]["id"]
    with beaker.engine.begin() as conn:  # a request of the old application deleted it
        conn.execute(sa.text(f"DELETE FROM {beaker.table} WHERE namespace = :id"), {"id": gone})
    outcome = copy_session(migration_of(factory), browser.app.registry, beaker.engine, gone)
    assert outcome.kind == GONE
    assert new_app.rows() == {}


def test_usage_errors(beaker: Beaker, new_app: NewApp, tmp_path: Path, capsys: Any) -> None:
    if new_app.engine.dialect.name != "sqlite":
        pytest.skip("the command line is the same on every database")
    new_app.write(**beaker_settings(beaker, tmp_path))
    assert new_app.psessions("--batch", "0") == (2, "")
    assert "psessions: --batch must be at least 1, got 0" in capsys.readouterr().err
    new_app.write(**beaker_settings(beaker, tmp_path, migrate_until="2020-01-31"))
    assert new_app.psessions() == (2, "")
    err = capsys.readouterr().err
    assert "session.migrate_until = 2020-01-31 has passed" in err
    assert "Remove MigrateMixin" in err


# -- pyramid_session_redis -------------------------------------------------------------------


@pytest.fixture
def redis_secret(monkeypatch: Any) -> str:
    value = new_secret()
    monkeypatch.setenv(SECRET_ENV, value)
    return value


def redis_settings(prefix: str, **more: str) -> dict[str, str]:
    assert REDIS_URL is not None
    return {
        "migrate_from": "pyramid_session_redis",
        "migrate_until": cut_off(),
        "migrate_secret_env": SECRET_ENV,
        "migrate_url": REDIS_URL,
        "migrate_options": f"prefix={prefix} claim_wait=0",
        **more,
    }


def test_every_live_redis_session_is_copied_and_its_keys_deleted(
    r: Any, prefix: str, redis_secret: str, new_app: NewApp
) -> None:
    browsers = {}
    for userid in ("1", "2", "3", "4"):
        browsers[userid] = old_app(prefix, redis_secret)
        log_in(browsers[userid], userid)
    browsers["4"].post("/object", {"csrf_token": browsers["4"].get("/form").json["csrf_token"]})
    ended = prefix + secrets.token_urlsafe(48)  # ended by its own expiry, its key still there
    r.set(ended, pickle.dumps({"m": {"cart": ["tea"]}, "c": 1, "v": 1, "x": 100}))
    keys = {u: b.cookies["session"] for u, b in browsers.items()}
    new_app.write(**redis_settings(prefix))
    migration = migration_of(new_app.factory())
    old_ids = {u: migration.source.open_cookie(c) for u, c in keys.items()}
    assert all(r.exists(old_id) for old_id in old_ids.values())
    # one of them is being migrated by another process: its claim is held
    claim = f"{prefix}migrating:{old_ids['3'][len(prefix) :]}"
    r.set(claim, "someone else", ex=60)

    code, out = new_app.psessions()
    assert code == 1  # a conflict: run it again
    assert out.startswith(summary(2, 0, 1, 2, "conflict 1, unrepresentable 1") + " in "), out
    assert not r.exists(old_ids["1"]) and not r.exists(old_ids["2"])
    assert r.exists(old_ids["3"]) and r.exists(old_ids["4"]) and r.exists(ended)
    r.delete(claim)
    code, out = new_app.psessions()
    assert code == 0
    assert out.startswith(summary(1, 0, 1, 1, "unrepresentable 1") + " in "), out
    assert not r.exists(old_ids["3"])
    assert not list(r.scan_iter(match=f"{prefix}migrating:*"))  # every claim released
    rows = new_app.rows()
    assert set(rows) == expected_rows(new_app, [old_ids[u] for u in ("1", "2", "3")])
    assert sorted(row.userid for row in rows.values()) == ["1", "2", "3"]

    # the old browsers: logged in, their cart and flash, their old cookie deleted
    for userid in ("1", "3"):
        browser = new_app.browser()
        browser.set_cookie("session", keys[userid])
        response = browser.get("/whoami")
        page = response.json
        assert page["userid"] == userid and page["cart"] == ["tea", "milk"]
        assert page["flash"] == ["tea added", "milk added"]
        assert_switched(response, "session")
    assert len(new_app.rows()) == 3

    # a key left after its copy (the deletion after the commit failed): the next run
    # finds the copy and deletes the key
    r.set(old_ids["1"], pickle.dumps({"m": {"cart": ["x"]}, "c": 1, "v": 1}))
    code, out = new_app.psessions()
    assert (code, out.split(" in ")[0]) == (
        0,
        summary(0, 1, 1, 1, "unrepresentable 1") + "; 1 already copied deleted from the old store",
    )
    assert not r.exists(old_ids["1"])
    assert len(new_app.rows()) == 3
