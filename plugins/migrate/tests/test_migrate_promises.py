"""Each promise of sessions-migrate's core, tried against real pyramid_beaker sessions.

The old sessions are made by a real pyramid_beaker application on Beaker's
``ext:database`` store (the ``beaker`` fixture of ``test_source_beaker``: a login
through Pyramid's ``SessionAuthenticationHelper``, a cart, flash messages), in the
database under test (SQLite, PostgreSQL, MariaDB). The application then switches to
the kernel with :class:`~sessions_migrate.MigrateMixin` and sessions-userid, and the
browser's next request carries only Beaker's cookie. Each test says in a comment
which change to the plugin would make it fail.

1. configuration errors at start-up name the setting and the fix;
2. the old secret (and a password in ``migrate_url``) is never shown;
3. an old session the new store cannot hold fails alone, logged, and stays in Beaker;
4. the old cookie goes only after a commit;
5. two old cookies that name different sessions migrate neither;
6. after a logout, a copy of the old cookie opens nothing;
7. no log line shows an old id;
8. past ``migrate_until``, an old cookie costs no SQL and is deleted.
"""

from __future__ import annotations

import datetime
import fractions
import hashlib
import io
import logging
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from sessions_migrate import MAX_WINDOW, MigrateMixin, migration_of
from sessions_userid import UseridMixin
from test_source_beaker import CART, TIMEOUT, Beaker, sign
from test_source_beaker import beaker as beaker  # the fixture, shared
from transaction.interfaces import TransientError

import sessions_kernel
from sessions_kernel import cli, session_factory
from sessions_kernel.plugins import LOAD_PLUGINS_ENV
from sessions_kernel.testing import TEST_SECRET_KEY, Clock, SessionTestApp, make_app, make_model

SECRET_ENV = "TEST_MIGRATE_PROMISES_SECRET"
COOKIE = "beaker.session.id"
DAY = 24 * 3600
#: Pyramid's documentation signs its cookie sessions with this example secret; a Beaker
#: secret may well be a word like it, which nothing tells from a file's name
WORDY_SECRET = "itsaseekreet"
#: the user id column of most tests: what remember() was given in Beaker (a name)
TEXT_USERID = sa.String(64)
#: what /who shows of a session nothing was carried into: a new, empty one
NOTHING_CARRIED = {
    "userid": None,
    "new": True,
    "keys": [],
    "cart": None,
    "flash": [],
    "warnings": [],
}


def short(old_id: str) -> str:
    """What the plugin's logs may show of an old id (computed here, not imported)."""
    return hashlib.sha256(old_id.encode()).hexdigest()[:12]


def until(now: float, days: float = 30) -> str:
    """``session.migrate_until`` as an ini file gives it: a moment ``days`` after ``now``."""
    moment = datetime.datetime.fromtimestamp(now + days * DAY, datetime.timezone.utc)
    return moment.isoformat()


# -- the application after the switch ----------------------------------------------------------


def views(config: Configurator) -> None:
    def who(request: Any) -> dict[str, Any]:
        session = request.session
        return {
            "userid": session.userid,
            "new": session.new,
            "keys": sorted(session),
            "cart": session.get("cart"),
            "flash": session.peek_flash(),
            "warnings": session.peek_flash("warnings"),
        }

    def when(request: Any) -> dict[str, Any]:
        return {"when": repr(request.session.get("when"))}

    def settings(request: Any) -> dict[str, Any]:
        shown = request.session.settings
        return {"repr": repr(shown), "names": sorted(shown), "items": repr(dict(shown.items()))}

    def doom(request: Any) -> dict[str, Any]:
        """Reads the session (the migration runs), then dooms the transaction: a 200 that
        pyramid_tm aborts."""
        page = who(request)
        request.tm.doom()
        return page

    def flaky(request: Any) -> dict[str, Any]:
        """Reads the session, then fails its first attempt with an error pyramid_retry
        retries (a deadlock's, say); the second attempt answers."""
        page = who(request)
        failed = request.registry.__dict__.setdefault("test_migrate_promises.failed", [])
        if not failed:
            failed.append(True)
            raise TransientError("the first attempt fails after the migration")
        return page

    for name, view in (
        ("who", who),
        ("when", when),
        ("shown_settings", settings),
        ("doom", doom),
        ("flaky", flaky),
    ):
        config.add_route(name, f"/{name}")
        config.add_view(view, route_name=name, renderer="json")


def switched(
    beaker: Beaker,
    tmp_path: Path,
    now: float,
    *,
    userid: Any = TEXT_USERID,
    secret: str | None = None,
    **settings: Any,
) -> SessionTestApp:
    """The application after the switch, at the time ``now``: the kernel, sessions-migrate
    reading Beaker's table, sessions-userid (its column of the type ``userid``; ``None``: the
    mixin's own Integer). ``settings`` override the session settings."""
    secret_file = tmp_path / f"beaker_secret_{secrets.token_hex(3)}"
    secret_file.write_text((secret or beaker.secret) + "\n")
    attributes = {}
    if userid is not None:
        attributes["userid"] = sa.orm.mapped_column(userid, nullable=True, index=True)
    model = make_model(
        MigrateMixin, UseridMixin, tablename=f"session_{secrets.token_hex(4)}", **attributes
    )
    beaker.drops.append(model)
    values = {
        "migrate_from": "beaker",
        "migrate_until": until(now),
        "migrate_secret_file": str(secret_file),
        "migrate_table": beaker.table,
        "migrate_timeout": str(TIMEOUT),
        **settings,
    }
    return make_app(model, beaker.engine, settings=values, clock=Clock(now), configure=views)


