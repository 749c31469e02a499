"""SessionFactory.peek: the session validated, never extended, nothing written or sent."""

from __future__ import annotations

from typing import Any

import pytest
from pyramid.interfaces import ISessionFactory
from sessions_idle_timeout import IdleMixin

from sessions_kernel import events
from sessions_kernel.testing import make_model


def _views(config: Any) -> None:
    seen: list[Any] = []
    config.registry["seen"] = seen
    config.add_subscriber(seen.append, events.SessionEvent)

    def peek(request: Any) -> Any:
        result = request.registry.getUtility(ISessionFactory).peek(request)
        return {
            "valid": result.valid,
            "rejected": result.rejected,
            "reason": result.reason,
            "data": dict(result.data),
            "expires": result.info.expires if result.info else None,
        }

    def peek_then_use(request: Any) -> Any:
        request.registry.getUtility(ISessionFactory).peek(request)
        return {"data": dict(request.session), "new": request.session.new}

    config.add_route("peek", "/peek")
    config.add_view(peek, route_name="peek", renderer="json")
    config.add_route("peek_then_use", "/peek_then_use")
    config.add_view(peek_then_use, route_name="peek_then_use", renderer="json")


@pytest.fixture
def app(session_app):
    return session_app(make_model(IdleMixin), settings={"idle_timeout": "60"}, configure=_views)


def test_a_valid_session_is_shown_and_not_extended(app):
    app.post_json("/set", {"cart": [1]})
    expire = app.row().idle_expire
    app.clock.advance(30)
    with app.count() as sql:
        response = app.get("/peek")
    assert sql.kinds() == ["SELECT"]  # and no UPDATE of idle_expire
    assert response.json == {
        "valid": True,
        "rejected": False,
        "reason": None,
        "data": {"cart": [1]},
        "expires": expire,
    }
    assert "Set-Cookie" not in response.headers
    assert app.row().idle_expire == expire


def test_an_expired_session_is_reported_without_its_data_and_kept(app):
    app.post_json("/set", {"cart": [1]})
    app.clock.advance(60)
    seen = app.wsgi.registry["seen"]
    seen.clear()
    with app.count() as sql:
        response = app.get("/peek").json
    assert response == {
        "valid": False,
        "rejected": True,
        "reason": "idle timeout",
        "data": {},
        "expires": None,
    }
    assert sql.kinds() == ["SELECT"]
    # reported as a real request would report it, marked as a peek's
    assert [(type(e).__name__, e.reason, e.peek) for e in seen] == [
        ("SessionRejected", "idle timeout", True)
    ]
    assert len(app.rows()) == 1  # the next real use deletes it, not a peek
    seen.clear()
    assert app.get("/read").json["new"] is True
    assert app.rows() == []
    assert [(type(e).__name__, e.peek) for e in seen] == [("SessionRejected", False)]


@pytest.mark.parametrize(
    ("cookie", "reason"),
    [(None, "no session cookie"), ("garbage", "no stored session")],
)
def test_no_session(app, cookie, reason):
    browser = app.new_browser()
    if cookie:
        browser.set_cookie("session", cookie)
    with app.count() as sql:
        response = browser.get("/peek")
    assert response.json["reason"] == reason and not response.json["valid"]
    assert sql.count == 0 and "Set-Cookie" not in response.headers
    seen = app.wsgi.registry["seen"]
    assert [(type(e).__name__, e.peek) for e in seen] == (
        [("CookieRejected", True)] if cookie else []
    )


def test_a_peek_reports_a_stolen_cookie_as_a_real_request_would(session_app):
    """A status poller that sees a thief's replayed cookie: RenewalViolation is sent."""
    from sessions_renewal import RenewalMixin, RenewalViolation

    app = session_app(
        make_model(RenewalMixin),
        settings={"renewal_timeout": "60", "renewal_try_every": "5"},
        configure=_views,
    )
    app.post_json("/set", {"a": 1})
    stolen = app.cookies["session"]
    app.clock.advance(60)
    app.get("/read")  # the offer
    app.clock.advance(1)
    app.get("/read")  # acknowledged: the stolen cookie is the previous id now
    app.clock.advance(10)  # and past the grace window
    seen = app.wsgi.registry["seen"]
    seen.clear()
    thief = app.new_browser()
    thief.set_cookie("session", stolen)
    response = thief.get("/peek").json
    assert response["rejected"] and response["reason"] == "renewal violation"
    assert [(type(e).__name__, e.peek) for e in seen] == [
        ("RenewalViolation", True),
        ("SessionRejected", True),
    ]
    assert isinstance(seen[0], RenewalViolation)
    assert len(app.rows()) == 1  # acted on by the next real request only


def test_a_peek_leaves_request_session_alone(app):
    app.post_json("/set", {"a": 1})
    assert app.get("/peek_then_use").json == {"data": {"a": 1}, "new": False}
