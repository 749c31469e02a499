"""An outside review of 0.2's new promises (issue #25): the session after the commit,
pshell after ``tm.commit()``, flash messages of an aborted request, the deprecations.

Each ``test_break_*`` asserts what the docs promise. The review found each failing
(its docstring keeps the review's reason); the kernel was fixed, and they pass, but
one: a change in place in a response callback, which stays a strict xfail, a limit
docs/features.rst "After the commit" states. The ``test_held_*`` tests record
attacks that the kernel withstood. Tests that run requests run on SQLite,
PostgreSQL and MariaDB.
"""

from __future__ import annotations

import copy
import json
import warnings
from typing import Any

import pytest
import sqlalchemy as sa
from kernel_support import set_cookies
from pyramid.events import NewResponse
from pyramid.httpexceptions import HTTPFound
from pyramid.interfaces import ISessionFactory
from pyramid.scripting import prepare
from sessions_idle_timeout import IdleMixin
from sessions_userid import UseridMixin, invalidate_user_sessions, user_sessions
from zope.interface import Interface, alsoProvides

from sessions_kernel import SessionError, SessionsDeprecationWarning, deprecation
from sessions_kernel.testing import make_model


def _deprecations(record: Any) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, SessionsDeprecationWarning)]


def _views(config: Any) -> None:
    def view(path: str, func: Any) -> None:
        name = "breaks_" + path.strip("/").replace("/", "_")
        config.add_route(name, path)
        config.add_view(func, route_name=name, renderer="json")

    def shown_by_a_subscriber(event: Any) -> None:
        # a NewResponse subscriber that puts the session's data in the page (a header
        # here: a layout showing "logged in as ..." does the same)
        if event.request.path == "/breaks/subscriber":
            event.response.headers["X-Data"] = json.dumps(dict(event.request.session))

    config.add_subscriber(shown_by_a_subscriber, NewResponse)
    view("/breaks/subscriber", lambda request: {})

    def appended_in_a_callback(request: Any) -> Any:
        if request.params.get("touch"):
            request.session.get("items")  # the view used the session

        def append(request: Any, response: Any) -> None:
            request.session["items"].append("late")  # a change in place, after the commit

        request.add_response_callback(append)
        return {}

    view("/breaks/callback_append", appended_in_a_callback)

    def regenerated(request: Any) -> Any:
        request.session.regenerate_id()

        def seen(request: Any, response: Any) -> None:
            response.headers["X-Id"] = request.session.session_id

        request.add_response_callback(seen)
        return {"id": request.session.session_id}

    view("/breaks/regenerated", regenerated)

    def read_in_a_callback(request: Any) -> Any:
        def seen(request: Any, response: Any) -> None:
            response.headers["X-Data"] = json.dumps([dict(request.session), request.session.new])

        request.add_response_callback(seen)
        return {}

    view("/breaks/callback_read", read_in_a_callback)

    def changed_after_a_raised_redirect(request: Any) -> Any:
        request.session["in_view"] = True

        def change(request: Any, response: Any) -> None:
            request.session["late"] = 1

        request.add_response_callback(change)
        raise HTTPFound(location="/read")

    view("/breaks/raised_then_changed", changed_after_a_raised_redirect)

    def login(request: Any) -> Any:
        request.session.userid = int(request.params["user"])
        return {}

    view("/breaks/login", login)


def reading_tween(handler: Any, registry: Any) -> Any:
    """A tween over pyramid_tm's that reads the session before the request's transaction
    began (an authentication, logging or A/B tween). Before 0.2's read-only load that was
    a SessionError naming where to put the tween; now it is allowed."""

    def tween(request: Any) -> Any:
        request.session.get("items")
        return handler(request)

    return tween


def _views_with_reading_tween(config: Any) -> None:
    _views(config)
    config.add_tween("test_breaks_release.reading_tween", over="pyramid_tm.tm_tween_factory")


@pytest.fixture
def app(session_app):
    return session_app(make_model(), configure=_views)


@pytest.fixture
def told_nothing(monkeypatch):
    monkeypatch.setattr(deprecation, "_warned", set())