def with_cookie(app: SessionTestApp, cookie: str) -> Any:
    """A browser of the new application holding only Beaker's cookie."""
    browser = app.new_browser()
    browser.set_cookie(COOKIE, cookie)
    return browser


def set_cookies(response: Any) -> list[str]:
    return list(response.headers.getall("Set-Cookie"))


def deletes_old_cookie(response: Any) -> bool:
    return any(c.startswith(f"{COOKIE}=;") and "Max-Age=0" in c for c in set_cookies(response))


def old_session(beaker: Beaker, cookie: str) -> Any:
    """What Beaker itself serves for ``cookie``: its whoami page."""
    browser = beaker.app()
    browser.set_cookie(COOKIE, cookie)
    return browser.get("/whoami").json


def records(caplog: pytest.LogCaptureFixture, name: str = "sessions_migrate") -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith(name)]


# -- 1. configuration ------------------------------------------------------------------------


@pytest.fixture
def secret_file(tmp_path: Path) -> tuple[str, str]:
    """(the path, the secret): a Beaker secret in a file of its own."""
    value = secrets.token_hex(16)
    path = tmp_path / "beaker_secret"
    path.write_text(value + "\n")
    return str(path), value


def factory(model: Any = None, **settings: Any) -> Any:
    return session_factory(
        model_class=model or make_model(MigrateMixin),
        secret_key=TEST_SECRET_KEY,
        **{k: v for k, v in settings.items() if v is not None},
    )


CLOCK = 1_750_000_000.0


def good(path: str) -> dict[str, Any]:
    return {
        "migrate_from": "beaker",
        "migrate_until": until(CLOCK),
        "migrate_secret_file": path,
        "clock": Clock(CLOCK),
    }


#: (what is wrong, the settings changed, what the message must say: the setting, the fix)
CONFIG_ERRORS = [
    (
        "no source",
        {"migrate_from": None},
        ["session.migrate_from is not set", "beaker", "remove MigrateMixin"],
    ),
    (
        "no cut-off",
        {"migrate_until": None},
        ["session.migrate_until is not set", "at most a year ahead"],
    ),
    (
        "a cut-off over a year ahead",
        {"migrate_until": until(CLOCK, MAX_WINDOW / DAY + 1 / DAY)},
        ["session.migrate_until is more than a year ahead", "lifetime"],
    ),
    (
        "no secret",
        {"migrate_secret_file": None},
        ["session.migrate_secret_file", "session.migrate_secret_env", "exactly one"],
    ),
    (
        "both secrets",
        {"migrate_secret_env": SECRET_ENV},
        ["session.migrate_secret_file", "session.migrate_secret_env", "exactly one"],
    ),
    (
        "the old cookie's name is ours",
        {"migrate_cookie_name": "session"},
        ["both named 'session'", "set session.cookie_name to a new name"],
    ),
    (
        "our cookie has Beaker's name",
        {"cookie_name": COOKIE},
        [f"both named '{COOKIE}'", "set session.cookie_name to a new name"],
    ),
    (
        "an unknown source",
        {"migrate_from": "bogus"},
        ["session.migrate_from = 'bogus'", "no source named 'bogus'", "beaker"],
    ),
    (
        "an adapter that does not import",
        {"migrate_from": "no_such_module_here:Source"},
        ["session.migrate_from = 'no_such_module_here:Source'", "cannot import"],
    ),
    (
        "an option the source does not know",
        {"migrate_options": "userid=auth.userid"},
        ["session.migrate_options", "userid", "userid_key"],
    ),
    (
        "a table name the source refuses",
        {"migrate_table": "beaker cache"},
        ["session.migrate_table", "'beaker cache'"],
    ),
    (
        "a timeout of no seconds",
        {"migrate_timeout": "0"},
        ["session.migrate_timeout = '0'", "whole number"],
    ),
    (
        "options that are not pairs",
        {"migrate_options": "userid_key"},
        ["session.migrate_options = 'userid_key'", "key=value"],
    ),
    (
        "a secret file that is not there",
        {"migrate_secret_file": "/nonexistent/beaker_secret"},
        ["session.migrate_secret_file = <hidden>", "no file at the path given"],
    ),
    (
        "a secret variable that is not set",
        {"migrate_secret_file": None, "migrate_secret_env": "TEST_MIGRATE_PROMISES_UNSET"},
        ["session.migrate_secret_env = <hidden>", "TEST_MIGRATE_PROMISES_UNSET is not set"],
    ),
]


