"""The renewal protocol on every database: offer, re-offer, acknowledgement, grace, theft."""

from __future__ import annotations

import os

import pytest
from pyramid.interfaces import ISessionFactory
from sessions_renewal import (
    COOKIE_KEY,
    ID_BYTES,
    REASON,
    ConfigRenewalMixin,
    RenewalMixin,
    RenewalViolation,
    next_renewal_id,
    renewal_digest,
)

from sessions_kernel.crypto import decode_payload, encode_payload
from sessions_kernel.events import SessionRejected
from sessions_kernel.testing import Race, SessionTestApp, make_model

TIMEOUT = 60
TRY_EVERY = 5
SETTINGS = {"renewal_timeout": TIMEOUT, "renewal_try_every": TRY_EVERY}


def _listen(events):
    def configure(config):
        config.add_subscriber(events.append, RenewalViolation)
        config.add_subscriber(events.append, SessionRejected)

    return configure


@pytest.fixture(params=[RenewalMixin, ConfigRenewalMixin], ids=["plain", "config"])
def mixin(request):
    return request.param


@pytest.fixture
def events():
    return []


@pytest.fixture
def app(session_app, mixin, events):
    return session_app(make_model(mixin), settings=SETTINGS, configure=_listen(events))


@pytest.fixture
def sliding(session_app):
    """A cookie with a Max-Age: the kernel sends the cookie again on every write."""
    events: list = []
    app = session_app(
        make_model(RenewalMixin),
        settings={**SETTINGS, "cookie_max_age": 3600},
        configure=_listen(events),
    )
    app.sliding_events = events
    return app


def payload(app, cookie=None):
    """(token, renewal id) inside a session cookie (the default browser's by default)."""
    factory = app.wsgi.registry.queryUtility(ISessionFactory)
    token, extras = decode_payload(factory.serializer.loads(cookie or app.cookies["session"]))
    return token, extras.get(COOKIE_KEY)


def make_cookie(app, token, renewal_id):
    """A cookie the server could have made (tests hold the key; a thief does not)."""
    factory = app.wsgi.registry.queryUtility(ISessionFactory)
    extras = {} if renewal_id is None else {COOKIE_KEY: renewal_id}
    return factory.serializer.dumps(encode_payload(token, extras))


def start(app):
    """A new session with data; returns its first cookie."""
    app.post_json("/set", {"a": 1})
    return app.cookies["session"]


def offer(app):
    """Move to the renewal time and read: the response offers a candidate."""
    app.clock.advance(TIMEOUT)
    response = app.get("/read")
    assert "Set-Cookie" in response.headers
    return app.cookies["session"]


def use(browser, cookie, path="/read"):
    """A request of ``browser`` carrying exactly ``cookie``."""
    browser.cookiejar.clear()
    browser.set_cookie("session", cookie)
    return browser.get(path)


def test_first_cookie_carries_the_first_id_and_the_row_its_hash(app):
    with app.count() as sql:
        app.post_json("/set", {"a": 1})
    assert sql.kinds() == ["INSERT"], sql.statements
    _, rid = payload(app)
    assert len(rid) == ID_BYTES
    row = app.row()
    assert row.renewal_id == renewal_digest(rid)
    assert rid.hex() not in {row.renewal_id, row.id}
    assert (row.renewal_at, row.renewal_candidate, row.renewal_previous) == (
        row.created,
        None,
        None,
    )


@pytest.mark.parametrize(("offset", "offered"), [(-1, False), (0, True), (1, True)])
def test_offer_at_renewal_timeout(app, offset, offered):
    first = start(app)
    token, rid = payload(app)
    app.clock.advance(TIMEOUT + offset)
    with app.count() as sql:
        response = app.get("/read")
    assert response.json["data"] == {"a": 1}
    if not offered:
        assert sql.kinds() == ["SELECT"], sql.statements
        assert "Set-Cookie" not in response.headers
        assert app.cookies["session"] == first
        return
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assert "Set-Cookie" in response.headers
    new_token, candidate = payload(app)
    assert new_token == token
    assert candidate == next_renewal_id(rid)
    row = app.row()
    assert row.renewal_id == renewal_digest(rid)
    assert row.renewal_candidate == renewal_digest(candidate)
    assert row.renewal_offered_at == int(app.clock())