# -- 1. the session after the commit -------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="a limit, documented in docs/features.rst 'After the commit' (a value changed "
    "in place there): a change in place after the commit (request.session['items'].append"
    "(...) in a response callback) neither raises nor is stored. The response callback "
    "sees the change, the row keeps the old list. Found only by comparing the data at "
    "a later commit (pshell's next transaction); a response callback has none, and "
    "detecting it there would mean wrapping or copying every value handed out.",
)
@pytest.mark.parametrize("touch", ["", "1"], ids=["first_used_there", "used_in_view"])
def test_break_a_change_in_place_in_a_response_callback_is_silently_lost(app, touch):
    app.post_json("/set", {"items": ["a"]})
    raised = None
    try:
        app.get("/breaks/callback_append", {"touch": touch})
    except SessionError as exc:
        raised = exc
    stored = app.get("/read").json["data"]["items"]
    # the promise: refused (SessionError) or stored, never silently lost
    assert raised is not None or stored == ["a", "late"], f"lost: stored {stored}"


def test_break_a_page_whose_subscriber_first_uses_the_session_is_not_private(app):
    """Broken before the fix (the review's reason): a session first used in a NewResponse
    subscriber registers its response callback (Session._respond) after Pyramid ran the
    response callbacks: it never runs, so a page showing a stored session's data gets
    neither Cache-Control: private nor Vary: Cookie (docs/security.rst 'Shared caches';
    the response-callback case is private)"""
    app.post_json("/set", {"account": "alice's"})
    response = app.get("/breaks/subscriber")
    assert json.loads(response.headers["X-Data"]) == {"account": "alice's"}  # shows the session
    assert response.headers.get("Cache-Control") == "private"
    assert "Cookie" in response.headers.get("Vary", "")


# -- 1b. a read-only load before pyramid_tm began (a tween over pyramid_tm) ---------------------


def test_break_a_tween_over_pyramid_tm_makes_the_views_change_in_place_silently_lost(
    session_app,
):
    """Broken before the fix (the review's reason): a tween over pyramid_tm's that reads
    the session loads it read-only; the view then changes a value in place
    (setdefault('items', []).append(...), what /append does): __getitem__ never joins
    the view's transaction, so the change is lost with no error, though the view's
    response shows it. In 0.1 and before the read-only load this first use raised
    SessionError naming where to put the tween."""
    app = session_app(make_model(), configure=_views_with_reading_tween)
    app.post_json("/set", {"items": ["a"]})
    shown = app.post_json("/append", {"item": "b"}).json["data"]
    assert shown == {"items": ["a", "b"]}  # the view's answer
    assert app.get("/read").json["data"] == {"items": ["a", "b"]}  # stored ["a"] only


def test_break_a_tween_over_pyramid_tm_stops_the_idle_timeout_from_sliding(
    session_app, session_clock
):
    """Broken before the fix (the review's reason): with a tween over pyramid_tm's reading
    the session, a view that only reads never joins the view's transaction: no extend
    stage, so the idle timeout is never slid by activity and an active user is logged
    out (also: no renew stage)"""
    app = session_app(
        make_model(IdleMixin), {"idle_timeout": "60"}, configure=_views_with_reading_tween
    )
    app.post_json("/set", {"items": ["a"]})
    for _ in range(3):  # a request every 40 s, each inside the 60 s idle timeout
        session_clock.advance(40)
        assert app.get("/read").json["data"] == {"items": ["a"]}


def test_break_a_rejected_row_read_first_in_a_tween_is_never_deleted(session_app, session_clock):
    """Broken before the fix (the review's reason): docs/features.rst: 'a row a plugin
    rejects is not deleted then (the next request does)'. When the read-only-loaded
    session that was rejected is then changed in the request's transaction, a new
    session is stored and its cookie replaces the old one: no later request presents the
    rejected row's cookie, so it is never deleted by a request (nor is SessionRejected /
    session_invalidated ever told)"""
    app = session_app(
        make_model(IdleMixin), {"idle_timeout": "60"}, configure=_views_with_reading_tween
    )
    app.post_json("/set", {"items": ["secret"]})
    expired = app.row().id
    session_clock.advance(120)
    assert app.post_json("/set", {"x": 1}).json["data"] == {"x": 1}  # a new session
    app.get("/read")  # "the next request"
    assert expired not in [row.id for row in app.rows()]


