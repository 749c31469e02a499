"""No stored session lives forever unless the application chose it (``session.max_age``).

With no active plugin that expires every session, a session ends
``session.max_age`` seconds (30 days by default) after its creation;
``session.max_age = none`` keeps sessions forever, knowingly. Where plugins
expire every session the kernel adds nothing, not even a function call per
request. On SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import logging

import pytest
from kernel_support import factory_of
from pyramid.config import Configurator
from sessions_absolute_timeout import AbsoluteMixin
from sessions_idle_timeout import ConfigIdleMixin, IdleMixin

from sessions_kernel import ConfigurationError, maintenance, session_factory
from sessions_kernel.builtin import DEFAULT_MAX_AGE, MaxAge
from sessions_kernel.events import SessionRejected
from sessions_kernel.testing import TEST_SECRET_KEY, make_model

DAY = 24 * 3600


def max_age_plugin(factory):
    """The kernel's MaxAge registered in the factory, or None."""
    return factory.config.pm.get_plugin("sessions_kernel.max_age")


def read_at(app, when):
    app.clock.time = float(when)
    with app.count() as sql:
        response = app.get("/read")
    return response, sql


def start(app):
    app.post_json("/set", {"a": 1})
    return int(app.clock())


def expired_count(app, now):
    return maintenance.count_expired(factory_of(app), app.engine, now)


# -- the default: 30 days after creation --------------------------------------------------


def test_default_session_ends_30_days_after_its_creation(session_app, log):
    app = session_app(make_model(), configure=log.configure)
    t0 = start(app)
    assert DEFAULT_MAX_AGE == 30 * DAY

    response, sql = read_at(app, t0 + 30 * DAY - 1)  # still valid: one SELECT, no write
    assert response.json["data"] == {"a": 1}
    assert sql.kinds() == ["SELECT"], sql.statements

    app.post_json("/set", {"b": 2})  # a write does not extend it: the age counts from creation
    response, sql = read_at(app, t0 + 30 * DAY)
    assert response.json == {"data": {}, "new": True, "created": t0 + 30 * DAY, "flash": {}}
    assert sql.kinds() == ["SELECT", "DELETE"], sql.statements
    assert [e.reason for e in log.of(SessionRejected)] == ["max age"]
    assert app.rows() == []


def test_a_ten_year_old_cookie_no_longer_works(session_app):
    app = session_app(make_model())
    t0 = start(app)
    response, _ = read_at(app, t0 + 10 * 365 * DAY)
    assert response.json["new"] is True and response.json["data"] == {}


def test_max_age_setting_is_honoured(session_app):
    app = session_app(make_model(), {"max_age": "3600"})
    t0 = start(app)
    assert read_at(app, t0 + 3599)[0].json["data"] == {"a": 1}
    assert read_at(app, t0 + 3600)[0].json["new"] is True


def test_validate_sql_and_describe_agree_on_the_second(session_app):
    app = session_app(make_model(), {"max_age": "100"})
    t0 = start(app)
    other = app.new_browser()
    app.clock.time = float(t0 + 30)
    other.post_json("/set", {"b": 1})
    assert [expired_count(app, t0 + d) for d in (99, 100, 129, 130)] == [0, 1, 1, 2]
    factory = factory_of(app)
    assert sorted(factory.describe(row).expires for row in app.rows()) == [t0 + 100, t0 + 130]
    assert read_at(app, t0 + 99)[0].json["new"] is False
    assert read_at(app, t0 + 100)[0].json["new"] is True


def test_never_expire_when_chosen_explicitly(session_app):
    app = session_app(make_model(), {"max_age": "none"})
    t0 = start(app)
    response, sql = read_at(app, t0 + 10 * 365 * DAY)
    assert response.json["data"] == {"a": 1}
    assert sql.kinds() == ["SELECT"]
    assert max_age_plugin(factory_of(app)) is None
    assert expired_count(app, t0 + 10 * 365 * DAY) == 0
    assert factory_of(app).describe(app.row()).expires is None


@pytest.mark.parametrize("value", ["0", "-1", "soon", str(10 * 365 * DAY + 1), "1.5"])
def test_bad_max_age_is_a_start_up_error(value):
    with pytest.raises(ConfigurationError, match=rf"session.max_age = '{value}'"):
        session_factory(model_class=make_model(), secret_key=TEST_SECRET_KEY, max_age=value)


# -- plugins that expire every session: the kernel adds nothing ---------------------------


