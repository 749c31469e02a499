"""No key material in anything the kernel emits: reprs, strs, logs, errors, traces, listings.

The review found the raw key bytes in ``repr(factory.config)`` and
``factory.config.values``, which traceback tools that dump local variables
print. This test makes a fresh key, runs an application through everything
that shows state (every request path, ``SESSIONS_TRACE_HOOKS``, DEBUG logging,
start-up errors, Pyramid's introspector, ``psessions plugins``) and greps all
of it for the key in every form it could take. ``conftest.py`` also greps
every log record of the whole test run for the kit's key.
"""

from __future__ import annotations

import base64
import io
import logging
from argparse import Namespace

import pytest
from pyramid.interfaces import ISessionFactory
from sessions_absolute_timeout import AbsoluteMixin
from sessions_cookie_settings import ConfigCookieMixin
from sessions_csrf import CSRFMixin
from sessions_idle_timeout import IdleMixin
from sessions_renewal import RenewalMixin
from sessions_userid import UseridMixin

from sessions_kernel import ConfigurationError, generate_secret_key, session_factory
from sessions_kernel.plugins import TRACE_HOOKS_ENV
from sessions_kernel.testing import SessionTestApp, make_model


def forms_of(key: str) -> list[str]:
    """Every way a key could be written out: its text, and its raw bytes as Python,
    hex, base64 (either alphabet, padded or not) and latin-1 text would show them."""
    raw = base64.urlsafe_b64decode(key)
    forms = {
        key,
        key.rstrip("="),
        repr(raw)[2:-1],
        raw.hex(),
        raw.hex().upper(),
        base64.b64encode(raw).decode().rstrip("="),
        raw.decode("latin-1"),
        str(list(raw))[1:-1],
    }
    # a long enough piece of any of them gives the key away too
    return sorted(form[i : i + 16] for form in forms for i in range(0, len(form) - 15, 8))


def assert_no_key(key: str, text: str, where: str) -> None:
    leaked = [form for form in forms_of(key) if form in text]
    assert not leaked, f"{where} shows key material: {leaked[:3]}"


MODEL_MIXINS = (UseridMixin, CSRFMixin, IdleMixin, AbsoluteMixin, RenewalMixin, ConfigCookieMixin)


def test_nothing_the_kernel_emits_shows_the_key(session_engine, monkeypatch, capfd, caplog):
    key = generate_secret_key()
    second = generate_secret_key()
    monkeypatch.setenv(TRACE_HOOKS_ENV, "1")
    caplog.set_level(logging.DEBUG)
    model = make_model(*MODEL_MIXINS)
    model.metadata.drop_all(session_engine)
    model.metadata.create_all(session_engine)
    shown: list[str] = []
    try:
        app = SessionTestApp(
            model,
            session_engine,
            settings={
                "secret_key": f"{key}\n{second}",
                "idle_timeout": "600",
                "renewal_timeout": "60",
            },
        )
        factory = app.wsgi.registry.queryUtility(ISessionFactory)
        shown += [repr(factory), str(factory), repr(factory.config), str(factory.config.values)]
        shown += [repr(vars(factory)), repr(factory.serializer), repr(factory.storage.__dict__)]
        shown += [repr(getattr(factory, name, None)) for name in dir(factory)]
        introspector = app.wsgi.registry.introspector
        for category in introspector.categories():
            for entry in introspector.get_category(category):
                shown.append(repr(entry["introspectable"]))
                shown.append(repr(dict(entry["introspectable"])))
        # every request path: new, read, write, regenerate, bad cookie, logout
        app.post_json("/set", {"a": 1})
        app.get("/read")
        app.post_json("/set", {"a": 2})
        app.post("/regenerate")
        app.clock.advance(61)
        app.get("/read")  # a renewal offer
        bad = app.new_browser()
        bad.set_cookie("session", "garbage")
        bad.get("/read")
        app.post("/invalidate")
        # start-up errors: a bad second key after a good first one, a bad setting
        for settings in (
            {"secret_key": f"{key} {'a' * 43}="},
            {"secret_key": key, "cookie_samesite": "nope"},
            {"secret_key": key, "no_such_setting": "1"},
        ):
            with pytest.raises(ConfigurationError) as info:
                session_factory(model_class=make_model(), **settings)
            shown.append(str(info.value))
            shown.append(repr(info.value))
        # psessions plugins (its settings listing)
        from sessions_kernel import cli

        out = io.StringIO()
        cli._plugins(Namespace(json=False, verbose=True), factory, out)
        shown.append(out.getvalue())
        out = io.StringIO()
        cli._plugins(Namespace(json=True, verbose=True), factory, out)
        shown.append(out.getvalue())
    finally:
        model.metadata.drop_all(session_engine)
    captured = capfd.readouterr()
    shown += [captured.out, captured.err]  # SESSIONS_TRACE_HOOKS writes to stderr
    shown += [record.getMessage() for record in caplog.records]
    shown += [repr(record.__dict__) for record in caplog.records]
    text = "\n".join(shown)
    assert "session_check_settings" in captured.err  # the trace did run
    for secret in (key, second):
        assert_no_key(secret, text, "the application's output")


def test_the_keys_repr_says_how_many_and_nothing_else():
    from sessions_kernel.crypto import parse_secret_keys

    keys = parse_secret_keys(f"{generate_secret_key()} {generate_secret_key()}")
    assert repr(keys) == str(keys) == "<2 secret keys, hidden>"
    assert len(keys) == 2 and all(len(k) == 32 for k in keys)  # still the keys to use
    # not a sequence: a dumper of local variables (Sentry's, say) walks sequences item by
    # item and would print each key's bytes
    from collections.abc import Sequence

    assert not isinstance(keys, (tuple, list, Sequence))
    assert repr(keys[1:]) == "<1 secret key, hidden>"
