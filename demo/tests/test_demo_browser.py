"""End-to-end: the demo in Debian's headless Chromium, driven through Selenium.

The demo is served by waitress in a thread on a free port, on a temporary
SQLite file, with a test clock: "waiting through the idle timeout" is
``clock.advance()``, then waiting for the page's poll to show it. Screenshots
of the main pages go to ``demo/screenshots/`` (git-ignored; ``DEMO_SCREENSHOTS``
picks another folder); the path is printed.

Skipped only when ``/usr/bin/chromium`` is absent (``apt-get install chromium
chromium-driver``; ``.ci/run`` installs them).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from sessions_demo import DemoOptions, make_app
from webtest.http import StopableWSGIServer

from sessions_kernel.testing import Clock

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is absent: apt-get install chromium chromium-driver", allow_module_level=True
    )

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

OPTIONS = DemoOptions(
    idle_timeout=30, absolute_timeout=300, renewal_timeout=60, remember_max_age=3600
)
PASSWORD = "correct horse battery"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)
_names = count(1)


class Demo:
    def __init__(self, url: str, clock: Clock, shots: Path) -> None:
        self.url = url.rstrip("/")
        self.clock = clock
        self.shots = shots

    def screenshot(self, driver: WebDriver, name: str) -> None:
        path = self.shots / f"{name}.png"
        driver.save_screenshot(str(path))
        print(f"screenshot: {path}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    clock = Clock(int(time.time()))
    db = tmp_path_factory.mktemp("demo") / "demo.sqlite"
    server = StopableWSGIServer.create(make_app(f"sqlite:///{db}", options=OPTIONS, clock=clock))
    shots = Path(
        os.environ.get("DEMO_SCREENSHOTS") or Path(__file__).resolve().parents[1] / "screenshots"
    )
    shots.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots of the demo go to {shots}")
    try:
        assert server.wait(), "the demo server did not start"
        yield Demo(server.application_url, clock, shots)
    finally:
        server.shutdown()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Callable[[], WebDriver]]:
    """Start browsers, each with a fresh profile: separate cookie jars."""
    if not CHROMEDRIVER.exists():
        pytest.fail(
            f"{CHROMIUM} is installed but {CHROMEDRIVER} is not: apt-get install chromium-driver"
        )
    drivers: list[WebDriver] = []

    def start() -> WebDriver:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in FLAGS:
            options.add_argument(flag)
        profile = tmp_path / f"profile-{len(drivers)}"
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        driver.implicitly_wait(0)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()


def wait(driver: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = 10) -> Any:
    return WebDriverWait(driver, timeout).until(condition)


def flashes(driver: WebDriver) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".flash")]


def fill(driver: WebDriver, form_id: str, remember: bool = False, **fields: str) -> None:
    form = driver.find_element(By.ID, form_id)
    for name, value in fields.items():
        field = form.find_element(By.NAME, name)
        field.clear()
        field.send_keys(value)
    if remember:
        form.find_element(By.NAME, "remember").click()
    form.find_element(By.CSS_SELECTOR, "button").click()


def sign_up(demo: Demo, driver: WebDriver, remember: bool = False) -> str:
    name = f"user{next(_names)}-{os.getpid()}"
    driver.get(demo.url + "/")
    fill(driver, "signup-form", remember, name=name, password=PASSWORD)
    wait(driver, lambda d: d.current_url.endswith("/session"))
    return name


def log_in(demo: Demo, driver: WebDriver, name: str, remember: bool = False) -> None:
    driver.get(demo.url + "/")
    fill(driver, "login-form", remember, name=name, password=PASSWORD)
    wait(driver, lambda d: d.current_url.endswith("/session"))


def polls(driver: WebDriver) -> int:
    return int(driver.find_element(By.ID, "state-banner").get_attribute("data-polls") or 0)


def wait_for_polls(driver: WebDriver, n: int = 2) -> None:
    """Wait until the page's status poll has answered ``n`` more times."""
    start = polls(driver)
    wait(driver, lambda d: polls(d) >= start + n)


def banner_state(driver: WebDriver) -> str:
    return driver.find_element(By.ID, "state-banner").get_attribute("data-state") or ""


