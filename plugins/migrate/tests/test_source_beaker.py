"""The beaker source against real pyramid_beaker sessions in Beaker's ext:database store.

Each test runs a real Pyramid 2 application with ``config.include("pyramid_beaker")``,
``session.type = ext:database`` and ``session.url`` on the database under test
(SQLite, PostgreSQL, MariaDB), driven by WebTest: a login through Pyramid's
``SessionAuthenticationHelper``, a CSRF token, a cart and a flash message. The
browser's cookie and the row Beaker wrote are what the adapter verifies, reads
and takes, as the plugin does (``read``, then ``take`` in the same
transaction). Time is moved by passing ``now`` to the adapter, and for Beaker
by rewriting the stored ``_accessed_time`` through Beaker's own ``Session`` API.
"""

from __future__ import annotations

import datetime
import fractions
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import transaction
import webtest
import zope.sqlalchemy
from beaker.ext.database import DatabaseNamespaceManager
from beaker.ext.sqla import SqlaNamespaceManager, make_cache_table
from beaker.session import Session as BeakerSession
from pyramid.authentication import SessionAuthenticationHelper
from pyramid.config import Configurator
from pyramid.csrf import check_csrf_token, get_csrf_token
from pyramid.security import Allowed, Denied, remember
from sessions_migrate.source import (
    ClaimedElsewhere,
    OldSession,
    Source,
    SourceOptions,
    Unrepresentable,
)
from sessions_migrate.sources import beaker as beaker_module
from sessions_migrate.sources.beaker import BeakerSource
from sqlalchemy.orm import Session as DBSession

from sessions_kernel.outage import is_retryable

TIMEOUT = 600


class SessionSecurityPolicy:
    """Pyramid 2's security policy over the session, as Pyramid's docs write it."""

    def __init__(self, prefix: str = "auth.") -> None:
        self.helper = SessionAuthenticationHelper(prefix=prefix)

    def identity(self, request: Any) -> Any:
        return self.helper.authenticated_userid(request)

    def authenticated_userid(self, request: Any) -> Any:
        return self.helper.authenticated_userid(request)

    def permits(self, request: Any, context: Any, permission: str) -> Any:
        if self.identity(request) is None:
            return Denied("not logged in")
        return Allowed("logged in")

    def remember(self, request: Any, userid: Any, **kw: Any) -> list[Any]:
        return self.helper.remember(request, userid, **kw)

    def forget(self, request: Any, **kw: Any) -> list[Any]:
        return self.helper.forget(request, **kw)


def login(request: Any) -> dict[str, Any]:
    request.response.headerlist.extend(remember(request, request.params["userid"]))
    request.session["cart"] = {"items": ["apple", "pear"], "total": 2}
    request.session.flash("Welcome back")
    request.session.flash("Card expires soon", queue="warnings")
    return {"csrf_token": get_csrf_token(request)}


def whoami(request: Any) -> dict[str, Any]:
    return {
        "userid": request.authenticated_userid,
        "cart": request.session.get("cart"),
        "flash": request.session.peek_flash(),
    }


def checkout(request: Any) -> dict[str, Any]:
    check_csrf_token(request)
    return {"ok": True}


def logout(request: Any) -> dict[str, Any]:
    """pyramid_beaker's two ways out: ``invalidate()`` (Pyramid's ISession) or ``delete()``."""
    if request.params["how"] == "invalidate":
        request.session.invalidate()
    else:
        request.session.delete()
    return {}


def store(request: Any) -> dict[str, Any]:
    """Stores the value the test's ``values[kind]()`` makes under ``kind``."""
    kind = request.params["kind"]
    request.session[kind] = request.registry.settings["test.values"][kind]()
    return {}


