"""The pyramid_sqlalchemy_sessions source, against sessions the real predecessor made.

Every old session here is made by pyramid_sqlalchemy_sessions 0.1.0 itself,
running on Pyramid 1 in an environment of its own (``predecessor_harness.py``:
Python 3.6, SQLAlchemy 1.2, the wheel from PyPI; one test also on Python 3.11 and
SQLAlchemy 1.4), through real requests against the same database the adapter
then reads. Where a rule is tested, the predecessor is asked too (a request
whose transaction is doomed, so it changes nothing): a cookie the adapter opens
is one the predecessor served at that second, and one it refuses is one the
predecessor refused.

On SQLite, PostgreSQL and MariaDB (the kernel's ``session_db_url``).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.orm
import transaction
import zope.sqlalchemy
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from predecessor_harness import OldApp, Runner, environment, find_python
from pyramid.csrf import check_csrf_token
from sessions_csrf import ColumnCSRFStoragePolicy, CSRFMixin
from sessions_idle_timeout import ConfigIdleMixin
from sessions_migrate import MigrateMixin
from sessions_migrate.source import (
    Claim,
    ClaimedElsewhere,
    OldSession,
    Source,
    SourceOptions,
    Unrepresentable,
)
from sessions_migrate.sources.predecessor import PredecessorHandle, PredecessorSource, session_key
from sessions_userid import UseridMixin, UserSessionSecurityPolicy

from sessions_kernel.testing import Clock, SessionTestApp, make_app, make_model

#: the predecessor's clock in these tests: June 2017, when 0.1.0 came out
T0 = 1_500_000_000
#: every feature, each runtime-configurable (its FullyFeaturedSession)
FULL = [
    "UseridMixin",
    "CSRFMixin",
    "ConfigCookieMixin",
    "ConfigIdleMixin",
    "ConfigAbsoluteMixin",
    "ConfigRenewalMixin",
]
#: every feature that has a plain mixin, with the global settings only
PLAIN = ["UseridMixin", "CSRFMixin", "IdleMixin", "AbsoluteMixin", "RenewalMixin"]

_numbers = itertools.count()


# -- fixtures ----------------------------------------------------------------------------
def _runner(version: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    python = environment(version)
    runner = Runner(python, tmp_path_factory.mktemp(f"predecessor-{version}") / "runner.log")
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    """The predecessor on Python 3.6 and SQLAlchemy 1.2, in one process for the module.

    On a machine without Python 3.6, on Python 3.11 and SQLAlchemy 1.4.
    """
    yield from _runner("3.6" if find_python("3.6") else "3.11", tmp_path_factory)


@pytest.fixture(scope="module")
def runner_311(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    """The predecessor on Python 3.11 and SQLAlchemy 1.4 (pickle protocol 5)."""
    yield from _runner("3.11", tmp_path_factory)


@pytest.fixture
def key() -> str:
    """The old ``session.secret_key``: made per test, as the predecessor's docs made one."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


@pytest.fixture
def old_app(runner: Runner, session_db_url: str, key: str) -> Iterator[Callable[..., OldApp]]:
    """``old_app(mixins, **settings)``: a predecessor application on the test database."""
    apps: list[OldApp] = []

    def build(mixins: list[str], runner: Runner = runner, **settings: Any) -> OldApp:
        number = next(_numbers)
        table = f"old_session_{os.getpid()}_{number}"
        app = OldApp(
            runner, f"app{number}", session_db_url, table, mixins, {"secret_key": key, **settings}
        )
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.drop()


def make_source(
    app: OldApp, key: str, timeout: int | None = None, **options: Any
) -> PredecessorSource:
    """The source as ``session.migrate_*`` settings build it (``timeout``: migrate_timeout)."""
    source = PredecessorSource(
        SourceOptions(
            secrets=(key.encode("ascii"),),
            table=app.table,
            timeout=timeout,
            options={name: str(value) for name, value in options.items()},
        )
    )
    assert isinstance(source, Source)
    return source


@contextmanager
def request_tx(engine: sa.Engine, commit: bool = True) -> Iterator[sa.orm.Session]:
    """A request's SQLAlchemy session, joined to its own transaction as pyramid_tm joins it."""
    tm = transaction.TransactionManager(explicit=True)
    dbsession = sa.orm.Session(engine)
    zope.sqlalchemy.register(dbsession, transaction_manager=tm)
    tm.begin()
    try:
        yield dbsession
    except BaseException:
        tm.abort()
        raise
    else:
        if commit:
            tm.commit()
        else:
            tm.abort()
    finally:
        dbsession.close()


def migrate(
    source: PredecessorSource, engine: sa.Engine, old_id: str, now: int, commit: bool = True
) -> OldSession | None:
    """What the plugin does in a request: ``read``, then ``take`` what it read, committed
    (or rolled back). ``None``: nothing to migrate."""
    with request_tx(engine, commit) as dbsession:
        return take(source, dbsession, old_id, now)


