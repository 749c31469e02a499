"""``cookie_previous_name``: renaming the cookie (to adopt ``__Host-``) logs nobody out."""

from __future__ import annotations

import pytest
from kernel_support import set_cookies

from sessions_kernel import ConfigurationError, session_factory
from sessions_kernel.testing import TEST_SECRET_KEY, SessionTestApp, make_model

HOST = {"cookie_name": "__Host-session", "cookie_secure": "true"}


@pytest.fixture
def apps(session_app):
    """The application before (cookie ``session``) and after the rename, on one table."""
    before = session_app(make_model())
    after = SessionTestApp(
        before.model,
        before.engine,
        clock=before.clock,
        settings={**HOST, "cookie_previous_name": "session"},
    )
    return before, after


def value_of(response, name):
    (header,) = [h for h in set_cookies(response) if h.startswith(f"{name}=")]
    return header.split(";", 1)[0].split("=", 1)[1]


def test_a_cookie_of_the_previous_name_is_read_and_replaced(apps):
    before, after = apps
    before.post_json("/set", {"cart": 3})
    old = before.cookies["session"]
    browser = after.new_browser()
    with after.count() as sql:
        response = browser.get("/read", headers={"Cookie": f"session={old}"})
    assert response.json["data"] == {"cart": 3} and response.json["new"] is False
    assert sql.kinds() == ["SELECT"]  # no write: only the cookie changes
    headers = set_cookies(response)
    assert headers[0].startswith("session=; Max-Age=0; Path=/;")  # the old one deleted
    assert headers[1].startswith("__Host-session=") and "secure" in headers[1].lower()
    new = value_of(response, "__Host-session")
    # from then on the new cookie alone, and it is not sent again
    response = browser.get("/read", headers={"Cookie": f"__Host-session={new}"})
    assert response.json["data"] == {"cart": 3}
    assert set_cookies(response) == []
    # a browser that still sends both: the current name's is used, nothing else is set
    both = {"Cookie": f"session={old}; __Host-session={new}"}
    response = browser.get("/read", headers=both)
    assert response.json["data"] == {"cart": 3} and set_cookies(response) == []


def test_a_logout_deletes_the_cookie_under_the_name_the_browser_sent(apps):
    before, after = apps
    before.post_json("/set", {"cart": 3})
    old = before.cookies["session"]
    response = after.new_browser().post("/invalidate", headers={"Cookie": f"session={old}"})
    assert set_cookies(response)[0].startswith("session=; Max-Age=0; Path=/;")
    assert after.rows() == []


def test_a_bad_cookie_of_the_previous_name_is_deleted_under_that_name(apps):
    _, after = apps
    response = after.new_browser().get("/read", headers={"Cookie": "session=garbage"})
    assert response.json["new"] is True
    (header,) = set_cookies(response)
    assert header.startswith("session=; Max-Age=0; Path=/;")


def test_without_the_setting_a_cookie_of_another_name_opens_nothing(session_app):
    before = session_app(make_model())
    before.post_json("/set", {"cart": 3})
    after = SessionTestApp(before.model, before.engine, clock=before.clock, settings=HOST)
    old = before.cookies["session"]
    response = after.new_browser().get("/read", headers={"Cookie": f"session={old}"})
    assert response.json["new"] is True and set_cookies(response) == []


def test_the_previous_name_must_differ_from_the_current_one():
    with pytest.raises(ConfigurationError, match="cookie_previous_name is cookie_name"):
        session_factory(
            model_class=make_model(),
            secret_key=TEST_SECRET_KEY,
            cookie_name="sid",
            cookie_previous_name="sid",
        )
