"""Garbage collection with the real timeout plugins: each boundary, per-session timeouts."""

from __future__ import annotations

import pytest
from pyramid.interfaces import ISessionFactory
from sessions_absolute_timeout import ConfigAbsoluteMixin
from sessions_idle_timeout import ConfigIdleMixin, IdleMixin
from sessions_renewal import RenewalMixin

from sessions_kernel import maintenance
from sessions_kernel.testing import SessionTestApp, make_model

IDLE, ABSOLUTE = 100, 1000


@pytest.fixture
def app(session_app):
    model = make_model(ConfigIdleMixin, ConfigAbsoluteMixin)
    return session_app(model, {"idle_timeout": IDLE, "absolute_timeout": ABSOLUTE})


def collect(app) -> int:
    factory = app.wsgi.registry.queryUtility(ISessionFactory)
    return maintenance.collect_garbage(factory, app.engine, batch_size=2).deleted


def new_session(app, settings=None):
    browser = app.new_browser()
    browser.post_json("/set", {"a": 1})
    if settings:
        browser.post_json("/settings", settings)
    return browser


def live(app) -> int:
    return len(app.rows())


def test_idle_boundary(app):
    t0 = int(app.clock())
    new_session(app)  # idle expiry t0 + 100
    kept = new_session(app)
    app.clock.time = t0 + 50
    kept.get("/incr/a")  # a write extends: expiry t0 + 150
    app.clock.time = t0 + IDLE - 1
    assert collect(app) == 0
    app.clock.time = t0 + IDLE
    assert collect(app) == 1 and live(app) == 1
    app.clock.time = t0 + 150 - 1
    assert collect(app) == 0
    app.clock.time = t0 + 150
    assert collect(app) == 1 and live(app) == 0


def test_absolute_boundary_whatever_the_activity(app):
    t0 = int(app.clock())
    browser = new_session(app)
    for t in range(t0 + 90, t0 + ABSOLUTE, 90):  # active all along: never idle
        app.clock.time = t
        browser.get("/incr/a")
    app.clock.time = t0 + ABSOLUTE - 1
    assert collect(app) == 0
    app.clock.time = t0 + ABSOLUTE
    assert collect(app) == 1 and live(app) == 0


def test_per_session_timeouts(app):
    t0 = int(app.clock())
    new_session(app)  # global: idle 100
    new_session(app, {"idle_timeout": 400, "absolute_timeout": 500})
    new_session(app, {"idle_timeout": 20})
    app.clock.time = t0 + 20
    assert collect(app) == 1  # the 20 s idle timeout
    app.clock.time = t0 + IDLE
    assert collect(app) == 1  # the global one
    app.clock.time = t0 + 399
    assert collect(app) == 0
    app.clock.time = t0 + 400
    assert collect(app) == 1 and live(app) == 0


def test_dry_run_and_live_sessions_left_alone(app):
    t0 = int(app.clock())
    for _ in range(3):
        new_session(app)
    app.clock.time = t0 + 60
    new_session(app)
    app.clock.time = t0 + IDLE
    factory = app.wsgi.registry.queryUtility(ISessionFactory)
    assert maintenance.count_expired(factory, app.engine) == 3
    assert collect(app) == 3
    (row,) = app.rows()
    assert row.idle_expire == t0 + 60 + IDLE


def test_a_model_without_expiring_feature_has_nothing_to_collect(session_app):
    # only when the application chose sessions that never expire (session.max_age = none)
    app = session_app(make_model(RenewalMixin), {"renewal_timeout": 300, "max_age": "none"})
    new_session(app)
    app.clock.advance(10**6)
    factory = app.wsgi.registry.queryUtility(ISessionFactory)
    result = maintenance.collect_garbage(factory, app.engine)
    assert (result.expiring, result.deleted, live(app)) == (False, 0, 1)


# -- every kind of dead row -----------------------------------------------------------------

DAY = 24 * 3600