def take(
    source: PredecessorSource, dbsession: sa.orm.Session, old_id: str, now: int
) -> OldSession | None:
    old = source.read(dbsession, old_id, now)
    if old is not None:
        assert source.take(dbsession, old) == Claim()  # nothing left for after the commit
    return old


def encrypt(key: str, plaintext: bytes) -> str:
    """A cookie in the predecessor's format, written by the test (checked against it below)."""
    nonce = os.urandom(16)
    sealed = AESGCM(base64.urlsafe_b64decode(key)).encrypt(nonce, plaintext, None)
    return base64.urlsafe_b64encode(nonce + sealed[-16:] + sealed[:-16]).decode("ascii")


def decrypt(key: str, cookie: str) -> bytes:
    raw = base64.urlsafe_b64decode(cookie)
    return AESGCM(base64.urlsafe_b64decode(key)).decrypt(raw[:16], raw[32:] + raw[16:32], None)


def new_session(app: OldApp, now: int = T0, actions: list[Any] | None = None) -> str:
    """A session the predecessor stored at ``now``; its cookie."""
    answer = app.request(now, None, actions or [["set", "n", 1]])
    assert answer["seen"]["new"] and answer["cookie"]
    cookie: str = answer["cookie"]
    return cookie


# -- a whole session ----------------------------------------------------------------------
SPECIAL = {
    "when": datetime.datetime(2017, 6, 28, 12, 30, 15, 250),
    "day": datetime.date(2017, 6, 28),
    "price": decimal.Decimal("19.99"),
    "tags": {"a", "b"},
    "key": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "raw": b"\x00\xff",
    "pair": (1, 2),
    "nested": {"list": [1, {"x": None}], "ok": True, "pi": 3.25},
}
ACTIONS = [
    ["set", "cart", [1, 2]],
    ["special"],
    ["login", 7],
    ["csrf"],
    ["flash", "saved"],
    ["flash", "bad", "errors"],
]


def _moves_whole(app: OldApp, key: str, engine: sa.Engine) -> None:
    answer = app.request(T0, None, ACTIONS)
    cookie = answer["cookie"]
    assert app.accepts(cookie, T0 + 10)  # the predecessor serves it
    source = make_source(app, key)
    old_id = source.open_cookie(cookie)
    assert old_id is not None and session_key(old_id) in app.rows()
    row = app.rows()[session_key(old_id)]
    old = migrate(source, engine, old_id, T0 + 10)
    assert old is not None
    assert old.id == session_key(old_id)
    assert old.data == {"cart": [1, 2], **SPECIAL}
    assert type(old.data) is dict
    assert old.userid == 7
    assert old.csrf_token == answer["seen"]["csrf"]  # what the old pages hold
    assert old.flash == {"": ["saved"], "errors": ["bad"]}
    assert old.created == T0
    assert old.accessed == T0  # idle_expire - idle_timeout
    assert old.expires_at == T0 + 600 + 1  # the predecessor served it through T0 + 600
    assert old.settings == {
        "idle_timeout": 600,
        "extension_chance": 100,
        "extension_deadline": 1,
        "absolute_timeout": 3600,
        "renewal_timeout": 300,
        "renewal_try_every": 5,
        "cookie_path": "/",
        "cookie_secure": False,
        "cookie_httponly": True,
    }
    assert old.handle == PredecessorHandle(uuid.UUID(old.id))
    assert old_id == f"{old.id}.{row['renewal_id']}"  # the renewal timeout is on
    # claimed: the row is gone, and the predecessor no longer serves the cookie
    assert session_key(old_id) not in app.rows()
    assert not app.accepts(cookie, T0 + 11)


def test_a_real_session_moves_with_all_it_holds(old_app, key, session_engine):
    app = old_app(FULL, idle_timeout=600, absolute_timeout=3600, renewal_timeout=300)
    _moves_whole(app, key, session_engine)


def test_a_session_of_a_later_python_and_sqlalchemy(old_app, runner_311, key, session_engine):
    """The same library on Python 3.11 and SQLAlchemy 1.4: pickle protocol 5, same format."""
    app = old_app(
        FULL, runner=runner_311, idle_timeout=600, absolute_timeout=3600, renewal_timeout=300
    )
    _moves_whole(app, key, session_engine)


def test_the_smallest_model(old_app, key, session_engine):
    app = old_app([])
    cookie = new_session(app, T0, [["set", "a", "b"], ["flash", "hi"]])
    source = make_source(app, key)
    old_id = source.open_cookie(cookie)
    assert old_id is not None
    old = migrate(source, session_engine, old_id, T0 + 10**8)  # nothing expires it
    assert old is not None
    assert (old.data, old.flash, old.created) == ({"a": "b"}, {"": ["hi"]}, T0)
    assert (old.userid, old.csrf_token, old.accessed, old.expires_at) == (None, None, None, None)
    assert old.settings == {}
    assert app.rows() == {}


