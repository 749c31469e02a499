"""sessions-stepup's tests, on sessions-kernel 0.1's test kit, kept as written for 0.1."""

from __future__ import annotations

import pytest
import sessions_stepup
from pyramid.interfaces import ISessionFactory
from sessions_stepup import StepUpMixin

from sessions_kernel import SessionInfo
from sessions_kernel.testing import make_model

WINDOW = 300


def add_views(config):
    config.include("sessions_stepup")  # the view predicate

    def confirm_password(request):  # the password was checked: step up
        request.session.step_up()
        return {"stepped_up": request.session.stepped_up}

    def status(request):
        return {"stepped_up": request.session.stepped_up}

    def delete_account(request):  # found only inside a step-up
        return {"deleted": True}

    config.add_route("confirm", "/confirm")
    config.add_view(confirm_password, route_name="confirm", renderer="json")
    config.add_route("status", "/status")
    config.add_view(status, route_name="status", renderer="json")
    config.add_route("danger", "/danger")
    config.add_view(delete_account, route_name="danger", renderer="json", stepped_up=True)


@pytest.fixture
def model():
    return make_model(StepUpMixin)


@pytest.fixture
def app(session_app, model):
    return session_app(model, configure=add_views, plugins=[sessions_stepup])


def test_the_predicate_hides_a_view_until_the_user_steps_up(app):
    app.post_json("/set", {"cart": 1})
    app.get("/danger", status=404)
    assert app.get("/confirm").json == {"stepped_up": True}
    assert app.get("/danger").json == {"deleted": True}


def test_stepping_up_is_one_update_of_the_plugins_columns(app, session_clock):
    app.post_json("/set", {"cart": 1})
    session_clock.advance(5)
    with app.count() as sql:
        app.get("/confirm")
    assert sql.kinds() == ["SELECT", "UPDATE"]
    row = app.row()
    assert row.stepup_session_id == row.id  # granted to this session's id
    assert row.stepup_at == int(session_clock())


def test_stepping_up_on_a_new_session_is_one_insert(app):
    with app.count() as sql:
        app.get("/confirm")
    assert sql.kinds() == ["INSERT"]
    assert app.get("/status").json == {"stepped_up": True}
    row = app.row()
    assert row.stepup_session_id == row.id


def test_a_read_inside_the_window_writes_nothing(app, session_clock):
    app.get("/confirm")
    session_clock.advance(WINDOW - 1)
    with app.count() as sql:
        assert app.get("/status").json == {"stepped_up": True}
    assert sql.kinds() == ["SELECT"]


def test_the_window_ends_and_the_columns_are_cleared(app, session_clock):
    app.get("/confirm")
    session_clock.advance(WINDOW)
    app.get("/danger", status=404)  # an error response: its transaction is aborted
    with app.count() as sql:
        assert app.get("/status").json == {"stepped_up": False}
    assert sql.kinds() == ["SELECT", "UPDATE"]  # the first request that commits clears them
    row = app.row()
    assert (row.stepup_session_id, row.stepup_at) == (None, None)
    with app.count() as sql:
        app.get("/status")
    assert sql.kinds() == ["SELECT"]


def test_a_new_id_ends_the_step_up(app):
    app.get("/confirm")
    app.get("/regenerate")
    assert app.get("/status").json == {"stepped_up": False}
    row = app.row()
    assert (row.stepup_session_id, row.stepup_at) == (None, None)


def test_a_copied_row_of_another_id_does_not_step_up(app, session_clock, model, session_engine):
    app.get("/confirm")
    other = app.new_browser()
    other.post_json("/set", {"cart": 2})
    rows = {row.id: row for row in app.rows()}
    with session_engine.begin() as conn:  # a step-up written for another id is not this one's
        granted = next(r for r in rows.values() if r.stepup_session_id is not None)
        conn.execute(
            model.__table__.update()
            .where(model.__table__.c.id != granted.id)
            .values(stepup_session_id=granted.id, stepup_at=granted.stepup_at)
        )
    assert other.get("/status").json == {"stepped_up": False}


def test_the_window_is_a_setting(session_app, model, session_clock):
    app = session_app(
        model, settings={"stepup_window": "60"}, configure=add_views, plugins=[sessions_stepup]
    )
    app.get("/confirm")
    session_clock.advance(60)
    assert app.get("/status").json == {"stepped_up": False}


def test_a_bad_window_stops_the_application(session_app, model):
    with pytest.raises(Exception, match="stepup_window"):
        session_app(
            model, settings={"stepup_window": "0"}, configure=add_views, plugins=[sessions_stepup]
        )


def test_your_sessions_shows_the_step_up(app, session_clock):
    app.get("/confirm")
    factory = app.wsgi.registry.queryUtility(ISessionFactory)
    row = app.row()
    assert factory.describe(row) == SessionInfo(
        session_id=row.id,
        created=int(session_clock()),
        last_active=int(session_clock()),
        expires=None,  # the plugin expires no session: the step-up is not the session's end
        details={"stepup_at": int(session_clock())},
    )