def test_sessions_past_the_default_max_age_are_collected(session_app):
    # no timeout plugin: the kernel's session.max_age (30 days after creation)
    app = session_app(make_model(RenewalMixin), {"renewal_timeout": 300})
    t0 = int(app.clock())
    new_session(app)
    app.clock.time = t0 + 10
    new_session(app)
    app.clock.time = t0 + 30 * DAY - 1
    assert collect(app) == 0
    app.clock.time = t0 + 30 * DAY
    assert collect(app) == 1 and live(app) == 1
    app.clock.time = t0 + 30 * DAY + 10
    assert collect(app) == 1 and live(app) == 0


def test_an_explicit_max_age_is_collected_beside_the_plugins(session_app):
    model = make_model(ConfigIdleMixin, ConfigAbsoluteMixin)
    app = session_app(model, {"idle_timeout": IDLE, "max_age": 5 * IDLE})
    t0 = int(app.clock())
    browser = new_session(app)
    for t in range(t0 + 50, t0 + 5 * IDLE, 50):  # never idle
        app.clock.time = t
        browser.get("/incr/a")
        assert collect(app) == 0
    app.clock.time = t0 + 5 * IDLE
    assert collect(app) == 1 and live(app) == 0


def test_rows_written_before_the_idle_timeout_was_turned_on_are_collected(session_app):
    """A row written while the idle timeout was off has no idle expiry (NULL): it expires
    idle_timeout after its last write (``updated``), for gc and for a returning cookie."""
    app = session_app(make_model(IdleMixin))  # idle_timeout off: rows get idle_expire NULL
    t0 = int(app.clock())
    new_session(app)
    returning = new_session(app)
    app.clock.time = t0 + 20
    new_session(app)  # written later
    assert [row.idle_expire for row in app.rows()] == [None] * 3

    on = SessionTestApp(app.model, app.engine, settings={"idle_timeout": IDLE}, clock=app.clock)
    factory = on.wsgi.registry.queryUtility(ISessionFactory)
    assert {factory.describe(row).expires for row in app.rows()} == {t0 + IDLE, t0 + 20 + IDLE}
    app.clock.time = t0 + IDLE - 1
    assert maintenance.collect_garbage(factory, app.engine).deleted == 0
    app.clock.time = t0 + IDLE
    # the cookie of one of them comes back: refused, not extended
    on.browser.set_cookie("session", returning.cookies["session"])
    assert on.get("/read").json["new"] is True
    assert maintenance.collect_garbage(factory, app.engine).deleted == 1
    assert live(app) == 1
    app.clock.time = t0 + 20 + IDLE
    assert maintenance.collect_garbage(factory, app.engine).deleted == 1
    assert live(app) == 0


def test_indexes_of_the_timeout_plugins():
    model = make_model(ConfigIdleMixin, ConfigAbsoluteMixin, tablename="gc_indexes")
    required = maintenance.required_indexes(model)
    assert ("idle_expire",) in required and ("absolute_expire",) in required
    added = maintenance.add_indexes(model)
    # idle_expire is indexed by its own column declaration already
    assert ("idle_expire",) not in [tuple(c.name for c in i.columns) for i in added]
    assert maintenance.missing_indexes(model) == []


def test_alembic_autogenerate_writes_the_table_and_the_plugins_indexes(tmp_path):
    """What getting-started.rst and operations.rst promise of ``alembic --autogenerate``."""
    import sqlalchemy as sa
    from alembic.autogenerate import produce_migrations, render_python_code
    from alembic.migration import MigrationContext

    model = make_model(ConfigIdleMixin, ConfigAbsoluteMixin, tablename="session")
    maintenance.add_indexes(model)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'empty.sqlite'}")
    with engine.connect() as conn:
        script = produce_migrations(MigrationContext.configure(conn), model.metadata)
    code = render_python_code(script.upgrade_ops)
    assert "op.create_table('session'" in code
    for column in ("id", "created", "updated", "data", "flash", "version", "idle_expire"):
        assert f"sa.Column('{column}'" in code
    assert "server_default='1'" in code
    assert "op.create_index(op.f('ix_session_idle_expire')" in code
    assert "'absolute_expire'" in code and "ix_session_absolute_expire" in code