def test_plain_mixins_with_the_global_settings_given_as_options(old_app, key, session_engine):
    app = old_app(PLAIN, idle_timeout=600, absolute_timeout=3600, renewal_timeout=300)
    cookie = new_session(app, T0, [["login", 3], ["csrf"]])
    source = make_source(app, key, timeout=3600, idle_timeout=600, renewal_timeout=300)
    old_id = source.open_cookie(cookie)
    assert old_id is not None
    old = migrate(source, session_engine, old_id, T0 + 5)
    assert old is not None
    assert (old.userid, old.accessed, old.expires_at) == (3, T0, T0 + 601)
    assert old.settings == {}  # global settings: nothing per session
    assert old.csrf_token is not None and len(base64.urlsafe_b64decode(old.csrf_token)) == 20


# -- the cookie ----------------------------------------------------------------------------
def _tampered(cookie: str, key: str, how: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(cookie))
    if how == "forged":
        return base64.urlsafe_b64encode(os.urandom(len(raw))).decode()
    if how == "bit in the ciphertext":
        raw[40] ^= 1
    elif how == "bit in the tag":
        raw[20] ^= 0x80
    elif how == "bit in the nonce":
        raw[0] ^= 1
    elif how == "truncated":
        return cookie[:-4]
    elif how == "shorter than nonce and tag":
        return base64.urlsafe_b64encode(bytes(raw[:30])).decode()
    elif how == "another key":
        other = base64.urlsafe_b64encode(os.urandom(32)).decode()
        return encrypt(other, decrypt(key, cookie))
    elif how == "not base64":
        return cookie[:10] + "!*" + cookie[12:]
    elif how == "empty":
        return ""
    return base64.urlsafe_b64encode(bytes(raw)).decode()


TAMPERED = [
    "forged",
    "bit in the ciphertext",
    "bit in the tag",
    "bit in the nonce",
    "truncated",
    "shorter than nonce and tag",
    "another key",
    "not base64",
    "empty",
]


def test_cookie_rules_against_the_predecessor(old_app, key, session_engine):
    app = old_app(["UseridMixin"])
    cookie = new_session(app, T0, [["login", 1]])
    source = make_source(app, key)
    # the test's own writer of the format is right: the same plaintext under the same key
    rewritten = encrypt(key, decrypt(key, cookie))
    assert rewritten != cookie
    assert app.accepts(rewritten, T0) and source.open_cookie(rewritten) == source.open_cookie(
        cookie
    )
    for how in TAMPERED:
        bad = _tampered(cookie, key, how)
        assert source.open_cookie(bad) is None, how
        assert not app.accepts(bad, T0), how  # the predecessor refuses it too
    # nothing was deleted: the real cookie still opens and claims
    old_id = source.open_cookie(cookie)
    assert old_id is not None
    assert migrate(source, session_engine, old_id, T0) is not None


def test_only_the_encoding_the_predecessor_wrote_opens(old_app, key):
    """Its lenient decoder also took other spellings of a cookie; this source does not."""
    # with a renewal id the sealed cookie is 64 bytes: two padding characters, 4 unused bits
    app = old_app(["ConfigRenewalMixin"], renewal_timeout=300)
    source = make_source(app, key)
    cookie = new_session(app)
    while "-" not in cookie and "_" not in cookie:
        cookie = new_session(app)  # until its standard encoding differs from the URL-safe one
    assert cookie.endswith("==") and source.open_cookie(cookie) is not None
    raw = base64.urlsafe_b64decode(cookie)
    last = cookie[-3]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    other_bits = alphabet[alphabet.index(last) ^ 1]  # decodes to the same 64 bytes
    other_spellings = {
        "standard alphabet": base64.b64encode(raw).decode(),
        "no padding": cookie.rstrip("="),
        "a skipped character": cookie[:8] + "." + cookie[8:],
        "other unused bits": cookie[:-3] + other_bits + "==",
    }
    assert base64.urlsafe_b64decode(other_spellings["other unused bits"]) == raw
    # the predecessor's decoder took these (it refused only what does not decode)
    for how in ("standard alphabet", "a skipped character", "other unused bits"):
        assert app.accepts(other_spellings[how], T0), how
    for how, value in other_spellings.items():
        assert source.open_cookie(value) is None, how


def test_cookie_values_no_browser_would_send_are_refused_without_an_error(key):
    source = PredecessorSource(SourceOptions(secrets=(key.encode(),), table="t"))
    for value in ["é" * 44, "\x00", "=" * 64, " " + "A" * 63, "A" * 10_000]:
        assert source.open_cookie(value) is None