def test_old_id_stays_valid_while_the_offer_is_pending_and_a_new_candidate_is_offered(app, events):
    first = start(app)
    _, rid = payload(app)
    offered = offer(app)
    offered_at = int(app.clock())
    candidate = payload(app, offered)[1]
    # The browser did not store the new cookie (lost response): it keeps sending the old one.
    app.clock.advance(TRY_EVERY - 1)
    with app.count() as sql:
        response = use(app, first)
    assert sql.kinds() == ["SELECT"], sql.statements
    assert "Set-Cookie" not in response.headers
    app.clock.advance(1)
    with app.count() as sql:
        response = use(app, first)
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    # a re-offer sends a new candidate, derived from the current id and the one it replaces
    again = payload(app)[1]
    assert again != candidate
    assert again == next_renewal_id(rid, renewal_digest(candidate))
    row = app.row()
    assert row.renewal_candidate == renewal_digest(again)
    assert row.renewal_offered_at == offered_at + TRY_EVERY
    # and again try_every seconds after the re-offer, not before, with another candidate
    app.clock.advance(TRY_EVERY - 1)
    assert "Set-Cookie" not in use(app, first).headers
    app.clock.advance(1)
    assert "Set-Cookie" in use(app, first).headers
    assert payload(app)[1] == next_renewal_id(rid, renewal_digest(again))
    assert events == []
    # the browser acknowledges the last candidate
    assert app.get("/read").json["data"] == {"a": 1}
    assert app.row().renewal_id == renewal_digest(payload(app)[1])
    assert events == []


def test_a_replaced_candidate_is_an_unknown_id(app, events):
    """Whoever still holds a candidate a re-offer replaced is a second holder of the cookie."""
    first = start(app)
    offered = offer(app)  # to one holder of the cookie ...
    app.clock.advance(TRY_EVERY)
    use(app.new_browser(), first)  # ... and a new candidate to another one
    response = use(app.new_browser(), offered)
    assert response.json["new"] is True
    assert [e.detail for e in events if isinstance(e, RenewalViolation)] == ["unknown id"]
    assert app.rows() == []


def test_a_write_with_the_current_id_while_the_offer_is_pending_hands_out_no_id(sliding):
    """Neither the candidate (a second holder of the current id would get it too) nor the
    current id (it would replace the candidate in a browser that holds it by now)."""
    app = sliding
    first = start(app)
    offer(app)
    app.clock.advance(TRY_EVERY - 1)
    with app.count() as sql:
        response = use(app.new_browser(), first, "/incr/a")
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assert response.json["data"] == {"a": 2}
    assert "Set-Cookie" not in response.headers
    assert app.get("/read").json["data"] == {"a": 2}  # the browser acknowledges
    assert app.sliding_events == []


def test_acknowledgement_makes_the_candidate_current(app):
    first = start(app)
    offer(app)
    _, candidate = payload(app)
    app.clock.advance(1)
    with app.count() as sql:
        response = app.get("/read")
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    # the browser already holds the id it acknowledged: the cookie is not sent again
    assert "Set-Cookie" not in response.headers
    assert payload(app)[1] == candidate
    row = app.row()
    assert row.renewal_id == renewal_digest(candidate)
    assert row.renewal_previous == renewal_digest(payload(app, first)[1])
    assert (row.renewal_candidate, row.renewal_offered_at) == (None, None)
    assert row.renewal_at == int(app.clock())
    # the next renewal is due renewal_timeout seconds after the acknowledgement
    app.clock.advance(TIMEOUT - 1)
    with app.count() as sql:
        assert "Set-Cookie" not in app.get("/read").headers
    assert sql.kinds() == ["SELECT"]
    app.clock.advance(1)
    with app.count() as sql:
        app.get("/read")
    assert sql.kinds() == ["SELECT", "UPDATE"]
    assert payload(app)[1] == next_renewal_id(candidate)
    assert app.row().renewal_previous is None, "the next offer forgets the previous id"


