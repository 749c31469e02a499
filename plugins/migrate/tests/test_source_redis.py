"""sessions_migrate.sources.redis against real pyramid_session_redis sessions in a real Redis.

The old application below is pyramid_session_redis 1.8 on Pyramid 2, configured from its
``redis.sessions.*`` settings, with Pyramid's ``SessionAuthenticationHelper`` security
policy (the user id in ``auth.userid``) and its default CSRF storage (``_csrft_``); a
WebTest browser logs in through it, fills a cart and gets a flash message. The source then
reads that browser's cookie and that Redis key.

Redis: ``SESSIONS_TEST_REDIS_URL`` (database 15); every test's keys are under a prefix of
its own (``redis.sessions.prefix``), deleted afterwards. The tests that need no Redis (the
cookie alone, the options) run without it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import pickle
import secrets
import subprocess
import sys
import threading
from typing import Any

import pytest
import redis
from pyramid.authentication import SessionAuthenticationHelper
from pyramid.config import Configurator
from pyramid.csrf import get_csrf_token
from pyramid.security import remember
from pyramid_session_redis.util import _StringSerializer
from sessions_migrate.source import (
    Claim,
    ClaimedElsewhere,
    ClaimHeld,
    Source,
    SourceOptions,
    Unrepresentable,
)
from sessions_migrate.sources.redis import RedisSource
from webob.cookies import SignedSerializer
from webtest import TestApp

from sessions_kernel.testing import Clock

REDIS_URL = os.environ.get("SESSIONS_TEST_REDIS_URL")
#: a URL for the sources that never connect (the client connects on first use)
UNUSED_URL = "redis://127.0.0.1:6379/15"


def claim_of(src, old_id, now):
    """What the plugin does with a source: read, then take; ``None`` when either refuses
    (gone, ended, or taken by a concurrent caller). The claim gets the old session as
    ``.session``."""
    old = src.read(None, old_id, now)
    if old is None:
        return None
    try:
        claim = src.take(None, old)
    except (ClaimedElsewhere, ClaimHeld):  # held by another (no wait here), or ended meanwhile
        return None
    claim.session = old
    return claim


class Basket:
    """A class of the old application: pickled into its session, refused by the source."""

    def __init__(self, items: list[str]) -> None:
        self.items = items


class _Policy:
    """Pyramid 2's security policy over the session: the user id in ``<prefix>userid``."""

    def __init__(self, prefix: str) -> None:
        self.helper = SessionAuthenticationHelper(prefix=prefix)

    def identity(self, request: Any) -> Any:
        return self.helper.authenticated_userid(request)

    def authenticated_userid(self, request: Any) -> Any:
        return self.helper.authenticated_userid(request)

    def permits(self, request: Any, context: Any, permission: str) -> bool:
        return True

    def remember(self, request: Any, userid: Any, **kw: Any) -> list[Any]:
        return self.helper.remember(request, userid, **kw)

    def forget(self, request: Any, **kw: Any) -> list[Any]:
        return self.helper.forget(request, **kw)


def _json_dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def old_app(
    prefix: str,
    secret: str,
    *,
    serializer: str = "pickle",
    auth_prefix: str = "auth.",
    timeout: int = 1200,
) -> TestApp:
    """A browser on a pyramid_session_redis application, configured from its settings."""
    assert REDIS_URL is not None
    settings: dict[str, Any] = {
        "redis.sessions.secret": secret,
        "redis.sessions.redis_url": REDIS_URL,
        "redis.sessions.prefix": prefix,
        "redis.sessions.timeout": str(timeout),
    }
    if serializer == "json":
        settings["redis.sessions.serialize"] = _json_dumps
        settings["redis.sessions.deserialize"] = json.loads
    with Configurator(settings=settings) as config:
        config.include("pyramid_session_redis")
        config.set_security_policy(_Policy(auth_prefix))
        config.set_default_csrf_options(require_csrf=True)

        def form(request: Any) -> dict[str, Any]:
            return {"csrf_token": get_csrf_token(request)}

        def login(request: Any) -> dict[str, Any]:
            request.response.headers.extend(remember(request, request.POST["userid"]))
            return {"ok": True}

        def add_to_cart(request: Any) -> dict[str, Any]:
            request.session.setdefault("cart", []).append(request.POST["item"])
            request.session.flash(f"{request.POST['item']} added")
            return {"ok": True}

        def keep_object(request: Any) -> dict[str, Any]:
            request.session["basket"] = Basket(["tea"])
            return {"ok": True}

        def shorten(request: Any) -> dict[str, Any]:
            request.session.adjust_session_timeout(300)
            return {"ok": True}

        def state(request: Any) -> dict[str, Any]:
            session = request.session
            return {
                "userid": request.authenticated_userid,
                "created": session.created,
                "expires": session.expires,
                "cart": session.get("cart"),
            }

        for name, view, method in [
            ("form", form, "GET"),
            ("login", login, "POST"),
            ("cart", add_to_cart, "POST"),
            ("object", keep_object, "POST"),
            ("shorten", shorten, "POST"),
            ("state", state, "GET"),
        ]:
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name, request_method=method, renderer="json")
        return TestApp(config.make_wsgi_app())


