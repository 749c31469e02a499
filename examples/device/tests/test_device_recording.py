"""The device is recorded at the session's start and at its latest request, at no extra cost.

These tests use only the kernel's kit: the pytest fixtures ``session_app``
and ``session_clock`` (entry point ``pytest11`` of sessions-kernel), which
run each test on SQLite, PostgreSQL and MariaDB, and ``make_model``.
"""

from __future__ import annotations

import pytest
from pyramid.interfaces import ISessionFactory
from sessions_device import MAX_USER_AGENT, ConfigDeviceMixin, DeviceMixin

from sessions_kernel import ConfigurationError, session_factory
from sessions_kernel.testing import TEST_SECRET_KEY, make_model

PHONE = {"User-Agent": "Phone/1.0"}
HOME = {"REMOTE_ADDR": "198.51.100.7"}
TRAIN = {"REMOTE_ADDR": "203.0.113.50"}


@pytest.fixture
def app(session_app):
    return session_app(make_model(DeviceMixin))


def device(row):
    return (
        row.device_login_ip,
        row.device_login_user_agent,
        row.device_last_ip,
        row.device_last_user_agent,
    )


def test_the_plugin_is_found_through_its_entry_point(app):
    factory = app.wsgi.registry.queryUtility(ISessionFactory)
    [info] = [i for i in factory.config.active if i.name == "device"]
    assert info.distribution == "sessions-device"
    assert factory.config.values["device_reject_user_agent_change"] is False


def test_a_new_session_stores_its_device_in_its_insert(app):
    with app.count() as sql:
        app.post_json("/set", {"a": 1}, headers=PHONE, extra_environ=HOME)
    assert sql.kinds() == ["INSERT"]
    assert device(app.row()) == ("198.51.100.7", "Phone/1.0", "198.51.100.7", "Phone/1.0")


def test_a_session_never_stored_records_nothing(app):
    with app.count() as sql:
        app.get("/read", headers=PHONE, extra_environ=HOME)
    assert sql.count == 0
    assert app.rows() == []


def test_a_read_from_the_same_device_writes_nothing(app):
    app.post_json("/set", {"a": 1}, headers=PHONE, extra_environ=HOME)
    with app.count() as sql:
        response = app.get("/read", headers=PHONE, extra_environ=HOME)
    assert sql.kinds() == ["SELECT"]
    assert "Set-Cookie" not in response.headers


def test_a_read_from_another_address_updates_only_the_last_address(app, session_clock):
    app.post_json("/set", {"a": 1}, headers=PHONE, extra_environ=HOME)
    before = app.row()
    session_clock.advance(60)
    with app.count() as sql:
        app.get("/read", headers=PHONE, extra_environ=TRAIN)
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assigned = sql.statements[1].split(" SET ")[1].split(" WHERE ")[0]
    assert "device_last_ip" in assigned
    assert "updated" not in assigned and "device_login" not in assigned
    after = app.row()
    assert device(after) == ("198.51.100.7", "Phone/1.0", "203.0.113.50", "Phone/1.0")
    assert after.updated == before.updated  # a device change is not a change of the data


def test_a_write_carries_a_device_change_in_its_own_update(app):
    app.post_json("/set", {"a": 1}, headers=PHONE, extra_environ=HOME)
    with app.count() as sql:
        app.post_json("/set", {"b": 2}, headers={"User-Agent": "Laptop/2.0"}, extra_environ=HOME)
    assert sql.kinds() == ["SELECT", "UPDATE"]
    assert device(app.row())[2:] == ("198.51.100.7", "Laptop/2.0")


def test_a_request_without_address_or_user_agent_is_stored_as_null(app):
    app.post_json("/set", {"a": 1})
    assert device(app.row()) == (None, None, None, None)


def test_a_long_user_agent_is_cut_to_the_column(app):
    long_agent = "A" * (MAX_USER_AGENT + 100)
    app.post_json("/set", {"a": 1}, headers={"User-Agent": long_agent})
    assert app.row().device_last_user_agent == long_agent[:MAX_USER_AGENT]
    with app.count() as sql:  # the cut value compares equal: no write on the next read
        app.get("/read", headers={"User-Agent": long_agent})
    assert sql.kinds() == ["SELECT"]


def test_the_setting_is_checked_at_start_up():
    with pytest.raises(ConfigurationError, match="device_reject_user_agent_change = 'maybe'"):
        session_factory(
            model_class=make_model(ConfigDeviceMixin),
            secret_key=TEST_SECRET_KEY,
            device_reject_user_agent_change="maybe",
        )


def test_the_setting_without_the_mixin_is_an_error_naming_it():
    with pytest.raises(ConfigurationError, match="DeviceMixin"):
        session_factory(
            model_class=make_model(),
            secret_key=TEST_SECRET_KEY,
            device_reject_user_agent_change="true",
        )
