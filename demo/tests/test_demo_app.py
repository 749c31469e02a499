"""The demo application without a browser: what its requests cost and store (SQLite)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sessions_demo import DemoOptions, make_app
from webtest import TestApp

from sessions_kernel.testing import Clock, StatementCounter


@pytest.fixture
def demo(tmp_path: Path) -> Any:
    clock = Clock(1_800_000_000)
    wsgi = make_app(f"sqlite:///{tmp_path / 'demo.sqlite'}", options=DemoOptions(), clock=clock)
    app = TestApp(wsgi)
    app.clock = clock
    app.sql = StatementCounter(wsgi.registry["demo.engine"])
    return app


def sign_up(app: TestApp, name: str = "ann", remember: bool = False) -> Any:
    form = app.get("/").forms["signup-form"]
    form["name"], form["password"] = name, "long enough"
    form["remember"] = remember
    return form.submit(status=303).follow(status=200)


def test_status_poll_reads_without_extending(demo: TestApp) -> None:
    sign_up(demo)
    demo.clock.advance(20)
    with demo.sql:
        status = demo.get("/status.json").json
    assert demo.sql.count == 1, demo.sql.statements  # one SELECT, no UPDATE of idle_expire
    assert "Set-Cookie" not in demo.get("/status.json").headers
    assert status["state"] == "live"
    assert status["idle"]["remaining"] == 10
    assert status["absolute"]["remaining"] == 280
    assert status["user"] == "ann"
    demo.clock.advance(10)
    expired = demo.get("/status.json").json
    # validated: an expired session is reported, its data withheld
    assert (expired["state"], expired["why"]) == ("expired", "idle timeout")
    assert "data" not in expired and "user" not in expired
    response = demo.get("/session", status=303).follow()
    assert "Your session ended (idle timeout)." in response.text


def test_page_load_extends(demo: TestApp) -> None:
    sign_up(demo)
    demo.clock.advance(20)
    demo.get("/session", status=200)
    assert demo.get("/status.json").json["idle"]["remaining"] == 30


def test_wrong_password_and_taken_name(demo: TestApp) -> None:
    sign_up(demo)
    demo.post(
        "/logout", {"csrf_token": demo.get("/session").forms["note-form"]["csrf_token"].value}
    )
    form = demo.get("/").forms["login-form"]
    form["name"], form["password"] = "ann", "wrong password"
    assert "Wrong name or password." in form.submit(status=303).follow().text
    form = demo.get("/").forms["signup-form"]
    form["name"], form["password"] = "ann", "another password"
    assert "is taken" in form.submit(status=303).follow().text


def test_csrf_token_is_new_after_login(demo: TestApp) -> None:
    before = demo.get("/").forms["login-form"]["csrf_token"].value
    page = sign_up(demo)
    after = page.forms["note-form"]["csrf_token"].value
    assert before != after
    demo.post("/session/note", {"note": "x", "csrf_token": before}, status=400)
    demo.post("/session/note", {"note": "x", "csrf_token": after}, status=303)


def test_per_session_idle_timeout(demo: TestApp) -> None:
    page = sign_up(demo)
    form = page.forms["settings-form"]
    form["idle_timeout"] = "400"  # longer than the absolute timeout: refused with the reason
    assert "Not changed: " in form.submit(status=303).follow().text
    form = demo.get("/session").forms["settings-form"]
    form["idle_timeout"] = "120"
    assert "idle timeout is now 120 s" in form.submit(status=303).follow().text
    status = demo.get("/status.json").json
    assert status["idle"] == {
        "timeout": 120,
        "own": True,
        "expires": 1_800_000_120,
        "remaining": 120,
    }


def test_remember_me_sets_max_age(demo: TestApp) -> None:
    form = demo.get("/").forms["signup-form"]
    form["name"], form["password"], form["remember"] = "bob", "long enough", True
    response = form.submit(status=303)
    cookie = response.headers["Set-Cookie"]
    assert f"Max-Age={DemoOptions().remember_max_age}" in cookie
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie


def test_status_poll_withholds_the_data_of_a_stale_cookie(demo: TestApp) -> None:
    """A copy of the cookie from before a renewal: renewal would reject it, the poll too."""
    sign_up(demo)
    stale = demo.cookies["session"]
    for _ in range(3):  # within the idle timeout (30 s), past renewal's 60 s
        demo.clock.advance(22)
        demo.get("/session")  # the third offers a new id
    demo.get("/session")  # the browser sends it back: acknowledged
    assert demo.cookies["session"] != stale
    demo.clock.advance(10)  # past the grace window of the old id (renewal_try_every 5 s)
    thief = TestApp(demo.app)
    thief.set_cookie("session", stale)
    status = thief.get("/status.json").json
    assert (status["state"], status["why"]) == ("expired", "renewal violation")
    assert "data" not in status
    assert demo.get("/status.json").json["state"] == "live"  # a peek deleted nothing


def test_your_sessions_page_shows_utc_times(demo: TestApp) -> None:
    sign_up(demo)
    demo.clock.advance(12)
    page = demo.get("/sessions", status=200)
    [row] = page.html.select("#session-list tbody tr")
    created, last_seen, expires = (cell.find("time") for cell in row.find_all("td")[1:4])
    # 1_800_000_000 is 2027-01-15T08:00:00Z
    assert created["datetime"] == "2027-01-15T08:00:00+00:00"
    assert created.text == "08:00:00 UTC"
    assert last_seen["datetime"] == "2027-01-15T08:00:00+00:00"
    assert expires["datetime"].endswith("+00:00") and expires.text.endswith(" UTC")
    assert "(12 s ago)" in row.find_all("td")[1].text


def test_front_page_says_what_rendering_its_forms_stores(demo: TestApp) -> None:
    """The note under the forms: no row, a cookie-only token accepted for the idle timeout,
    a cookie that ends with the browser."""
    with demo.sql:
        page = demo.get("/")
    note = " ".join(page.html.find(id="csrf-note").get_text().split())
    assert "stored nothing on the server" in note
    assert "accepted for 30 s after it was handed out" in note
    assert "anonymous session" not in page.text
    assert not [s for s in demo.sql.statements if s.lstrip().upper().startswith("INSERT")]
    (cookie,) = page.headers.getall("Set-Cookie")  # the token travels in the cookie
    assert "max-age" not in cookie.lower() and "expires" not in cookie.lower()

    form = {"name": "nobody", "password": "long enough"}
    token = page.forms["login-form"]["csrf_token"].value
    demo.clock.advance(31)  # past the idle timeout: refused
    assert "csrf-error" in demo.post("/login", {**form, "csrf_token": token}, status=400).text
    fresh = demo.get("/").forms["login-form"]["csrf_token"].value  # a reload hands one out
    assert fresh != token
    demo.clock.advance(29)  # within the idle timeout: accepted (wrong name: back to the form)
    demo.post("/login", {**form, "csrf_token": fresh}, status=303)