@pytest.mark.parametrize(
    ("plaintext", "served"),
    [
        ("", False),
        ("10 bytes", False),
        ("id", True),
        ("id + 8 bytes", True),
        ("id + 16 bytes", True),
    ],
)
def test_plaintexts_as_the_predecessor_read_them(old_app, key, session_engine, plaintext, served):
    """Without the renewal timeout, anything after the id's 16 bytes was ignored."""
    app = old_app(["UseridMixin"])
    cookie = new_session(app, T0, [["login", 1]])
    sid = decrypt(key, cookie)[:16]
    payload = {
        "": b"",
        "10 bytes": sid[:10],
        "id": sid,
        "id + 8 bytes": sid + os.urandom(8),
        "id + 16 bytes": sid + os.urandom(16),
    }[plaintext]
    crafted = encrypt(key, payload)
    assert app.accepts(crafted, T0) is served
    source = make_source(app, key)
    old_id = source.open_cookie(crafted)
    assert (old_id is not None) is served
    if old_id is not None:
        assert migrate(source, session_engine, old_id, T0) is not None


def test_rotated_secrets_any_of_them_opens(old_app, key):
    app = old_app([])
    cookie = new_session(app)
    other = base64.urlsafe_b64encode(os.urandom(16)).decode().encode()
    for secrets in [(other, key.encode()), (key.encode(), other)]:
        source = PredecessorSource(SourceOptions(secrets=secrets, table=app.table))
        assert source.open_cookie(cookie) is not None
    alone = PredecessorSource(SourceOptions(secrets=(other,), table=app.table))
    assert alone.open_cookie(cookie) is None


# -- expiry ----------------------------------------------------------------------------------
EXPIRY = {
    # name: (mixins, the predecessor's settings, the source's options, last second served)
    "idle, per session": (["ConfigIdleMixin"], {"idle_timeout": 600}, {}, T0 + 600),
    "idle, global": (["IdleMixin"], {"idle_timeout": 600}, {"idle_timeout": 600}, T0 + 600),
    "idle, global, option unset": (["IdleMixin"], {"idle_timeout": 600}, {}, T0 + 600),
    "absolute, per session": (
        ["ConfigAbsoluteMixin"],
        {"absolute_timeout": 3600},
        {},
        T0 + 3600,
    ),
    "absolute, global": (
        ["AbsoluteMixin"],
        {"absolute_timeout": 3600},
        {"timeout": 3600},  # session.migrate_timeout
        T0 + 3600,
    ),
    "idle before absolute": (
        ["ConfigIdleMixin", "ConfigAbsoluteMixin"],
        {"idle_timeout": 600, "absolute_timeout": 3600},
        {},
        T0 + 600,
    ),
}


@pytest.mark.parametrize("rule", list(EXPIRY))
def test_expiry_both_sides_of_the_last_second(old_app, key, session_engine, rule):
    mixins, settings, options, last = EXPIRY[rule]
    app = old_app(mixins, **settings)
    source = make_source(app, key, **options)
    served, late = new_session(app), new_session(app)
    assert app.accepts(served, last) and not app.accepts(late, last + 1)
    old_id = source.open_cookie(served)
    assert old_id is not None
    old = migrate(source, session_engine, old_id, last)
    assert old is not None and old.expires_at == last + 1
    late_id = source.open_cookie(late)
    assert late_id is not None
    assert migrate(source, session_engine, late_id, last + 1) is None
    # refused as expired and left (the predecessor deleted it; psessions gc will)
    assert list(app.rows()) == [session_key(late_id)]


def test_the_idle_timeout_of_one_session(old_app, key, session_engine):
    """Per session: shorter for one, off for another (NULL: never idle-expires)."""
    app = old_app(["ConfigIdleMixin"], idle_timeout=600)
    source = make_source(app, key)
    short = new_session(app, T0, [["settings", {"idle_timeout": 60}], ["set", "a", 1]])
    never = new_session(app, T0, [["settings", {"idle_timeout": None}], ["set", "a", 1]])
    assert not app.accepts(short, T0 + 61) and app.accepts(never, T0 + 10**7)
    short_id, never_id = source.open_cookie(short), source.open_cookie(never)
    assert short_id is not None and never_id is not None
    assert migrate(source, session_engine, short_id, T0 + 61) is None
    old = migrate(source, session_engine, never_id, T0 + 10**7)
    assert old is not None
    assert "idle_timeout" not in old.settings  # off for it: not carried
    assert old.expires_at is None


def test_an_idle_option_of_none_says_the_feature_was_off(old_app, key, session_engine):
    """The predecessor ignores idle_expire when its idle_timeout is None (here: turned off)."""
    app = old_app(["IdleMixin"], idle_timeout=600)
    cookie = new_session(app)
    old_id = make_source(app, key).open_cookie(cookie)
    assert old_id is not None
    assert migrate(make_source(app, key), session_engine, old_id, T0 + 601, commit=False) is None
    old = migrate(make_source(app, key, idle_timeout="none"), session_engine, old_id, T0 + 601)
    assert old is not None