def session_cookie(driver: WebDriver) -> dict[str, Any]:
    """The session cookie as Chromium's own cookie jar holds it (CDP), and as WebDriver does."""
    cdp = [c for c in driver.execute_cdp_cmd("Network.getAllCookies", {})["cookies"]]
    found = [c for c in cdp if c["name"] == "session"]
    assert len(found) == 1, cdp
    webdriver_view = driver.get_cookie("session")
    assert webdriver_view is not None
    assert webdriver_view["httpOnly"] == found[0]["httpOnly"]
    return {**found[0], "webdriver": webdriver_view}


def test_sign_up_live_page_and_idle_expiry(demo: Demo, browser: Callable[[], WebDriver]) -> None:
    driver = browser()
    driver.get(demo.url + "/")
    assert driver.find_element(By.ID, "signup-form").is_displayed()
    demo.screenshot(driver, "01-home")
    name = sign_up(demo, driver)
    assert any("Welcome" in text for text in flashes(driver))
    wait(driver, lambda d: banner_state(d) == "live" and polls(d) >= 1)
    assert driver.find_element(By.ID, "idle-remaining").text == "30 s left"
    assert driver.find_element(By.ID, "absolute-remaining").text == "300 s left"
    assert "next renewal in 60 s" in driver.find_element(By.ID, "renewal").text
    assert f"user {name}" in driver.find_element(By.ID, "session-info").text
    rows = driver.find_elements(By.CSS_SELECTOR, "#plugins tr.active")
    active = {row.get_attribute("data-plugin") for row in rows}
    expected = {"idle_timeout", "absolute_timeout", "renewal", "cookie_settings", "userid", "csrf"}
    assert expected <= active, active
    shown = {
        e.get_attribute("data-attr"): e.text
        for e in driver.find_elements(By.CSS_SELECTOR, "#cookie td")
    }
    assert shown["httponly"] == "true" and shown["samesite"] == "Lax" and shown["path"] == "/"
    assert shown["max_age"] == "none"
    demo.screenshot(driver, "02-session")

    # the browser's cookie jar: what the settings ask for, a browser-session cookie
    cookie = session_cookie(driver)
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"
    assert cookie["path"] == "/"
    assert cookie["secure"] is False
    assert cookie["session"] is True  # no Max-Age: ends with the browser
    assert "expiry" not in cookie["webdriver"]

    # the poll is not activity: 20 s of polling, then 11 s more, and the idle timeout is over
    demo.clock.advance(20)
    wait_for_polls(driver)
    assert driver.find_element(By.ID, "idle-remaining").text == "10 s left"
    demo.clock.advance(11)
    wait(driver, lambda d: banner_state(d) == "expired")
    # validated like a request (SessionFactory.peek): it says why, and shows no data
    assert "(idle timeout)" in driver.find_element(By.ID, "state-banner").text
    assert driver.find_element(By.ID, "idle-remaining").text == "ended"
    demo.screenshot(driver, "03-session-expired")

    # the next real request finds the session expired, deletes it and says why
    driver.get(demo.url + "/session")
    wait(driver, lambda d: d.current_url == demo.url + "/")
    assert "Your session ended (idle timeout)." in flashes(driver)
    assert driver.find_elements(By.ID, "login-form")
    demo.screenshot(driver, "04-after-idle-timeout")


def test_page_loads_are_activity(demo: Demo, browser: Callable[[], WebDriver]) -> None:
    driver = browser()
    sign_up(demo, driver)
    demo.clock.advance(20)
    driver.get(demo.url + "/session")  # activity: the idle expiry moves to now + 30
    wait(driver, lambda d: polls(d) >= 1)
    assert driver.find_element(By.ID, "idle-remaining").text == "30 s left"
    assert driver.find_element(By.ID, "absolute-remaining").text == "280 s left"
    demo.clock.advance(20)
    driver.get(demo.url + "/session")
    assert driver.current_url == demo.url + "/session"
    wait(driver, lambda d: banner_state(d) == "live" and polls(d) >= 1)