def log_in(app: TestApp, userid: str = "alice") -> str:
    """Log in, add to the cart (a flash message); return the CSRF token the pages hold."""
    token = app.get("/form").json["csrf_token"]
    app.post("/login", {"userid": userid, "csrf_token": token})
    app.post("/cart", {"item": "tea", "csrf_token": token})
    app.post("/cart", {"item": "milk", "csrf_token": token})
    return str(token)


def source(prefix: str, secret: str | bytes, url: str | None = None, **options: str) -> RedisSource:
    secret_bytes = secret.encode() if isinstance(secret, str) else secret
    opts = SourceOptions(
        secrets=(secret_bytes,),
        url=url or REDIS_URL,
        options={"prefix": prefix, "claim_wait": "0", **options},
    )
    return RedisSource(opts, Clock())


def signed(secret: str, session_id: str) -> str:
    """A cookie as pyramid_session_redis signs it (the serializer its factory builds)."""
    signer = SignedSerializer(
        secret, "pyramid_session_redis.", "sha512", serializer=_StringSerializer()
    )
    return signer.dumps(session_id).decode()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture
def secret() -> str:
    return new_secret()


@pytest.fixture
def browser(prefix: str, secret: str) -> TestApp:
    return old_app(prefix, secret)


def claim_key(prefix: str, old_id: str) -> str:
    return prefix + "migrating:" + old_id[len(prefix) :]


# -- a real session moves --------------------------------------------------------------------


def test_a_logged_in_browser_s_session_is_claimed_with_its_user_token_cart_and_flash(
    r, prefix, secret, browser
):
    token = log_in(browser)
    state = browser.get("/state").json
    assert state["userid"] == "alice"  # the old application's own view of it
    cookie = browser.cookies["session"]

    src = source(prefix, secret)
    old_id = src.open_cookie(cookie)
    assert old_id is not None and old_id.startswith(prefix)
    assert r.exists(old_id) == 1  # the id is the Redis key

    claim = claim_of(src, old_id, now=state["created"])
    assert isinstance(claim, Claim)
    old = claim.session
    assert old.id == old_id
    assert old.userid == "alice"
    assert old.csrf_token == token
    assert old.data == {"cart": ["tea", "milk"]}
    assert old.flash == {"": ["tea added", "milk added"]}
    assert old.created == state["created"]
    assert old.expires_at == state["expires"]
    assert old.accessed == state["expires"] - 1200
    assert old.settings == {}
    assert not old.is_empty()
    claim.on_abort()


def test_the_source_follows_the_source_protocol_and_its_entry_point():
    from importlib.metadata import entry_points

    (ep,) = entry_points(group="sessions_migrate.sources", name="pyramid_session_redis")
    assert ep.load() is RedisSource
    src = source("", new_secret(), url=UNUSED_URL)
    assert isinstance(src, Source)
    assert src.name == "pyramid_session_redis"
    assert src.cookie_name() == "session"
    assert src.cookie_attributes() == {"path": "/", "domain": None}
    other = RedisSource(
        SourceOptions(
            secrets=(b"x",),
            url=UNUSED_URL,
            cookie_name="shop",
            options={"cookie_path": "/shop", "cookie_domain": "example.com"},
        ),
        Clock(),
    )
    assert other.cookie_name() == "shop"
    assert other.cookie_attributes() == {"path": "/shop", "domain": "example.com"}


