"""Sessions in transactions pyramid_tm's tween does not own: the SQLAlchemy starter's test
fixtures (one doomed transaction shared by every request of a test), pshell, and
``bootstrap``/``prepare`` scripts. On every database."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import sqlalchemy as sa
import transaction
import webtest
import zope.sqlalchemy
from kernel_support import set_cookies
from pyramid.config import Configurator
from pyramid.paster import bootstrap
from pyramid.scripting import prepare
from sqlalchemy.orm import sessionmaker

from sessions_kernel import SessionError, session_factory
from sessions_kernel.testing import TEST_SECRET_KEY, Clock, StatementCounter, add_test_views
from sessions_kernel.testing import make_model as _make_model

MODEL = _make_model()


def main(global_config: Any, **settings: Any) -> Any:
    """An application laid out like the starter's: its models/__init__.py test hooks included
    (``dbengine`` in the settings, ``app.dbsession`` in the environ)."""
    with Configurator(settings=settings) as config:
        if not settings.get("implicit_tm"):  # the starter's; without it, transaction.manager
            config.get_settings()["tm.manager_hook"] = "pyramid_tm.explicit_manager"
        config.include("pyramid_tm")
        if settings.get("tween_over_tm"):
            config.add_tween(
                "test_outside_pyramid_tm.touching_tween", over="pyramid_tm.tm_tween_factory"
            )
        engine = settings.get("dbengine") or sa.engine_from_config(settings, "sqlalchemy.")
        maker = sessionmaker(bind=engine)
        config.registry["dbsession_factory"] = maker

        def dbsession(request: Any) -> Any:
            db = request.environ.get("app.dbsession")
            if db is None:
                db = maker(info={"request": request})
                zope.sqlalchemy.register(db, transaction_manager=request.tm)
            return db

        config.add_request_method(dbsession, reify=True)
        config.set_session_factory(
            session_factory(
                model_class=MODEL, secret_key=TEST_SECRET_KEY, clock=settings.get("clock", Clock())
            )
        )
        add_test_views(config)
    return config.make_wsgi_app()


@pytest.fixture
def engine(session_engine):
    MODEL.metadata.drop_all(session_engine)
    MODEL.metadata.create_all(session_engine)
    yield session_engine
    MODEL.metadata.drop_all(session_engine)


@pytest.fixture
def app(engine):
    return main({}, dbengine=engine)


# -- the starter's fixtures (tests/conftest.py of pyramid-cookiecutter-starter), same shape --


@pytest.fixture
def tm():
    manager = transaction.TransactionManager(explicit=True)
    manager.begin()
    manager.doom()
    yield manager
    manager.abort()


@pytest.fixture
def dbsession(app, tm):
    db = app.registry["dbsession_factory"]()
    zope.sqlalchemy.register(db, transaction_manager=tm)
    return db


@pytest.fixture
def testapp(app, tm, dbsession):
    return webtest.TestApp(
        app,
        extra_environ={
            "HTTP_HOST": "example.com",
            "tm.active": True,
            "tm.manager": tm,
            "app.dbsession": dbsession,
        },
    )


def stored_rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).select_from(MODEL.__table__))


def test_shared_transaction_sends_the_cookie_and_the_next_request_sees_the_session(testapp, engine):
    counter = StatementCounter(engine)
    with counter:
        response = testapp.post_json("/set", {"user": "ann"})
    assert counter.kinds() == ["INSERT"]  # flushed into the shared transaction
    assert len(set_cookies(response)) == 1
    with counter:
        page = testapp.get("/read").json
    assert page["data"] == {"user": "ann"} and page["new"] is False
    assert counter.count == 0  # the row is in the shared SQLAlchemy session
    assert testapp.get("/incr/n").json["data"] == {"user": "ann", "n": 1}
    assert testapp.get("/read").json["data"] == {"user": "ann", "n": 1}


def test_shared_transaction_failed_view_writes_nothing_and_sends_no_cookie(testapp):
    testapp.post_json("/set", {"a": 1})
    response = testapp.post_json("/fail", {"a": 2}, status=500)  # an exception view answers
    assert set_cookies(response) == []
    assert testapp.get("/read").json["data"] == {"a": 1}


def test_shared_transaction_is_rolled_back_by_its_owner(testapp, tm, engine):
    testapp.post_json("/set", {"a": 1})
    tm.abort()
    assert stored_rows(engine) == 0
    tm.begin()  # for the fixture's own abort


def test_shared_transaction_committed_by_its_owner_writes_each_session_once(app, engine):
    tm = transaction.TransactionManager(explicit=True)
    tm.begin()
    db = app.registry["dbsession_factory"]()
    zope.sqlalchemy.register(db, transaction_manager=tm)
    browser = webtest.TestApp(
        app, extra_environ={"tm.active": True, "tm.manager": tm, "app.dbsession": db}
    )
    browser.post_json("/set", {"a": 1})
    browser.get("/incr/a")
    counter = StatementCounter(engine)
    with counter:
        tm.commit()
    assert counter.count == 0  # written into the transaction already: nothing twice
    assert webtest.TestApp(app, cookiejar=browser.cookiejar).get("/read").json["data"] == {"a": 2}


def test_normal_requests_still_commit_before_the_cookie(app, engine):
    browser = webtest.TestApp(app)
    counter = StatementCounter(engine)
    with counter:
        response = browser.post_json("/set", {"a": 1})
    assert counter.kinds() == ["INSERT"]
    assert len(set_cookies(response)) == 1
    assert stored_rows(engine) == 1


# -- pshell and scripts ------------------------------------------------------------------


def test_pshell_setup_stores_the_session_on_commit(app, engine):
    env = prepare(registry=app.registry)
    try:
        request = env["request"]
        request.tm.begin()  # what the starter's pshell.py setup(env) does
        request.session["note"] = "from pshell"
        assert request.session.new
        request.tm.commit()
    finally:
        env["closer"]()
    assert stored_rows(engine) == 1


def test_pshell_shows_and_changes_a_browsers_session(app, engine):
    browser = webtest.TestApp(app)
    browser.post_json("/set", {"cart": ["tea"]})
    cookie = f"session={browser.cookies['session']}"
    env = prepare(registry=app.registry)
    try:
        request = env["request"]
        request.tm.begin()
        request.headers["Cookie"] = cookie  # as docs/tutorial-app.rst shows
        assert dict(request.session) == {"cart": ["tea"]}
        request.session["cart"].append("milk")
        request.tm.commit()
    finally:
        env["closer"]()
    assert browser.get("/read").json["data"] == {"cart": ["tea", "milk"]}


def test_pshell_a_change_after_the_commit_is_refused_not_lost(app, engine):
    env = prepare(registry=app.registry)
    try:
        request = env["request"]
        request.tm.begin()
        request.session["note"] = "from pshell"
        request.tm.commit()
        request.tm.begin()
        for change in (
            lambda session: session.__setitem__("more", 1),
            lambda session: session.pop("note"),
            lambda session: session.clear(),
            lambda session: session.flash("saved"),
            lambda session: session.invalidate(),
            lambda session: session.regenerate_id(),
        ):
            with pytest.raises(SessionError, match="already written for this request"):
                change(request.session)
        request.tm.abort()
    finally:
        env["closer"]()
    assert stored_rows(engine) == 1


def test_pshell_reads_a_browsers_session_before_begin_and_changes_it_after(app, engine):
    """Read before ``request.tm.begin()``: a read-only load (its own SELECT, no transaction);
    ``begin()`` drops it, the next use loads the session again in that transaction, and
    the change is stored."""
    browser = webtest.TestApp(app)
    browser.post_json("/set", {"cart": ["tea"]})
    env = prepare(registry=app.registry)
    try:
        request = env["request"]
        request.headers["Cookie"] = f"session={browser.cookies['session']}"
        counter = StatementCounter(engine)
        with counter:
            assert dict(request.session) == {"cart": ["tea"]}
        assert counter.kinds() == ["SELECT"]
        with pytest.raises(SessionError, match=r"call request.tm.begin\(\) first"):
            request.session["note"] = "no transaction"
        request.tm.begin()
        with counter:
            request.session["note"] = "after begin"
            request.tm.commit()
        # begin() dropped the read-only load: loaded again in the transaction, then the
        # versioned UPDATE of the row read
        assert counter.kinds() == ["SELECT", "UPDATE"]
    finally:
        env["closer"]()
    assert browser.get("/read").json["data"] == {"cart": ["tea"], "note": "after begin"}


def test_pshell_a_change_in_place_after_the_commit_is_refused_not_lost(app, engine):
    """``request.session["cart"].append(...)`` after the commit, then a new transaction:
    nothing can store it, so that transaction's commit raises instead of losing it."""
    env = prepare(registry=app.registry)
    try:
        request = env["request"]
        request.tm.begin()
        request.session["cart"] = ["tea"]
        request.tm.commit()
        request.tm.begin()
        request.session["cart"].append("milk")
        with pytest.raises(SessionError, match=r"already written for this request.*prepare"):
            request.tm.commit()
        request.tm.abort()
        request.tm.begin()  # a read after the commit, changing nothing, commits
        assert request.session["cart"] == ["tea", "milk"]
        request.session["cart"].remove("milk")
        request.tm.commit()
    finally:
        env["closer"]()
    with engine.connect() as conn:
        assert conn.scalar(sa.select(MODEL.__table__.c.data)) == b'{"cart":["tea"]}'


