"""The idle timeout across its boundaries, on every database, with both mixins.

Each behaviour runs in three variants:

* ``plain``: :class:`IdleMixin`, settings given globally;
* ``config``: :class:`ConfigIdleMixin`, settings given globally;
* ``per_session``: :class:`ConfigIdleMixin`, the feature off globally and the
  settings saved on each session through ``request.session.settings``.

The clock starts at ``t0`` when the session is written; the stored expiry is
then ``t0 + 100``.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
import sessions_idle_timeout
import sqlalchemy as sa
from pyramid.interfaces import ISessionFactory
from sessions_idle_timeout import ConfigIdleMixin, IdleMixin

from sessions_kernel.events import SessionRejected
from sessions_kernel.testing import SessionTestApp, make_model

TIMEOUT = 100
VARIANTS = ["plain", "config", "per_session"]
CHANCE = {"idle_timeout": TIMEOUT, "extension_delay": 10, "extension_chance": 50}


class FixedDraw:
    """A stand-in for ``random_source`` whose every draw is ``value``; counts the draws."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.draws = 0

    def random(self) -> float:
        self.draws += 1
        return self.value


def set_columns(statement: str) -> list[str]:
    """The column names of an UPDATE's SET clause, on any of the three dialects.

    ``version``, which every UPDATE of the kernel increments (its guard against
    concurrent writes), is left out: the tests look at what the request changed.
    """
    clause = statement.split(" SET ", 1)[1].rsplit(" WHERE ", 1)[0]
    columns = (part.split("=")[0].strip().strip('"`') for part in clause.split(","))
    return sorted(column for column in columns if column != "version")


@pytest.fixture(params=VARIANTS)
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def rejected() -> list[SessionRejected]:
    return []


@pytest.fixture
def build(session_app, variant, rejected):
    """``build(**settings)``: an app for the variant, the idle settings given as keywords."""

    def configure(config: Any) -> None:
        config.add_subscriber(rejected.append, SessionRejected)

    def make(**settings: Any) -> SessionTestApp:
        if variant == "plain":
            app = session_app(make_model(IdleMixin), settings, configure=configure)
            app.per_session = None
        elif variant == "config":
            app = session_app(make_model(ConfigIdleMixin), settings, configure=configure)
            app.per_session = None
        else:
            app = session_app(make_model(ConfigIdleMixin), {}, configure=configure)
            app.per_session = settings
        return app

    return make


def start(app: SessionTestApp) -> int:
    """Write a session holding ``{"a": 1}`` now; return the time ``t0`` of that write."""
    app.post_json("/set", {"a": 1})
    if app.per_session:
        assert app.post_json("/settings", app.per_session).status_int == 200
    row = app.row()
    t0 = int(app.clock())
    assert row.idle_expire == t0 + app_settings(app)["idle_timeout"]
    return t0


def app_settings(app: SessionTestApp) -> dict[str, Any]:
    factory = app.wsgi.registry.queryUtility(ISessionFactory)
    return factory.config.row_settings(app.row())


def read_at(app: SessionTestApp, t: int) -> tuple[Any, Any]:
    """GET /read with the clock at ``t``; return (response, statement counter)."""
    app.clock.time = float(t)
    with app.count() as sql:
        response = app.get("/read")
    return response, sql


def assert_not_extended(app: SessionTestApp, response: Any, sql: Any, expire: int) -> None:
    assert sql.kinds() == ["SELECT"], sql.statements
    assert "Set-Cookie" not in response.headers
    assert response.json["new"] is False
    assert app.row().idle_expire == expire


def assert_extended(app: SessionTestApp, response: Any, sql: Any, now: int) -> None:
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assert set_columns(sql.statements[1]) == ["idle_expire"], sql.statements[1]
    assert response.json["new"] is False
    # the cookie did not change (a browser-session cookie): it is not sent again
    assert "Set-Cookie" not in response.headers
    row = app.row()
    assert row.idle_expire == now + TIMEOUT
    assert row.updated < now  # an extension is not a change of the session's content


# -- the idle timeout itself ---------------------------------------------------------------