# -- renewal ---------------------------------------------------------------------------------
def test_renewal_both_ids_during_renewal_then_only_the_new_one(old_app, key, session_engine):
    app = old_app(["ConfigRenewalMixin"], renewal_timeout=300)
    source = make_source(app, key)
    first = new_session(app)
    # past the renewal timeout the predecessor sends a cookie with the next renewal id
    second = app.request(T0 + 301, first)["cookie"]
    assert second and second != first
    assert decrypt(key, first)[:16] == decrypt(key, second)[:16]
    for cookie in (first, second):  # during renewal both are served
        assert app.accepts(cookie, T0 + 302)
        old_id = source.open_cookie(cookie)
        assert old_id is not None
        assert migrate(source, session_engine, old_id, T0 + 302, commit=False) is not None
    # two ids (the migration derives two tokens), one session; psessions migrate would
    # name it as the cookie the browser was sent last does
    assert source.open_cookie(first) != source.open_cookie(second)
    with request_tx(session_engine) as dbsession:
        assert list(source.live_ids(dbsession, T0 + 302)) == [source.open_cookie(second)]
    # the new cookie acknowledges the renewal: the old one is now a violation
    app.request(T0 + 303, second)
    assert not app.accepts(first, T0 + 304) and app.accepts(second, T0 + 304)
    # psessions migrate names the session as its current cookie does
    with request_tx(session_engine) as dbsession:
        assert list(source.live_ids(dbsession, T0 + 304)) == [source.open_cookie(second)]
    # a cookie without a renewal id, for a session whose renewal timeout is on
    bare = encrypt(key, decrypt(key, second)[:16])
    assert not app.accepts(bare, T0 + 304)
    bare_id = source.open_cookie(bare)
    assert bare_id is not None and "." not in bare_id
    assert migrate(source, session_engine, bare_id, T0 + 304) is None
    assert len(app.rows()) == 1  # refused and left alone, as the predecessor left it
    first_id = source.open_cookie(first)
    assert first_id is not None
    assert migrate(source, session_engine, first_id, T0 + 304) is None
    assert app.rows() == {}  # a renewal violation deletes the session, as the predecessor did


def test_renewal_with_the_plain_mixin(old_app, key, session_engine):
    """Without its global setting, a renewal id in the cookie is still checked."""
    app = old_app(["RenewalMixin"], renewal_timeout=300)
    first = new_session(app)
    second = app.request(T0 + 301, first)["cookie"]
    app.request(T0 + 303, second)
    assert not app.accepts(first, T0 + 304)
    for options in ({}, {"renewal_timeout": 300}):
        source = make_source(app, key, **options)
        first_id = source.open_cookie(first)
        assert first_id is not None
        assert migrate(source, session_engine, first_id, T0 + 304, commit=False) is None
    bare_id = source.open_cookie(encrypt(key, decrypt(key, second)[:16]))
    assert bare_id is not None
    assert migrate(source, session_engine, bare_id, T0 + 304, commit=False) is None
    second_id = source.open_cookie(second)
    assert second_id is not None
    assert migrate(source, session_engine, second_id, T0 + 304) is not None


# -- rows that are gone or cannot be read ------------------------------------------------------
def test_a_logged_out_session_is_not_claimed(old_app, key, session_engine):
    app = old_app(["UseridMixin"])
    cookie = new_session(app, T0, [["login", 5]])
    app.request(T0 + 1, cookie, [["invalidate"]])
    assert app.rows() == {}
    source = make_source(app, key)
    old_id = source.open_cookie(cookie)
    assert old_id is not None  # still authentic
    assert migrate(source, session_engine, old_id, T0 + 2) is None


def test_data_that_is_not_plain_values_is_unrepresentable_and_stays(old_app, key, session_engine):
    app = old_app([])
    cookie = new_session(app, T0, [["object"]])
    source = make_source(app, key)
    old_id = source.open_cookie(cookie)
    assert old_id is not None
    with request_tx(session_engine) as dbsession, pytest.raises(Unrepresentable, match="Thing"):
        source.read(dbsession, old_id, T0)
    assert len(app.rows()) == 1  # committed, and still there


def test_a_rolled_back_claim_leaves_the_row(old_app, key, session_engine):
    app = old_app([])
    cookie = new_session(app)
    source = make_source(app, key)
    old_id = source.open_cookie(cookie)
    assert old_id is not None
    assert migrate(source, session_engine, old_id, T0, commit=False) is not None
    assert len(app.rows()) == 1
    assert migrate(source, session_engine, old_id, T0) is not None
    assert app.rows() == {}


def test_a_claim_without_a_commit_decision_is_rolled_back_by_zope(old_app, key, session_engine):
    """The DELETE is marked as a change: without that, zope.sqlalchemy rolls it back."""
    app = old_app([])
    old_id = make_source(app, key).open_cookie(new_session(app))
    assert old_id is not None
    tm = transaction.TransactionManager(explicit=True)
    dbsession = sa.orm.Session(session_engine)
    zope.sqlalchemy.register(dbsession, transaction_manager=tm)
    with tm:
        assert take(make_source(app, key), dbsession, old_id, T0) is not None
    dbsession.close()
    assert app.rows() == {}