def test_a_custom_userid_key_and_a_json_serializer(r, prefix, secret):
    app = old_app(prefix, secret, serializer="json", auth_prefix="shop.")
    token = log_in(app, userid="bob")
    now = app.get("/state").json["created"]
    src = source(prefix, secret, serializer="json", userid_key="shop.userid")
    old_id = src.open_cookie(app.cookies["session"])
    raw = r.get(old_id)
    assert raw is not None and raw.startswith(b"{")  # the old application wrote JSON
    claim = claim_of(src, old_id, now)
    assert claim is not None
    assert (claim.session.userid, claim.session.csrf_token) == ("bob", token)
    assert claim.session.data == {"cart": ["tea", "milk"]}
    claim.on_abort()
    # read as pickle, JSON is damaged data: refused, never guessed at
    with pytest.raises(Unrepresentable):
        claim_of(source(prefix, secret), old_id, now)
    # with the default userid_key, bob's id stays in the data: not logged in
    claim = claim_of(source(prefix, secret, serializer="json"), old_id, now)
    assert claim is not None and claim.session.userid is None
    assert claim.session.data["shop.userid"] == "bob"
    claim.on_abort()


def test_a_session_s_own_timeout_is_carried_as_its_idle_timeout(r, prefix, secret, browser):
    token = log_in(browser)
    browser.post("/shorten", {"csrf_token": token})
    state = browser.get("/state").json
    src = source(prefix, secret)
    claim = claim_of(src, src.open_cookie(browser.cookies["session"]), state["created"])
    assert claim is not None
    assert claim.session.settings == {"idle_timeout": 300}
    assert claim.session.expires_at == state["expires"]
    claim.on_abort()


# -- the cookie --------------------------------------------------------------------------------


def test_forged_damaged_and_foreign_cookies_open_nothing(r, prefix, secret, browser):
    log_in(browser)
    cookie = browser.cookies["session"]
    src = source(prefix, secret)
    old_id = src.open_cookie(cookie)
    assert old_id is not None

    raw = base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4))
    signature, payload = raw[:64], raw[64:]
    other_id = prefix + secrets.token_urlsafe(48)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    refused = {
        "empty": "",
        "truncated by one": cookie[:-1],
        "truncated to the signature": b64(signature),
        "cut short": cookie[:40],
        "one bit of the signature": b64(flipped + payload),
        "another id under the same signature": b64(signature + other_id.encode()),
        "the id in clear": old_id,
        "padded": cookie + "=" * (-len(cookie) % 4 or 4),
        "quoted": f'"{cookie}"',
        "another secret": signed(new_secret(), old_id),
        "unsigned": b64(b"\0" * 64 + old_id.encode()),
        "too long": cookie + "A" * 5000,
    }
    for what, value in refused.items():
        assert src.open_cookie(value) is None, what
    # and the cookie of the browser does not open under another secret
    assert source(prefix, new_secret()).open_cookie(cookie) is None


def test_a_signed_id_the_old_store_would_not_have_made_opens_nothing(secret):
    src = source("shop:", secret, url=UNUSED_URL)
    good = "shop:" + secrets.token_urlsafe(48)
    assert src.open_cookie(signed(secret, good)) == good
    for what, session_id in {
        "another prefix": "cart:" + secrets.token_urlsafe(48),
        "no prefix": secrets.token_urlsafe(48),
        "short": "shop:" + secrets.token_urlsafe(12),
        "a claim key": "shop:migrating:" + secrets.token_urlsafe(48),
        "a glob": "shop:*",
    }.items():
        assert src.open_cookie(signed(secret, session_id)) is None, what
    # bytes that are not UTF-8, signed with the secret
    key = b"pyramid_session_redis." + secret.encode()
    payload = b"shop:\xff" + b"a" * 63
    cookie = base64.urlsafe_b64encode(hmac.new(key, payload, hashlib.sha512).digest() + payload)
    assert src.open_cookie(cookie.rstrip(b"=").decode()) is None
    # a custom id generator's ids, with the pattern they match
    custom = source("", secret, url=UNUSED_URL, id_pattern=r"[0-9a-f]{40}")
    assert custom.open_cookie(signed(secret, "ab" * 20)) == "ab" * 20
    assert custom.open_cookie(signed(secret, secrets.token_urlsafe(48))) is None


