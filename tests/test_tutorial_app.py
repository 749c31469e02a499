"""The tutorial's application (docs/examples/tutorial, a project from Pyramid's SQLAlchemy
starter with every session feature), tested as its author would, on every database:

* with the starter's own test fixtures (tests/conftest.py of pyramid-cookiecutter-starter,
  reproduced in shape below) on the tutorial's testing.ini, whose key comes from the
  environment as CI exports it: one doomed transaction shared by every request of a test;
* from pshell, whose setup begins a transaction;
* with the key read from a file (development.ini's way);
* with the kit's ``session_application`` fixture: real commits, a clock, SQL counts.

The application's tables are called ``session`` and ``users``, as a project's would be, so
each test gets a database of its own on the PostgreSQL and MariaDB servers.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import plaster
import pytest
import sqlalchemy as sa
import transaction
import webtest
from pyramid.paster import bootstrap, get_app, get_appsettings
from pyramid.path import DottedNameResolver
from pyramid.request import Request

from sessions_kernel import ConfigurationError, generate_secret_key

TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "examples" / "tutorial"
#: what testing.ini's session.secret_key_env names, and CI exports (docs/testing.rst)
KEY_VARIABLE = "SESSIONS_SECRET_KEY"
sys.path.insert(0, str(TUTORIAL))

import tutorial  # noqa: E402
from tutorial import models  # noqa: E402
from tutorial.models.meta import Base  # noqa: E402


@pytest.fixture
def session_db_url(session_db_url):
    """The database under test, private to this test on a server (the tables have fixed
    names, and other test runs share the servers)."""
    url = sa.engine.make_url(session_db_url)
    if url.get_backend_name() == "sqlite":
        yield session_db_url
        return
    name = f"tutorial_{uuid.uuid4().hex[:12]}"
    server = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with server.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        force = " WITH (FORCE)" if url.get_backend_name() == "postgresql" else ""
        with server.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name}{force}")


@pytest.fixture(autouse=True)
def fast_passwords(monkeypatch):
    monkeypatch.setattr(models.user, "PASSWORD_ROUNDS", 1000)


# -- the starter's tests/conftest.py, in its shape -----------------------------------------


def new_key_as_ci_makes_it():
    """``export SESSIONS_SECRET_KEY=$(python -m sessions_kernel)``: the documented CI step."""
    run = subprocess.run(
        [
            "sh",
            "-c",
            f"export {KEY_VARIABLE}=$({sys.executable} -m sessions_kernel); "
            f'printf %s "${KEY_VARIABLE}"',
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return run.stdout


@pytest.fixture
def ini_file(tmp_path, session_db_url, monkeypatch):
    """testing.ini: the tutorial's, on the database under test, with the key in the
    environment as CI exports it (no key file, none committed)."""
    text = (TUTORIAL / "testing.ini").read_text()
    assert "session.secret_key =" not in text and "secret_key_file" not in text
    assert f"session.secret_key_env = {KEY_VARIABLE}" in text
    monkeypatch.setenv(KEY_VARIABLE, new_key_as_ci_makes_it())
    url = session_db_url.replace("%", "%%")
    text = text.replace("sqlite:///%(here)s/testing.sqlite", url)
    path = tmp_path / "testing.ini"
    path.write_text(text)
    return str(path)


def test_testing_ini_without_the_key_says_what_to_export(tmp_path, monkeypatch):
    """A CI job that forgot the export: the start-up error names the variable."""
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    with pytest.raises(ConfigurationError) as info:
        tutorial.main({}, **get_appsettings(str(TUTORIAL / "testing.ini")))
    message = str(info.value)
    assert f"session.secret_key_env = '{KEY_VARIABLE}'" in message
    assert f"the environment variable {KEY_VARIABLE} is not set" in message


@pytest.fixture
def app_settings(ini_file):
    return get_appsettings(ini_file)


@pytest.fixture
def dbengine(app_settings):
    engine = models.get_engine(app_settings)
    Base.metadata.drop_all(bind=engine)
    Base.metadata.create_all(bind=engine)  # the starter runs its Alembic migrations here
    yield engine
    Base.metadata.drop_all(bind=engine)
    engine.dispose()


@pytest.fixture
def app(app_settings, dbengine):
    return tutorial.main({}, dbengine=dbengine, **app_settings)


@pytest.fixture
def tm():
    tm = transaction.TransactionManager(explicit=True)
    tm.begin()
    tm.doom()

    yield tm

    tm.abort()


@pytest.fixture
def dbsession(app, tm):
    session_factory = app.registry["dbsession_factory"]
    return models.get_tm_session(session_factory, tm)


@pytest.fixture
def testapp(app, tm, dbsession):
    # override request.dbsession and request.tm with our own
    # externally-controlled values that are shared across requests but aborted
    # at the end
    testapp = webtest.TestApp(
        app,
        extra_environ={
            "HTTP_HOST": "example.com",
            "tm.active": True,
            "tm.manager": tm,
            "app.dbsession": dbsession,
        },
    )

    return testapp


# -- the application's tests, as its author writes them ---------------------------------


def add_user(dbsession, name="ann", password="correct horse"):
    user = models.User(name=name)
    user.set_password(password)
    dbsession.add(user)
    dbsession.flush()
    return user


def log_in(testapp, name="ann", password="correct horse", status=200, **form):
    token = testapp.get("/").json["csrf_token"]
    form.update(name=name, password=password, csrf_token=token)
    return testapp.post("/login", form, status=status)


def test_log_in_then_load_a_page_as_that_user(testapp, dbsession):
    add_user(dbsession)
    assert log_in(testapp).json == {"user": "ann"}
    page = testapp.get("/").json
    assert page["user"] == "ann"
    assert page["messages"] == ["Welcome, ann."]
    [mine] = testapp.get("/sessions").json["sessions"]
    assert mine["current"] is True


def test_log_out_is_a_csrf_protected_post(testapp, dbsession):
    add_user(dbsession)
    log_in(testapp)
    testapp.post("/logout", status=400)  # no token: refused
    assert testapp.get("/").json["user"] == "ann"
    token = testapp.get("/").json["csrf_token"]
    assert testapp.post("/logout", {"csrf_token": token}).json == {"user": None}
    assert testapp.get("/").json["user"] is None
    assert testapp.get("/sessions", status=401).json == {"error": "log in first"}


def test_login_token_changes_at_login(testapp, dbsession):
    add_user(dbsession)
    before = testapp.get("/").json["csrf_token"]
    old_cookie = testapp.cookies["session"]
    log_in(testapp)
    assert testapp.get("/").json["csrf_token"] != before
    assert testapp.cookies["session"] != old_cookie  # the session id was regenerated


def test_wrong_password(testapp, dbsession):
    add_user(dbsession)
    response = log_in(testapp, password="wrong", status=400)
    assert response.json == {"error": "wrong name or password"}
    assert testapp.get("/").json["user"] is None


def test_your_sessions_and_ending_the_others(testapp, dbsession, app, tm):
    add_user(dbsession)
    extra = testapp.extra_environ
    phone = webtest.TestApp(app, extra_environ=extra)
    log_in(phone)
    log_in(testapp)
    sessions = testapp.get("/sessions").json["sessions"]
    assert sorted(s["current"] for s in sessions) == [False, True]
    token = testapp.get("/").json["csrf_token"]
    assert testapp.post("/sessions/end-others", {"csrf_token": token}).json == {"ended": 1}
    assert phone.get("/").json["user"] is None
    assert testapp.get("/").json["user"] == "ann"


# -- pshell, with real commits ------------------------------------------------------------


def test_pshell_shows_and_changes_a_users_session(ini_file, dbengine):
    browser = webtest.TestApp(get_app(ini_file))
    with sa.orm.Session(dbengine) as db:
        user = add_user(db)
        db.commit()
        userid = user.id
    log_in(browser)
    cookie = f"session={browser.cookies['session']}"

    # $ pshell testing.ini  (with the browser's cookie on the shell's request)
    env = bootstrap(ini_file, request=Request.blank("/", headers={"Cookie": cookie}))
    try:
        # what pshell runs: the ini's [pshell] setup, which calls request.tm.begin()
        setup = DottedNameResolver().resolve(plaster.get_settings(ini_file, "pshell")["setup"])
        setup(env)
        request = env["request"]
        assert request.session.userid == userid  # shows the session
        assert request.session.peek_flash() == ["Welcome, ann."]
        assert request.session.settings.idle_timeout == 1800
        request.session.flash("An administrator looked at your session.")  # changes it
        env["tm"].commit()
    finally:
        env["closer"]()
        env["registry"]["dbsession_factory"].kw["bind"].dispose()
    messages = browser.get("/").json["messages"]
    assert messages == ["Welcome, ann.", "An administrator looked at your session."]
    browser.app.registry["dbsession_factory"].kw["bind"].dispose()


# -- the kit's fixture: the application's main() with real commits, a clock, SQL counts ----


@pytest.fixture
def real_app(session_application, tmp_path):
    (tmp_path / "session.key").write_text(generate_secret_key())
    settings = get_appsettings(str(TUTORIAL / "development.ini"))
    settings["session.secret_key_file"] = str(tmp_path / "session.key")
    app = session_application(tutorial.main, settings, metadata=Base.metadata)
    with sa.orm.Session(app.engine) as db:
        add_user(db)
        db.commit()
    return app


def test_real_commits_clock_and_statement_counts(real_app):
    log_in(real_app)
    assert real_app.get("/").json["messages"] == ["Welcome, ann."]  # popped: a write
    with real_app.count() as sql:
        assert real_app.get("/").json["user"] == "ann"
    assert sql.kinds() == ["SELECT"]  # the session, its user joined; nothing written
    real_app.clock.advance(1799)
    assert real_app.get("/").json["user"] == "ann"
    real_app.clock.advance(1801)  # past the idle timeout
    assert real_app.get("/").json["user"] is None


def test_remember_me_sets_a_lasting_cookie(real_app):
    response = log_in(real_app, remember="on")
    [cookie] = [c for c in response.headers.getall("Set-Cookie") if c.startswith("session=")]
    assert "Max-Age=2592000" in cookie