def test_a_missing_table_is_logged_and_claims_nothing(key, session_engine, caplog):
    source = PredecessorSource(SourceOptions(secrets=(key.encode(),), table="no_such_table"))
    caplog.set_level(logging.ERROR, "sessions_migrate")
    assert migrate(source, session_engine, uuid.uuid4().hex, T0) is None
    assert "no table 'no_such_table'" in caplog.text and "session.migrate_table" in caplog.text
    with request_tx(session_engine) as dbsession, pytest.raises(ValueError, match="no table"):
        source.count(dbsession, T0)


def test_ids_that_this_source_did_not_give_claim_nothing(old_app, key, session_engine):
    app = old_app([])
    old_id = make_source(app, key).open_cookie(new_session(app))
    assert old_id is not None
    source = make_source(app, key)
    assert "." not in old_id  # no renewal: the id alone
    wrong_ids = ["", "x", old_id[:-1] + "g", old_id + "00", "{" + old_id[1:], old_id[:31]]
    wrong_ids += [old_id + ".", old_id + "." + old_id[:31], old_id + "." + old_id + "0"]
    for wrong in wrong_ids:
        assert migrate(source, session_engine, wrong, T0) is None
    assert len(app.rows()) == 1


# -- two first visits at once ----------------------------------------------------------------
def _waiting_delete(engine: sa.Engine, table: str) -> bool:
    """Whether a DELETE from ``table`` waits on the server (for the first one's row lock).

    PostgreSQL says that it waits for a lock; MariaDB lists the statement as running
    (a DELETE by primary key that takes longer than a poll is one that waits).
    """
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            query = (
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE :pattern"
            )
        else:
            query = (
                "SELECT count(*) FROM information_schema.processlist "
                "WHERE command = 'Query' AND info LIKE :pattern"
            )
        found = connection.execute(sa.text(query), {"pattern": f"DELETE FROM {table} %"})
        return bool(found.scalar())


@pytest.mark.parametrize("first_commits", [True, False], ids=["first commits", "first aborts"])
def test_two_first_visits_with_one_cookie(old_app, key, session_engine, first_commits):
    """Exactly one takes it. The second request reads the row (the first's DELETE is not
    committed), then its DELETE waits: for the first transaction's row lock on PostgreSQL
    and MariaDB, for the database's write lock in SQLite's busy handler. When the first
    commits, the second's DELETE counts no row: ClaimedElsewhere (the plugin makes it a
    retryable conflict). When the first rolls back, the second takes it.
    """
    app = old_app(["UseridMixin"])
    old_id = make_source(app, key).open_cookie(new_session(app, T0, [["login", 9]]))
    assert old_id is not None
    source = make_source(app, key)
    outcome: dict[str, Any] = {}
    deleting = threading.Event()

    def second_visit() -> None:
        try:
            outcome["old"] = migrate(source, session_engine, old_id, T0)
        except ClaimedElsewhere as exc:
            outcome["elsewhere"] = exc

    thread = threading.Thread(target=second_visit)

    @sa.event.listens_for(session_engine, "before_cursor_execute")
    def _seen(connection, cursor, statement, parameters, context, executemany):
        if statement.startswith("DELETE") and threading.current_thread() is thread:
            deleting.set()

    with request_tx(session_engine, commit=first_commits) as first:
        assert take(source, first, old_id, T0) is not None  # deleted, not yet committed
        thread.start()
        assert deleting.wait(30)  # the second read the row and is in its DELETE
        if session_engine.dialect.name != "sqlite":
            # ... and the server says it waits there, before the first ends
            for _ in range(600):
                if _waiting_delete(session_engine, app.table):
                    break
                time.sleep(0.05)
            assert thread.is_alive() and _waiting_delete(session_engine, app.table)
    thread.join()
    sa.event.remove(session_engine, "before_cursor_execute", _seen)
    if first_commits:
        assert list(outcome) == ["elsewhere"]
    else:
        assert list(outcome) == ["old"] and outcome["old"].userid == 9
    assert app.rows() == {}


def test_sqlite_a_second_writer_past_its_busy_timeout_fails(
    old_app, key, session_engine, session_db_url
):
    """SQLite only: while the first holds the write lock longer than the second's busy
    timeout (pysqlite's default: 5 s), the second request fails with "database is locked"
    (an error of that request, which takes nothing); the first still takes it.
    """
    if session_engine.dialect.name != "sqlite":
        pytest.skip("SQLite's database-wide write lock")
    app = old_app([])
    old_id = make_source(app, key).open_cookie(new_session(app))
    assert old_id is not None
    source = make_source(app, key)
    impatient = sa.create_engine(session_db_url, connect_args={"timeout": 0.1})
    try:
        with request_tx(session_engine) as first:
            assert take(source, first, old_id, T0) is not None
            with pytest.raises(sa.exc.OperationalError, match="database is locked"):
                migrate(source, impatient, old_id, T0)
    finally:
        impatient.dispose()
    assert app.rows() == {}