@dataclass
class Beaker:
    """A pyramid_beaker application on the database under test, and Beaker's table."""

    engine: sa.Engine
    url: str
    table: str = field(default_factory=lambda: f"beaker_{secrets.token_hex(5)}")
    secret: str = field(default_factory=lambda: secrets.token_hex(16))
    values: dict[str, Callable[[], Any]] = field(default_factory=dict)
    #: session models whose tables the fixture drops after the test
    drops: list[Any] = field(default_factory=list)

    def app(self, prefix: str = "auth.", **settings: str) -> webtest.TestApp:
        """A browser on a fresh pyramid_beaker application (``settings``: more session.*)."""
        all_settings: dict[str, Any] = {
            "session.type": "ext:database",
            "session.url": self.url,
            "session.table_name": self.table,
            "session.secret": self.secret,
            "session.timeout": str(TIMEOUT),
            "session.key": "beaker.session.id",
            "test.values": self.values,
            **{f"session.{k}": v for k, v in settings.items()},
        }
        with Configurator(settings=all_settings) as config:
            config.include("pyramid_beaker")
            config.set_security_policy(SessionSecurityPolicy(prefix))
            for name, view, method in (
                ("login", login, "POST"),
                ("whoami", whoami, "GET"),
                ("checkout", checkout, "POST"),
                ("store", store, "POST"),
                ("logout", logout, "POST"),
            ):
                config.add_route(name, f"/{name}")
                config.add_view(view, route_name=name, renderer="json", request_method=method)
            return webtest.TestApp(config.make_wsgi_app())

    def log_in(self, userid: str = "alice", **settings: str) -> tuple[webtest.TestApp, str, str]:
        """Log in through Beaker: the browser, its cookie and its CSRF token."""
        browser = self.app(**settings)
        token = browser.post("/login", {"userid": userid}).json["csrf_token"]
        return browser, browser.cookies["beaker.session.id"], token

    def source(self, *secrets_: str, timeout: int | None = TIMEOUT, **options: str) -> Source:
        source = BeakerSource(
            SourceOptions(
                secrets=tuple(s.encode() for s in (secrets_ or (self.secret,))),
                table=self.table,
                timeout=timeout,
                options=options,
            )
        )
        assert isinstance(source, Source)
        return source

    def beaker_session(self, old_id: str, **params: Any) -> BeakerSession:
        """The stored session through Beaker's own API (no cookie, no timeout: as stored)."""
        return BeakerSession(
            {},
            id=old_id,
            use_cookies=False,
            type="ext:database",
            url=self.url,
            table_name=self.table,
            **params,
        )

    def accessed(self, old_id: str, **params: Any) -> float:
        """The ``_accessed_time`` Beaker stored (its ``last_accessed`` on load)."""
        value = self.beaker_session(old_id, **params).last_accessed
        assert isinstance(value, float)
        return value

    def set_accessed(self, old_id: str, value: float, **params: Any) -> None:
        """Rewrite the stored ``_accessed_time`` through Beaker's API."""
        session = self.beaker_session(old_id, **params)
        session["_accessed_time"] = value
        session.save()

    def rows(self, old_id: str | None = None) -> int:
        table = sa.table(self.table, sa.column("namespace"))
        query = sa.select(sa.func.count()).select_from(table)
        if old_id is not None:
            query = query.where(table.c.namespace == old_id)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())


@pytest.fixture
def beaker(session_engine: sa.Engine, session_db_url: str) -> Iterator[Beaker]:
    made = Beaker(session_engine, session_db_url)
    yield made
    for model in made.drops:
        model.metadata.drop_all(session_engine)
    with session_engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {made.table}"))


def migrate(source: Source, db: DBSession, old_id: str, now: int) -> OldSession | None:
    """What the plugin does in a request: read the old session, then take it."""
    old = source.read(db, old_id, now)
    if old is not None:
        source.take(db, old)
    return old


def migrate_now(source: Source, engine: sa.Engine, old_id: str, now: int) -> OldSession | None:
    """:func:`migrate` in a transaction of its own, committed."""
    with DBSession(engine) as db:
        old = migrate(source, db, old_id, now)
        db.commit()
    return old


def sign(secret: str, old_id: str) -> str:
    """A cookie as Beaker's SignedCookie writes it: HMAC-SHA1 hex, then the id."""
    return hmac.new(secret.encode(), old_id.encode(), hashlib.sha1).hexdigest() + old_id


CART = {"items": ["apple", "pear"], "total": 2}


