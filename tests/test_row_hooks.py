"""The hooks of the stored rows, tried against their docstrings on every database.

``session_rows_changed``: every path that changes rows announces, after its
commit, exactly once, naming the right keys; an aborted transaction announces
nothing (but the logouts run again, ``source="replay"``); nothing is recorded
while no plugin observes. ``session_row_lookup``: a served row costs no SQL,
its write is one UPDATE that merges when the served version is stale, and the
lookup is skipped where the docstring says the kernel reads the row itself.
``psessions ddl``: what the active plugins need, printed or applied.

The plugins here are test objects (not sessions-cache): a recorder of every
announcement, and a server of rows from a dict the test controls.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
from typing import Any

import pytest
import sqlalchemy as sa
import transaction
import webtest
import zope.sqlalchemy
from kernel_support import set_cookies
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPFound
from pyramid.interfaces import ISessionFactory
from pyramid.scripting import prepare
from pyramid_retry import RetryableException
from sqlalchemy.orm import sessionmaker

from sessions_kernel import RowChanges, hookimpl
from sessions_kernel.changes import ChangeLog
from sessions_kernel.factory import register_factory, session_factory
from sessions_kernel.maintenance import collect_garbage
from sessions_kernel.row_table import LINEAGE_CHARS
from sessions_kernel.testing import (
    TEST_SECRET_KEY,
    SessionTestApp,
    add_dbsession,
    add_test_views,
    make_model,
)


class RecordMixin:
    """Activates the recorder (and the server); adds no column."""


class Recorder:
    """Records every :class:`RowChanges` announced, with what the database held then.

    With ``engine``, each announcement also reads the stored ids on a
    connection of its own: what another process sees at that moment (the
    change must be committed already).
    """

    def __init__(self, engine: sa.Engine | None = None) -> None:
        self.__name__ = type(self).__name__.lower()
        self.engine = engine
        #: every announcement, in order
        self.changes: list[RowChanges] = []
        #: the ids stored at each announcement, read on another connection
        self.stored: list[set[str]] = []
        #: the thread of each announcement
        self.threads: list[int] = []

    @hookimpl
    def session_mixins(self) -> list[type]:
        return [RecordMixin]

    @hookimpl
    def session_rows_changed(self, factory: Any, changes: RowChanges) -> None:
        self.changes.append(changes)
        self.threads.append(threading.get_ident())
        if self.engine is not None:
            table = factory.storage.table
            with self.engine.connect() as connection:
                self.stored.append(set(connection.scalars(sa.select(table.c.id))))

    def take(self) -> list[RowChanges]:
        """The announcements since the last call."""
        taken, self.changes = self.changes, []
        return taken


class Server(Recorder):
    """A recorder that also serves rows from :attr:`rows` (``session_row_lookup``)."""

    def __init__(self, engine: sa.Engine | None = None) -> None:
        super().__init__(engine)
        #: row id -> the column values served
        self.rows: dict[str, dict[str, Any]] = {}
        #: the row id of every lookup
        self.lookups: list[str] = []
        #: what the session looked like to each lookup: (row set, model, request)
        self.seen: list[tuple[Any, Any, Any]] = []
        self.order: list[str] = []

    @hookimpl
    def session_load(self, session: Any) -> None:
        self.order.append("load")

    @hookimpl
    def session_row_lookup(self, factory: Any, session: Any, row_id: str) -> Any:
        self.lookups.append(row_id)
        self.order.append("lookup")
        self.seen.append(("row" in vars(session), session.model, session.request))
        return self.rows.get(row_id)

    def fill(self, app: Any, row_id: str | None = None) -> dict[str, Any]:
        """Serve the row as it is committed now (read on a connection of the test's)."""
        row_id = row_id or app.row().id
        table = app.model.__table__  # the test models' attribute keys are the column names
        with app.engine.connect() as connection:
            found = connection.execute(sa.select(table).where(table.c.id == row_id))
            values = dict(found.mappings().one())
        self.rows[row_id] = values
        return values


# -- views the tests drive besides the kit's -------------------------------------------------


def add_views(config: Configurator) -> None:
    def view(name: str, func: Any) -> None:
        config.add_route(name, f"/{name}")
        config.add_view(func, route_name=name, renderer="json")

    def factory_of(request: Any) -> Any:
        return request.registry.queryUtility(ISessionFactory)

    def logout_redirect(request: Any) -> Any:
        request.session.invalidate()
        raise HTTPFound(location="/read")

    def logout_fail(request: Any) -> Any:
        request.session.invalidate()
        raise RuntimeError("the view failed after a logout")

    def hold(request: Any) -> Any:
        request.session.regenerate_id(hold=True)
        return {"id": request.session.session_id}

    def hold_fail(request: Any) -> Any:
        request.session.regenerate_id(hold=True)
        raise RuntimeError("the view failed after a held regenerate")

    def logout_others(request: Any) -> Any:
        model = factory_of(request).model
        session = request.session
        session.execute_logout(sa.delete(model).where(model.id != session.session_id))
        return {"id": session.session_id}

    def regenerate_invalidate(request: Any) -> Any:
        request.session.regenerate_id()
        request.session.invalidate()
        return {}

    def peek(request: Any) -> Any:
        found = factory_of(request).peek(request)
        return {"valid": found.valid, "data": dict(found.data)}

    def retried(request: Any) -> Any:
        data = dict(request.session)
        if request.environ["retry.attempt"] == 0:
            raise RetryableException("the first attempt lost")
        request.session["attempt"] = request.environ["retry.attempt"]
        return {"data": data}

    def own_load(request: Any) -> Any:
        """The application loads the session's row itself, then the session is written."""
        model = factory_of(request).model
        session = request.session
        session.get("a")  # loaded first: a served row waits for the SQLAlchemy session
        found = request.own_copy = request.dbsession.get(model, session.session_id)
        assert found is not None  # held to the commit (the identity map is weak)
        session["own"] = True
        return {"data": dict(session), "same": found is session.row}

    def attached(request: Any) -> Any:
        """Whether the loaded row is in the request's SQLAlchemy session (touched first
        with ``?first=1``)."""
        if request.params.get("first"):
            request.dbsession  # noqa: B018 (the request's SQLAlchemy session made first)
        session = request.session
        row = session.row
        state = sa.inspect(row)
        db = vars(request).get("dbsession")
        return {"attached": db is not None and state.session is db, "data": dict(session)}

    def vote_fails(request: Any) -> Any:
        """The session changed, then another resource of the transaction fails its commit."""
        request.session.update(request.json_body)
        request.tm.get().join(FailingVote())
        return {}

    def held_first(request: Any) -> Any:
        """The application loads the row (by the id the test gives) before the session."""
        model = factory_of(request).model
        held = request.dbsession.get(model, request.params["id"])  # held: the map is weak
        assert held is not None
        return {"data": dict(request.session), "same": request.session.row is held}

    def owner(request: Any) -> Any:
        """The name of the row's owner: a lazy load through the row's relationship."""
        row = request.session.row
        attached = sa.inspect(row).session is vars(request).get("dbsession")
        return {"attached": attached, "owner": row.owner.name}

    def orm_write(request: Any) -> Any:
        """The application assigns a column of the row, and a query autoflushes it."""
        model = factory_of(request).model
        session = request.session
        session.row.created = session.row.created + 1
        request.dbsession.execute(sa.select(model.id)).all()  # autoflush: the ORM's UPDATE
        return {"dirty": session.dirty}

    def orm_write_fail(request: Any) -> Any:
        """As ``orm_write``, then the view fails: the transaction is aborted."""
        orm_write(request)
        raise RuntimeError("the view failed after its own ORM write")

    def orm_delete(request: Any) -> Any:
        """The application deletes the session's row through its SQLAlchemy session."""
        row = request.session.row
        request.dbsession.delete(row)
        request.dbsession.flush()
        return {}

    for name, func in list(locals().items()):
        if name not in ("view", "factory_of", "config") and callable(func):
            view(name, func)


class FailingVote:
    """A data manager whose vote fails (sorted before zope.sqlalchemy's: nothing commits)."""

    transaction_manager = None

    def sortKey(self) -> str:  # the transaction package's name
        return "0 fails first"

    def abort(self, txn: Any) -> None:
        pass

    tpc_begin = commit = tpc_finish = tpc_abort = abort

    def tpc_vote(self, txn: Any) -> None:
        raise RuntimeError("another resource refused the commit")


@pytest.fixture
def recorded(session_app, session_engine):
    """``recorded(plugin_class=Recorder, settings=None, probe=True, model=None,
    model_attributes=None)``: ``(app, plugin)``, the plugin registered in the app, whose
    model (``make_model(RecordMixin, **model_attributes)`` unless given) activates it. With
    ``probe``, the plugin reads the stored ids at each announcement."""

    def build(
        plugin_class=Recorder,
        settings=None,
        *,
        probe=True,
        model=None,
        model_attributes=None,
    ):
        plugin = plugin_class(session_engine if probe else None)
        model = model or make_model(RecordMixin, **(model_attributes or {}))
        app = session_app(model, settings, plugins=[plugin], configure=add_views)
        return app, plugin

    return build


def lineage(row_id: str) -> str:
    return row_id[:LINEAGE_CHARS]


# -- session_rows_changed: every path, once, after its commit ---------------------------------


def test_a_new_sessions_insert_and_its_writes_are_announced_after_commit(recorded):
    app, rec = recorded()
    app.post_json("/set", {"a": 1})
    row_id = app.row().id
    assert rec.take() == [RowChanges(written=frozenset({row_id}))]
    assert rec.stored == [{row_id}]  # another connection saw the row: committed already
    assert rec.threads == [threading.get_ident()]
    app.get("/read")
    app.get("/none")
    assert rec.take() == []  # a read changes nothing
    app.post_json("/set", {"b": 2})
    assert rec.take() == [RowChanges(written=frozenset({row_id}))]
    app.get("/incr/n")
    assert rec.take() == [RowChanges(written=frozenset({row_id}))]


def test_invalidate_announces_the_deleted_key_and_its_lineage(recorded):
    app, rec = recorded()
    app.post_json("/set", {"a": 1})
    row_id = app.row().id
    rec.take()
    rec.stored.clear()
    app.post("/invalidate")
    assert rec.take() == [
        RowChanges(deleted=frozenset({row_id}), lineages=frozenset({lineage(row_id)}))
    ]
    assert rec.stored == [set()]
    # a logout and a new session in one transaction: one announcement naming both
    app.post_json("/set", {"a": 1})
    old = app.row().id
    rec.take()
    app.post_json("/invalidate", {"fresh": 1})
    new = app.row().id
    assert new != old
    assert rec.take() == [
        RowChanges(
            written=frozenset({new}),
            deleted=frozenset({old}),
            lineages=frozenset({lineage(old)}),
        )
    ]


def test_a_logout_after_a_regenerate_announces_the_key_as_read(recorded):
    app, rec = recorded()
    app.post_json("/set", {"a": 1})
    row_id = app.row().id
    rec.take()
    app.post("/regenerate_invalidate")
    assert app.rows() == []
    assert rec.take() == [
        RowChanges(deleted=frozenset({row_id}), lineages=frozenset({lineage(row_id)}))
    ]


def test_regenerate_id_announces_the_old_and_the_new_key(recorded):
    app, rec = recorded()
    app.post_json("/set", {"a": 1})
    old = app.row().id
    rec.take()
    app.post("/regenerate")
    new = app.row().id
    assert new != old
    [changes] = rec.take()
    assert changes == RowChanges(written=frozenset({new}), rekeyed=((old, new),))
    assert changes.covers(old) and changes.covers(new)


def test_a_held_regenerate_announces_the_rekey_once(recorded):
    app, rec = recorded()
    app.post_json("/set", {"a": 1})
    old = app.row().id
    rec.take()
    new = app.post("/hold").json["id"]
    assert app.row().id == new != old
    [changes] = rec.take()
    assert changes.source == "request"
    assert changes.rekeyed == ((old, new),)
    assert not changes.everything and not changes.deleted
    assert changes.written <= {new}


def test_a_plugins_execute_logout_announces_everything(recorded):
    app, rec = recorded()
    others = [app.new_browser() for _ in range(2)]
    for browser in others:
        browser.post_json("/set", {"other": 1})
    app.post_json("/set", {"a": 1})
    rec.take()
    rec.stored.clear()
    mine = app.post("/logout_others").json["id"]
    assert [row.id for row in app.rows()] == [mine]
    [changes] = rec.take()
    assert changes.everything and changes.source == "request"
    assert rec.stored == [{mine}]


@pytest.mark.parametrize(
    ("path", "status"), [("/logout_redirect", 302), ("/logout_fail", 500)], ids=["redirect", "fail"]
)
def test_a_logout_then_an_abort_announces_only_the_replay(recorded, path, status):
    app, rec = recorded()
    app.post_json("/set", {"a": 1})
    row_id = app.row().id
    rec.take()
    rec.stored.clear()
    app.post(path, status=status)
    assert app.rows() == []  # the logout held
    assert rec.take() == [
        RowChanges(
            deleted=frozenset({row_id}), lineages=frozenset({lineage(row_id)}), source="replay"
        )
    ]
    assert rec.stored == [set()]  # after the replay's own commit


def test_a_held_regenerate_then_an_abort_announces_the_replayed_rekey(recorded):
    app, rec = recorded()
    app.post_json("/set", {"a": 1})
    old = app.row().id
    rec.take()
    app.post("/hold_fail", status=500)
    new = app.row().id
    assert new != old
    assert rec.take() == [RowChanges(rekeyed=((old, new),), source="replay")]


def test_an_aborted_transaction_announces_nothing(recorded):
    app, rec = recorded()
    app.post_json("/fail", {"a": 1}, status=500)  # a new session, aborted
    assert app.rows() == [] and rec.take() == []
    app.post_json("/set", {"a": 1})
    rec.take()
    app.post_json("/fail", {"a": 2}, status=500)  # a write, aborted
    app.post_json("/redirect", {"a": 3}, status=302)
    app.post("/regenerate")
    rec.take()
    assert app.get("/read").json["data"] == {"a": 1}
    assert rec.take() == []


def test_a_failed_commit_announces_nothing(recorded):
    app, rec = recorded()
    response = app.post_json("/vote_fails", {"a": 1}, status=500)  # the kit's error view
    assert "refused the commit" in response.json["error"] and not set_cookies(response)
    assert app.rows() == []
    app.post_json("/set", {"a": 1})
    rec.take()
    app.post_json("/vote_fails", {"a": 2}, status=500)
    assert app.get("/read").json["data"] == {"a": 1}
    assert rec.take() == []


def test_gc_announces_each_committed_batch(recorded):
    app, rec = recorded(settings={"max_age": "100"})
    for _ in range(3):
        app.new_browser().post_json("/set", {"a": 1})
    ids = {row.id for row in app.rows()}
    rec.take()
    rec.stored.clear()
    app.clock.advance(101)
    result = collect_garbage(app.factory, app.engine, batch_size=2)
    assert (result.deleted, result.batches) == (3, 2)
    first, second = rec.take()
    assert first.source == second.source == "gc"
    assert len(first.deleted) == 2 and len(second.deleted) == 1
    assert first.deleted | second.deleted == ids
    assert rec.stored[0] == ids - first.deleted and rec.stored[1] == set()
    assert collect_garbage(app.factory, app.engine).deleted == 0
    assert rec.take() == []  # nothing deleted, nothing announced


# -- a transaction shared across requests (the starter's test fixtures), and pshell -----------


def starter_app(app: Any, plugins: list[Any]) -> Any:
    """``app``'s model and plugins in an application laid out like the SQLAlchemy starter's,
    whose ``request.dbsession`` is the environ's ``app.dbsession`` when a test gives one."""
    with Configurator(settings={"tm.manager_hook": "pyramid_tm.explicit_manager"}) as config:
        config.include("pyramid_tm")
        add_dbsession(config, app.engine)  # the environ's app.dbsession when a test gives one
        factory = session_factory(
            plugins=plugins, model_class=app.model, secret_key=TEST_SECRET_KEY, clock=app.clock
        )
        register_factory(config, factory)
        add_test_views(config)
        add_views(config)
    return config.make_wsgi_app()


class Shared:
    """One transaction shared by every request of its browsers, as the starter's fixtures
    share one (``tm.active``, ``tm.manager`` and ``app.dbsession`` in the environ)."""

    def __init__(self, wsgi: Any, engine: sa.Engine) -> None:
        self.wsgi = wsgi
        self.tm = transaction.TransactionManager(explicit=True)
        self.tm.begin()
        self.db = sessionmaker(bind=engine)()
        zope.sqlalchemy.register(self.db, transaction_manager=self.tm)

    def browser(self, cookie: str | None = None) -> webtest.TestApp:
        environ = {"tm.active": True, "tm.manager": self.tm, "app.dbsession": self.db}
        browser = webtest.TestApp(self.wsgi, extra_environ=environ)
        if cookie is not None:
            browser.set_cookie("session", cookie)
        return browser


def test_a_shared_transaction_announces_once_when_its_owner_commits(recorded):
    app, rec = recorded()
    wsgi = starter_app(app, [rec])
    shared = Shared(wsgi, app.engine)
    ann, bob = shared.browser(), shared.browser()
    ann.post_json("/set", {"a": 1})
    ann.get("/incr/a")
    bob.post_json("/set", {"b": 1})
    assert rec.take() == []  # written into the transaction, not committed
    shared.tm.commit()
    ids = {row.id for row in app.rows()}
    assert len(ids) == 2
    assert rec.take() == [RowChanges(written=frozenset(ids))]
    assert rec.stored[-1] == ids
    # the next shared transaction is rolled back: nothing announced, ever
    shared = Shared(wsgi, app.engine)
    browser = shared.browser()
    browser.post_json("/set", {"c": 1})
    ann_again = shared.browser(ann.cookies["session"])
    ann_again.get("/incr/a")
    shared.tm.abort()
    assert rec.take() == []
    assert {row.id for row in app.rows()} == ids


def test_a_shared_transaction_rolled_back_after_a_logout_announces_only_the_replay(recorded):
    """The owner's abort runs the held logout again: that, and only that, is announced,
    after its own commit (not the rolled-back write of another request in it)."""
    app, rec = recorded()
    app.post_json("/set", {"a": 1})
    out = app.row().id
    other = app.new_browser()
    other.post_json("/set", {"b": 1})
    [kept] = [row.id for row in app.rows() if row.id != out]
    rec.take()
    rec.stored.clear()
    shared = Shared(starter_app(app, [rec]), app.engine)
    shared.browser(other.cookies["session"]).get("/incr/b")  # rolled back below
    shared.browser(app.cookies["session"]).post("/invalidate")
    shared.tm.abort()
    assert [row.id for row in app.rows()] == [kept]
    assert rec.take() == [
        RowChanges(deleted=frozenset({out}), lineages=frozenset({lineage(out)}), source="replay")
    ]
    assert rec.stored == [{kept}]


def test_a_shared_transaction_with_two_logouts_announces_each_after_its_replay(recorded):
    app, rec = recorded()
    browsers = [app.new_browser() for _ in range(2)]
    for browser in browsers:
        browser.post_json("/set", {"a": 1})
    ids = {row.id for row in app.rows()}
    rec.take()
    rec.stored.clear()
    shared = Shared(starter_app(app, [rec]), app.engine)
    for browser in browsers:
        shared.browser(browser.cookies["session"]).post("/invalidate")
    shared.tm.abort()
    assert app.rows() == []
    announced = rec.take()
    assert all(changes.source == "replay" for changes in announced)
    assert set().union(*(changes.deleted for changes in announced)) == ids
    for changes, stored in zip(announced, rec.stored, strict=True):
        assert not changes.deleted & stored  # each named only what its replay committed


def test_pshell_announces_at_request_tm_commit(recorded):
    app, rec = recorded()
    env = prepare(registry=app.wsgi.registry)
    try:
        request = env["request"]
        request.tm.begin()  # the starter's pshell setup
        request.session["note"] = "from pshell"
        assert rec.take() == []
        request.tm.commit()
        row_id = app.row().id
        assert rec.take() == [RowChanges(written=frozenset({row_id}))]
    finally:
        env["closer"]()
    # a browser's session changed in pshell
    app.reset()
    app.post_json("/set", {"cart": ["tea"]})
    [created] = rec.take()
    [row_id] = created.written
    env = prepare(registry=app.wsgi.registry)
    try:
        request = env["request"]
        request.tm.begin()
        request.headers["Cookie"] = f"session={app.cookies['session']}"
        request.session["cart"].append("milk")
        request.tm.commit()
    finally:
        env["closer"]()
    assert rec.take() == [RowChanges(written=frozenset({row_id}))]
    assert app.get("/read").json["data"] == {"cart": ["tea", "milk"]}


class Raiser(Recorder):
    """An observer that raises after recording (it should have caught its own)."""

    @hookimpl
    def session_rows_changed(self, factory: Any, changes: RowChanges) -> None:
        super().session_rows_changed(factory, changes)
        raise ValueError("the observer broke")


def test_an_observers_exception_undoes_no_commit_and_no_logout(recorded, caplog):
    app, rec = recorded(Raiser, {"max_age": "100"})
    with caplog.at_level(logging.ERROR, "sessions_kernel"):
        response = app.post_json("/set", {"a": 1})
    assert response.status_int == 200 and set_cookies(response)
    assert len(app.rows()) == 1 and len(rec.take()) == 1
    assert "the observer broke" in caplog.text
    caplog.clear()
    # a logout run again after the view raised: the redirect and the deleted cookie stand
    with caplog.at_level(logging.ERROR, "sessions_kernel"):
        response = app.post("/logout_redirect", status=302)
    assert [c for c in set_cookies(response) if c.startswith("session=;")]
    assert app.rows() == [] and [c.source for c in rec.take()] == ["replay"]
    assert "the observer broke" in caplog.text
    # collect_garbage: after the batch's commit, it propagates
    app.reset()
    app.post_json("/set", {"a": 1})
    rec.take()
    app.clock.advance(101)
    with pytest.raises(ValueError, match="the observer broke"):
        collect_garbage(app.factory, app.engine)
    assert app.rows() == [] and [c.source for c in rec.take()] == ["gc"]


# -- nothing recorded, nothing spent, while nobody observes -----------------------------------


STEPS = (
    ("post_json", "/set", {"a": 1}),
    ("get", "/read", None),
    ("post_json", "/set", {"b": 2}),
    ("post", "/regenerate", None),
    ("get", "/incr/b", None),
    ("post_json", "/invalidate", {"c": 3}),
    ("post", "/logout_redirect", None),
)


def run_steps(app: Any) -> list[list[str]]:
    """The statements of each of STEPS, in order."""
    seen = []
    for method, path, body in STEPS:
        args = (path,) if body is None else (path, body)
        with app.count() as sql:
            getattr(app, method)(*args, status="*")
        seen.append(list(sql.kinds()))
    return seen


def test_observing_costs_no_statement_and_nobody_observing_records_nothing(
    session_app, monkeypatch
):
    plain = session_app(make_model(RecordMixin), configure=add_views)
    assert not plain.factory.observed
    records = []
    monkeypatch.setattr(ChangeLog, "record", lambda self, **kw: records.append(kw))
    monkeypatch.setattr(ChangeLog, "announce", lambda self, source="request": records.append(0))
    expected = run_steps(plain)
    assert records == []  # nothing recorded, nothing announced
    assert expected[:3] == [["INSERT"], ["SELECT"], ["SELECT", "UPDATE"]]
    monkeypatch.undo()
    for plugin in (Recorder(), Server()):  # a server that knows no row: the kernel reads
        app = SessionTestApp(
            plain.model, plain.engine, plugins=[plugin], configure=add_views, clock=plain.clock
        )
        assert app.factory.observed
        assert run_steps(app) == expected
        assert len(plugin.changes) == 6  # all but the read


# -- session_row_lookup -----------------------------------------------------------------------


def stored_data(app: Any) -> dict[str, Any]:
    return app.factory.data_serializer.loads(app.row().data)


@pytest.fixture
def served(recorded):
    """``(app, server, row_id)``: a stored session ``{"a": 1}`` whose row the server serves,
    with ``{"a": "served"}`` as its data: a read that shows it was served."""
    app, server = recorded(Server, probe=False)
    app.post_json("/set", {"a": 1})
    values = server.fill(app)
    values["data"] = app.factory.data_serializer.dumps({"a": "served"})
    server.take()
    server.lookups.clear()
    server.order.clear()
    return app, server, app.row().id


def test_a_served_row_is_read_without_sql_as_served(served):
    app, server, row_id = served
    checkouts = []
    sa.event.listen(app.engine, "checkout", lambda *args: checkouts.append(1))
    for _ in range(2):
        with app.count() as sql:
            page = app.get("/read").json
        assert (page["data"], page["new"]) == ({"a": "served"}, False)
        assert sql.statements == []  # no SELECT, and no write of an unmodified row
    assert checkouts == []  # no connection taken, no transaction begun
    assert server.lookups == [row_id, row_id]
    assert server.order == ["lookup", "load"] * 2  # before session_load
    assert server.seen[0][:2] == (False, app.model)  # session.row not set yet
    assert server.take() == []


def test_a_served_row_joins_a_sqlalchemy_session_the_request_already_has(served):
    app, server, row_id = served
    with app.count() as sql:
        assert app.get("/attached").json == {"attached": False, "data": {"a": "served"}}
        assert app.get("/attached?first=1").json == {"attached": True, "data": {"a": "served"}}
    assert sql.statements == []
    assert server.lookups == [row_id, row_id]


def test_a_served_rows_write_is_one_update(served):
    app, server, row_id = served
    with app.count() as sql:
        app.post_json("/set", {"b": 2})
    assert sql.kinds() == ["UPDATE"], sql.statements
    assert stored_data(app) == {"a": "served", "b": 2}
    assert app.row().version == 2
    assert server.take() == [RowChanges(written=frozenset({row_id}))]


def test_a_stale_served_row_merges_with_what_is_stored(served):
    """The server serves version 1; another connection wrote version 2 meanwhile."""
    app, server, row_id = served
    server.fill(app)  # {"a": 1}, version 1
    table = app.model.__table__
    newer = app.factory.data_serializer.dumps({"a": 1, "other": 3})
    with app.engine.begin() as connection:
        connection.execute(table.update().values(data=newer, version=table.c.version + 1))
    app.post_json("/set", {"b": 2})
    assert stored_data(app) == {"a": 1, "other": 3, "b": 2}  # the other write kept
    assert app.row().version == 3
    # both changed "a": a conflict, run again on a locked read of the row, never served
    server.lookups.clear()
    with app.engine.begin() as connection:
        newer = app.factory.data_serializer.dumps({"a": 5, "other": 3, "b": 2})
        connection.execute(table.update().values(data=newer, version=table.c.version + 1))
    assert app.get("/incr/a").json["data"]["a"] == 6
    assert stored_data(app) == {"a": 6, "other": 3, "b": 2}
    assert server.lookups == [row_id]  # the first attempt only


def test_a_served_row_deleted_meanwhile_is_not_written_back(served):
    app, server, row_id = served
    with app.engine.begin() as connection:  # another process's logout
        connection.execute(app.model.__table__.delete())
    response = app.post_json("/set", {"b": 2})
    assert server.lookups == [row_id]  # served: the UPDATE found no row
    assert app.rows() == []
    assert [c for c in set_cookies(response) if c.startswith("session=;")]


def test_lookup_is_skipped_for_a_retried_attempt(served):
    app, server, row_id = served
    page = app.post("/retried").json
    assert page["data"] == {"a": 1}  # attempt 1 read the row itself
    assert server.lookups == [row_id]  # attempt 0 only
    assert stored_data(app) == {"a": 1, "attempt": 1}


def test_lookup_is_skipped_for_a_contended_row(served):
    app, server, row_id = served
    app.factory.storage.mark_contended(row_id)
    with app.count() as sql:
        assert app.get("/read").json["data"] == {"a": 1}
    assert sql.count >= 1 and server.lookups == []
    app.clock.advance(31)  # lock_contended_for later: served again
    assert app.get("/read").json["data"] == {"a": "served"}
    assert server.lookups == [row_id]


def test_lookup_is_skipped_for_a_peek(served):
    app, server, _ = served
    assert app.get("/peek").json == {"valid": True, "data": {"a": 1}}
    assert server.lookups == []


def test_lookup_is_skipped_for_a_row_the_sqlalchemy_session_holds(served):
    app, server, row_id = served
    assert app.get(f"/held_first?id={row_id}").json == {"data": {"a": 1}, "same": True}
    assert server.lookups == []


def test_lookup_is_skipped_for_a_row_the_shared_transaction_changed(served):
    """A row this transaction wrote or deleted is read as the transaction sees it, never
    from the server's committed (here: stale) values."""
    app, server, row_id = served
    server.fill(app)  # {"a": 1}, as committed
    cookie = app.cookies["session"]
    shared = Shared(starter_app(app, [server]), app.engine)
    browser = shared.browser(cookie)
    assert browser.get("/incr/a").json["data"] == {"a": 2}
    assert server.lookups == [row_id]  # not changed yet: served
    assert shared.browser(cookie).get("/read").json["data"] == {"a": 2}
    browser.post("/invalidate")
    page = shared.browser(cookie).get("/read").json
    assert (page["data"], page["new"]) == ({}, True)  # logged out, not served as logged in
    assert server.lookups == [row_id]
    shared.tm.abort()


def test_values_without_a_column_are_a_type_error_naming_it(served):
    app, server, row_id = served
    values = server.rows[row_id]
    for column in ("version", "data"):
        server.rows[row_id] = {k: v for k, v in values.items() if k != column}
        with pytest.raises(TypeError, match=rf"without the column attribute '{column}'"):
            app.get("/read")


def test_values_of_another_row_are_a_type_error(served):
    app, server, row_id = served
    server.rows[row_id] = {**server.rows[row_id], "id": "f" * 64}
    with pytest.raises(TypeError, match="another row's values"):
        app.get("/read")
    assert app.rows()[0].id == row_id


def test_the_application_loading_the_served_row_itself_then_a_write(served):
    app, server, row_id = served
    with app.count() as sql:
        page = app.post("/own_load").json
    assert page == {"data": {"a": "served", "own": True}, "same": False}
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements  # the application's SELECT
    assert stored_data(app) == {"a": "served", "own": True}
    assert server.lookups == [row_id]


def test_lookup_is_skipped_for_a_model_built_only_by_the_orm(recorded):
    """A ``load`` listener (``@reconstructor``): the kernel cannot build the row itself."""
    loaded = []
    attributes = {"on_load": sa.orm.reconstructor(lambda self: loaded.append(self.id))}
    app, server = recorded(Server, probe=False, model_attributes=attributes)
    app.post_json("/set", {"a": 1})
    row_id = server.fill(app)["id"]
    assert not app.factory.storage.servable
    loaded.clear()
    assert app.get("/read").json["data"] == {"a": 1}
    assert server.lookups == []
    assert loaded == [row_id]  # the ORM loaded it


def test_a_served_row_with_a_relationship_is_attached_at_once(recorded):
    """Its relationships load through the request's SQLAlchemy session: the row joins it
    when it is built, and a lazy load works."""
    owners = f"owners_{os.getpid()}"
    attributes = {
        "owner_id": sa.Column(sa.Integer, sa.ForeignKey(f"{owners}.id"), nullable=True),
        "owner": sa.orm.relationship("Owner", lazy="select"),
    }
    model = make_model(RecordMixin, **attributes)
    base = model.__bases__[-1]
    owner = type(  # kept: the declarative registry holds its classes weakly
        "Owner",
        (base,),
        {
            "__tablename__": owners,
            "id": sa.Column(sa.Integer, primary_key=True, autoincrement=False),
            "name": sa.Column(sa.String(40)),
        },
    )
    app, server = recorded(Server, probe=False, model=model)
    app.post_json("/set", {"a": 1})
    row_id = app.row().id
    with app.engine.begin() as connection:
        connection.execute(owner.__table__.insert().values(id=7, name="ann"))
        connection.execute(model.__table__.update().values(owner_id=7))
    server.fill(app)
    assert app.factory.storage.servable
    with app.count() as sql:
        assert app.get("/owner").json == {"attached": True, "owner": "ann"}
    assert len(sql.statements) == 1 and owners in sql.statements[0]  # the owner's only
    assert server.lookups == [row_id]


# -- psessions CONFIG ddl -----------------------------------------------------------------------

DDL_APP = """
import sqlalchemy as sa
import zope.sqlalchemy
from pyramid.config import Configurator
from sqlalchemy.orm import DeclarativeBase, sessionmaker

from sessions_kernel import BaseMixin
{import_mixin}

ENGINES = []


class Base(DeclarativeBase):
    pass


class Session({mixins}BaseMixin, Base):
    __tablename__ = {table!r}


def main(global_config, **settings):
    engine = sa.engine_from_config(settings, "sqlalchemy.")
    ENGINES.append(engine)
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


@pytest.fixture
def psessions(tmp_path, monkeypatch, session_db_url, session_engine):
    """``psessions(cached, *args)``: ``(exit code, output)`` of ``psessions <ini> *args`` on an
    application whose model has CacheMixin if ``cached``, on the database under test."""
    from sessions_kernel import cli, generate_secret_key

    table = f"ddl_{os.getpid()}"
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = []

    def run(cached: bool, *args: str) -> tuple[int, str]:
        module = f"ddlapp_{'cache' if cached else 'plain'}_{os.getpid()}"
        if module not in modules:
            source = DDL_APP.format(
                import_mixin="from sessions_cache import CacheMixin" if cached else "",
                mixins="CacheMixin, " if cached else "",
                table=table,
            )
            (tmp_path / f"{module}.py").write_text(source)
            modules.append(module)
        ini = tmp_path / f"{module}.ini"
        ini.write_text(
            f"[app:main]\nuse = call:{module}:main\nsqlalchemy.url = {session_db_url}\n"
            f"session.secret_key = {generate_secret_key()}\n"
            f"session.model_class = {module}.Session\n"
        )
        out = io.StringIO()
        code = cli.main([str(ini), *args], out=out)
        return code, out.getvalue()

    run.table = table
    yield run
    for module in modules:
        for engine in getattr(sys.modules.get(module), "ENGINES", ()):
            engine.dispose()
        sys.modules.pop(module, None)
    with session_engine.begin() as connection:
        connection.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        if session_engine.dialect.name == "postgresql":
            connection.execute(sa.text(f"DROP FUNCTION IF EXISTS {table}_notify()"))


def test_psessions_ddl_without_ddl_plugins_needs_nothing(psessions, session_engine):
    code, out = psessions(False, "ddl")
    dialect = session_engine.dialect.name
    assert (code, out) == (0, f"the active plugins of Session need no SQL on {dialect}\n")
    assert psessions(False, "ddl", "--apply") == (code, out)


def triggers(engine: sa.Engine, table: str) -> list[str]:
    with engine.connect() as connection:
        return sorted(
            connection.scalars(
                sa.text(
                    "SELECT tgname FROM pg_trigger "
                    "WHERE tgrelid = CAST(:t AS regclass) AND NOT tgisinternal"
                ),
                {"t": table},
            )
        )


def test_psessions_ddl_prints_and_applies_the_caches_trigger(psessions, session_engine):
    from sessions_cache import ddl

    code, out = psessions(True, "ddl")
    assert code == 0
    dialect = session_engine.dialect
    if dialect.name != "postgresql":  # the cache's trigger is PostgreSQL's only
        assert out == f"the active plugins of Session need no SQL on {dialect.name}\n"
        return
    table = sa.Table(psessions.table, sa.MetaData(), sa.Column("id", sa.String, primary_key=True))
    expected = ddl.statements(table, dialect)
    assert out == "".join(f"{statement.strip()};\n\n" for statement in expected)
    assert triggers(session_engine, psessions.table) == []  # printed, not run
    for _ in range(2):  # safe to run again
        assert psessions(True, "ddl", "--apply") == (
            0,
            f"applied {len(expected)} statements to {psessions.table}\n",
        )
        assert triggers(session_engine, psessions.table) == sorted(ddl.trigger_names(table))
    with session_engine.connect() as connection:  # the trigger notifies the cache's channel
        connection.exec_driver_sql(f'LISTEN "{ddl.channel_name(table)}"')
        connection.commit()
        with session_engine.begin() as writer:
            writer.execute(
                sa.text(
                    f"INSERT INTO {psessions.table} (id, created, updated, data, version) "
                    "VALUES ('k', 0, 0, '', 1)"
                )
            )
            writer.execute(sa.text(f"DELETE FROM {psessions.table}"))
        raw = connection.connection.driver_connection
        notes = list(raw.notifies(timeout=5, stop_after=1))
    assert [note.payload for note in notes] == ["k:-"]  # the key, deleted


def test_the_applications_own_orm_writes_of_a_row_are_announced_at_commit(recorded):
    """A column assigned on session.row that an autoflush wrote (the kernel then has nothing
    to write), a row deleted with dbsession.delete: told once their commit is done."""
    app, rec = recorded()
    app.post_json("/set", {"a": 1})
    row_id = app.row().id
    rec.take()
    assert app.post("/orm_write").json == {"dirty": False}
    [changes] = rec.take()
    assert changes.written == {row_id} and changes.source == "request"
    assert row_id in rec.stored[-1]  # announced after the commit
    app.post("/orm_delete")
    [changes] = rec.take()
    assert changes.deleted == {row_id}
    assert row_id not in rec.stored[-1]
    # a request that flushes nothing of the row announces nothing
    app.get("/read")
    assert rec.take() == []


def test_an_orm_write_rolled_back_is_not_announced(recorded):
    app, rec = recorded()
    app.post_json("/set", {"a": 1})
    created = app.row().created
    rec.take()
    app.post("/orm_write_fail", status=500)
    assert app.row().created == created  # the flushed UPDATE was rolled back
    assert rec.take() == []
    app.post("/orm_write")  # the next SQLAlchemy session's commit tells only its own
    [changes] = rec.take()
    assert changes.written == {app.row().id}