# -- psessions migrate's side ----------------------------------------------------------------
def test_count_and_live_ids_are_what_the_predecessor_serves(old_app, key, session_engine):
    app = old_app(["ConfigIdleMixin", "ConfigRenewalMixin"], idle_timeout=600, renewal_timeout=60)
    cookies = [new_session(app, T0 + offset) for offset in (0, 100, 200)]
    cookies.append(new_session(app, T0, [["settings", {"idle_timeout": None}], ["set", "a", 1]]))
    gone = new_session(app, T0)
    app.request(T0 + 1, gone, [["invalidate"]])
    now = T0 + 650
    source = make_source(app, key)
    served = {source.open_cookie(c) for c in cookies if app.accepts(c, now)}
    assert len(served) == 3  # T0 + 0 expired at T0 + 600
    with request_tx(session_engine) as dbsession:
        assert source.count(dbsession, now) == 3
        assert set(source.live_ids(dbsession, now)) == served
        assert set(source.live_ids(dbsession, now, batch=2)) == served  # across batches
    # psessions migrate takes them by those ids: the ids their cookies open to
    for old_id in served:
        assert old_id is not None
        old = migrate(source, session_engine, old_id, now)
        assert old is not None and old.id == session_key(old_id)
    with request_tx(session_engine) as dbsession:
        assert source.count(dbsession, now) == 0


# -- options ---------------------------------------------------------------------------------
def test_the_options(key):
    secret = key.encode()
    source = PredecessorSource(
        SourceOptions(
            secrets=(secret,),
            table="old",
            cookie_name="sid",
            options={"cookie_path": "/app", "cookie_domain": "example.com"},
        )
    )
    assert source.cookie_name() == "sid"
    assert source.cookie_attributes() == {"path": "/app", "domain": "example.com"}
    assert key not in repr(source)
    default = PredecessorSource(SourceOptions(secrets=(secret,), table="old"))
    assert default.cookie_name() == "session" == PredecessorSource.default_cookie_name
    assert default.cookie_attributes() == {"path": "/", "domain": None}
    assert PredecessorSource.name == "pyramid_sqlalchemy_sessions"
    assert isinstance(default, Source)


def test_the_entry_point_names_this_source():
    from importlib.metadata import entry_points

    (found,) = entry_points(group="sessions_migrate.sources", name="pyramid_sqlalchemy_sessions")
    assert found.load() is PredecessorSource


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"table": None}, "session.migrate_table"),
        ({"secrets": ()}, "session.migrate_secret_file"),
        ({"secrets": (b"not a key",)}, "URL-safe base64 of 16, 24 or 32 bytes"),
        ({"options": {"absolute_timeout": "60"}}, "absolute timeout is session.migrate_timeout"),
        ({"url": "redis://x"}, "remove session.migrate_url"),
        ({"options": {"colour": "red"}}, "session.migrate_options: colour means nothing"),
        ({"options": {"idle_timeout": "soon"}}, "not a number of seconds or none"),
        ({"options": {"renewal_timeout": "0"}}, "not above 0"),
    ],
)
def test_wrong_options_are_refused_with_the_fix(key, options, message):
    given: dict[str, Any] = {"secrets": (key.encode(),), "table": "old", **options}
    with pytest.raises(ValueError, match=message) as raised:
        PredecessorSource(SourceOptions(**given))
    assert key not in str(raised.value)


def test_a_wrong_secret_is_never_shown(key):
    wrong = key[:20] + "@@"
    with pytest.raises(ValueError) as raised:
        PredecessorSource(SourceOptions(secrets=(key.encode(), wrong.encode()), table="t"))
    assert "number 2" in str(raised.value)
    assert wrong not in str(raised.value) and key[:20] not in str(raised.value)


# -- the harness itself -----------------------------------------------------------------------
def test_an_environment_pip_cannot_build_gives_pips_reason(tmp_path, monkeypatch):
    """What the tests skip with (fail with, in CI) when PyPI cannot be reached."""
    import predecessor_harness

    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    python = find_python("3.11")
    assert python is not None
    reason = predecessor_harness._build(
        python, "3.11", ["pyramid_sqlalchemy_sessions==0.1.0"], tmp_path / "env"
    )
    assert reason is not None and "pip could not install it" in reason
    assert "pyramid_sqlalchemy_sessions" in reason.lower() or "pyramid-sqlalchemy" in reason
    assert not (tmp_path / "env").exists() and list(tmp_path.iterdir()) == []