def test_old_id_within_grace_is_served_and_handed_no_id(sliding):
    """In the grace window the previous id is served, and its response never carries the
    current id (a thief replaying the old cookie would keep it) nor the previous one (it
    would replace the current one in the owner's browser)."""
    app = sliding
    first = start(app)
    offer(app)
    app.get("/read")  # acknowledgement
    # A request the browser sent with the old cookie before it stored the new one.
    late = app.new_browser()
    app.clock.advance(TRY_EVERY - 1)
    with app.count() as sql:
        response = use(late, first, "/incr/a")  # a write: the kernel would send the cookie
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assert response.json["data"] == {"a": 2}
    assert "Set-Cookie" not in response.headers
    # a read-only one costs one SELECT
    with app.count() as sql:
        response = use(late, first)
    assert sql.kinds() == ["SELECT"], sql.statements
    assert "Set-Cookie" not in response.headers
    assert app.sliding_events == []
    # the owner's browser holds the current id, which works after the window
    app.clock.advance(1)
    assert app.get("/read").json["data"] == {"a": 2}
    assert app.sliding_events == []
    # and the copy of the old cookie, kept as it was, is caught at its next use
    assert use(late, first).json["new"] is True
    assert [e.detail for e in app.sliding_events if isinstance(e, RenewalViolation)] == [
        "previous id after the grace window"
    ]


def test_old_id_after_the_grace_window_is_a_violation(app, events):
    first = start(app)
    offer(app)
    app.get("/read")  # acknowledgement
    sid = app.row().id
    app.clock.advance(TRY_EVERY)
    late = app.new_browser()
    with app.count() as sql:
        response = use(late, first)
    assert response.json["new"] is True and response.json["data"] == {}
    assert sql.kinds() == ["SELECT", "DELETE"], sql.statements
    assert response.headers["Set-Cookie"].startswith("session=; Max-Age=0")
    assert [type(e) for e in events] == [RenewalViolation, SessionRejected]
    assert events[0].session_id == sid and events[0].detail == "previous id after the grace window"
    assert events[1].reason == REASON
    assert app.rows() == []


def test_stolen_cookie_used_after_the_renewal_logs_out_both(app, events):
    start(app)
    thief = app.new_browser()
    thief.set_cookie("session", app.cookies["session"])
    assert thief.get("/read").json["data"] == {"a": 1}  # the copy works before renewal
    offer(app)
    app.clock.advance(1)
    app.get("/read")  # the owner acknowledges
    app.clock.advance(3600)
    response = thief.get("/read")
    assert response.json == {"data": {}, "new": True, "created": int(app.clock()), "flash": {}}
    assert isinstance(events[0], RenewalViolation)
    assert app.rows() == []
    assert app.get("/read").json["new"] is True  # the owner is logged out too


def test_stolen_cookie_used_first_logs_out_the_owner(app, events):
    """Whoever acknowledges first holds the session; the other copy then trips the alarm."""
    start(app)
    thief = app.new_browser()
    thief.set_cookie("session", app.cookies["session"])
    app.clock.advance(TIMEOUT)
    thief.get("/read")  # offer, to the thief
    app.clock.advance(1)
    thief.get("/read")  # the thief acknowledges
    app.clock.advance(TRY_EVERY)
    assert app.get("/read").json["new"] is True
    assert [e.detail for e in events if isinstance(e, RenewalViolation)] == [
        "previous id after the grace window"
    ]
    assert thief.get("/read").json["new"] is True


@pytest.mark.parametrize("pending", [False, True], ids=["settled", "offer-pending"])
def test_unknown_id_is_a_violation(app, events, pending):
    start(app)
    if pending:
        offer(app)
    token, _ = payload(app)
    forged = make_cookie(app, token, os.urandom(ID_BYTES))
    response = use(app.new_browser(), forged)
    assert response.json["new"] is True
    assert [e.detail for e in events if isinstance(e, RenewalViolation)] == ["unknown id"]
    assert app.rows() == []


def test_missing_id_is_a_violation(app, events):
    start(app)
    token, _ = payload(app)
    app.clock.advance(TRY_EVERY)
    response = use(app.new_browser(), make_cookie(app, token, None))
    assert response.json["new"] is True
    assert [e.detail for e in events if isinstance(e, RenewalViolation)] == ["missing id"]


def test_a_violation_replaces_the_session_with_a_fresh_one_with_its_own_id(app):
    first = start(app)
    offer(app)
    app.get("/read")
    app.clock.advance(TRY_EVERY)
    late = app.new_browser()
    use(late, first, "/none")
    late.post_json("/set", {"b": 2})
    row = app.row()
    _, rid = payload(app, late.cookies["session"])
    assert row.renewal_id == renewal_digest(rid)
    assert late.get("/read").json["data"] == {"b": 2}