@pytest.mark.parametrize("text", ["clé-{}", "ключ-{}", "{}"], ids=["latin-1", "utf-8", "ascii"])
def test_the_secret_is_encoded_as_webob_encodes_it(text):
    """WebOb signs with salt + secret as Latin-1, else UTF-8; the file holds UTF-8."""
    old_secret = text.format(secrets.token_hex(16))
    session_id = secrets.token_urlsafe(48)
    cookie = signed(old_secret, session_id)
    src = source("", old_secret.encode("utf-8"), url=UNUSED_URL)
    assert src.open_cookie(cookie) == session_id


def test_every_secret_is_tried(secret):
    session_id = secrets.token_urlsafe(48)
    opts = SourceOptions(
        secrets=(new_secret().encode(), secret.encode()),
        url=UNUSED_URL,
    )
    src = RedisSource(opts, Clock())
    assert src.open_cookie(signed(secret, session_id)) == session_id


# -- expiry ------------------------------------------------------------------------------------


def test_a_session_past_its_python_expiry_is_not_claimed(r, prefix, secret, browser):
    log_in(browser)
    state = browser.get("/state").json
    src = source(prefix, secret)
    old_id = src.open_cookie(browser.cookies["session"])
    assert claim_of(src, old_id, now=state["expires"] + 1) is None
    assert r.exists(old_id) == 1  # left where it is
    assert r.exists(claim_key(prefix, old_id)) == 0  # and not held
    # its last second is still its own: the old store's rule is now > expires
    claim = claim_of(src, old_id, now=state["expires"])
    assert claim is not None
    claim.on_abort()


def test_a_session_whose_redis_ttl_passed_is_not_claimed(r, prefix, secret, browser):
    log_in(browser)
    now = browser.get("/state").json["created"]
    src = source(prefix, secret)
    old_id = src.open_cookie(browser.cookies["session"])
    assert 0 < r.ttl(old_id) <= 1200  # the old application set its TTL
    r.pexpireat(old_id, 1)  # its TTL ends: Redis drops the key
    assert claim_of(src, old_id, now) is None
    assert r.exists(claim_key(prefix, old_id)) == 0
    # the old application agrees: a new, empty session
    assert browser.get("/state").json["userid"] is None


def test_a_legacy_payload_is_not_claimed(r, prefix, secret):
    src = source(prefix, secret)
    old_id = prefix + secrets.token_urlsafe(48)
    r.set(old_id, pickle.dumps({"m": {"auth.userid": "alice"}, "c": 1, "v": 0}))
    assert claim_of(src, old_id, 2) is None
    r.set(old_id, pickle.dumps({"m": {"auth.userid": "alice"}, "c": 1, "v": 1}))
    claim = claim_of(src, old_id, 2)
    assert claim is not None and claim.session.userid == "alice"
    assert claim.session.expires_at is None  # no timeout, no TTL: it never ended
    claim.on_abort()


# -- what cannot be read safely ----------------------------------------------------------------


def test_an_object_of_the_application_in_the_session_is_unrepresentable(r, prefix, secret, browser):
    token = log_in(browser)
    browser.post("/object", {"csrf_token": token})
    now = browser.get("/state").json["created"]
    src = source(prefix, secret)
    old_id = src.open_cookie(browser.cookies["session"])
    assert b"Basket" in r.get(old_id)  # the old application pickled the object
    with pytest.raises(Unrepresentable, match="Basket"):
        claim_of(src, old_id, now)
    assert r.exists(claim_key(prefix, old_id)) == 0  # released: the session stays as it was
    assert r.exists(old_id) == 1
    with pytest.raises(Unrepresentable):
        claim_of(src, old_id, now)