@pytest.mark.parametrize("offset", [TIMEOUT - 1, TIMEOUT, TIMEOUT + 1])
def test_session_expires_at_idle_timeout(build, rejected, offset):
    app = build(idle_timeout=TIMEOUT)
    t0 = start(app)
    sid = app.row().id
    response, sql = read_at(app, t0 + offset)
    if offset < TIMEOUT:
        assert response.json == {"data": {"a": 1}, "new": False, "created": t0, "flash": {}}
        assert rejected == []
        assert app.row().id == sid
    else:
        # Deleted on load; the fresh session is empty, so nothing new is stored
        # and the browser's cookie is deleted.
        assert response.json["new"] is True and response.json["data"] == {}
        assert sql.kinds() == ["SELECT", "DELETE"], sql.statements
        assert [(e.session_id, e.reason) for e in rejected] == [(sid, "idle timeout")]
        assert app.rows() == []
        assert response.headers["Set-Cookie"].startswith("session=; Max-Age=0")


def test_expired_session_is_replaced_by_a_fresh_one(build, rejected):
    app = build(idle_timeout=TIMEOUT)
    t0 = start(app)
    old = app.row().id
    app.clock.time = float(t0 + TIMEOUT)
    with app.count() as sql:
        response = app.get("/incr/b")
    assert Counter(sql.kinds()) == Counter(["SELECT", "DELETE", "INSERT"]), sql.statements
    assert response.json["data"] == {"b": 1} and response.json["new"] is True
    assert [e.reason for e in rejected] == ["idle timeout"]
    row = app.row()
    assert row.id != old
    assert row.created == t0 + TIMEOUT
    # The fresh session has the idle timeout of the global settings; a per-session
    # value belonged to the deleted session.
    expected = None if app.per_session else t0 + 2 * TIMEOUT
    assert row.idle_expire == expected


def test_regular_reads_keep_the_session_alive(build):
    app = build(idle_timeout=TIMEOUT)
    t0 = start(app)
    for step in range(1, 11):  # 10 reads, 99 s apart: 990 s, far past the first expiry
        response, sql = read_at(app, t0 + 99 * step)
        assert_extended(app, response, sql, t0 + 99 * step)
    assert app.get("/read").json["data"] == {"a": 1}


@pytest.mark.parametrize("offset", [5, 11, 31])
def test_every_write_sets_the_expiry_without_a_draw(build, monkeypatch, offset):
    never = FixedDraw(0.99)
    monkeypatch.setattr(sessions_idle_timeout, "random_source", never)
    app = build(**CHANCE, extension_deadline=30)
    t0 = start(app)
    app.clock.time = float(t0 + offset)  # inside the delay, in the chance, past the deadline
    with app.count() as sql:
        app.get("/incr/a")
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assert set_columns(sql.statements[1]) == ["data", "idle_expire", "updated"]
    assert app.row().idle_expire == t0 + offset + TIMEOUT
    assert never.draws == 0


def test_read_in_the_same_second_writes_nothing(build, monkeypatch):
    never = FixedDraw(0.99)
    monkeypatch.setattr(sessions_idle_timeout, "random_source", never)
    app = build(idle_timeout=TIMEOUT)  # no delay, chance 100: every read may extend
    t0 = start(app)
    response, sql = read_at(app, t0)
    assert_not_extended(app, response, sql, t0 + TIMEOUT)
    assert never.draws == 0  # chance 100 never draws


# -- extension_delay -------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [9, 10, 11])
def test_extension_delay_boundary(build, monkeypatch, offset):
    never = FixedDraw(0.99)
    monkeypatch.setattr(sessions_idle_timeout, "random_source", never)
    app = build(idle_timeout=TIMEOUT, extension_delay=10)  # extension_chance 100: no draw
    t0 = start(app)
    response, sql = read_at(app, t0 + offset)
    if offset < 10:
        assert_not_extended(app, response, sql, t0 + TIMEOUT)
    else:
        assert_extended(app, response, sql, t0 + offset)
    assert never.draws == 0


def test_the_delay_counts_from_the_last_extension(build):
    app = build(idle_timeout=TIMEOUT, extension_delay=10)
    t0 = start(app)
    response, sql = read_at(app, t0 + 15)
    assert_extended(app, response, sql, t0 + 15)
    response, sql = read_at(app, t0 + 24)
    assert_not_extended(app, response, sql, t0 + 15 + TIMEOUT)
    response, sql = read_at(app, t0 + 25)
    assert_extended(app, response, sql, t0 + 25)


