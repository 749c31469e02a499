"""SESSIONS_TRACE_HOOKS=1: every hook call written to stderr, secrets hidden."""

from __future__ import annotations

from sessions_idle_timeout import IdleMixin

from sessions_kernel.crypto import parse_secret_keys
from sessions_kernel.plugins import TRACE_HOOKS_ENV
from sessions_kernel.testing import TEST_SECRET_KEY, make_model


def test_tracing_shows_each_hook_call_its_plugins_and_answer(session_app, monkeypatch, capsys):
    monkeypatch.setenv(TRACE_HOOKS_ENV, "1")
    app = session_app(make_model(IdleMixin), settings={"idle_timeout": "600"})
    started = capsys.readouterr().err
    # start-up: the settings are traced with the key hidden
    assert "session_check_settings (idle_timeout, sessions_kernel) [hook]" in started
    assert "'secret_key': '<hidden>'" in started
    assert "finish session_expiry_policy --> ['idle_timeout 600 s'] [hook]" in started

    app.post_json("/set", {"a": 1})
    capsys.readouterr()
    app.get("/read")
    request = capsys.readouterr().err
    # the session as plugins see it then: the row read, the data not yet
    assert "  session_validate (idle_timeout) [hook]\n      session: <Session " in request
    assert "… (data not read yet)>\n" in request
    assert "  finish session_validate --> None [hook]\n" in request
    assert "session_extend (idle_timeout)" in request
    # stages no plugin implements are skipped, so not traced
    assert "session_persist" not in request

    everything = started + request
    key = TEST_SECRET_KEY.decode() if isinstance(TEST_SECRET_KEY, bytes) else str(TEST_SECRET_KEY)
    assert key not in everything
    for raw in parse_secret_keys(TEST_SECRET_KEY):
        assert repr(raw) not in everything


def test_a_failing_hook_is_traced_with_its_exception(session_app, monkeypatch, capsys):
    monkeypatch.setenv(TRACE_HOOKS_ENV, "yes")
    app = session_app(make_model(IdleMixin), settings={"idle_timeout": "600"})
    app.post_json("/set", {"a": 1})
    pm = app.factory.config.pm

    class Failing:
        from sessions_kernel import hookimpl

        @hookimpl
        def session_validate(self, session):
            raise RuntimeError("validate failed")

    pm.register(Failing(), name="failing")
    capsys.readouterr()
    app.get("/read", status=500, expect_errors=True)
    assert "raised session_validate --> RuntimeError('validate failed') [hook]" in (
        capsys.readouterr().err
    )


def test_no_trace_unless_asked(session_app, monkeypatch, capsys):
    monkeypatch.delenv(TRACE_HOOKS_ENV, raising=False)
    app = session_app(make_model(IdleMixin), settings={"idle_timeout": "600"})
    app.post_json("/set", {"a": 1})
    app.get("/read")
    assert "[hook]" not in capsys.readouterr().err
