"""Absolute timeout on SQLite, PostgreSQL and MariaDB, through a real Pyramid app."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from pyramid.interfaces import ISessionFactory
from sessions_absolute_timeout import (
    MAX_ABSOLUTE_TIMEOUT,
    REASON,
    AbsoluteMixin,
    ConfigAbsoluteMixin,
)

from sessions_kernel import ConfigurationError, SettingsError, session_factory
from sessions_kernel.events import SessionRejected
from sessions_kernel.testing import TEST_SECRET_KEY, SessionTestApp, make_model

TIMEOUT = 100
MIXINS = [AbsoluteMixin, ConfigAbsoluteMixin]


def views(rejected: list):
    """Views that edit settings the ways an application does, and a SessionRejected log."""

    def configure(config):
        def add(path, func):
            config.add_route(path, path)
            config.add_view(func, route_name=path, renderer="json")

        def save(request):  # edit(), attribute assignment, save(); then data
            body = request.json_body
            settings = request.session.settings.edit()
            settings.absolute_timeout = body.pop("absolute_timeout")
            settings.save()
            request.session.update(body)
            return {"absolute_timeout": request.session.settings.absolute_timeout}

        def discard(request):
            settings = request.session.settings.edit()
            settings["absolute_timeout"] = request.json_body["absolute_timeout"]
            seen = settings.absolute_timeout
            settings.discard()
            return {"seen": seen, "after": request.session.settings.absolute_timeout}

        def unsaved(request):
            request.session.settings.edit()["absolute_timeout"] = 7
            request.session["touched"] = True
            return {"seen": request.session.settings["absolute_timeout"]}

        def failing_block(request):  # the context manager discards on error
            try:
                with request.session.settings as s:
                    s["absolute_timeout"] = 5
                    raise LookupError("the view gave up")
            except LookupError:
                pass
            return {"after": request.session.settings.absolute_timeout}

        add("/abs/save", save)
        add("/abs/discard", discard)
        add("/abs/unsaved", unsaved)
        add("/abs/failing_block", failing_block)
        config.add_subscriber(lambda event: rejected.append(event.reason), SessionRejected)

    return configure


@pytest.fixture
def rejected():
    return []


@pytest.fixture
def build(session_app, rejected):
    def build(mixin, **settings) -> SessionTestApp:
        settings.setdefault("absolute_timeout", str(TIMEOUT))
        return session_app(make_model(mixin), settings=settings, configure=views(rejected))

    return build


def factory_of(app: SessionTestApp):
    return app.wsgi.registry.queryUtility(ISessionFactory)


def expires(app: SessionTestApp) -> int | None:
    return factory_of(app).describe(app.row()).expires


# -- the boundary, with either mixin -----------------------------------------------------


@pytest.mark.parametrize("mixin", MIXINS)
def test_session_lives_until_one_second_before_the_timeout(build, rejected, mixin):
    app = build(mixin)
    created = int(app.clock())
    app.post_json("/set", {"a": 1})
    assert expires(app) == created + TIMEOUT
    app.clock.advance(TIMEOUT - 1)
    with app.count() as sql:
        response = app.get("/read")
    assert sql.kinds() == ["SELECT"], sql.statements  # a read: one SELECT, no write
    assert response.json == {"data": {"a": 1}, "new": False, "created": created, "flash": {}}
    assert "Set-Cookie" not in response.headers
    assert rejected == []


@pytest.mark.parametrize("mixin", MIXINS)
def test_session_ends_at_the_timeout(build, rejected, mixin):
    app = build(mixin)
    app.post_json("/set", {"a": 1})
    app.clock.advance(TIMEOUT)
    with app.count() as sql:
        response = app.get("/read")
    assert sql.kinds() == ["SELECT", "DELETE"], sql.statements
    assert response.json["new"] is True and response.json["data"] == {}
    assert response.headers["Set-Cookie"].startswith("session=; Max-Age=0")
    assert rejected == [REASON]
    assert app.rows() == []


@pytest.mark.parametrize("mixin", MIXINS)
def test_activity_does_not_extend_the_session(build, rejected, mixin):
    app = build(mixin)
    app.post_json("/set", {"n": 0})
    for _ in range(3):
        app.clock.advance(33)
        app.get("/incr/n")  # writes at +33, +66, +99
    assert app.get("/read").json["data"] == {"n": 3}
    app.clock.advance(1)
    assert app.get("/read").json == {
        "data": {},
        "new": True,
        "created": int(app.clock()),
        "flash": {},
    }
    assert rejected == [REASON]


@pytest.mark.parametrize("mixin", MIXINS)
def test_an_expired_session_is_deleted_and_a_new_one_starts(build, rejected, mixin):
    app = build(mixin)
    app.post_json("/set", {"old": 1})
    old_id = app.row().id
    app.clock.advance(TIMEOUT + 5)
    with app.count() as sql:
        response = app.post_json("/set", {"new": 2})
    assert sorted(sql.kinds()) == ["DELETE", "INSERT", "SELECT"], sql.statements
    assert response.json["data"] == {"new": 2}
    row = app.row()
    assert row.id != old_id and row.created == int(app.clock())
    assert expires(app) == row.created + TIMEOUT
    assert rejected == [REASON]


@pytest.mark.parametrize("mixin", MIXINS)
def test_off_when_the_timeout_is_none(build, rejected, mixin):
    app = build(mixin, absolute_timeout="none", max_age="none")  # nothing else expires it
    app.post_json("/set", {"a": 1})
    app.clock.advance(MAX_ABSOLUTE_TIMEOUT * 2)
    assert app.get("/read").json["data"] == {"a": 1}
    assert expires(app) is None and rejected == []


# -- the global value changing between deploys --------------------------------------------


def redeploy(app: SessionTestApp, **settings) -> SessionTestApp:
    """Another process on the same table with other settings; the browser keeps its cookie."""
    new = SessionTestApp(app.model, app.engine, clock=app.clock, settings=settings)
    new.set_cookie("session", app.cookies["session"])
    return new


@pytest.mark.parametrize("mixin", MIXINS)
def test_a_shorter_global_timeout_applies_to_existing_sessions(build, mixin):
    app = build(mixin)
    app.post_json("/set", {"a": 1})
    app.clock.advance(50)
    shorter = redeploy(app, absolute_timeout="50")
    assert shorter.get("/read").json["new"] is True
    assert shorter.rows() == []


@pytest.mark.parametrize("mixin", MIXINS)
def test_a_longer_global_timeout_applies_to_existing_sessions(build, mixin):
    app = build(mixin)
    app.post_json("/set", {"a": 1})
    app.clock.advance(TIMEOUT + 50)
    longer = redeploy(app, absolute_timeout="200")
    assert longer.get("/read").json["data"] == {"a": 1}
    longer.clock.advance(49)
    assert longer.get("/read").json["new"] is False
    longer.clock.advance(1)
    assert longer.get("/read").json["new"] is True


def test_a_session_timeout_of_its_own_outlives_a_global_change(build):
    app = build(ConfigAbsoluteMixin)
    created = int(app.clock())
    app.post_json("/abs/save", {"absolute_timeout": 300, "a": 1})
    shorter = redeploy(app, absolute_timeout="10")
    shorter.clock.advance(299)
    assert shorter.get("/read").json["data"] == {"a": 1}
    assert factory_of(shorter).describe(shorter.row()).expires == created + 300
    shorter.clock.advance(1)
    assert shorter.get("/read").json["new"] is True


# -- per-session timeouts (ConfigAbsoluteMixin) ------------------------------------------


def test_following_the_global_value_stores_no_expiry(build):
    app = build(ConfigAbsoluteMixin)
    app.post_json("/set", {"a": 1})
    row = app.row()
    assert (row.absolute_timeout, row.absolute_expire) == (None, None)
    assert app.get("/settings").json["absolute_timeout"] == TIMEOUT


def test_a_longer_timeout_for_an_existing_session(build, rejected):
    app = build(ConfigAbsoluteMixin)
    created = int(app.clock())
    app.post_json("/set", {"a": 1})
    app.clock.advance(10)
    with app.count() as sql:
        response = app.post_json("/settings", {"absolute_timeout": 300})
    assert response.json["absolute_timeout"] == 300
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assert "absolute_expire" in sql.statements[1] and "data" not in sql.statements[1]
    row = app.row()
    assert (row.absolute_timeout, row.absolute_expire) == (300, created + 300)
    assert row.updated == created + 10 and expires(app) == created + 300
    app.clock.advance(299 - 10)
    with app.count() as sql:
        assert app.get("/read").json["data"] == {"a": 1}
    assert sql.kinds() == ["SELECT"]  # a read is still one SELECT
    app.clock.advance(1)
    assert app.get("/read").json["new"] is True
    assert rejected == [REASON]


def test_a_shorter_timeout_for_an_existing_session(build, rejected):
    app = build(ConfigAbsoluteMixin)
    created = int(app.clock())
    app.post_json("/set", {"a": 1})
    app.clock.advance(10)
    app.post_json("/abs/save", {"absolute_timeout": 30})
    assert expires(app) == created + 30
    app.clock.advance(19)
    assert app.get("/read").json["new"] is False
    app.clock.advance(1)
    assert app.get("/read").json["new"] is True
    assert rejected == [REASON]


def test_back_to_the_global_value(build):
    app = build(ConfigAbsoluteMixin)
    created = int(app.clock())
    app.post_json("/abs/save", {"absolute_timeout": 300, "a": 1})
    assert app.row().absolute_expire == created + 300
    app.post_json("/settings", {"absolute_timeout": None})
    row = app.row()
    assert (row.absolute_timeout, row.absolute_expire) == (None, None)
    assert expires(app) == created + TIMEOUT


def test_a_new_session_stores_its_own_timeout_in_its_insert(build):
    app = build(ConfigAbsoluteMixin)
    created = int(app.clock())
    with app.count() as sql:
        app.post_json("/abs/save", {"absolute_timeout": 30, "a": 1})
    assert sql.kinds() == ["INSERT"], sql.statements
    assert app.row().absolute_expire == created + 30
    app.clock.advance(30)
    assert app.get("/read").json["new"] is True


def test_a_session_timeout_works_while_the_global_one_is_off(build, rejected):
    app = build(ConfigAbsoluteMixin, absolute_timeout="")
    app.post_json("/set", {"a": 1})
    app.post_json("/settings", {"absolute_timeout": 60})
    app.clock.advance(59)
    assert app.get("/read").json["new"] is False
    app.clock.advance(1)
    assert app.get("/read").json["new"] is True
    assert rejected == [REASON]


def test_plain_mixin_refuses_runtime_changes_naming_the_config_mixin(build):
    app = build(AbsoluteMixin)
    app.post_json("/set", {"a": 1})
    assert app.get("/settings").json["absolute_timeout"] == TIMEOUT
    with pytest.raises(SettingsError, match="use ConfigAbsoluteMixin from absolute_timeout"):
        app.post_json("/settings", {"absolute_timeout": 300})
    assert app.get("/read").json["data"] == {"a": 1}


@pytest.mark.parametrize("value", [0, -5, "soon", 1.5, True, MAX_ABSOLUTE_TIMEOUT + 1])
def test_bad_values_are_refused(build, value):
    app = build(ConfigAbsoluteMixin)
    app.post_json("/set", {"a": 1})
    with pytest.raises(SettingsError, match=r"absolute_timeout = .*expected a whole number"):
        app.post_json("/settings", {"absolute_timeout": value})
    row = app.row()
    assert (row.absolute_timeout, row.absolute_expire) == (None, None)


def test_discard_and_unsaved_edits_change_nothing(build):
    app = build(ConfigAbsoluteMixin)
    app.post_json("/set", {"a": 1})
    assert app.post_json("/abs/discard", {"absolute_timeout": 9}).json == {
        "seen": 9,
        "after": TIMEOUT,
    }
    assert app.get("/abs/unsaved").json == {"seen": 7}
    assert app.get("/abs/failing_block").json == {"after": TIMEOUT}
    row = app.row()
    assert (row.absolute_timeout, row.absolute_expire) == (None, None)
    assert app.get("/settings").json["absolute_timeout"] == TIMEOUT


# -- start-up --------------------------------------------------------------------------------


def test_timeout_without_the_mixin_is_a_start_up_error():
    with pytest.raises(ConfigurationError, match="does not include AbsoluteMixin or Config"):
        session_factory(model_class=make_model(), secret_key=TEST_SECRET_KEY, absolute_timeout=60)
    # left at its default, the setting is fine without the mixin
    session_factory(model_class=make_model(), secret_key=TEST_SECRET_KEY, absolute_timeout="")


@pytest.mark.parametrize("value", ["0", "-1", "an hour", str(MAX_ABSOLUTE_TIMEOUT + 1)])
def test_bad_global_timeout_is_a_start_up_error(value):
    with pytest.raises(ConfigurationError, match=f"session.absolute_timeout = '{value}'"):
        session_factory(
            model_class=make_model(AbsoluteMixin),
            secret_key=TEST_SECRET_KEY,
            absolute_timeout=value,
        )


# -- maintenance: garbage collection and indexes agree with validation ---------------------


@pytest.mark.parametrize("mixin", MIXINS)
def test_expired_conditions_agree_with_validation(build, mixin):
    app = build(mixin)
    t0 = int(app.clock())
    app.post_json("/set", {"global": 1})  # expires at t0 + 100
    other = app.new_browser()
    if mixin is ConfigAbsoluteMixin:
        other.post_json("/abs/save", {"absolute_timeout": 40, "own": 1})  # t0 + 40
    else:
        app.clock.advance(20)
        other.post_json("/set", {"later": 1})  # t0 + 120
        app.clock.time = t0
    factory = factory_of(app)
    model = app.model
    by_expiry = {factory.describe(row).expires: row.id for row in app.rows()}
    assert len(by_expiry) == 2
    for expiry, session_id in by_expiry.items():
        for now, expected in [(expiry - 1, False), (expiry, True), (expiry + 1, True)]:
            conditions = [
                c
                for found in factory.hook.session_expired_conditions(
                    model=model, settings=factory.config.values, now=now
                )
                for c in found
            ]
            with sa.orm.Session(app.engine) as db:
                expired = set(db.scalars(sa.select(model.id).where(sa.or_(*conditions))))
            assert (session_id in expired) is expected, (now - t0, expiry - t0)


@pytest.mark.parametrize("mixin", MIXINS)
def test_offered_indexes_can_be_created(build, mixin):
    app = build(mixin)
    factory = factory_of(app)
    names = [n for found in factory.hook.session_indexes(model=app.model) for n in found or ()]
    assert "created" in names
    assert ("absolute_expire" in names) is (mixin is ConfigAbsoluteMixin)
    table = app.model.__table__
    for name in names:
        sa.Index(f"ix_{table.name}_{name}", table.c[name]).create(app.engine)
    assert {ix["name"] for ix in sa.inspect(app.engine).get_indexes(table.name)} >= {
        f"ix_{table.name}_{name}" for name in names
    }
