"""``device_reject_user_agent_change``: a session whose User-Agent changes is rejected."""

from __future__ import annotations

import pytest
from sessions_device import REASON, ConfigDeviceMixin, DeviceMixin

from sessions_kernel import SettingsError, events
from sessions_kernel.testing import make_model

FIREFOX = {"User-Agent": "Firefox/140"}
CURL = {"User-Agent": "curl/8.0"}


class Rejections(list):
    def configure(self, config):
        config.add_subscriber(lambda event: self.append(event.reason), events.SessionRejected)


@pytest.fixture
def rejections():
    return Rejections()


def test_off_by_default_a_change_is_only_recorded(session_app, rejections):
    app = session_app(make_model(DeviceMixin), configure=rejections.configure)
    app.post_json("/set", {"a": 1}, headers=FIREFOX)
    response = app.get("/read", headers=CURL)
    assert response.json["data"] == {"a": 1}
    assert app.row().device_last_user_agent == "curl/8.0"
    assert rejections == []


def test_on_a_changed_user_agent_ends_the_session(session_app, rejections):
    app = session_app(
        make_model(DeviceMixin),
        settings={"device_reject_user_agent_change": "true"},
        configure=rejections.configure,
    )
    app.post_json("/set", {"a": 1}, headers=FIREFOX)
    assert app.get("/read", headers=FIREFOX).json["data"] == {"a": 1}
    with app.count() as sql:
        response = app.get("/read", headers=CURL)
    assert sql.kinds() == ["SELECT", "DELETE"]
    assert response.json == {
        "data": {},
        "new": True,
        "created": response.json["created"],
        "flash": {},
    }
    assert rejections == [REASON]
    assert app.rows() == []
    assert response.headers["Set-Cookie"].startswith("session=; Max-Age=0")


def test_on_the_same_user_agent_is_accepted_at_one_select(session_app):
    app = session_app(make_model(DeviceMixin), settings={"device_reject_user_agent_change": "1"})
    app.post_json("/set", {"a": 1}, headers=FIREFOX)
    with app.count() as sql:
        assert app.get("/read", headers=FIREFOX).json["data"] == {"a": 1}
    assert sql.kinds() == ["SELECT"]


def test_a_row_without_a_recorded_user_agent_is_accepted_and_adopted(session_app):
    app = session_app(make_model(DeviceMixin), settings={"device_reject_user_agent_change": "1"})
    app.post_json("/set", {"a": 1})  # no User-Agent header: nothing recorded
    assert app.get("/read", headers=FIREFOX).json["data"] == {"a": 1}
    assert app.row().device_last_user_agent == "Firefox/140"
    assert app.get("/read", headers=CURL).json["new"] is True


def test_one_session_can_turn_the_check_on_for_itself(session_app, rejections):
    app = session_app(make_model(ConfigDeviceMixin), configure=rejections.configure)
    app.post_json("/settings", {"device_reject_user_agent_change": True}, headers=FIREFOX)
    assert app.row().device_reject_user_agent_change is True
    other = app.new_browser()
    other.post_json("/set", {"b": 1}, headers=FIREFOX)
    assert other.get("/read", headers=CURL).json["data"] == {"b": 1}  # global: off
    assert app.get("/read", headers=CURL).json["new"] is True
    assert rejections == [REASON]


def test_the_plain_mixin_refuses_a_per_session_change(session_app):
    app = session_app(make_model(DeviceMixin))
    with pytest.raises(SettingsError, match="use ConfigDeviceMixin from device"):
        app.post_json("/settings", {"device_reject_user_agent_change": True})