# -- a real login moves over ---------------------------------------------------------------


def test_a_beaker_login_is_verified_read_and_taken(beaker: Beaker) -> None:
    browser, cookie, token = beaker.log_in("alice")
    assert browser.get("/whoami").json["userid"] == "alice"  # Beaker itself knows alice
    browser.post("/checkout", {"csrf_token": token})  # and her token is good there
    source = beaker.source()

    old_id = source.open_cookie(cookie)
    assert old_id is not None and old_id == cookie[40:]
    assert beaker.rows(old_id) == 1  # the row Beaker wrote
    accessed = beaker.accessed(old_id)
    with DBSession(beaker.engine) as db:
        old = source.read(db, old_id, int(accessed) + 1)
        assert old is not None
        assert beaker.rows(old_id) == 1  # read writes nothing
        claim = source.take(db, old)
        assert claim.on_commit is None and claim.on_abort is None  # all in the transaction
        db.commit()

    assert old.id == old_id and old.handle == old_id
    assert old.userid == "alice"
    assert old.csrf_token == token
    assert old.flash == {"": ["Welcome back"], "warnings": ["Card expires soon"]}
    assert old.data == {"cart": CART}
    assert old.accessed == int(accessed)
    assert old.created is not None and old.created <= old.accessed
    assert old.expires_at == int(accessed) + TIMEOUT + 1
    assert old.settings == {}
    # deleted with the commit: gone for the adapter and for Beaker
    assert beaker.rows(old_id) == 0
    with DBSession(beaker.engine) as db:
        assert source.read(db, old_id, int(accessed) + 1) is None
        with pytest.raises(ClaimedElsewhere):
            source.take(db, old)
    assert browser.get("/whoami").json["userid"] is None


def test_a_custom_userid_prefix_needs_the_userid_key_option(beaker: Beaker) -> None:
    browser = beaker.app(prefix="myapp.")
    browser.post("/login", {"userid": "bob"})
    old_id = beaker.source().open_cookie(browser.cookies["beaker.session.id"])
    assert old_id is not None
    now = int(beaker.accessed(old_id))
    with DBSession(beaker.engine) as db:  # the default key: bob stays in the data
        default = beaker.source().read(db, old_id, now)
        assert default is not None
        assert default.userid is None and default.data["myapp.userid"] == "bob"
        mine = beaker.source(userid_key="myapp.userid").read(db, old_id, now)
        assert mine is not None
        assert mine.userid == "bob" and "myapp.userid" not in mine.data


def test_beaker_json_serializer(beaker: Beaker) -> None:
    _, cookie, token = beaker.log_in("carol", data_serializer="json")
    source = beaker.source()
    old_id = source.open_cookie(cookie)
    assert old_id is not None
    now = int(beaker.accessed(old_id, data_serializer="json"))
    old = migrate_now(source, beaker.engine, old_id, now)
    assert old is not None
    assert old.userid == "carol" and old.csrf_token == token
    assert old.data == {"cart": CART}


def test_a_row_as_beaker_1_11_wrote_it(beaker: Beaker) -> None:
    """Beaker up to 1.11 kept the session dictionary itself under "session" (no base64)."""
    _, cookie, _ = beaker.log_in("dave")
    source = beaker.source()
    old_id = source.open_cookie(cookie)
    assert old_id is not None
    values = dict(beaker.beaker_session(old_id))
    # Beaker's own namespace manager writes it, as Beaker 1.11's Session.save() did
    namespace = DatabaseNamespaceManager(old_id, url=beaker.url, table_name=beaker.table)
    namespace.acquire_write_lock(replace=True)
    try:
        namespace["session"] = values
    finally:
        namespace.release_write_lock()
    old = migrate_now(source, beaker.engine, old_id, int(values["_accessed_time"]))
    assert old is not None and old.userid == "dave" and old.data == {"cart": CART}