def test_session_before_begin_says_what_to_do(app):
    env = prepare(registry=app.registry)
    try:
        with pytest.raises(SessionError, match=r"call request.tm.begin\(\) first"):
            env["request"].session["a"] = 1
    finally:
        env["closer"]()


def test_reading_a_new_session_needs_no_transaction(app):
    """pshell without a cookie: reading finds an empty session; the first change says what to do."""
    env = prepare(registry=app.registry)
    try:
        session = env["request"].session
        assert session.get("a") is None
        assert session.new
        with pytest.raises(SessionError, match=r"was changed while request.tm has no transaction"):
            session["a"] = 1
        assert dict(session) == {}  # the failed change left nothing behind
    finally:
        env["closer"]()


def touching_tween(handler, registry):
    def tween(request):
        request.session["early"] = True
        return handler(request)

    return tween


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit_tm", "implicit_tm"])
def test_session_in_a_tween_over_pyramid_tm_says_where_to_put_it(engine, implicit):
    app = main({}, dbengine=engine, tween_over_tm=True, implicit_tm=implicit)
    with pytest.raises(SessionError, match=r"in a tween, add the tween under pyramid_tm's"):
        webtest.TestApp(app).get("/read")
    transaction.manager.abort()


def test_implicit_transaction_manager_in_a_script(engine):
    app = main({}, dbengine=engine, implicit_tm=True)
    env = prepare(registry=app.registry)
    try:
        request = env["request"]
        with pytest.raises(SessionError, match="no transaction begun"):
            request.session["a"] = 1
        with request.tm:  # begins, commits
            request.session["a"] = 1
    finally:
        env["closer"]()
        transaction.manager.abort()
    assert stored_rows(engine) == 1


def test_bootstrap_script_stores_the_session(engine, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "starter_shaped_app.py").write_text(
        f"from test_outside_pyramid_tm import main as _main\n"
        f"import sqlalchemy\n"
        f"ENGINE = sqlalchemy.create_engine({engine.url.render_as_string(False)!r})\n"
        f"def main(global_config, **settings):\n"
        f"    return _main(global_config, dbengine=ENGINE, **settings)\n"
    )
    ini = tmp_path / "development.ini"
    ini.write_text("[app:main]\nuse = call:starter_shaped_app:main\n")
    env = bootstrap(str(ini))
    try:
        request = env["request"]
        with request.tm:  # the starter's scripts/initialize_db.py shape
            request.session["seeded"] = True
    finally:
        env["closer"]()
        sys.modules.pop("starter_shaped_app").ENGINE.dispose()
    assert stored_rows(engine) == 1