def test_an_idle_timeout_replaces_the_default(session_app):
    app = session_app(make_model(IdleMixin), {"idle_timeout": str(DAY)})
    factory = factory_of(app)
    assert max_age_plugin(factory) is None
    validators = factory.hook.session_validate.get_hookimpls()
    assert not any(isinstance(impl.plugin, MaxAge) for impl in validators)
    t0 = start(app)
    for half_day in range(1, 121):  # used twice a day for two months: the idle expiry moves
        response, _ = read_at(app, t0 + half_day * DAY // 2)
        assert response.json["data"] == {"a": 1}, half_day
    assert factory.describe(app.row()).expires == t0 + 61 * DAY


def test_an_absolute_timeout_replaces_the_default(session_app):
    app = session_app(make_model(AbsoluteMixin), {"absolute_timeout": str(90 * DAY)})
    assert max_age_plugin(factory_of(app)) is None
    t0 = start(app)
    assert read_at(app, t0 + 90 * DAY - 1)[0].json["data"] == {"a": 1}
    assert read_at(app, t0 + 90 * DAY)[0].json["new"] is True


def test_a_mixin_whose_timeout_is_off_does_not_replace_the_default(session_app):
    app = session_app(make_model(IdleMixin, AbsoluteMixin))  # both timeouts left at None
    assert isinstance(max_age_plugin(factory_of(app)), MaxAge)
    t0 = start(app)
    assert read_at(app, t0 + 30 * DAY)[0].json["new"] is True


def test_per_session_timeouts_alone_do_not_replace_the_default(session_app):
    # global idle_timeout None: only sessions that set a timeout of their own would expire
    app = session_app(make_model(ConfigIdleMixin))
    assert isinstance(max_age_plugin(factory_of(app)), MaxAge)
    t0 = start(app)
    assert read_at(app, t0 + 30 * DAY)[0].json["new"] is True


def test_an_explicit_max_age_applies_beside_the_plugins(session_app):
    app = session_app(make_model(IdleMixin), {"idle_timeout": str(DAY), "max_age": str(7 * DAY)})
    assert isinstance(max_age_plugin(factory_of(app)), MaxAge)
    t0 = start(app)
    for half_day in range(1, 14):
        assert read_at(app, t0 + half_day * DAY // 2)[0].json["data"] == {"a": 1}
    assert read_at(app, t0 + 7 * DAY)[0].json["new"] is True  # extended by idle, ended by age


def test_a_read_costs_the_same_with_plugins_that_expire(session_app):
    app = session_app(make_model(IdleMixin), {"idle_timeout": "600", "extension_delay": "60"})
    t0 = start(app)
    response, sql = read_at(app, t0 + 10)
    assert sql.kinds() == ["SELECT"]
    assert "Set-Cookie" not in response.headers


# -- the start-up log ---------------------------------------------------------------------------


def included(caplog, model, **settings):
    caplog.clear()
    values = {f"session.{name}": value for name, value in settings.items()}
    values.update({"session.secret_key": TEST_SECRET_KEY, "session.model_class": model})
    with (
        caplog.at_level(logging.INFO, logger="sessions_kernel"),
        Configurator(settings=values) as config,
    ):
        config.include("sessions_kernel")
    return [r for r in caplog.records if r.name == "sessions_kernel" and r.levelno == logging.INFO]


@pytest.mark.parametrize(
    ("mixins", "settings", "message"),
    [
        (
            (),
            {},
            "sessions expire 30 days after their creation (session.max_age = 2592000); "
            "no active plugin expires every session",
        ),
        (
            (),
            {"max_age": "none"},
            "stored sessions never expire: session.max_age = none and no active plugin "
            "expires every session",
        ),
        (
            (IdleMixin, AbsoluteMixin),
            {"idle_timeout": "1800", "absolute_timeout": "86400"},
            "sessions expire by absolute_timeout 86400 s, idle_timeout 1800 s",
        ),
        (
            (IdleMixin,),
            {"idle_timeout": "1800", "max_age": "90000"},
            "sessions expire by idle_timeout 1800 s, and at the latest 90000 s after their "
            "creation (session.max_age = 90000)",
        ),
    ],
)
def test_includeme_logs_the_expiry_in_force_once(caplog, mixins, settings, message):
    records = included(caplog, make_model(*mixins), **settings)
    assert [r.getMessage() for r in records] == [message]


# -- the index gc uses ------------------------------------------------------------------------


def test_the_index_on_created_is_asked_for_where_max_age_is_in_force_by_default():
    from sessions_userid import UseridMixin

    assert maintenance.required_indexes(make_model(tablename="ix_plain")) == [("created",)]
    assert maintenance.required_indexes(make_model(UseridMixin, tablename="ix_user")) == [
        ("created",),
        ("userid",),
    ]
    # a plugin that can expire every session: its own indexes only
    assert maintenance.required_indexes(make_model(IdleMixin, tablename="ix_idle")) == [
        ("idle_expire",)
    ]
    assert maintenance.required_indexes(make_model(AbsoluteMixin, tablename="ix_abs")) == [
        ("created",)
    ]


# -- describe(): the times as seconds and as UTC datetimes ---------------------------------


def test_describe_gives_utc_datetimes_beside_the_seconds(session_app):
    from datetime import datetime, timedelta, timezone

    app = session_app(make_model())
    t0 = start(app)
    app.clock.advance(5)
    app.post_json("/set", {"b": 2})
    info = factory_of(app).describe(app.row())
    assert (info.created, info.last_active, info.expires) == (t0, t0 + 5, t0 + DEFAULT_MAX_AGE)
    for seconds, moment in [
        (info.created, info.created_at),
        (info.last_active, info.last_active_at),
        (info.expires, info.expires_at),
    ]:
        assert moment.tzinfo is timezone.utc and moment.utcoffset() == timedelta(0)
        assert moment.timestamp() == seconds
        assert moment == datetime.fromtimestamp(seconds, tz=timezone.utc)
    assert info.expires_at - info.created_at == timedelta(seconds=DEFAULT_MAX_AGE)


def test_describe_of_a_session_that_never_expires_has_no_expires_at(session_app):
    app = session_app(make_model(), {"max_age": "none"})
    t0 = start(app)
    info = factory_of(app).describe(app.row())
    assert info.expires is None and info.expires_at is None
    assert info.created_at.timestamp() == t0