def test_encrypted_rows_are_refused(beaker: Beaker) -> None:
    """session.encrypt_key encrypts the row's data (never the cookie): not read."""
    browser, cookie, _ = beaker.log_in(
        "erin", encrypt_key=secrets.token_hex(16), validate_key=secrets.token_hex(16)
    )
    assert browser.get("/whoami").json["userid"] == "erin"  # Beaker reads it back
    source = beaker.source()
    old_id = source.open_cookie(cookie)
    assert old_id is not None  # the cookie is the same signed id
    with DBSession(beaker.engine) as db, pytest.raises(Unrepresentable, match="encrypt_key"):
        source.read(db, old_id, int(time.time()))
    assert beaker.rows(old_id) == 1


def test_beaker_logouts(beaker: Beaker) -> None:
    """Beaker's invalidate() leaves the old row, which the old cookie still opens (in Beaker,
    and so in the migration); delete() leaves a row of Beaker's keys only: nothing to read."""
    source = beaker.source()
    browser, cookie, _ = beaker.log_in("alice")
    browser.post("/logout", {"how": "invalidate"})
    assert browser.cookies["beaker.session.id"] != cookie
    assert browser.get("/whoami").json["userid"] is None
    copy = beaker.app()
    copy.set_cookie("beaker.session.id", cookie)
    assert copy.get("/whoami").json["userid"] == "alice"  # Beaker: the copy still works
    old_id = source.open_cookie(cookie)
    assert old_id is not None
    now = int(beaker.accessed(old_id))
    with DBSession(beaker.engine) as db:
        old = source.read(db, old_id, now)
        assert old is not None and old.userid == "alice"

    deleted, deleted_cookie, _ = beaker.log_in("bob")
    deleted.post("/logout", {"how": "delete"})
    deleted_id = deleted_cookie[40:]
    assert beaker.rows(deleted_id) == 1
    assert set(beaker.beaker_session(deleted_id)) == {"_domain", "_path", "_accessed_time"}
    with DBSession(beaker.engine) as db:
        assert source.read(db, deleted_id, now) is None
        live = set(source.live_ids(db, now))
        assert deleted_id not in live and old_id in live
    assert beaker.rows(deleted_id) == 1


# -- the cookie ----------------------------------------------------------------------------


def test_only_a_cookie_signed_with_an_old_secret_opens(beaker: Beaker) -> None:
    _, cookie, _ = beaker.log_in()
    old_id = cookie[40:]
    source = beaker.source()
    assert source.open_cookie(cookie) == old_id
    assert source.open_cookie(f'"{cookie}"') == old_id  # quoted, as Beaker accepts it
    # rotation: the secrets newest first, the cookie signed with an older one
    assert beaker.source(secrets.token_hex(16), beaker.secret).open_cookie(cookie) == old_id

    flipped = ("0" if cookie[7] != "0" else "1").join((cookie[:7], cookie[8:]))
    refused = {
        "forged signature": flipped,
        "another secret": sign(secrets.token_hex(16), old_id),
        "another id under the signature": cookie[:40] + old_id[::-1],
        "truncated": cookie[:-1],
        "signature truncated": cookie[1:],
        "id only (a Beaker without session.secret)": old_id,
        "signature only": cookie[:40],
        "upper-case signature": cookie[:40].upper() + old_id,
        "empty": "",
        "not URL-safe id": sign(beaker.secret, "a b"),
        "id over 255 characters": sign(beaker.secret, "a" * 256),
    }
    for why, value in refused.items():
        assert source.open_cookie(value) is None, why
    assert beaker.source(secrets.token_hex(16)).open_cookie(cookie) is None
    # the refusals are the adapter's, not the value's: signed right, each id opens
    assert source.open_cookie(sign(beaker.secret, "a" * 255)) == "a" * 255


