"""Flash messages and a raised redirect: the abort discards them, and says so at DEBUG.

pyramid_tm aborts the transaction of a request that raised, a raised
``HTTPFound`` included, and the session's write with it: a message queued
before ``raise HTTPFound(...)`` is lost, where Pyramid's cookie session keeps
it. The kernel keeps the promise that a rolled-back request stores nothing and
sends no cookie; the docs say to return the redirect. The abort logs (logger
``sessions_kernel``, DEBUG) how many messages of which queues it discarded,
never their content. On SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from kernel_support import set_cookies
from pyramid.httpexceptions import HTTPFound

from sessions_kernel.testing import make_model

SECRET = "the-message-text"


def _views(config: Any) -> None:
    def flashed(request: Any) -> Any:
        request.session.flash(SECRET)
        request.session.flash(SECRET + "2", "errors")
        how = request.params["how"]
        if how == "raise":
            raise HTTPFound(location="/read")
        if how == "fail":
            raise RuntimeError("failed after flashing")
        return HTTPFound(location="/read")

    config.add_route("flashed", "/flashed")
    config.add_view(flashed, route_name="flashed")


@pytest.fixture
def app(session_app):
    return session_app(make_model(), configure=_views)


def _discards(caplog: Any) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "flash message" in r.getMessage()]


@pytest.mark.parametrize("stored", [False, True], ids=["new_session", "stored_session"])
@pytest.mark.parametrize("how", ["raise", "fail"])
def test_an_abort_discards_flash_messages_and_logs_how_many(app, caplog, how, stored):
    if stored:
        app.post_json("/flash", {"msg": "earlier"})
        row = app.row()
    caplog.set_level(logging.DEBUG, logger="sessions_kernel")
    with app.count() as sql:
        response = app.get("/flashed", {"how": how}, status=302 if how == "raise" else 500)
    assert [kind for kind in sql.kinds() if kind != "SELECT"] == []  # nothing written
    assert set_cookies(response) == []
    (record,) = _discards(caplog)
    assert record.levelno == logging.DEBUG and record.name == "sessions_kernel"
    message = record.getMessage()
    assert "2 flash message(s)" in message and "'', 'errors'" in message
    assert "return the redirect" in message
    assert SECRET not in message  # never the content
    if stored:
        assert app.row().version == row.version
        assert app.get("/read").json["flash"] == {"": ["earlier"]}
    else:
        assert app.rows() == []


def test_a_returned_redirect_keeps_the_flash_messages_and_logs_nothing(app, caplog):
    caplog.set_level(logging.DEBUG, logger="sessions_kernel")
    with app.count() as sql:
        response = app.get("/flashed", {"how": "return"}, status=302)
    assert sql.kinds() == ["INSERT"]
    assert len(set_cookies(response)) == 1
    assert _discards(caplog) == []
    assert app.get("/read").json["flash"] == {"": [SECRET], "errors": [SECRET + "2"]}


def test_an_abort_of_a_request_that_queued_no_message_logs_nothing(app, caplog):
    app.post_json("/flash", {"msg": "earlier"})
    caplog.set_level(logging.DEBUG, logger="sessions_kernel")
    app.post_json("/redirect", {"a": 1}, status=302)  # changes data, no flash
    assert _discards(caplog) == []
    assert app.get("/read").json["flash"] == {"": ["earlier"]}


def test_an_attempt_pyramid_retry_runs_again_logs_nothing(session_app, caplog):
    """A retryable error (a deadlock, a serialization failure) aborts an attempt that the
    next attempt runs again, its messages queued again: only the last abort is logged."""
    from pyramid_retry import RetryableException

    attempts: list[int] = []

    def views(config: Any) -> None:
        def retried(request: Any) -> Any:
            attempts.append(1)
            request.session.flash(SECRET)
            if len(attempts) < 3:  # retry.attempts is 3: the third is the last
                raise RetryableException("try again")
            raise HTTPFound(location="/read")

        config.add_route("retried", "/retried")
        config.add_view(retried, route_name="retried")

    app = session_app(make_model(), configure=views)
    caplog.set_level(logging.DEBUG, logger="sessions_kernel")
    app.get("/retried", status=302)
    assert len(attempts) == 3
    (record,) = _discards(caplog)  # the last attempt's, not the two retried ones
    assert "1 flash message(s)" in record.getMessage()