def test_remember_me_cookie_and_logout(demo: Demo, browser: Callable[[], WebDriver]) -> None:
    first = browser()
    name = sign_up(demo, first)
    first.quit()
    driver = browser()
    before = time.time()
    log_in(demo, driver, name, remember=True)
    after = time.time()
    assert any("remembered by this browser" in text for text in flashes(driver))
    wait(driver, lambda d: polls(d) >= 1)
    max_age = driver.find_element(By.CSS_SELECTOR, "#cookie td[data-attr=max_age]").text
    assert max_age == str(OPTIONS.remember_max_age)

    cookie = session_cookie(driver)
    assert cookie["session"] is False  # a persistent cookie now
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax" and cookie["path"] == "/"
    # Max-Age counts from the response that set it, on the browser's own clock
    assert before + OPTIONS.remember_max_age - 2 <= cookie["expires"]
    assert cookie["expires"] <= after + OPTIONS.remember_max_age + 2
    assert cookie["webdriver"]["expiry"] == int(cookie["expires"])
    demo.screenshot(driver, "05-session-remembered")

    driver.find_element(By.ID, "logout").click()
    wait(driver, lambda d: d.current_url == demo.url + "/")
    assert any("Logged out" in text for text in flashes(driver))
    # the logged-in session's cookie is gone; what is left is an anonymous one
    # (the flash and the login form's CSRF token), with the global settings again
    assert session_cookie(driver)["session"] is True


def test_csrf_protected_form(demo: Demo, browser: Callable[[], WebDriver]) -> None:
    driver = browser()
    sign_up(demo, driver)
    # a POST without the token, from the page's own script: 400
    status = driver.execute_async_script(
        """const done = arguments[arguments.length - 1];
        fetch("/session/note", {method: "POST", body: new URLSearchParams({note: "forged"})})
          .then(r => done(r.status), e => done(String(e)));"""
    )
    assert status == 400
    # the form itself, its hidden token removed
    driver.execute_script("document.querySelector('#note-form input[name=csrf_token]').remove();")
    fill(driver, "note-form", note="without a token")
    wait(driver, lambda d: d.find_elements(By.ID, "csrf-error"))
    assert "400 Bad Request" in driver.title
    demo.screenshot(driver, "06-csrf-refused")

    # with the token: saved, and a flash message says so
    driver.get(demo.url + "/session")
    fill(driver, "note-form", note="with the token")
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".flash"))
    assert "Note saved in the session (1 in all)." in flashes(driver)
    wait(driver, lambda d: '"with the token"' in d.find_element(By.ID, "data").text)
    assert "forged" not in driver.find_element(By.ID, "data").text
    assert "without a token" not in driver.find_element(By.ID, "data").text
    demo.screenshot(driver, "07-note-saved")


def test_log_out_everywhere_else(demo: Demo, browser: Callable[[], WebDriver]) -> None:
    laptop, phone = browser(), browser()
    name = sign_up(demo, laptop)
    log_in(demo, phone, name)
    wait(phone, lambda d: banner_state(d) == "live")

    laptop.get(demo.url + "/sessions")
    rows = laptop.find_elements(By.CSS_SELECTOR, "#session-list tbody tr")
    assert len(rows) == 2
    assert [r.get_attribute("class") for r in rows].count("current") == 1
    demo.screenshot(laptop, "08-your-sessions")
    laptop.find_element(By.ID, "log-out-others").click()
    wait(laptop, lambda d: d.find_elements(By.CSS_SELECTOR, ".flash"))
    assert "Logged out everywhere else: 1 other session ended." in flashes(laptop)
    assert len(laptop.find_elements(By.CSS_SELECTOR, "#session-list tbody tr")) == 1
    demo.screenshot(laptop, "09-logged-out-elsewhere")

    # the phone's page sees its session gone at its next poll, and is logged out
    wait(phone, lambda d: banner_state(d) == "none")
    phone.get(demo.url + "/session")
    wait(phone, lambda d: d.current_url == demo.url + "/")
    assert "Log in first." in flashes(phone)
    # the laptop is still logged in
    laptop.get(demo.url + "/session")
    assert laptop.current_url == demo.url + "/session"