def test_plugin_does_nothing_when_renewal_timeout_is_none(session_app, mixin):
    app = session_app(make_model(mixin), {"max_age": "none"})  # read ten years later
    with app.count() as sql:
        app.post_json("/set", {"a": 1})
    assert sql.kinds() == ["INSERT"]
    assert payload(app)[1] is None
    row = app.row()
    assert (row.renewal_id, row.renewal_at) == (None, None)
    app.clock.advance(10 * 365 * 24 * 3600)
    with app.count() as sql:
        response = app.get("/read")
    assert sql.kinds() == ["SELECT"]
    assert "Set-Cookie" not in response.headers


def test_session_stored_before_the_feature_was_on_is_adopted(session_app, mixin, events):
    model = make_model(mixin)
    before = session_app(model)  # renewal_timeout None
    before.post_json("/set", {"a": 1})
    old_cookie = before.cookies["session"]
    assert payload(before)[1] is None
    after = SessionTestApp(
        model, before.engine, clock=before.clock, settings=SETTINGS, configure=_listen(events)
    )
    after.set_cookie("session", old_cookie)
    before.clock.advance(100)
    with after.count() as sql:
        response = after.get("/read")
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assert response.json["data"] == {"a": 1}
    _, rid = payload(after)
    assert after.row().renewal_id == renewal_digest(rid)
    assert after.row().renewal_at == int(before.clock())
    # a request sent with the id-less cookie before the new one arrived is no theft ...
    before.clock.advance(TRY_EVERY - 1)
    assert use(after.new_browser(), old_cookie).json["data"] == {"a": 1}
    assert events == []
    # ... but after the grace window the id-less copy is one
    before.clock.advance(1)
    assert use(after.new_browser(), old_cookie).json["new"] is True
    assert [e.detail for e in events if isinstance(e, RenewalViolation)] == ["missing id"]


@pytest.fixture
def classifications(monkeypatch):
    """Every classification of a presented id (a SHA-256 of it and comparisons), counted."""
    import sessions_renewal

    calls = []
    classify = sessions_renewal._classify

    def counted(*args):
        calls.append(kind := classify(*args))
        return kind

    monkeypatch.setattr(sessions_renewal, "_classify", counted)
    return calls


def test_the_presented_id_is_classified_once_per_request(app, classifications):
    start(app)
    app.get("/read")  # current, nothing due
    assert classifications == ["current"]
    classifications.clear()
    offer(app)  # current, an offer made
    assert classifications == ["current"]
    classifications.clear()
    app.get("/read")  # the acknowledgement
    assert classifications == ["acknowledgement"]
    classifications.clear()
    app.post_json("/set", {"b": 2})  # a write
    assert classifications == ["current"]


def test_a_reoffer_merged_over_an_acknowledgement_stores_the_acknowledgement(app, events):
    """The group rule keeps the state further on, even when that is the other request's.

    A carries the old id and re-offers the candidate; B carries the candidate
    and acknowledges it. B commits first: A's merge must store B's state whole,
    not A's re-offer time over it.
    """
    first = start(app)
    offered = offer(app)
    app.clock.advance(TRY_EVERY)  # the old id is due a re-offer
    old_browser, new_browser = app.new_browser(), app.new_browser()
    old_browser.set_cookie("session", first)
    new_browser.set_cookie("session", offered)
    with Race(app) as race:
        reoffer = race.start("/read", browser=old_browser)
        ack = race.start("/read", browser=new_browser)
        ack.finish()
        reoffer.finish()
    assert (reoffer.response.status_int, ack.response.status_int) == (200, 200)
    row = app.row()
    assert row.renewal_id == renewal_digest(payload(app, offered)[1])
    assert row.renewal_previous == renewal_digest(payload(app, first)[1])
    assert (row.renewal_candidate, row.renewal_offered_at) == (None, None)
    assert row.renewal_at == int(app.clock())
    # both browsers still read the session: nobody was taken for a thief
    assert use(old_browser, first).json["data"] == {"a": 1}
    assert use(new_browser, offered).json["data"] == {"a": 1}
    assert events == []