# -- 1c. held: reading after the commit ---------------------------------------------------------


def test_held_an_expired_row_first_used_after_the_commit_is_hidden_not_deleted(
    session_app, session_clock
):
    app = session_app(make_model(IdleMixin), {"idle_timeout": "60"}, configure=_views)
    app.post_json("/set", {"secret": "x"})
    session_clock.advance(120)
    with app.count() as sql:
        response = app.get("/breaks/callback_read")
    assert sql.kinds() == ["SELECT"]
    assert json.loads(response.headers["X-Data"]) == [{}, True]
    assert set_cookies(response) == []
    assert "secret" not in response.text and "Cache-Control" not in response.headers
    assert len(app.rows()) == 1  # deleted by the next request, not by the read-only load
    app.get("/read")
    assert app.rows() == []


def test_held_a_regenerated_session_reads_its_new_id_after_the_commit(app):
    app.post_json("/set", {"a": 1})
    response = app.get("/breaks/regenerated")
    assert response.headers["X-Id"] == response.json["id"] == app.row().id
    assert len(set_cookies(response)) == 1
    assert app.get("/read").json["data"] == {"a": 1}  # the new cookie names the row


# -- after an abort (related: the docs speak of the commit only) --------------------------------


def test_break_a_change_in_a_response_callback_after_an_abort_is_silently_lost(app):
    """Broken before the fix (the review's reason): after an abort (a raised HTTPFound), a
    response callback's change of a session the view used passes check_open (the binding
    was never sealed) and is lost with no error; a session first used there raises, the
    one used in the view does not"""
    app.post_json("/set", {"a": 1})
    with pytest.raises(SessionError):
        app.get("/breaks/raised_then_changed", status=302)


# -- 2. pshell and scripts after tm.commit() -----------------------------------------------------


def test_break_pshell_a_change_in_place_before_the_next_begin_is_silently_lost(app):
    """Broken before the fix (the review's reason): pshell: after tm.commit(),
    request.session['items'].append(...) before tm.begin() arms nothing (guard_later
    finds no transaction), and the next transaction's commit succeeds: the change is
    lost. It is not a value kept from before the commit, the one hole the docs admit."""
    env = prepare(registry=app.wsgi.registry)
    try:
        request = env["request"]
        request.tm.begin()
        request.session["items"] = ["tea"]
        request.tm.commit()
        raised = None
        try:
            request.session["items"].append("milk")  # read after the commit
            request.tm.begin()
            request.tm.commit()
        except SessionError as exc:
            raised = exc
            request.tm.abort()
    finally:
        env["closer"]()
    (row,) = app.rows()
    assert raised is not None or row.data == b'{"items":["tea","milk"]}', row.data


def test_break_pshell_read_before_begin_then_a_change_in_place_is_silently_lost(app):
    """Broken before the fix (the review's reason): pshell with a browser's cookie: read
    before tm.begin() (a read-only load), then a change in place inside the transaction:
    __getitem__ does not join it, and tm.commit() stores nothing, with no error (a key
    set joins and is stored)"""
    app.post_json("/set", {"items": ["tea"]})
    env = prepare(registry=app.wsgi.registry)
    try:
        request = env["request"]
        request.headers["Cookie"] = f"session={app.cookies['session']}"
        assert request.session["items"] == ["tea"]
        request.tm.begin()
        request.session["items"].append("milk")
        request.tm.commit()
    finally:
        env["closer"]()
    assert app.get("/read").json["data"] == {"items": ["tea", "milk"]}


# -- 3. flash messages of an aborted request: held (tests/test_flash_abort.py covers them) --------

# -- 4. deprecations -------------------------------------------------------------------------------


def test_break_the_0_1_registry_key_is_refused_by_the_userid_queries(session_app, told_nothing):
    """Broken before the fix (the review's reason): registry['sessions_kernel.factory'] is
    a _LegacyFactoryKey proxy, not the SessionFactory: sessions-userid's queries check
    isinstance(source, SessionFactory), so the use 0.1's userid README documented (pass
    registry['sessions_kernel.factory'] with dbsession=) raises TypeError instead of
    working and warning"""
    app = session_app(make_model(UseridMixin), configure=_views)
    app.get("/breaks/login", {"user": "7"})
    registry = app.wsgi.registry
    with sa.orm.Session(app.engine) as db, warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        factory = registry["sessions_kernel.factory"]  # as sessions-userid 0.1's README says
        assert len(user_sessions(factory, 7, dbsession=db)) == 1
        assert invalidate_user_sessions(factory, 7, dbsession=db) == 1
        db.commit()
    assert len(_deprecations(record)) == 1
    assert app.rows() == []