def test_options(beaker: Beaker) -> None:
    source = beaker.source()
    assert source.name == "beaker"
    assert source.cookie_name() == "beaker.session.id"
    assert source.cookie_attributes() == {"path": "/", "domain": None}
    assert beaker.secret not in repr(source)
    other = BeakerSource(
        SourceOptions(
            secrets=(b"k",),
            cookie_name="sid",
            options={"cookie_path": "/app", "cookie_domain": "example.com"},
        )
    )
    assert other.cookie_name() == "sid"
    assert other.cookie_attributes() == {"path": "/app", "domain": "example.com"}
    for options, message in (
        (SourceOptions(secrets=()), "session.secret"),
        (SourceOptions(secrets=(b"",)), "non-empty"),
        (SourceOptions(secrets=(b"k",), timeout=0), "session.timeout"),
        (SourceOptions(secrets=(b"k",), table="beaker cache"), "table_name"),
        (SourceOptions(secrets=(b"k",), options={"userid": "x"}), "unknown option"),
        (SourceOptions(secrets=(b"k",), options={"userid_key": ""}), "userid_key"),
    ):
        with pytest.raises(ValueError, match=message):
            BeakerSource(options)


# -- expiry: Beaker's rule -----------------------------------------------------------------


@pytest.mark.parametrize("accessed", [1_700_000_000.0, 1_700_000_000.5])
def test_expired_by_beakers_timeout_is_not_read(beaker: Beaker, accessed: float) -> None:
    browser, cookie, _ = beaker.log_in("alice")
    source = beaker.source()
    old_id = source.open_cookie(cookie)
    assert old_id is not None
    beaker.set_accessed(old_id, accessed)
    assert beaker.accessed(old_id) == accessed

    # Beaker itself, on its clock, ends it (a new session: nobody logged in)
    assert browser.get("/whoami").json["userid"] is None
    assert beaker.rows(old_id) == 1  # and leaves the row

    # Beaker's rule: expired when now - _accessed_time > timeout (600 s later is not)
    with DBSession(beaker.engine) as db:
        assert source.read(db, old_id, int(accessed) + TIMEOUT + 1) is None
        old = source.read(db, old_id, int(accessed) + TIMEOUT)
        assert old is not None and old.userid == "alice"
        assert old.expires_at == int(accessed) + TIMEOUT + 1
    assert beaker.rows(old_id) == 1


def test_without_a_timeout_every_stored_session_lives(beaker: Beaker) -> None:
    _, cookie, _ = beaker.log_in("alice")
    old_id = cookie[40:]
    beaker.set_accessed(old_id, 1_000_000_000.0)
    late = 2_000_000_000
    with DBSession(beaker.engine) as db:
        assert beaker.source().read(db, old_id, late) is None
        old = beaker.source(timeout=None).read(db, old_id, late)
        assert old is not None and old.expires_at is None


# -- pickles -------------------------------------------------------------------------------