# -- extension_chance and extension_deadline ----------------------------------------------


@pytest.mark.parametrize("offset", [29, 30, 31])
def test_deadline_forces_the_extension_when_the_draw_declines(build, monkeypatch, offset):
    never = FixedDraw(0.99)  # 99 >= 50: every draw declines
    monkeypatch.setattr(sessions_idle_timeout, "random_source", never)
    app = build(**CHANCE, extension_deadline=30)
    t0 = start(app)
    response, sql = read_at(app, t0 + offset)
    if offset < 30:
        assert_not_extended(app, response, sql, t0 + TIMEOUT)
        assert never.draws == 1
    else:
        assert_extended(app, response, sql, t0 + offset)
        assert never.draws == 0  # past the deadline no draw is made


@pytest.mark.parametrize(("draw", "extends"), [(0.0, True), (0.49, True), (0.5, False)])
def test_chance_decides_between_delay_and_deadline(build, monkeypatch, draw, extends):
    monkeypatch.setattr(sessions_idle_timeout, "random_source", FixedDraw(draw))
    app = build(**CHANCE, extension_deadline=30)
    t0 = start(app)
    response, sql = read_at(app, t0 + 11)
    if extends:
        assert_extended(app, response, sql, t0 + 11)
    else:
        assert_not_extended(app, response, sql, t0 + TIMEOUT)


def test_no_draw_inside_the_delay(build, monkeypatch):
    always = FixedDraw(0.0)
    monkeypatch.setattr(sessions_idle_timeout, "random_source", always)
    app = build(**CHANCE, extension_deadline=30)
    t0 = start(app)
    response, sql = read_at(app, t0 + 9)
    assert_not_extended(app, response, sql, t0 + TIMEOUT)
    assert always.draws == 0


def test_seeded_chance_sometimes_skips_and_the_deadline_keeps_the_session(build, monkeypatch):
    monkeypatch.setattr(sessions_idle_timeout, "random_source", random.Random(2024))
    app = build(**CHANCE, extension_deadline=30)
    t0 = start(app)
    outcomes = []
    last = t0
    for step in range(1, 41):  # a read every 12 s: past the delay, mostly before the deadline
        now = t0 + 12 * step
        response, sql = read_at(app, now)
        assert response.json["data"] == {"a": 1}
        extended = sql.kinds() == ["SELECT", "UPDATE"]
        if now - last >= 30:
            assert extended, f"at +{now - t0}: {now - last} s since the last extension"
        if extended:
            assert set_columns(sql.statements[1]) == ["idle_expire"]
            last = now
        else:
            assert sql.kinds() == ["SELECT"]
        assert app.row().idle_expire == last + TIMEOUT
        outcomes.append(extended)
    # Both outcomes happen, and fewer writes than reads: that is what the chance is for.
    assert 0 < outcomes.count(True) < len(outcomes)
    assert outcomes.count(False) >= 5


# -- statement counts (the figures of the issue) -------------------------------------------


def test_statements_per_request_with_extension_delay(build):
    app = build(idle_timeout=TIMEOUT, extension_delay=60)
    with app.count() as sql:
        app.post_json("/set", {"a": 1})
    assert sql.kinds() == ["INSERT"], sql.statements
    if app.per_session:
        app.post_json("/settings", app.per_session)
    t0 = int(app.clock())

    response, sql = read_at(app, t0 + 59)  # inside the delay: one SELECT, no cookie
    assert sql.count == 1 and sql.kinds() == ["SELECT"], sql.statements
    assert "Set-Cookie" not in response.headers

    response, sql = read_at(app, t0 + 60)  # the first read past it: SELECT + UPDATE idle_expire
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assert set_columns(sql.statements[1]) == ["idle_expire"]


# -- the feature off, and settings changed between deployments -----------------------------