class _Runs:
    """A pickle that, loaded by pickle.loads, creates the file it names."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


def test_a_pickle_that_runs_code_is_refused_without_running(r, prefix, secret, tmp_path):
    marker = tmp_path / "ran"
    evil = pickle.dumps({"m": {"x": _Runs(str(marker))}, "c": 1, "v": 1})
    pickle.loads(evil)  # the test's own bytes: it does run
    assert marker.exists()
    marker.unlink()
    old_id = prefix + secrets.token_urlsafe(48)
    r.set(old_id, evil)
    with pytest.raises(Unrepresentable):
        claim_of(source(prefix, secret), old_id, 2)
    assert not marker.exists()


@pytest.mark.parametrize(
    "value",
    [
        pickle.dumps(["m", "c"]),
        pickle.dumps({"m": [], "c": 1, "v": 1}),
        pickle.dumps({"m": {}, "c": "1", "v": 1}),
        pickle.dumps({"m": {}, "c": 1, "v": 1, "x": "soon"}),
        pickle.dumps({"m": {"_csrft_": 5}, "c": 1, "v": 1}),
        pickle.dumps({"m": {"_f_": "one"}, "c": 1, "v": 1}),
        b"\x80\x04garbage",
    ],
    ids=["list", "m-list", "c-text", "x-text", "csrf-int", "flash-text", "garbage"],
)
def test_a_value_that_is_not_pyramid_session_redis_s_is_unrepresentable(r, prefix, secret, value):
    old_id = prefix + secrets.token_urlsafe(48)
    r.set(old_id, value)
    with pytest.raises(Unrepresentable):
        claim_of(source(prefix, secret), old_id, 2)
    assert r.exists(claim_key(prefix, old_id)) == 0


def test_a_key_of_another_type_is_unrepresentable(r, prefix, secret):
    old_id = prefix + secrets.token_urlsafe(48)
    r.hset(old_id, "m", "x")
    with pytest.raises(Unrepresentable):
        claim_of(source(prefix, secret), old_id, 2)
    assert r.exists(claim_key(prefix, old_id)) == 0


# -- exactly once ------------------------------------------------------------------------------


def race(src: RedisSource, old_id: str, now: int, threads: int) -> list[Claim | None]:
    """``threads`` first visits with one old cookie, claiming at the same moment."""
    barrier = threading.Barrier(threads)
    results: list[Claim | None] = []
    lock = threading.Lock()

    def visit() -> None:
        barrier.wait()
        got = claim_of(src, old_id, now)
        with lock:
            results.append(got)

    workers = [threading.Thread(target=visit) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results


def test_two_concurrent_first_visits_claim_once(r, prefix, secret, browser):
    log_in(browser)
    now = browser.get("/state").json["created"]
    src = source(prefix, secret)
    old_id = src.open_cookie(browser.cookies["session"])
    for _round in range(20):
        results = race(src, old_id, now, threads=8)
        won = [c for c in results if c is not None]
        assert len(results) == 8 and len(won) == 1
        won[0].on_abort()  # the next round races again


def test_a_claim_holds_until_it_ends_and_is_bounded(r, prefix, secret, browser):
    log_in(browser)
    now = browser.get("/state").json["created"]
    src = source(prefix, secret, claim_seconds="30")
    old_id = src.open_cookie(browser.cookies["session"])
    claim = claim_of(src, old_id, now)
    assert claim is not None
    assert 0 < r.ttl(claim_key(prefix, old_id)) <= 30  # a crashed request's claim ends
    assert claim_of(src, old_id, now) is None
    assert claim_of(source(prefix, secret), old_id, now) is None  # another process too
    claim.on_abort()


def test_on_abort_releases_the_claim_so_that_a_retry_claims_again(r, prefix, secret, browser):
    log_in(browser)
    now = browser.get("/state").json["created"]
    src = source(prefix, secret)
    old_id = src.open_cookie(browser.cookies["session"])
    first = claim_of(src, old_id, now)
    assert first is not None
    first.on_abort()  # the transaction rolled back (pyramid_retry runs it again)
    assert r.exists(old_id) == 1
    second = claim_of(src, old_id, now)
    assert second is not None and second.session.userid == "alice"
    # a late abort of the first attempt does not release the second's claim
    first.on_abort()
    assert claim_of(src, old_id, now) is None
    second.on_abort()


def test_on_commit_deletes_the_old_key_and_the_claim(r, prefix, secret, browser):
    log_in(browser)
    now = browser.get("/state").json["created"]
    src = source(prefix, secret)
    old_id = src.open_cookie(browser.cookies["session"])
    claim = claim_of(src, old_id, now)
    assert claim is not None
    claim.on_commit()
    assert r.exists(old_id) == 0
    assert r.exists(claim_key(prefix, old_id)) == 0
    assert claim_of(src, old_id, now) is None
    # the old application's cookie no longer logs anyone in
    assert browser.get("/state").json["userid"] is None


def test_redis_out_of_reach_is_an_error_not_an_expired_session(secret):
    src = source("", secret, url="redis://127.0.0.1:1/15")
    with pytest.raises(redis.ConnectionError):
        claim_of(src, secrets.token_urlsafe(48), 2)


# -- the bulk path -----------------------------------------------------------------------------


def test_live_ids_and_count_scan_the_prefix(r, prefix, secret):
    ids = set()
    src = source(prefix, secret)
    for name in ["alice", "bob", "carol"]:
        app = old_app(prefix, secret)
        log_in(app, name)
        ids.add(src.open_cookie(app.cookies["session"]))
    held = claim_of(src, sorted(ids)[0], 0)  # a claim key is not a session
    assert held is not None
    r.set(prefix + "settings", b"x")  # a key of the application under the prefix
    r.hset(prefix + secrets.token_urlsafe(48), "m", "x")  # not a string
    r.set("other-" + secrets.token_urlsafe(48), b"x")  # outside the prefix
    try:
        assert set(src.live_ids(None, 0)) == ids
        assert src.count(None, 0) == 3
    finally:
        r.delete(*r.keys("other-*"))
        held.on_abort()


def test_a_prefix_with_glob_characters_is_matched_literally(r, prefix, secret):
    odd = prefix + "[a]*?"
    mine = odd + secrets.token_urlsafe(48)
    near = prefix + "a" + secrets.token_urlsafe(48)  # what "[a]" would match as a glob
    r.set(mine, pickle.dumps({"m": {}, "c": 1, "v": 1}))
    r.set(near, pickle.dumps({"m": {}, "c": 1, "v": 1}))
    assert list(source(odd, secret).live_ids(None, 0)) == [mine]


# -- the options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": None}, "session.migrate_url"),
        ({"options": {"serializer": "yaml"}}, "'pickle'"),
        ({"options": {"claim_seconds": "0"}}, "claim_seconds"),
        ({"options": {"claim_seconds": "soon"}}, "claim_seconds"),
        ({"options": {"id_pattern": "("}}, "id_pattern"),
        ({"options": {"prefx": "x"}}, "no option prefx"),
        ({"secrets": ()}, "session.migrate_secret_file"),
    ],
)
def test_wrong_options_are_value_errors_that_name_the_fix(kwargs, message):
    base: dict[str, Any] = {"secrets": (b"s",), "url": UNUSED_URL}
    with pytest.raises(ValueError, match=message):
        RedisSource(SourceOptions(**{**base, **kwargs}), Clock())


def test_without_the_redis_package_the_source_says_what_to_install():
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from sessions_migrate.source import SourceOptions\n"
        "from sessions_migrate.sources.redis import RedisSource\n"
        "try:\n"
        f"    RedisSource(SourceOptions(secrets=(b's',), url={UNUSED_URL!r}), lambda: 0.0)\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    assert "pip install sessions-migrate[redis]" in out.stdout


def test_the_repr_shows_neither_the_secret_nor_the_url_s_password(secret):
    src = RedisSource(
        SourceOptions(
            secrets=(secret.encode(),),
            url="redis://user:hunter2-password@127.0.0.1:6379/15",
            options={"prefix": "shop:"},
        ),
        Clock(),
    )
    text = repr(src)
    assert secret not in text and "hunter2" not in text
    assert "shop:" in repr(src)
