"""When each part of ``request.session`` is made, and what a request's own requests outlive.

The session's state is in parts made at its first use (docs/internals.rst). These
tests pin what users and plugins can observe of that: a call that needs no stored
session reads none, what the request asked for outlives a rejection, a first use that
fails makes nothing, and the events of choosing the cookie may look at the session.
"""

from __future__ import annotations

import json

import pytest
from pyramid.scripting import prepare
from sessions_idle_timeout import IdleMixin

from sessions_kernel import SessionError, events, hookimpl
from sessions_kernel.testing import make_model


def add_view(config, path, view):
    name = path.strip("/")
    config.add_route(name, path)
    config.add_view(view, route_name=name, renderer="json")


def keep_only(request):
    request.session.keep_cookie()
    return {}


@pytest.fixture
def keeping(session_app):
    model = make_model(IdleMixin)
    return session_app(
        model, {"idle_timeout": "60"}, configure=lambda c: add_view(c, "/keep", keep_only)
    )


def test_keep_cookie_alone_reads_no_session(keeping):
    with keeping.count() as sql:
        response = keeping.get("/keep")
    assert sql.kinds() == []
    assert "Vary" not in response.headers and "Set-Cookie" not in response.headers


def test_keep_cookie_alone_neither_extends_nor_rejects_a_stored_session(keeping):
    keeping.post_json("/set", {"a": 1})
    keeping.clock.advance(30)
    (expire,) = [row.idle_expire for row in keeping.rows()]
    with keeping.count() as sql:
        keeping.get("/keep")
    assert sql.kinds() == []
    assert [row.idle_expire for row in keeping.rows()] == [expire]  # not extended
    keeping.clock.advance(31)  # expired now: a use of the session would delete it
    response = keeping.get("/keep")
    assert len(keeping.rows()) == 1 and "Set-Cookie" not in response.headers


class ChangedMixin:
    """No column: activates ``MarksChanged``."""


class MarksChanged:
    """Calls ``session.changed()`` at load: the request asks for a write whatever happens."""

    @hookimpl
    def session_mixins(self):
        return [ChangedMixin]

    @hookimpl
    def session_load(self, session):
        if session.row is not None:
            session.changed()


def test_changed_at_load_outlives_a_rejection(session_app):
    # changed() is the request's; a rejection replaces the session, not the request's
    # wishes: the new, empty session is written and its cookie sent (only invalidate()
    # withdraws changed() and regenerate_id())
    model = make_model(ChangedMixin, IdleMixin)
    app = session_app(model, {"idle_timeout": "60"}, plugins=[MarksChanged()])
    app.post_json("/set", {"a": 1})
    old = app.row().id
    app.clock.advance(61)
    response = app.get("/read")
    (row,) = app.rows()
    assert row.id != old and json.loads(row.data) == {}
    assert (
        response.headers["Set-Cookie"].startswith("session=")
        and "Max-Age=0" not in (response.headers["Set-Cookie"])
    )


def test_a_first_use_without_a_transaction_reads_and_a_change_asks_for_one(session_app):
    """pshell without request.tm.begin(): the session reads (a read-only load), a change
    raises naming begin(); once begun, the change is the transaction's."""
    app = session_app(make_model())
    app.post_json("/set", {"a": 1})
    env = prepare(registry=app.wsgi.registry)  # pshell, without request.tm.begin()
    try:
        request = env["request"]
        request.headers["Cookie"] = f"session={app.cookies['session']}"
        session = request.session
        assert session.get("a") == 1
        assert session.now > 0
        session.keep_cookie()  # needs no stored session: it reads none, and does not fail
        with pytest.raises(SessionError, match=r"request\.tm\.begin\(\)"):
            session["a"] = 2
        request.tm.begin()
        session["a"] = 3
        request.tm.abort()
    finally:
        env["closer"]()
    assert app.get("/read").json["data"] == {"a": 1}  # nothing was stored


def test_a_subscriber_to_the_cookie_events_may_read_the_session_id(session_app):
    seen = []

    def look(event):
        seen.append((type(event).__name__, len(event.request.session.session_id)))

    def configure(config):
        config.add_subscriber(look, events.CookieRejected)
        config.add_subscriber(look, events.SessionNotFound)

    app = session_app(make_model(), configure=configure)
    app.set_cookie("session", "not-a-cookie")
    app.post_json("/set", {"a": 1})
    assert seen == [("CookieRejected", 64)]
    assert len(app.rows()) == 1