class Canary:
    """Pickles as a call of os.mkdir: whoever loads it with pickle.loads runs it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


def test_an_object_outside_the_plain_values_is_unrepresentable(
    beaker: Beaker, tmp_path: Path
) -> None:
    ran = tmp_path / "the pickle ran"
    beaker.values.update(fraction=lambda: fractions.Fraction(1, 3), canary=lambda: Canary(ran))
    source = beaker.source()
    for kind in ("fraction", "canary"):
        browser, cookie, _ = beaker.log_in("mallory")
        browser.post("/store", {"kind": kind})
        old_id = source.open_cookie(cookie)
        assert old_id is not None
        # (loading it through Beaker would run it: now=0, no expiry to check first)
        with DBSession(beaker.engine) as db, pytest.raises(Unrepresentable, match="plain value"):
            source.read(db, old_id, 0)
        assert beaker.rows(old_id) == 1  # left where it is
    assert not ran.exists()  # the adapter built nothing of it
    browser.get("/whoami")  # Beaker loads its pickle with pickle.loads: the call runs
    assert ran.is_dir()


# -- take: in the request's transaction, exactly once --------------------------------------


def test_a_rolled_back_take_keeps_the_row(beaker: Beaker) -> None:
    _, cookie, _ = beaker.log_in()
    source = beaker.source()
    old_id = source.open_cookie(cookie)
    assert old_id is not None
    now = int(beaker.accessed(old_id))
    with DBSession(beaker.engine) as db:
        assert migrate(source, db, old_id, now) is not None
        db.rollback()
    assert beaker.rows(old_id) == 1
    assert migrate_now(source, beaker.engine, old_id, now) is not None
    assert beaker.rows(old_id) == 0


def test_the_take_commits_with_the_request_transaction(beaker: Beaker) -> None:
    """In a zope.sqlalchemy session (as request.dbsession is), the DELETE is committed: it
    is an ORM statement, which zope.sqlalchemy sees (a Core DELETE left the session
    "unchanged", and zope.sqlalchemy rolled it back at the commit)."""
    _, cookie, _ = beaker.log_in()
    source = beaker.source()
    old_id = source.open_cookie(cookie)
    assert old_id is not None
    manager = transaction.TransactionManager(explicit=True)
    db = DBSession(beaker.engine)
    zope.sqlalchemy.register(db, transaction_manager=manager)
    with manager:
        assert migrate(source, db, old_id, int(beaker.accessed(old_id))) is not None
    db.close()
    assert beaker.rows(old_id) == 0


def test_a_row_taken_between_read_and_take(beaker: Beaker) -> None:
    """The read locks nothing: a request that read the row, then finds it taken by another
    that committed first, gets ClaimedElsewhere."""
    _, cookie, _ = beaker.log_in()
    source = beaker.source()
    old_id = source.open_cookie(cookie)
    assert old_id is not None
    now = int(beaker.accessed(old_id))
    with DBSession(beaker.engine) as db:
        old = source.read(db, old_id, now)
        assert old is not None
        assert migrate_now(source, beaker.engine, old_id, now) is not None  # the other one
        with pytest.raises(ClaimedElsewhere):
            source.take(db, old)
    assert beaker.rows(old_id) == 0


def _backend_id(db: DBSession) -> int:
    name = db.get_bind().dialect.name
    query = "SELECT pg_backend_pid()" if name == "postgresql" else "SELECT CONNECTION_ID()"
    return int(db.execute(sa.text(query)).scalar_one())


def _waits_for_a_lock(engine: sa.Engine, backend: int) -> bool:
    if engine.dialect.name == "postgresql":
        query = "SELECT count(*) FROM pg_stat_activity WHERE pid = :id AND wait_event_type = 'Lock'"
    else:
        query = (
            "SELECT count(*) FROM information_schema.innodb_trx "
            "WHERE trx_mysql_thread_id = :id AND trx_state = 'LOCK WAIT'"
        )
    with engine.connect() as conn:
        return bool(conn.execute(sa.text(query), {"id": backend}).scalar_one())


def _activity(engine: sa.Engine) -> list[Any]:
    """What the server's connections are doing (for a failure's message)."""
    if engine.dialect.name == "postgresql":
        query = "SELECT pid, state, wait_event_type, query FROM pg_stat_activity"
    else:
        query = "SHOW PROCESSLIST"
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text(query))]


@pytest.mark.parametrize("isolation", ["default", "snapshot", "snapshot, namespace key"])
@pytest.mark.parametrize("first", ["commits", "rolls back"])
def test_two_concurrent_first_visits(beaker: Beaker, first: str, isolation: str) -> None:
    """A reads and takes, and holds its transaction; B reads, and its take waits for A's
    lock of the row: A commits, and B gets ClaimedElsewhere; A rolls back, and B takes it.

    ``snapshot``: MariaDB's ``innodb_snapshot_isolation`` (on by default from 11.8) refuses
    to change a row changed since the transaction's snapshot (error 1020) where the row is
    found by its primary key: the layout of Beaker's ``make_cache_table`` (``namespace
    key``), which ext:database also writes to when it finds it. There B's take fails with
    that error, which the kernel retries as it retries ClaimedElsewhere's conflict.
    """
    name = beaker.engine.dialect.name
    if name == "sqlite":
        pytest.skip("SQLite runs one writer at a time: test_a_row_taken_between_read_and_take")
    if isolation != "default" and name == "postgresql":
        pytest.skip("innodb_snapshot_isolation is MariaDB's")
    if isolation == "snapshot, namespace key":
        SqlaNamespaceManager._init_dependencies()
        metadata = sa.MetaData()
        make_cache_table(metadata, beaker.table)
        metadata.create_all(beaker.engine)
    _, cookie, _ = beaker.log_in()
    source = beaker.source()
    old_id = source.open_cookie(cookie)
    assert old_id is not None
    now = int(beaker.accessed(old_id))
    backend: list[int] = []
    results: list[Any] = []
    read = threading.Event()
    # B's own connection, closed after it: a session variable set on it stays there
    engine_b = sa.create_engine(beaker.url, poolclass=sa.pool.NullPool)

    def visit_b() -> None:
        with DBSession(engine_b) as db:
            if isolation != "default":
                db.execute(sa.text("SET SESSION innodb_snapshot_isolation = ON"))
            backend.append(_backend_id(db))
            old = source.read(db, old_id, now)
            read.set()
            try:
                assert old is not None
                source.take(db, old)
                results.append(old)
                db.commit()
            except Exception as exc:
                results.append(exc)

    with DBSession(beaker.engine) as db_a:
        assert migrate(source, db_a, old_id, now) is not None
        b = threading.Thread(target=visit_b)
        b.start()
        assert read.wait(30)  # B read the row too: A's DELETE is not committed
        for _ in range(600):  # until B's take waits on A's lock of the row
            if _waits_for_a_lock(beaker.engine, backend[0]):
                break
            assert b.is_alive(), f"B finished without waiting: {results}"
            time.sleep(0.05)
        else:
            pytest.fail(f"B's take never waited for A's lock: {_activity(beaker.engine)}")
        assert not results
        if first == "commits":
            db_a.commit()
        else:
            db_a.rollback()
    b.join(30)
    engine_b.dispose()
    assert not b.is_alive()
    assert len(results) == 1
    if first == "rolls back":
        assert isinstance(results[0], OldSession) and results[0].id == old_id
    elif isolation == "snapshot, namespace key":
        assert is_retryable(results[0]), results[0]
    else:
        assert isinstance(results[0], ClaimedElsewhere), results[0]
    assert beaker.rows(old_id) == 0


# -- the bulk path -------------------------------------------------------------------------


def test_count_and_live_ids(beaker: Beaker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(beaker_module, "_BATCH", 2)  # several batches of the keyset walk
    beaker.values["fraction"] = lambda: fractions.Fraction(1, 3)
    source = beaker.source()
    ids = {}
    for name in ("live1", "live2", "live3", "expired", "unreadable"):
        browser, cookie, _ = beaker.log_in(name)
        ids[name] = cookie[40:]
        if name == "unreadable":
            browser.post("/store", {"kind": "fraction"})
    now = int(max(beaker.accessed(ids[n]) for n in ("live1", "live2", "live3")))
    beaker.set_accessed(ids["expired"], now - TIMEOUT - 1.0)
    assert beaker.rows() == 5

    with DBSession(beaker.engine) as db:
        live = list(source.live_ids(db, now))
        assert sorted(live) == live
        # the unreadable one is listed: its read reports it
        assert set(live) == {ids[n] for n in ("live1", "live2", "live3", "unreadable")}
        assert source.count(db, now) == 4
        # without Beaker's timeout the expired one lives too
        assert beaker.source(timeout=None).count(db, now) == 5
        # taking while walking: each batch is read before it is given
        for old_id in beaker.source().live_ids(db, now):
            if old_id != ids["unreadable"]:
                assert migrate(source, db, old_id, now) is not None
        db.commit()
    with DBSession(beaker.engine) as db:
        assert list(source.live_ids(db, now)) == [ids["unreadable"]]
        assert source.count(db, now) == 1


# -- the switch: the same browser, on the kernel with sessions-migrate ---------------------


def whoami_new(request: Any) -> dict[str, Any]:
    return {
        "userid": request.authenticated_userid,
        "cart": request.session.get("cart"),
        "flash": request.session.peek_flash(),
        "warnings": request.session.peek_flash("warnings"),
    }


def _switched_app(beaker: Beaker, tmp_path: Path, now: float) -> Any:
    """The application after the switch: the kernel, sessions-migrate reading Beaker's table,
    sessions-userid's policy, sessions-csrf's token column, at the time ``now``."""
    from pyramid.interfaces import ICSRFStoragePolicy  # noqa: F401  (what the policy is)
    from sessions_csrf import ColumnCSRFStoragePolicy, CSRFMixin
    from sessions_idle_timeout import IdleMixin
    from sessions_migrate import MigrateMixin
    from sessions_userid import UseridMixin, UserSessionSecurityPolicy

    from sessions_kernel.testing import Clock, make_app, make_model

    secret_file = tmp_path / "beaker_secret"
    secret_file.write_text(beaker.secret + "\n")
    clock = Clock(now)
    until = datetime.datetime.fromtimestamp(now + 30 * 86400, datetime.timezone.utc)
    model = make_model(
        MigrateMixin,
        IdleMixin,
        CSRFMixin,
        UseridMixin,
        tablename=f"session_{secrets.token_hex(4)}",
        userid=sa.orm.mapped_column(sa.String(64), nullable=True, index=True),
    )

    def configure(config: Configurator) -> None:
        config.set_security_policy(UserSessionSecurityPolicy())
        config.set_csrf_storage_policy(ColumnCSRFStoragePolicy())
        config.add_route("whoami_new", "/whoami")
        config.add_view(whoami_new, route_name="whoami_new", renderer="json")
        config.add_route("checkout_new", "/checkout")
        config.add_view(checkout, route_name="checkout_new", renderer="json")

    beaker.drops.append(model)
    return make_app(
        model,
        beaker.engine,
        settings={
            "idle_timeout": str(TIMEOUT),
            "migrate_from": "beaker",
            "migrate_until": until.date().isoformat(),
            "migrate_secret_file": str(secret_file),
            "migrate_table": beaker.table,
            "migrate_timeout": str(TIMEOUT),
        },
        clock=clock,
        configure=configure,
    )


def test_after_the_switch_the_same_browser_keeps_its_data(beaker: Beaker, tmp_path: Path) -> None:
    """Log in through pyramid_beaker, switch the application to the kernel with
    sessions-migrate: the same browser keeps its cart and flash messages, the Beaker row and
    cookie are gone, and a copy of the old cookie finds the same new session."""
    _, cookie, _ = beaker.log_in("alice")
    old_id = cookie[40:]
    app = _switched_app(beaker, tmp_path, beaker.accessed(old_id) + 5)
    app.set_cookie("beaker.session.id", cookie)

    page = app.get("/whoami").json
    assert page["cart"] == CART
    assert page["flash"] == ["Welcome back"] and page["warnings"] == ["Card expires soon"]
    assert beaker.rows(old_id) == 0
    assert "beaker.session.id" not in app.cookies and "session" in app.cookies
    assert app.get("/whoami").json["cart"] == CART  # now from the new session's own cookie

    copy = app.new_browser()  # another tab's copy of the old cookie, sent later
    copy.set_cookie("beaker.session.id", cookie)
    assert copy.get("/whoami").json["cart"] == CART


def test_after_the_switch_forged_and_late_cookies_move_nothing(
    beaker: Beaker, tmp_path: Path
) -> None:
    _, cookie, _ = beaker.log_in("alice")
    old_id = cookie[40:]
    app = _switched_app(beaker, tmp_path, beaker.accessed(old_id) + 5)
    forged = app.new_browser()
    forged.set_cookie("beaker.session.id", sign(secrets.token_hex(16), old_id))
    assert forged.get("/whoami").json["cart"] is None
    assert beaker.rows(old_id) == 1

    app.clock.advance(31 * 86400)  # past session.migrate_until
    late = app.new_browser()
    late.set_cookie("beaker.session.id", cookie)
    assert late.get("/whoami").json["cart"] is None
    assert "beaker.session.id" not in late.cookies  # deleted, unread
    assert beaker.rows(old_id) == 1


def test_after_the_switch_the_same_browser_is_logged_in_and_its_token_works(
    beaker: Beaker, tmp_path: Path
) -> None:
    _, cookie, token = beaker.log_in("alice")
    old_id = cookie[40:]
    app = _switched_app(beaker, tmp_path, beaker.accessed(old_id) + 5)
    app.set_cookie("beaker.session.id", cookie)
    assert app.get("/whoami").json["userid"] == "alice"
    app.post("/checkout", {"csrf_token": token})