def test_feature_off_stores_no_expiry_and_never_writes_on_read(session_app):
    app = session_app(make_model(IdleMixin), {"max_age": "none"})  # else the kernel's max age
    app.post_json("/set", {"a": 1})
    assert app.row().idle_expire is None
    response, sql = read_at(app, int(app.clock()) + 10 * 365 * 24 * 3600)
    assert_not_extended(app, response, sql, None)
    assert response.json["data"] == {"a": 1}


def second_app(app: SessionTestApp, **settings: Any) -> SessionTestApp:
    """Another deployment of ``app``'s model and table, with other settings, same browser cookie."""
    other = SessionTestApp(app.model, app.engine, settings=settings, clock=app.clock)
    other.set_cookie("session", app.cookies["session"])
    return other


def test_shortened_timeout_applies_at_the_next_request(session_app):
    app = session_app(make_model(IdleMixin), {"idle_timeout": 1000, "extension_delay": 100})
    app.post_json("/set", {"a": 1})
    t0 = int(app.clock())
    assert app.row().idle_expire == t0 + 1000
    short = second_app(app, idle_timeout=TIMEOUT, extension_delay=10)
    # inside the new delay, but the stored expiry is later than the new timeout allows
    response, sql = read_at(short, t0 + 5)
    assert_extended(short, response, sql, t0 + 5)
    response, sql = read_at(short, t0 + 5 + TIMEOUT)
    assert response.json["new"] is True


def test_feature_turned_off_ignores_stored_expiry(session_app):
    app = session_app(make_model(IdleMixin), {"idle_timeout": TIMEOUT})
    app.post_json("/set", {"a": 1})
    t0 = int(app.clock())
    off = second_app(app)
    response, sql = read_at(off, t0 + 10 * TIMEOUT)
    assert_not_extended(off, response, sql, t0 + TIMEOUT)  # kept as it was: no write
    assert response.json["data"] == {"a": 1}
    off.get("/incr/a")  # the next write clears it
    assert off.row().idle_expire is None


def test_feature_turned_on_extends_sessions_written_while_off(session_app):
    app = session_app(make_model(IdleMixin))
    app.post_json("/set", {"a": 1})
    t0 = int(app.clock())
    on = second_app(app, idle_timeout=TIMEOUT, extension_delay=10)
    response, sql = read_at(on, t0 + 1)
    assert_extended(on, response, sql, t0 + 1)


# -- maintenance hooks ---------------------------------------------------------------------


def factory_of(app: SessionTestApp) -> Any:
    return app.wsgi.registry.queryUtility(ISessionFactory)


def test_describe_reports_idle_expiry_and_last_activity(build):
    app = build(idle_timeout=TIMEOUT, extension_delay=10)
    t0 = start(app)
    read_at(app, t0 + 40)  # a read-only extension: recorded by the plugin, not by `updated`
    row = app.row()
    info = factory_of(app).describe(row)
    assert row.updated == t0
    assert (info.created, info.last_active, info.expires) == (t0, t0 + 40, t0 + 40 + TIMEOUT)


def test_expired_conditions_select_the_rows_validate_rejects(build):
    app = build(idle_timeout=TIMEOUT)
    t0 = start(app)  # expires at t0 + 100
    other = app.new_browser()
    app.clock.time = float(t0 + 30)
    other.post_json("/set", {"b": 1})
    if app.per_session:
        other.post_json("/settings", app.per_session)  # expires at t0 + 130
    factory = factory_of(app)
    model = app.model

    def expired_at(now: int) -> int:
        conditions = [
            c
            for result in factory.hook.session_expired_conditions(
                model=model, settings=factory.config.values, now=now
            )
            for c in result or ()
        ]
        with sa.orm.Session(app.engine) as db:
            return db.scalar(sa.select(sa.func.count()).where(sa.or_(*conditions)))

    assert [expired_at(t0 + d) for d in (99, 100, 129, 130)] == [0, 1, 1, 2]
    assert {factory.describe(row).expires for row in app.rows()} == {t0 + 100, t0 + 130}


def test_expiry_column_is_indexed(build):
    app = build(idle_timeout=TIMEOUT)
    assert sessions_idle_timeout.session_indexes(app.model) == ["idle_expire"]
    indexes = sa.inspect(app.engine).get_indexes(app.model.__tablename__)
    assert any(index["column_names"] == ["idle_expire"] for index in indexes), indexes