# -- through the plugin, in a Pyramid 2 application --------------------------------------------
def _whoami(request: Any) -> dict[str, Any]:
    session = request.session
    return {
        "userid": request.authenticated_userid,
        "data": dict(session),
        "flash": session.peek_flash(),
        "created": session.created,
        "idle_timeout": session.settings["idle_timeout"],
    }


def _checkout(request: Any) -> dict[str, Any]:
    check_csrf_token(request)
    return {"ok": True}


def _switched_app(
    old: OldApp, key: str, engine: sa.Engine, clock: Clock, tmp_path: Any
) -> SessionTestApp:
    """The application after the switch: the kernel with sessions-migrate reading the
    predecessor's table, sessions-userid's security policy, sessions-csrf's token column."""
    secret = tmp_path / "old-key"
    secret.write_text(key + "\n")
    until = datetime.datetime.fromtimestamp(clock() + 30 * 86400, datetime.timezone.utc)
    model = make_model(MigrateMixin, UseridMixin, CSRFMixin, ConfigIdleMixin)

    def configure(config: Any) -> None:
        config.set_security_policy(UserSessionSecurityPolicy())
        config.set_csrf_storage_policy(ColumnCSRFStoragePolicy())
        config.add_route("whoami", "/whoami")
        config.add_view(_whoami, route_name="whoami", renderer="json")
        config.add_route("checkout", "/checkout")
        config.add_view(_checkout, route_name="checkout", renderer="json", request_method="POST")

    return make_app(
        model,
        engine,
        settings={
            "cookie_name": "sid",
            "idle_timeout": "1800",
            "migrate_from": "pyramid_sqlalchemy_sessions",
            "migrate_until": until.date().isoformat(),
            "migrate_secret_file": str(secret),
            "migrate_table": old.table,
        },
        clock=clock,
        configure=configure,
    )


OLD_VISIT = [
    ["set", "cart", [1, 2]],
    ["login", 7],
    ["csrf"],
    ["flash", "saved"],
    ["settings", {"idle_timeout": 900}],
]


@pytest.fixture
def switched(old_app, key, session_engine, session_clock, tmp_path):
    """(the predecessor's app, its browser's cookie and CSRF token, the switched app)."""
    old = old_app(["UseridMixin", "CSRFMixin", "ConfigIdleMixin"], idle_timeout=1800)
    answer = old.request(int(session_clock()) - 60, None, OLD_VISIT)
    new = _switched_app(old, key, session_engine, session_clock, tmp_path)
    yield old, answer["cookie"], answer["seen"]["csrf"], new
    new.model.metadata.drop_all(session_engine)


def test_after_the_switch_the_same_browser_is_logged_in_with_its_data(switched):
    """A browser of the predecessor's continues on a kernel application: its user, data,
    flash, creation time and per-session idle timeout; the old row and cookie are gone; a
    copy of the old cookie (another tab) finds the same new session."""
    old, cookie, _, new = switched
    created = new.clock() - 60
    new.set_cookie("session", cookie)
    page = new.get("/whoami").json
    assert page["userid"] == 7 and page["data"] == {"cart": [1, 2]}
    assert page["flash"] == ["saved"] and page["idle_timeout"] == 900
    assert old.rows() == {}
    assert "sid" in new.cookies and "session" not in new.cookies  # the old one deleted
    again = new.get("/whoami").json  # the new cookie alone
    assert again["userid"] == 7 and again["created"] == created

    copy = new.new_browser()
    copy.set_cookie("session", cookie)
    assert copy.get("/whoami").json["userid"] == 7


def test_after_the_switch_the_old_pages_csrf_token_is_good(switched):
    _, cookie, token, new = switched
    assert len(token) == 28 and token.endswith("=")  # urlsafe_b64encode(os.urandom(20))
    new.set_cookie("session", cookie)
    assert new.get("/whoami").json["userid"] == 7
    new.post("/checkout", {"csrf_token": token})
    other = ("B" if token[0] == "A" else "A") + token[1:]  # another token of the same form
    new.post("/checkout", {"csrf_token": other}, status=400)


def test_after_the_switch_forged_late_and_unrepresentable_sessions_move_nothing(switched):
    old, cookie, _, new = switched
    forged = new.new_browser()
    forged.set_cookie("session", encrypt(base64.urlsafe_b64encode(os.urandom(32)).decode(), b""))
    assert forged.get("/whoami").json["userid"] is None
    special = old.request(int(new.clock()), None, [["special"], ["login", 8]])["cookie"]
    unrepresentable = new.new_browser()  # a datetime, a set, bytes: not JSON
    unrepresentable.set_cookie("session", special)
    assert unrepresentable.get("/whoami").json["userid"] is None
    assert len(old.rows()) == 2  # both left where they are

    new.clock.advance(31 * 86400)  # past session.migrate_until
    late = new.new_browser()
    late.set_cookie("session", cookie)
    assert late.get("/whoami").json["userid"] is None
    assert "session" not in late.cookies  # deleted, unread
    assert len(old.rows()) == 2
