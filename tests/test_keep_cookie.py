"""``session.keep_cookie()``: a plugin leaves the browser's cookie as it is for one response."""

from __future__ import annotations

import json

from sessions_kernel import hookimpl
from sessions_kernel.testing import make_model


class KeepMixin:
    """No column: a model that lists it activates ``Keeper``."""


class Keeper:
    """Keeps the browser's cookie on requests that ask for it (``?keep``)."""

    @hookimpl
    def session_mixins(self):
        return [KeepMixin]

    @hookimpl
    def session_renew(self, session):
        if "keep" in session.request.params:
            session.cookie_extras["changed"] = b"1"  # would send the cookie again
            session.keep_cookie()


def test_a_kept_cookie_is_not_sent_but_the_row_is_written(session_app):
    # a sliding Max-Age: every write would send the cookie again
    app = session_app(make_model(KeepMixin), {"cookie_max_age": "3600"}, plugins=[Keeper()])
    app.post_json("/set", {"a": 1})
    cookie = app.cookies["session"]
    with app.count() as sql:
        response = app.post_json("/set?keep=1", {"a": 2})
    assert sql.kinds() == ["SELECT", "UPDATE"]
    assert "Set-Cookie" not in response.headers
    assert app.cookies["session"] == cookie
    assert json.loads(app.row().data) == {"a": 2}
    assert "Set-Cookie" in app.post_json("/set", {"a": 3}).headers  # not kept: sent again


def test_a_new_id_or_a_logout_is_still_sent(session_app):
    app = session_app(make_model(KeepMixin), plugins=[Keeper()])
    app.post_json("/set", {"a": 1})
    cookie = app.cookies["session"]
    response = app.post("/regenerate?keep=1")
    assert "Set-Cookie" in response.headers and app.cookies["session"] != cookie
    response = app.post("/invalidate?keep=1")
    assert response.headers["Set-Cookie"].startswith("session=; Max-Age=0")
