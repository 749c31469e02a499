"""Any cookie value gives a fresh session: no exception, no SQL, the bad cookie deleted."""

from __future__ import annotations

import base64
import os

import pytest
import webtest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_support import set_cookies
from pyramid.config import Configurator
from pyramid.session import SignedCookieSessionFactory

from sessions_kernel import AESGCMCookieSerializer, generate_secret_key
from sessions_kernel.crypto import encode_payload, parse_secret_keys
from sessions_kernel.testing import make_model

OLD_KEY = generate_secret_key()


def _pyramid_cookie() -> str:
    """A cookie of another application: Pyramid's own SignedCookieSessionFactory."""

    def view(request):
        request.session["user"] = "mallory"
        return {}

    with Configurator() as config:
        config.set_session_factory(SignedCookieSessionFactory("another secret", cookie_name="s"))
        config.add_route("x", "/x")
        config.add_view(view, route_name="x", renderer="json")
        app = webtest.TestApp(config.make_wsgi_app())
    app.get("/x")
    return app.cookies["s"]


def _decoded(value: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        return None


@pytest.mark.parametrize("session_db_url", ["sqlite"], indirect=True)
def test_any_cookie_value_gives_a_fresh_session(session_app):
    app = session_app(make_model())  # built once, outside the property
    app.post_json("/set", {"a": 1})
    real = app.cookies["session"]
    old_key = AESGCMCookieSerializer(parse_secret_keys(OLD_KEY))
    foreign = [
        _pyramid_cookie(),
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl",  # a JWT
        old_key.dumps(encode_payload(os.urandom(32), {})),  # a real cookie under an old key
        "x" * 10_000,
        real + "A" * 10_000,
    ]
    cookies = st.one_of(
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=300),
        st.binary(max_size=400).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
        st.integers(0, len(real) - 1).map(lambda n: real[:n]),  # truncated
        st.tuples(st.integers(0, len(real) - 1), st.sampled_from("AQw-_9"))
        .map(lambda t: real[: t[0]] + t[1] + real[t[0] + 1 :])
        # one character changed; in the last place of unpadded base64 some characters
        # differ only in bits the decoder drops, which would leave the cookie intact
        .filter(lambda c: _decoded(c) != _decoded(real)),
        st.sampled_from(foreign),
    )

    rejected: list[str] = []  # values the kernel saw and refused (WebOb drops some first)

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(cookies)
    def property(value: str) -> None:
        browser = app.new_browser()
        with app.count() as sql:
            response = browser.get("/read", headers={"Cookie": f"session={value}"})
        assert sql.count == 0, sql.statements
        assert response.status_int == 200
        assert response.json["new"] is True and response.json["data"] == {}
        for header in set_cookies(response):
            assert header.startswith("session=; Max-Age=0"), header
            rejected.append(value)

    property()
    assert len(rejected) > 50  # the property exercised the kernel, not only WebOb's parser
    assert len(app.rows()) == 1  # nothing was written; the real session is untouched
    assert app.get("/read").json["data"] == {"a": 1}


@pytest.mark.parametrize(
    "cookie",
    ["x" * 10_000, "!!!", "c2Vzc2lvbg", base64.urlsafe_b64encode(os.urandom(80)).decode()],
)
def test_bad_cookie_with_a_write_starts_a_new_session(session_app, cookie):
    app = session_app(make_model())
    app.set_cookie("session", cookie)
    with app.count() as sql:
        response = app.post_json("/set", {"b": 1})
    assert sql.kinds() == ["INSERT"]
    [header] = set_cookies(response)
    assert header.startswith("session=") and "Max-Age=0" not in header


@pytest.mark.parametrize("value", ["\\\x80", "\xff\xfe", "caf\xe9"])
def test_cookie_that_is_not_utf8_gives_a_fresh_session(session_app, value):
    app = session_app(make_model())
    with app.count() as sql:
        response = app.get("/read", headers={"Cookie": f"session={value}"})
    assert sql.count == 0
    assert response.json["new"] is True
    [header] = set_cookies(response)
    assert header.startswith("session=; Max-Age=0")