@pytest.mark.parametrize(
    ("settings", "says"), [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS]
)
def test_a_bad_configuration_stops_the_start_naming_the_setting_and_the_fix(
    secret_file: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    settings: dict[str, Any],
    says: list[str],
) -> None:
    # breaks if session_check_settings lets any of these start, or words its message
    # without the setting at fault (the source's options: they name session.migrate_from)
    path, secret = secret_file
    monkeypatch.setenv(SECRET_ENV, secret)
    monkeypatch.delenv("TEST_MIGRATE_PROMISES_UNSET", raising=False)
    factory(**good(path))  # the good settings start
    with pytest.raises(ConfigurationError) as info:
        factory(**{**good(path), **settings})
    message = str(info.value)
    for part in says:
        assert part in message, message
    assert secret not in message  # promise 2


def test_the_cut_off_may_be_a_year_ahead_to_the_second(secret_file: tuple[str, str]) -> None:
    # breaks if the window is shorter than MAX_WINDOW, or the check compares with another clock
    path, _ = secret_file
    factory(**{**good(path), "migrate_until": until(CLOCK, MAX_WINDOW / DAY)})
    with pytest.raises(ConfigurationError, match="more than a year ahead"):
        factory(**{**good(path), "migrate_until": until(CLOCK, (MAX_WINDOW + 1) / DAY)})


def test_config_include_stops_the_same_way(secret_file: tuple[str, str]) -> None:
    """The ini file's way: strings under ``session.``, through config.include."""
    path, secret = secret_file
    settings = {
        "session.model_class": make_model(MigrateMixin),
        "session.secret_key": TEST_SECRET_KEY,
        "session.migrate_from": "beaker",
        "session.migrate_secret_file": path,
        "session.migrate_options": "cookie_path=/ userid=x",
    }
    with pytest.raises(ConfigurationError) as info, Configurator(settings=settings) as config:
        config.include("sessions_kernel")
        config.commit()
    message = str(info.value)
    assert "session.migrate_until is not set" in message
    assert "session.migrate_options" in message and "userid_key" in message
    assert secret not in message


