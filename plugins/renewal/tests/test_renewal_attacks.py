"""Theft detection under attack, and the owner's own parallel requests, on every database.

The attack of the security review (issue #24, item 1): the owner browses
every few seconds, a thief replays a copy of the cookie at a rhythm of its
own, keeping every cookie the server sends it, for 600 s of moved clock
(ten renewal periods). Whatever the two rhythms, the copy must be caught
within one renewal period of the first renewal after the theft, and the
owner must never be logged out before that. And the owner's own requests
racing at the moment of a renewal (parallel page loads, a slow request sent
with the old cookie) must never be taken for theft.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
from pyramid.interfaces import ISessionFactory
from sessions_renewal import (
    COOKIE_KEY,
    RenewalMixin,
    RenewalViolation,
    merge_states,
    next_renewal_id,
    renewal_digest,
)

from sessions_kernel.crypto import decode_payload
from sessions_kernel.events import SessionRejected
from sessions_kernel.merge import MergeConflict
from sessions_kernel.testing import Race, SessionTestApp, make_model

TIMEOUT = 60
TRY_EVERY = 5
DURATION = 600  # ten renewal periods
SETTINGS = {"renewal_timeout": TIMEOUT, "renewal_try_every": TRY_EVERY, "lock_contended_for": 0}


@pytest.fixture
def events():
    return []


def _app(session_app, events, **settings):
    def configure(config):
        config.add_subscriber(events.append, RenewalViolation)
        config.add_subscriber(events.append, SessionRejected)

    return session_app(
        make_model(RenewalMixin), settings={**SETTINGS, **settings}, configure=configure
    )


@pytest.fixture
def app(session_app, events):
    return _app(session_app, events)


@pytest.fixture
def sliding(session_app, events):
    """A cookie with a Max-Age: the kernel would send it again on every write."""
    return _app(session_app, events, cookie_max_age=3600)


def violations(events):
    return [e.detail for e in events if isinstance(e, RenewalViolation)]


def renewal_id(app, browser=None):
    """The renewal id in a browser's session cookie (the default browser's by default)."""
    factory = app.wsgi.registry.queryUtility(ISessionFactory)
    for cookie in (browser or app.browser).cookiejar:
        if cookie.name == "session":
            return decode_payload(factory.serializer.loads(cookie.value.strip('"')))[1].get(
                COOKIE_KEY
            )
    return None


def copy_cookies(source, target):
    target.cookiejar.clear()
    for cookie in source.cookiejar:
        target.cookiejar.set_cookie(copy.copy(cookie))


def deliver(browser, *responses):
    """The browser stores the session cookie of each response, in the order they arrive."""
    for response in responses:
        for header in response.headers.getall("Set-Cookie"):
            name, _, rest = header.partition("=")
            if name != "session":
                continue
            value = rest.split(";", 1)[0].strip('"')
            browser.cookiejar.clear()
            if value and "Max-Age=0" not in header:
                browser.set_cookie("session", value)


# -- the attack ---------------------------------------------------------------------------


@dataclass
class Outcome:
    caught_at: int | None  # seconds after the theft when RenewalViolation was sent
    renewals: int  # ids acknowledged after the theft, until then (or until the end)
    owner_out_before: bool  # the owner found itself logged out before any violation
    last_thief_read: int | None  # seconds after the theft of the thief's last read of the data
    both_out: bool  # after the violation, neither the owner nor the thief has the session


def simulate(
    app,
    events,
    *,
    owner_every,
    thief_every,
    stolen_at=0,
    thief_first=False,
    owner_path="/read",
    duration=DURATION,
):
    """The owner logs in at 0 and sends a request every ``owner_every`` s; from
    ``stolen_at`` a thief holding a copy of the owner's cookie sends one every
    ``thief_every`` s and stores every cookie it is sent. Runs until the first
    violation (and checks both are out then) or ``duration``."""
    app.post_json("/set", {"user": "owner"})
    thief = app.new_browser()
    stolen = False
    stored = app.row().renewal_id
    renewals = 0
    owner_out_before = False
    last_thief_read = None
    now = 0
    for t in range(1, duration + 1):
        owner_turn = t % owner_every == 0
        thief_turn = t % thief_every == 0 and t >= stolen_at
        if not (owner_turn or thief_turn or t == stolen_at):
            continue
        app.clock.advance(t - now)
        now = t
        if not stolen and t >= stolen_at:
            copy_cookies(app.browser, thief)
            stolen = True
        turns = ["thief", "owner"] if thief_first else ["owner", "thief"]
        for who in turns:
            if who == "owner" and owner_turn:
                data = app.get(owner_path).json["data"]
                if "user" not in data and not events:
                    owner_out_before = True
            elif who == "thief" and thief_turn:
                data = thief.get("/read").json["data"]
                if data.get("user") == "owner":
                    last_thief_read = t - stolen_at
        if violations(events):
            # the logged-in session is gone for both (the request that tripped the alarm
            # may have started a new one, a write storing it)
            out = all("user" not in b.get("/read").json["data"] for b in (app, thief))
            return Outcome(t - stolen_at, renewals, owner_out_before, last_thief_read, out)
        rows = app.rows()
        if len(rows) == 1 and rows[0].renewal_id != stored:
            stored = rows[0].renewal_id
            if stolen:
                renewals += 1
    return Outcome(None, renewals, owner_out_before, last_thief_read, False)


#: (owner's interval, thief's interval), seconds; renewal_try_every is 5
RHYTHMS = [(2, n) for n in (1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 13, 30, 61)] + [
    (1, 5),
    (4, 5),
    (5, 5),
    (7, 4),
    (10, 4),  # the owner idle for 10 s after it got the offer
    (30, 2),
]


def _check_caught(outcome, thief_every):
    assert outcome.caught_at is not None, f"never caught in {DURATION} s: {outcome}"
    # within one renewal period of the first renewal after the theft (the thief's next
    # request, for a thief slower than that)
    assert outcome.caught_at <= 2 * TIMEOUT + thief_every, outcome
    assert outcome.renewals <= 2, outcome
    assert not outcome.owner_out_before, outcome
    assert outcome.both_out, outcome
    # (the simulation stops at the violation: both_out says the thief reads nothing after)
    assert outcome.last_thief_read is None or outcome.last_thief_read <= outcome.caught_at


@pytest.mark.parametrize("thief_first", [False, True], ids=["owner-first", "thief-first"])
@pytest.mark.parametrize(("owner_every", "thief_every"), RHYTHMS, ids=lambda v: str(v))
def test_a_thief_replaying_at_any_rhythm_is_caught(
    app, events, owner_every, thief_every, thief_first
):
    outcome = simulate(
        app, events, owner_every=owner_every, thief_every=thief_every, thief_first=thief_first
    )
    _check_caught(outcome, thief_every)


@pytest.mark.parametrize(
    "stolen_at",
    [TIMEOUT - 1, TIMEOUT + 1, TIMEOUT + 3, TIMEOUT + 2 + TRY_EVERY, 3 * TIMEOUT + 1],
    ids=["before-offer", "offer-pending", "in-grace", "after-grace", "later-period"],
)
@pytest.mark.parametrize("thief_every", [3, 4, 5, 7])
def test_a_copy_made_at_any_moment_of_a_renewal_is_caught(app, events, stolen_at, thief_every):
    outcome = simulate(app, events, owner_every=2, thief_every=thief_every, stolen_at=stolen_at)
    _check_caught(outcome, thief_every)


@pytest.mark.parametrize(("owner_every", "thief_every"), [(2, 4), (2, 5), (10, 4)])
def test_a_thief_is_caught_when_every_write_sends_the_cookie(
    sliding, events, owner_every, thief_every
):
    """cookie_max_age set and the owner writing: the kernel would send a cookie every time."""
    outcome = simulate(
        sliding,
        events,
        owner_every=owner_every,
        thief_every=thief_every,
        owner_path="/incr/clicks",
    )
    _check_caught(outcome, thief_every)


@pytest.mark.parametrize("owner_every", [1, 2, 4, 5, 7, 10, 30])
def test_the_owner_alone_is_never_logged_out(app, events, owner_every):
    outcome = simulate(app, events, owner_every=owner_every, thief_every=DURATION + 1)
    assert outcome.caught_at is None and events == []
    assert not outcome.owner_out_before
    assert outcome.renewals >= DURATION // (TIMEOUT + owner_every) - 1


def test_a_thief_holding_the_current_id_gets_no_candidate_while_an_offer_is_pending(app, events):
    """The owner takes the offer and goes idle; the thief, with the same (current) id,
    asks again and again. The candidate goes to one request only: every re-offer is a
    new one, so the two holders part and the slower is caught."""
    app.post_json("/set", {"a": 1})
    thief = app.new_browser()
    copy_cookies(app.browser, thief)
    current = renewal_id(app)
    app.clock.advance(TIMEOUT)
    app.get("/read")  # the owner gets the offer ...
    owners = renewal_id(app)
    assert owners == next_renewal_id(current)
    for _ in range(2):  # ... and reads for 10 s; the thief replays every 4 s
        app.clock.advance(4)
        assert thief.get("/read").json["data"] == {"a": 1}
        assert renewal_id(app, thief) != owners
    app.clock.advance(2)
    assert app.get("/read").json["new"] is True  # the owner's candidate was replaced
    assert violations(events) == ["unknown id"]
    assert thief.get("/read").json["new"] is True


# -- the owner's parallel requests at the renewal moment ------------------------------------


FINISH_ORDERS = {
    "in-order": [0, 1, 2, 3, 4, 5],
    "reversed": [5, 4, 3, 2, 1, 0],
    "interleaved": [3, 0, 5, 1, 4, 2],
}


@pytest.mark.parametrize("order", FINISH_ORDERS.values(), ids=FINISH_ORDERS.keys())
@pytest.mark.parametrize("ack_between", [False, True], ids=["no-ack", "ack-between"])
def test_six_page_loads_at_the_renewal_moment_are_no_theft(sliding, events, order, ack_between):
    """Six requests loaded with one cookie as the renewal falls due, two of them writes,
    finished in various orders; optionally the browser acknowledges the candidate (with
    the first response's cookie) while the others still run."""
    app = sliding
    app.post_json("/set", {"a": 1})
    current = renewal_id(app)
    app.clock.advance(TIMEOUT)
    paths = ["/read", "/incr/b", "/read", "/read", "/incr/c", "/read"]
    with Race(app) as race:
        racers = [race.start(path) for path in paths]
        for i, index in enumerate(order):
            response = racers[index].finish()
            assert response.status_int == 200
            deliver(app.browser, response)  # the browser stores what arrives, in order
            if ack_between and i == 1:
                assert app.get("/read").json["new"] is False  # the acknowledgement
    candidate = next_renewal_id(current)
    for racer in racers:
        sent = racer.response.headers.getall("Set-Cookie")
        if sent:
            assert renewal_id(app, racer.browser) == candidate  # never another id
    assert renewal_id(app) == candidate
    _browse_on(app, events, expect={"a": 1, "b": 1, "c": 1})


def _browse_on(app, events, expect):
    """The owner's browser goes on: past the grace window and the next renewal, no theft."""
    for _ in range(TIMEOUT // 2 + TRY_EVERY):
        app.clock.advance(2)
        response = app.get("/read")
        assert response.json["new"] is False, violations(events)
        assert response.json["data"] == expect
    assert events == []


# -- a slow request sent with the old cookie --------------------------------------------------


@pytest.mark.parametrize(
    "loaded",
    ["before-due", "at-due", "offer-pending", "reoffer-due", "in-grace"],
)
@pytest.mark.parametrize("slow_commits_first", [False, True], ids=["ack-first", "slow-first"])
def test_a_slow_request_with_the_old_cookie_is_no_theft(
    sliding, events, loaded, slow_commits_first
):
    """A slow write (an upload) sent with the old cookie: loaded at some moment of the
    renewal, it finishes after the browser took the new cookie and acknowledged it (or,
    ``slow-first``, while the acknowledging request still runs). Its response arrives last.
    """
    app = sliding
    app.post_json("/set", {"a": 1})
    old = app.new_browser()
    copy_cookies(app.browser, old)  # the cookie the slow request is sent with
    app.clock.advance(TIMEOUT - 1)
    with Race(app) as race:
        if loaded == "before-due":
            slow = race.start("/incr/upload", browser=old)
        app.clock.advance(1)
        if loaded == "at-due":
            slow = race.start("/incr/upload", browser=old)
        app.get("/read")  # the offer
        if loaded == "offer-pending":
            slow = race.start("/incr/upload", browser=old)
        if loaded == "reoffer-due":
            app.clock.advance(TRY_EVERY)
            slow = race.start("/incr/upload", browser=old)
        else:
            app.clock.advance(1)
        if loaded == "in-grace":
            app.get("/read")  # the acknowledgement
            app.clock.advance(TRY_EVERY - 1)
            slow = race.start("/incr/upload", browser=old)
            arrived = [slow.finish()]
        elif slow_commits_first:
            ack = race.start("/read")  # the acknowledgement, still running
            arrived = [slow.finish(), ack.finish()]
        else:
            ack_response = app.get("/read")  # the acknowledgement
            arrived = [ack_response, slow.finish()]
    assert all(response.status_int == 200 for response in arrived)
    deliver(app.browser, *arrived)
    assert events == []
    _browse_on(app, events, expect={"a": 1, "upload": 1})


def test_reoffers_racing_from_one_state_offer_the_same_candidate(app, events):
    app.post_json("/set", {"a": 1})
    old = app.new_browser()
    copy_cookies(app.browser, old)
    current = renewal_id(app)
    app.clock.advance(TIMEOUT)
    app.get("/read")
    first = renewal_id(app)
    app.clock.advance(TRY_EVERY)
    with Race(app, browser=old) as race:
        a, b = race.start("/read"), race.start("/incr/b")
        b.finish()
        a.finish()
    expected = next_renewal_id(current, renewal_digest(first))
    assert renewal_id(app, a.browser) == renewal_id(app, b.browser) == expected
    assert app.row().renewal_candidate == renewal_digest(expected)
    deliver(app.browser, b.response, a.response)
    _browse_on(app, events, expect={"a": 1, "b": 1})


def test_a_previous_id_that_regenerates_gets_a_new_chain(sliding, events):
    """A login (regenerate_id) sent with the old cookie, inside the grace window: its
    response carries the new session id with a new renewal id, neither the current nor
    the previous one."""
    app = sliding
    app.post_json("/set", {"a": 1})
    late = app.new_browser()
    copy_cookies(app.browser, late)
    previous = renewal_id(app)
    app.clock.advance(TIMEOUT)
    app.get("/read")
    app.get("/read")  # acknowledged
    current = renewal_id(app)
    app.clock.advance(TRY_EVERY - 1)
    late.post("/regenerate")
    fresh = renewal_id(app, late)
    assert fresh not in (previous, current, None)
    assert app.row().renewal_id == renewal_digest(fresh)
    app.clock.advance(TRY_EVERY)
    assert late.get("/read").json["data"] == {"a": 1}
    assert events == []


def test_an_adopting_browsers_request_in_flight_keeps_the_new_id(session_app, events):
    """Adoption: a write sent with the id-less cookie whose response arrives after the
    adopting one must not take the id out of the browser."""
    model = make_model(RenewalMixin)
    before = session_app(model, {"cookie_max_age": 3600})  # renewal off
    before.post_json("/set", {"a": 1})

    def configure(config):
        config.add_subscriber(events.append, RenewalViolation)

    after = SessionTestApp(
        model,
        before.engine,
        clock=before.clock,
        settings={**SETTINGS, "cookie_max_age": 3600},
        configure=configure,
    )
    copy_cookies(before.browser, after.browser)
    old = after.new_browser()
    copy_cookies(after.browser, old)
    with Race(after, browser=old) as race:
        slow = race.start("/incr/b")  # sent with the id-less cookie
        after.get("/read")  # the adoption: the browser gets its first id
        slow.finish()
    assert renewal_id(after) is not None
    deliver(after.browser, slow.response)
    assert renewal_id(after) is not None
    _browse_on(after, events, expect={"a": 1, "b": 1})


# -- the group merge rule -------------------------------------------------------------------


def _state(renewal_id, at, candidate=None, offered=None, previous=None):
    return {
        "renewal_id": renewal_id,
        "renewal_at": at,
        "renewal_candidate": candidate,
        "renewal_offered_at": offered,
        "renewal_previous": previous,
    }


def test_merge_keeps_the_stored_state_unless_this_step_applies_to_it():
    base = _state("A", 100, "C1", 160)
    reoffer = _state("A", 100, "C2", 165)  # a new candidate, to a request with A
    ack = _state("C1", 165, previous="A")  # the browser acknowledged C1
    # the first stored stands: its response is on its way
    assert merge_states(base, reoffer, ack) == ack
    assert merge_states(base, ack, reoffer) == reoffer
    # an acknowledgement of the candidate the stored state still offers applies to it
    retimed = _state("A", 100, "C1", 161)
    assert merge_states(base, ack, retimed) == ack
    assert merge_states(base, ack, dict(ack)) == ack
    # identical steps of concurrent requests (parallel page loads)
    first = _state("A", 100, "C1", 160)
    assert merge_states(_state("A", 100), first, dict(first)) == first
    # where the database refuses the second write outright, it gives way
    assert merge_states.droppable
    # a further state stands against an older step
    further = _state("C1", 165, "D1", 230)
    assert merge_states(base, reoffer, further) == further
    # a new session id starts a new chain: the old token's cookies are dead anyway
    regenerated = _state("R", 170)
    assert merge_states(base, regenerated, ack) == regenerated
    # two adoptions cannot both stand
    with pytest.raises(MergeConflict, match="different renewal chains"):
        merge_states(_state(None, None), _state("R1", 100), _state("R2", 100))