def test_break_an_attribute_set_on_a_session_never_used_otherwise_never_warns(
    session_app, told_nothing
):
    """Broken before the fix (the review's reason): the undeclared-attribute check runs in
    Session._respond, a response callback registered at the session's first use: a view
    (or a tween, a subscriber) that sets request.session.<name> without otherwise using
    the session never warns, in any request, though the docs say it warns and 0.3 may
    refuse it (AttributeError)"""

    def views(config: Any) -> None:
        def flagged(request: Any) -> Any:
            request.session.seen_banner = True  # 0.1 style: state of one request
            return {"ok": True}

        config.add_route("flagged", "/flagged")
        config.add_view(flagged, route_name="flagged", renderer="json")

    app = session_app(make_model(), configure=views)
    app.post_json("/set", {"a": 1})  # a stored session: the browser presents its cookie
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert app.get("/flagged").json == {"ok": True}
    assert any("seen_banner" in message for message in _deprecations(record))


def test_held_no_false_positive_for_zope_interface_or_a_copy(session_app, told_nothing):
    class IMarked(Interface):
        pass

    def views(config: Any) -> None:
        def marked(request: Any) -> Any:
            alsoProvides(request.session, IMarked)  # sets __provides__ on the instance
            copy.copy(request.session)
            request.session["a"] = 1
            return {"marked": IMarked.providedBy(request.session)}

        config.add_route("marked", "/marked")
        config.add_view(marked, route_name="marked", renderer="json")

    app = session_app(make_model(), configure=views)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert app.get("/marked").json == {"marked": True}
    assert _deprecations(record) == []


def test_held_the_registry_key_reaches_the_same_factory_for_calls(session_app, told_nothing):
    app = session_app(make_model())
    registry = app.wsgi.registry
    with pytest.warns(SessionsDeprecationWarning):
        old = registry["sessions_kernel.factory"]
        assert old.model is registry.queryUtility(ISessionFactory).model


# -- held: a read-only-loaded session cannot bring back a session logged out meanwhile ------------


def _views_logged_out_meanwhile(config: Any) -> None:
    _views_with_reading_tween(config)
    engine = config.registry.settings["breaks.engine"]
    model = config.registry.settings["breaks.model"]

    def logged_out_meanwhile(request: Any) -> Any:
        # the tween loaded the session read-only; another request logs it out now
        with engine.begin() as conn:
            conn.execute(sa.delete(model.__table__))
        request.session["after"] = True  # joins the view's transaction
        return {}

    config.add_route("logged_out_meanwhile", "/breaks/logged_out_meanwhile")
    config.add_view(logged_out_meanwhile, route_name="logged_out_meanwhile", renderer="json")


def test_held_a_read_only_load_then_a_change_does_not_resurrect_a_logged_out_session(
    session_app, session_engine
):
    """The tween read the session with no transaction; another request logged it out
    (deleted its row); the view then changes it. The begin of the view's transaction
    dropped the read-only load, so the change loads the session again there: the row is
    gone, and the change starts a new, empty session (a new id, none of the old data),
    as any request presenting a logged-out cookie does. Nothing of the old session is
    written back."""
    model = make_model()
    app = session_app(
        model,
        configure=lambda config: (
            config.registry.settings.update(
                {"breaks.engine": session_engine, "breaks.model": model}
            ),
            _views_logged_out_meanwhile(config),
        ),
    )
    app.post_json("/set", {"items": ["a"]})
    old = app.row().id
    app.get("/breaks/logged_out_meanwhile")
    (row,) = app.rows()
    assert row.id != old and row.id[:24] != old[:24]  # another lineage: not the old session
    assert json.loads(row.data) == {"after": True}  # none of the old data
    assert app.get("/read").json["data"] == {"after": True}