def test_a_source_whose_module_fails_to_import_is_a_configuration_error(
    secret_file: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registered source whose distribution is broken (its module, or a dependency of it,
    is missing): a start-up error naming the setting, not an ImportError from deep inside."""
    # breaks if _source calls the entry point's load() without turning its failure into a
    # ValueError (the kernel then lets the ImportError through)
    import importlib.metadata

    import sessions_migrate

    broken = importlib.metadata.EntryPoint(
        name="broken_store",
        value="sessions_migrate_no_such_module:Source",
        group=sessions_migrate.ENTRY_POINT_GROUP,
    )
    real = sessions_migrate.entry_points

    def with_broken(**kwargs: Any) -> Any:
        return [*real(**kwargs), broken]

    monkeypatch.setattr(sessions_migrate, "entry_points", with_broken)
    path, _ = secret_file
    with pytest.raises(ConfigurationError) as info:
        factory(**{**good(path), "migrate_from": "broken_store"})
    message = str(info.value)
    assert "session.migrate_from = 'broken_store'" in message
    assert "sessions_migrate_no_such_module" in message


MIGRATE_SETTINGS = {
    "migrate_from": "beaker",
    "migrate_until": "2027-06-30",
    "migrate_secret_env": SECRET_ENV,
    "migrate_cookie_name": COOKIE,
    "migrate_table": "beaker_cache",
    "migrate_url": "redis://localhost:6379/0",
    "migrate_timeout": "3600",
    "migrate_options": "userid_key=auth.userid",
}


@pytest.mark.parametrize(("name", "value"), sorted(MIGRATE_SETTINGS.items()))
def test_a_migrate_setting_without_the_mixin_is_the_kernels_error(
    secret_file: tuple[str, str], monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    # breaks if the plugin were active without MigrateMixin, or its settings were not its own
    _, secret = secret_file
    monkeypatch.setenv(SECRET_ENV, secret)
    with pytest.raises(ConfigurationError) as info:
        factory(make_model(), **{name: value})
    message = str(info.value)
    assert f"session.{name} = " in message
    assert "does not include MigrateMixin" in message and f"remove session.{name}" in message
    assert secret not in message


# -- 2. the old secret is never shown ------------------------------------------------------------


@pytest.mark.parametrize(
    "given", [WORDY_SECRET, secrets.token_hex(16), secrets.token_urlsafe(24), "correct horse"]
)
def test_a_secret_given_where_its_file_or_variable_belongs_is_refused_unseen(
    given: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone copies Beaker's ``session.secret = ...`` line and renames the setting."""
    # breaks if the path or the variable's name is echoed whatever it looks like: the kernel
    # shows a reference setting's value unless it looks like a generated key, and a Beaker
    # secret is often a word
    monkeypatch.chdir(tmp_path)  # a relative name that is no file here
    for name in ("migrate_secret_file", "migrate_secret_env"):
        settings = {**good(str(tmp_path / "unused")), "migrate_secret_file": None, name: given}
        with pytest.raises(ConfigurationError) as info:
            factory(**settings)
        message = str(info.value)
        assert f"session.{name}" in message
        assert given not in message, message


@pytest.mark.parametrize("where", ["file", "env"])
def test_the_old_secret_is_not_in_any_repr_listing_or_runtime_setting(
    beaker: Beaker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # breaks if the parsed secrets are kept as plain bytes in factory.config.values (a
    # dataclass repr shows them), or a migrate_* setting became a runtime setting
    _, cookie, _ = beaker.log_in("alice")
    now = beaker.accessed(cookie[40:]) + 5
    settings: dict[str, Any] = {}
    if where == "env":
        monkeypatch.setenv(SECRET_ENV, beaker.secret)
        settings = {"migrate_secret_file": None, "migrate_secret_env": SECRET_ENV}
    app = switched(beaker, tmp_path, now, **settings)
    browser = with_cookie(app, cookie)
    assert browser.get("/who").json["userid"] == "alice"  # the secret is in use
    shown = browser.get("/shown_settings").json
    assert not any(n.startswith("migrate_") for n in shown["names"])
    config = app.factory.config
    migration = migration_of(app.factory)
    for text in (
        repr(app.factory),
        repr(config),
        repr(config.values),
        str(config.values),
        repr(config.shown_values()),
        repr(migration.source),
        repr(vars(migration)),
        shown["repr"],
        shown["items"],
    ):
        assert beaker.secret not in text
        assert repr(beaker.secret.encode()) not in text


def test_a_password_in_migrate_url_is_hidden(
    secret_file: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # breaks if migrate_url loses secret=True, or its parsed value shows in a repr
    path, _ = secret_file
    password = "Pw-" + secrets.token_hex(8)
    url = f"redis://:{password}@127.0.0.1:6379/15"
    settings = {
        **good(path),
        "migrate_from": "pyramid_session_redis",
        "migrate_url": url,
        "cookie_name": "sid",
    }
    made = factory(**settings)  # builds a client; connects to nothing yet
    config = made.config
    for text in (repr(config), repr(config.values), repr(config.shown_values())):
        assert password not in text
    assert migration_of(made).source is not None
    assert password not in repr(migration_of(made).source)
    with pytest.raises(ConfigurationError) as info:
        factory(**{**settings, "migrate_options": "nope=1"})
    assert password not in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        factory(make_model(), migrate_url=url)
    assert password not in str(info.value) and "<hidden>" in str(info.value)


APP = """
import sqlalchemy as sa
import zope.sqlalchemy
from pyramid.config import Configurator
from sqlalchemy.orm import DeclarativeBase, sessionmaker

from sessions_kernel import BaseMixin
from sessions_migrate import MigrateMixin


class Base(DeclarativeBase):
    pass


class Session(MigrateMixin, BaseMixin, Base):
    __tablename__ = "session"
    __table_args__ = (sa.Index("ix_session_created", "created"),)


def main(global_config, **settings):
    engine = sa.engine_from_config(settings, "sqlalchemy.")
    maker = sessionmaker(bind=engine)
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_retry")

        def dbsession(request):
            db = maker(info={"request": request})
            zope.sqlalchemy.register(db, transaction_manager=request.tm)
            return db

        config.add_request_method(dbsession, reify=True)
        config.include("sessions_kernel")
        return config.make_wsgi_app()
"""


@pytest.mark.parametrize("where", ["file", "env"])
def test_psessions_shows_no_old_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, where: str
) -> None:
    # breaks if the kernel's listing or check printed a migrate_* setting's parsed value
    secret = secrets.token_hex(16)
    module = f"migrateapp_{secrets.token_hex(4)}"
    (tmp_path / f"{module}.py").write_text(APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "migrate")
    monkeypatch.setattr("pyramid.paster.setup_logging", lambda *args, **kwargs: None)
    key = tmp_path / "session.key"
    key.write_text(sessions_kernel.generate_secret_key() + "\n")
    key.chmod(0o600)
    old = tmp_path / "beaker_secret"
    old.write_text(secret + "\n")
    old.chmod(0o600)
    if where == "env":
        monkeypatch.setenv(SECRET_ENV, secret)
        place = f"session.migrate_secret_env = {SECRET_ENV}\n"
    else:
        place = f"session.migrate_secret_file = {old}\n"
    ini = tmp_path / "production.ini"

    def run(*args: str, until: str = until(datetime.datetime.now().timestamp())) -> str:
        ini.write_text(
            "[app:main]\n"
            f"use = call:{module}:main\n"
            f"sqlalchemy.url = sqlite:///{tmp_path}/app.sqlite\n"
            "retry.attempts = 3\n"
            f"session.model_class = {module}.Session\n"
            f"session.secret_key_file = {key}\n"
            "session.migrate_from = beaker\n"
            f"session.migrate_until = {until}\n"
            "session.migrate_table = beaker_cache\n" + place
        )
        out = io.StringIO()
        cli.main([str(ini), *args], out=out)
        return out.getvalue() + capsys.readouterr().err

    try:
        for args in (("check",), ("check", "--json"), ("plugins",), ("plugins", "--json")):
            printed = run(*args)
            assert ("migrate" if args[0] == "plugins" else "production.ini") in printed, printed
            assert secret not in printed, printed
        failed = run("check", until="2999-01-01")
        assert "does not start" in failed and "session.migrate_until" in failed, failed
        assert secret not in failed
    finally:
        sys.modules.pop(module, None)


# -- 3. an old session the new store cannot hold ------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("datetime", lambda: datetime.datetime(2025, 6, 1, 12, 30)),
        ("set", lambda: {"a", "b"}),
        ("bytes", lambda: b"\x00\xff"),
        ("fraction", lambda: fractions.Fraction(1, 3)),  # refused by the source's unpickler
    ],
)
def test_a_value_json_cannot_hold_fails_that_session_alone(
    beaker: Beaker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    value: Callable[[], Any],
) -> None:
    # breaks if check_representable is skipped (the kernel's commit then fails with a 500 on
    # every visit), or if the source's take runs before it (Beaker's row deleted, its data
    # lost); the old cookie goes after the commit, Beaker's row stays
    caplog.set_level(logging.INFO, logger="sessions_migrate")
    beaker.values[kind] = value
    browser, cookie, _ = beaker.log_in("alice")
    browser.post("/store", {"kind": kind})
    _, fine, _ = beaker.log_in("bob")  # another user's plain session, on the same app
    old_id = cookie[40:]
    app = switched(beaker, tmp_path, beaker.accessed(old_id) + 5)

    visitor = with_cookie(app, cookie)
    response = visitor.get("/who", status=200)
    assert response.json == NOTHING_CARRIED
    assert deletes_old_cookie(response)  # so that it is not read again (B5)
    assert app.rows() == []
    (warning,) = [r for r in caplog.records if r.name == "sessions_migrate"]
    assert warning.levelno == logging.WARNING
    assert f"old beaker session {short(old_id)} not migrated" in warning.getMessage()
    assert kind in warning.getMessage() or "cannot write" in warning.getMessage()
    # left in place: the row, and Beaker still serves it
    assert beaker.rows(old_id) == 1
    assert old_session(beaker, cookie)["userid"] == "alice"
    # the failing request writes: a session of its own, which another copy does not open
    writer = with_cookie(app, cookie)
    writer.post_json("/set", {"mine": 1})
    assert writer.get("/who").json["keys"] == ["mine"]
    assert with_cookie(app, cookie).get("/who").json["keys"] == []
    assert beaker.rows(old_id) == 1
    # that session alone: the other one moves
    assert with_cookie(app, fine).get("/who").json["userid"] == "bob"
    assert beaker.rows(fine[40:]) == 0


def test_with_the_pickle_data_serializer_a_datetime_moves(beaker: Beaker, tmp_path: Path) -> None:
    # breaks if check_representable judged by JSON instead of the factory's data serializer
    when = datetime.datetime(2025, 6, 1, 12, 30)
    beaker.values["when"] = lambda: when
    browser, cookie, _ = beaker.log_in("alice")
    browser.post("/store", {"kind": "when"})
    old_id = cookie[40:]
    app = switched(beaker, tmp_path, beaker.accessed(old_id) + 5, data_serializer="pickle")
    visitor = with_cookie(app, cookie)
    assert visitor.get("/when").json == {"when": repr(when)}
    assert visitor.get("/who").json["userid"] == "alice"
    assert beaker.rows(old_id) == 0
    assert len(app.rows()) == 1


def test_an_old_session_over_max_data_size_fails_alone(
    beaker: Beaker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The limit is the kernel's own: what it stored for one session is the size; a limit of
    exactly that moves the next such session, a byte less does not (and answers 200)."""
    # breaks if check_representable counts less than the kernel stores (the flash left out:
    # the kernel's SessionTooLargeError then fails every visit), or counts more
    caplog.set_level(logging.INFO, logger="sessions_migrate")
    beaker.values["big"] = lambda: "x" * 4000
    cookies = []
    for _ in range(3):
        browser, cookie, _ = beaker.log_in("alice")
        browser.post("/store", {"kind": "big"})
        cookies.append(cookie)
    now = beaker.accessed(cookies[-1][40:]) + 5

    measure = switched(beaker, tmp_path, now)
    assert with_cookie(measure, cookies[0]).get("/who").json["cart"] == CART
    row = measure.row()
    size = len(row.data or b"") + len(row.flash or b"")
    assert size > 4000

    exact = switched(beaker, tmp_path, now, max_data_size=str(size))
    assert with_cookie(exact, cookies[1]).get("/who").json["cart"] == CART
    assert beaker.rows(cookies[1][40:]) == 0

    caplog.clear()
    under = switched(beaker, tmp_path, now, max_data_size=str(size - 1))
    response = with_cookie(under, cookies[2]).get("/who", status=200)
    assert response.json["cart"] is None and response.json["userid"] is None
    assert deletes_old_cookie(response)  # so that it is not read again (B5)
    assert under.rows() == []
    assert beaker.rows(cookies[2][40:]) == 1
    assert old_session(beaker, cookies[2])["userid"] == "alice"
    (message,) = records(caplog)
    assert f"{short(cookies[2][40:])} not migrated" in message
    assert f"session.max_data_size ({size - 1})" in message


def test_a_user_id_the_column_cannot_hold_fails_that_session_alone(
    beaker: Beaker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """sessions-userid's column is an Integer unless the model says otherwise; Beaker kept
    whatever remember() was given."""
    # breaks if carry's ValueError went up (a 500 on every visit), or if what carry had set
    # before the user id (the cart, the flash) stayed in the new session, or if the source's
    # take ran before session_migrated (Beaker's row deleted with nobody logged in)
    caplog.set_level(logging.INFO, logger="sessions_migrate")
    _, cookie, _ = beaker.log_in("alice")
    _, numeric, _ = beaker.log_in("42")
    old_id = cookie[40:]
    app = switched(beaker, tmp_path, beaker.accessed(numeric[40:]) + 5, userid=None)

    response = with_cookie(app, cookie).get("/who", status=200)
    assert response.json == NOTHING_CARRIED
    assert deletes_old_cookie(response)  # so that it is not read again (B5)
    assert app.rows() == []
    assert beaker.rows(old_id) == 1
    assert old_session(beaker, cookie)["userid"] == "alice"
    (message,) = records(caplog)
    assert f"old beaker session {short(old_id)} not migrated" in message
    assert "'alice'" in message and "userid" in message
    # the failing request writes: a session of its own, which another copy does not open
    writer = with_cookie(app, cookie)
    writer.post_json("/set", {"mine": 1})
    assert writer.get("/who").json["keys"] == ["mine"]
    assert with_cookie(app, cookie).get("/who").json["keys"] == []
    assert beaker.rows(old_id) == 1
    # "42" converts: that one moves, as an int
    assert with_cookie(app, numeric).get("/who").json["userid"] == 42
    assert beaker.rows(numeric[40:]) == 0


@pytest.mark.parametrize(
    ("userid", "column"),
    [("a" * 80, TEXT_USERID), ("99999999999", None)],
    ids=["longer than String(64)", "beyond Integer"],
)
def test_a_user_id_the_column_cannot_store_fails_that_session_alone(
    beaker: Beaker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    userid: str,
    column: Any,
) -> None:
    """A user id of the column's Python type that the database refuses: longer than a
    String(64), beyond an Integer's 32 bits. SQLite stores both as they are."""
    # breaks where the user id reaches the INSERT unchecked: the commit fails with the
    # database's DataError, on every visit with that cookie
    caplog.set_level(logging.INFO, logger="sessions_migrate")
    _, cookie, _ = beaker.log_in(userid)
    old_id = cookie[40:]
    app = switched(beaker, tmp_path, beaker.accessed(old_id) + 5, userid=column)
    response = with_cookie(app, cookie).get("/who", status=200)
    # not moved, on every database (SQLite would store it; the others refuse it): said so,
    # and left in place
    assert response.json["userid"] is None and app.rows() == []
    assert beaker.rows(old_id) == 1
    assert any(f"{short(old_id)} not migrated" in m for m in records(caplog))


# -- 4. the old cookie goes only after a commit -------------------------------------------------


@pytest.mark.parametrize(("path", "status"), [("/fail", 500), ("/redirect", 302), ("/doom", 200)])
def test_a_request_that_fails_after_the_migration_keeps_the_old_session(
    beaker: Beaker, tmp_path: Path, path: str, status: int
) -> None:
    """/fail raises after the migration (an exception view renders the 500), /redirect raises
    a redirect, /doom dooms the transaction and answers 200: pyramid_tm aborts all three."""
    # breaks if the old cookie's deletion were sent without waiting for the commit
    # (committed_only=False), or the source's DELETE were committed outside the transaction
    _, cookie, _ = beaker.log_in("alice")
    old_id = cookie[40:]
    app = switched(beaker, tmp_path, beaker.accessed(old_id) + 5)
    browser = with_cookie(app, cookie)

    failed = browser.post_json(path, {"more": 1}, status=status)
    assert set_cookies(failed) == []  # no deletion of Beaker's cookie, no cookie of ours
    assert beaker.rows(old_id) == 1
    assert app.rows() == []
    assert browser.cookies.get(COOKIE, "").strip('"') == cookie  # still there

    moved = browser.get("/who")
    assert moved.json["userid"] == "alice" and moved.json["cart"] == CART
    assert deletes_old_cookie(moved)
    assert any(c.startswith("session=") for c in set_cookies(moved))
    assert beaker.rows(old_id) == 0
    assert len(app.rows()) == 1


def test_a_retried_request_migrates_in_its_attempt_that_commits(
    beaker: Beaker, tmp_path: Path
) -> None:
    """pyramid_retry runs the request again after its first attempt migrated and failed."""
    # breaks if the first attempt's DELETE of Beaker's row outlived its abort (a DELETE
    # outside the request's transaction): the second attempt would find the old session
    # gone and log alice out; or if the attempts' cookies added up
    _, cookie, _ = beaker.log_in("alice")
    old_id = cookie[40:]
    app = switched(beaker, tmp_path, beaker.accessed(old_id) + 5)
    response = with_cookie(app, cookie).get("/flaky")
    assert response.json["userid"] == "alice" and response.json["cart"] == CART
    cookies = set_cookies(response)
    assert len(cookies) == 2 and deletes_old_cookie(response), cookies
    assert [c for c in cookies if c.startswith("session=")], cookies
    assert beaker.rows(old_id) == 0
    (row,) = app.rows()
    assert row.userid == "alice"


# -- 5. two old cookies ---------------------------------------------------------------------------


@pytest.mark.parametrize("planted_first", [True, False])
def test_two_old_cookies_of_different_sessions_move_neither(
    beaker: Beaker, tmp_path: Path, caplog: pytest.LogCaptureFixture, planted_first: bool
) -> None:
    """Mallory logs in to the old application herself and plants her cookie on alice's
    browser from a sibling domain: the browser sends both."""
    # breaks if Migration.open took the first (or the last) cookie that verifies: alice
    # would be logged in as mallory (or the other way round)
    caplog.set_level(logging.INFO, logger="sessions_migrate")
    _, alice, _ = beaker.log_in("alice")
    _, mallory, _ = beaker.log_in("mallory")
    app = switched(beaker, tmp_path, beaker.accessed(mallory[40:]) + 5)
    pair = (mallory, alice) if planted_first else (alice, mallory)
    header = "; ".join(f"{COOKIE}={c}" for c in pair)

    response = app.new_browser().get("/who", headers={"Cookie": header})
    assert response.json["userid"] is None and response.json["cart"] is None
    assert not deletes_old_cookie(response)
    assert not any(c.startswith(f"{COOKIE}=") for c in set_cookies(response))
    assert app.rows() == []
    assert beaker.rows(alice[40:]) == 1 and beaker.rows(mallory[40:]) == 1
    assert any("two old beaker cookies" in m for m in records(caplog))


def test_two_copies_of_one_old_cookie_move_it_once(
    beaker: Beaker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # breaks if two values that open to the same session counted as a conflict
    caplog.set_level(logging.INFO, logger="sessions_migrate")
    _, alice, _ = beaker.log_in("alice")
    old_id = alice[40:]
    app = switched(beaker, tmp_path, beaker.accessed(old_id) + 5)
    header = f'{COOKIE}={alice}; {COOKIE}="{alice}"'  # Beaker accepts it quoted too

    response = app.new_browser().get("/who", headers={"Cookie": header})
    assert response.json["userid"] == "alice" and response.json["cart"] == CART
    assert deletes_old_cookie(response)
    assert len(app.rows()) == 1
    assert beaker.rows(old_id) == 0
    assert [m for m in records(caplog) if "migrated" in m] == [
        f"old beaker session {short(old_id)} migrated"
    ]


# -- 6. after a logout, a copy of the old cookie opens nothing ----------------------------------


def test_a_copy_of_the_old_cookie_after_a_logout_opens_nothing(
    beaker: Beaker, tmp_path: Path
) -> None:
    # breaks if a visit with the old cookie whose session is gone kept the derived token
    # (session.regenerate_id left out): the copy's new session would be stored under the
    # token every copy of the old cookie names, and each copy would share it
    _, cookie, _ = beaker.log_in("alice")
    old_id = cookie[40:]
    app = switched(beaker, tmp_path, beaker.accessed(old_id) + 5)
    browser = with_cookie(app, cookie)
    assert browser.get("/who").json["userid"] == "alice"
    browser.post_json("/invalidate", {})
    assert app.rows() == []
    assert browser.get("/who").json["userid"] is None

    copy = with_cookie(app, cookie)
    seen = copy.get("/who").json
    assert seen == NOTHING_CARRIED
    assert app.rows() == []
    assert beaker.rows(old_id) == 0
    # another copy's first request writes: a session of its own, which no other copy finds
    writer = with_cookie(app, cookie)
    writer.post_json("/set", {"mine": 1})
    (row,) = app.rows()
    assert row.userid is None
    assert writer.get("/who").json["keys"] == ["mine"]
    other = with_cookie(app, cookie)
    assert other.get("/who").json["keys"] == []
    assert len(app.rows()) == 1


# -- 7. no log line shows an old id --------------------------------------------------------------


def test_no_log_line_shows_an_old_id(
    beaker: Beaker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every way the plugin logs an old session: migrated, not verified, two cookies,
    unrepresentable, a user id that does not fit, gone, expired by Beaker's rule."""
    # breaks if any of the plugin's log calls passed old_id (or the cookie) instead of
    # _short(old_id)
    for name in ("sessions_migrate", "sessions_kernel", "sessions_userid"):
        caplog.set_level(logging.DEBUG, logger=name)
    beaker.values["when"] = lambda: datetime.datetime(2025, 6, 1)
    cookies = {}
    for name in ("moved", "planted", "unrepresentable", "expired"):
        browser, cookie, _ = beaker.log_in(name)
        cookies[name] = cookie
        if name == "unrepresentable":
            browser.post("/store", {"kind": "when"})
    _, cookies["text id"], _ = beaker.log_in("carol")
    ids = {name: cookie[40:] for name, cookie in cookies.items()}
    now = max(beaker.accessed(i) for i in ids.values()) + 5
    beaker.set_accessed(ids["expired"], now - TIMEOUT - 10)
    app = switched(beaker, tmp_path, now)
    integer_app = switched(beaker, tmp_path, now, userid=None)

    with_cookie(app, cookies["moved"]).get("/who")  # migrated
    with_cookie(app, cookies["moved"]).get("/who")  # gone: the row of the first one found
    browser = with_cookie(app, cookies["moved"])
    browser.get("/who")
    browser.post_json("/invalidate", {})
    with_cookie(app, cookies["moved"]).get("/who")  # gone, and nothing stored: gone
    with_cookie(app, sign(secrets.token_hex(16), ids["planted"])).get("/who")  # forged
    both = f"{COOKIE}={cookies['planted']}; {COOKIE}={cookies['expired']}"
    app.new_browser().get("/who", headers={"Cookie": both})  # two sessions
    with_cookie(app, cookies["unrepresentable"]).get("/who")
    with_cookie(app, cookies["expired"]).get("/who")
    with_cookie(integer_app, cookies["text id"]).get("/who")  # "carol" into an Integer

    lines = [
        record.getMessage() + (record.exc_text or "")
        for record in caplog.records
        if not record.name.startswith("sqlalchemy")
    ]
    ours = records(caplog)
    assert len(ours) >= 7, ours
    for line in lines:
        for old_id in ids.values():
            assert old_id not in line, line
        assert beaker.secret not in line  # promise 2: nor the old secret
    told = "\n".join(ours)
    for name in ("moved", "unrepresentable", "expired", "text id"):
        assert short(ids[name]) in told, (name, ours)


def test_psessions_migrate_logs_no_old_id_of_a_failed_copy(
    beaker: Beaker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A copy that fails with a database error (here Beaker's table is gone): the command
    logs the error, whose SQL parameters are the old id."""
    # breaks if copy_session logged str(exc) of a SQLAlchemy error with its parameters
    # ("[parameters: ('<old id>',)]"), in the message or in the traceback
    import traceback

    from sessions_migrate.bulk import copy_session

    caplog.set_level(logging.INFO, logger="sessions_migrate")
    _, cookie, _ = beaker.log_in("alice")
    old_id = cookie[40:]
    app = switched(beaker, tmp_path, beaker.accessed(old_id) + 5)
    with beaker.engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE {beaker.table} RENAME TO {beaker.table}_away"))
    try:
        outcome = copy_session(migration_of(app.factory), app.wsgi.registry, app.engine, old_id)
    finally:
        with beaker.engine.begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {beaker.table}_away RENAME TO {beaker.table}"))
    assert (outcome.kind, outcome.reason) == ("not migrated", "error")
    assert old_id not in outcome.detail
    (record,) = [r for r in caplog.records if r.name == "sessions_migrate"]
    assert short(old_id) in record.getMessage()
    assert record.exc_info is not None
    logged = record.getMessage() + "".join(traceback.format_exception(*record.exc_info))
    assert beaker.table in logged  # the error itself is told
    assert old_id not in logged
    assert beaker.rows(old_id) == 1


def test_the_hook_trace_shows_no_old_id_nor_csrf_token(
    beaker: Beaker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """``SESSIONS_TRACE_HOOKS=1`` prints each hook call's arguments to stderr, the old
    session given to ``session_migrated`` among them."""
    # breaks if OldSession's repr showed its id, handle or CSRF token (a dataclass's does)
    monkeypatch.setenv("SESSIONS_TRACE_HOOKS", "1")
    _, cookie, token = beaker.log_in("alice")
    old_id = cookie[40:]
    app = switched(beaker, tmp_path, beaker.accessed(old_id) + 5)
    capsys.readouterr()
    assert with_cookie(app, cookie).get("/who").json["userid"] == "alice"
    trace = capsys.readouterr().err
    assert "session_migrated" in trace and "OldSession(" in trace
    assert old_id not in trace and token not in trace and beaker.secret not in trace


# -- 8. past the cut-off -------------------------------------------------------------------------


def test_past_the_cut_off_an_old_cookie_costs_no_sql_and_is_deleted(
    beaker: Beaker, tmp_path: Path
) -> None:
    # breaks if the cut-off were compared after opening or reading the old session, or with
    # > instead of >=
    _, before, _ = beaker.log_in("alice")
    _, after, _ = beaker.log_in("bob")
    now = beaker.accessed(after[40:]) + 5
    # Beaker without a timeout: both sessions live at any time, only the cut-off counts
    app = switched(beaker, tmp_path, now, migrate_timeout=None, migrate_until=until(now, 2))
    cut_off = migration_of(app.factory).until
    assert cut_off == int(now + 2 * DAY)

    app.clock.time = cut_off - 1
    assert with_cookie(app, before).get("/who").json["userid"] == "alice"

    app.clock.time = cut_off
    browser = with_cookie(app, after)
    with app.count() as sql:
        response = browser.get("/who")
    assert sql.statements == []
    assert response.json["userid"] is None
    assert deletes_old_cookie(response)
    assert COOKIE not in browser.cookies
    assert beaker.rows(after[40:]) == 1
    assert [row.userid for row in app.rows()] == ["alice"]

    app.clock.advance(DAY)  # and later, for a request that writes too
    writer = with_cookie(app, after)
    response = writer.post_json("/set", {"a": 1})
    assert deletes_old_cookie(response)
    assert beaker.rows(after[40:]) == 1
    assert sorted(str(row.userid) for row in app.rows()) == ["None", "alice"]
