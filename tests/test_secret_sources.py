"""The key from a file or an environment variable, kept out of the ini file and of process
listings; missing or bad sources are clear errors that never show a key."""

from __future__ import annotations

import pytest
from pyramid.paster import get_appsettings

from sessions_kernel import (
    ConfigurationError,
    factory_args_from_settings,
    generate_secret_key,
    session_factory,
)
from sessions_kernel.crypto import encode_payload
from sessions_kernel.testing import make_model

MODEL = make_model()
# fresh keys: a key printed in a test is published, and the kernel may refuse its text
TEST_SECRET_KEY = generate_secret_key()
OTHER_KEY = generate_secret_key()


def decrypts_cookies_of(factory, key):
    payload = encode_payload(bytes(32), {})
    made = session_factory(model_class=MODEL, secret_key=key).serializer.dumps(payload)
    return factory.serializer.loads(made) == payload


def main(global_config, **settings):  # the ini file's application; never called
    raise AssertionError


def test_key_file(tmp_path):
    path = tmp_path / "session.key"
    path.write_text(TEST_SECRET_KEY + "\n")
    factory = session_factory(model_class=MODEL, secret_key_file=str(path))
    assert decrypts_cookies_of(factory, TEST_SECRET_KEY)


def test_key_file_with_rotated_keys(tmp_path):
    path = tmp_path / "session.key"
    path.write_text(f"{OTHER_KEY}\n{TEST_SECRET_KEY}\n")
    factory = session_factory(model_class=MODEL, secret_key_file=str(path))
    assert decrypts_cookies_of(factory, TEST_SECRET_KEY)
    assert decrypts_cookies_of(factory, OTHER_KEY)


def test_key_file_named_in_an_ini_file_relative_to_it(tmp_path):
    (tmp_path / "session.key").write_text(TEST_SECRET_KEY)
    ini = tmp_path / "production.ini"
    ini.write_text(
        "[app:main]\nuse = call:test_secret_sources:main\n"
        "session.model_class = test_secret_sources.MODEL\n"
        "session.secret_key_file = %(here)s/session.key\n"
    )
    settings = get_appsettings(str(ini))
    factory = session_factory(**factory_args_from_settings(settings))
    assert decrypts_cookies_of(factory, TEST_SECRET_KEY)


def test_key_from_a_named_environment_variable(monkeypatch):
    monkeypatch.setenv("MYAPP_SESSION_KEY", TEST_SECRET_KEY)
    factory = session_factory(model_class=MODEL, secret_key_env="MYAPP_SESSION_KEY")
    assert decrypts_cookies_of(factory, TEST_SECRET_KEY)


def error(**settings):
    with pytest.raises(ConfigurationError) as info:
        session_factory(model_class=MODEL, **settings)
    message = str(info.value)
    assert TEST_SECRET_KEY[:12] not in message
    return message


def test_missing_key_file(tmp_path):
    message = error(secret_key_file=str(tmp_path / "nope.key"))
    assert "cannot read the key file" in message and "nope.key" in message
    assert "No such file or directory" in message


def test_empty_key_file(tmp_path):
    (tmp_path / "empty.key").write_text("\n")
    assert "is empty" in error(secret_key_file=str(tmp_path / "empty.key"))


def test_key_file_without_a_key(tmp_path):
    (tmp_path / "bad.key").write_text("not a key at all\n")
    message = error(secret_key_file=str(tmp_path / "bad.key"))
    assert "bad.key' holds no valid key: " in message
    assert "python -m sessions_kernel prints a new key" in message


def test_unset_environment_variable(monkeypatch):
    monkeypatch.delenv("MYAPP_SESSION_KEY", raising=False)
    message = error(secret_key_env="MYAPP_SESSION_KEY")
    assert "the environment variable MYAPP_SESSION_KEY is not set" in message
    assert "not on the pserve command line" in message


def test_environment_variable_without_a_key(monkeypatch):
    monkeypatch.setenv("MYAPP_SESSION_KEY", "short")
    assert "MYAPP_SESSION_KEY holds no valid key" in error(secret_key_env="MYAPP_SESSION_KEY")


def test_two_sources_are_refused(tmp_path, monkeypatch):
    (tmp_path / "session.key").write_text(TEST_SECRET_KEY)
    message = error(secret_key=TEST_SECRET_KEY, secret_key_file=str(tmp_path / "session.key"))
    assert (
        "session.secret_key and session.secret_key_file are set; the key must come from one place"
        in message
    )


def test_no_source_names_all_three():
    message = error()
    assert "session.secret_key_file" in message and "session.secret_key_env" in message


def test_the_name_of_the_environment_variable_is_shown_not_hidden(monkeypatch):
    monkeypatch.delenv("MYAPP_SESSION_KEY", raising=False)
    message = error(secret_key_env="MYAPP_SESSION_KEY")
    # a name is no secret: the message starts with the setting as written
    assert message.startswith("session.secret_key_env = 'MYAPP_SESSION_KEY': ")
    assert "<hidden>" not in message


def test_the_path_of_the_key_file_is_shown_not_hidden(tmp_path):
    path = tmp_path / "nope.key"
    message = error(secret_key_file=str(path))
    assert message.startswith(f"session.secret_key_file = {str(path)!r}: ")
    assert "<hidden>" not in message


def test_the_keys_read_from_the_variable_stay_hidden(monkeypatch):
    """What the name points at is the secret: a bad key in the variable is never shown."""
    bad = TEST_SECRET_KEY[:40]  # a truncated key
    monkeypatch.setenv("MYAPP_SESSION_KEY", f"{OTHER_KEY} {bad}")
    message = error(secret_key_env="MYAPP_SESSION_KEY")
    assert "'MYAPP_SESSION_KEY'" in message and "holds no valid key" in message
    assert OTHER_KEY[:12] not in message and bad[:12] not in message


@pytest.mark.parametrize("setting", ["secret_key_env", "secret_key_file"])
def test_a_key_written_where_its_name_belongs_is_hidden(setting):
    message = error(**{setting: TEST_SECRET_KEY})
    assert message.startswith(f"session.{setting} = <hidden>: ")
    assert "looks like a key" in message


def test_names_of_key_sources_in_traces_and_listings_show_no_key(monkeypatch):
    """The parsed value (the keys) of a reference setting stays hidden where values are shown."""
    from sessions_kernel import maintenance

    monkeypatch.setenv("MYAPP_SESSION_KEY", TEST_SECRET_KEY)
    factory = session_factory(model_class=MODEL, secret_key_env="MYAPP_SESSION_KEY")
    shown = factory.config.shown_values()
    assert shown["secret_key_env"] == shown["secret_key"] == "<hidden>"
    [kernel] = [r for r in maintenance.plugin_report(factory) if r.name == "sessions_kernel"]
    env = {s.name: s for s in kernel.settings}["secret_key_env"]
    assert env.secret and env.value is None
    assert TEST_SECRET_KEY[:12] not in repr(shown)


@pytest.mark.parametrize(
    "where",
    [
        "SESSIONS_SECRET_KEY",
        "SESSIONS_SECRET_KEY_FOR_PRODUCTION_APP_2026",
        "MYAPP_SESSION_KEY_V2_ROTATED_20261207",
        "/srv/app/keys/session-key-production-2026.key",
        "/Users/AliceSmith/Projects/MyApplication/keys/session.key",
        "C:/Users/Administrator/AppData/Roaming/MyApp/session.key",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "/srv/releases/20261207123456/config/session.key",
        "/opt/MyAPIService/Config/Keys/SessionKey.txt",
    ],
)
def test_names_and_paths_are_not_taken_for_keys(where):
    """The other side of refusing a key written where its name or path belongs: names of
    variables and paths of files, however long, in words, are shown and accepted."""
    from sessions_kernel.settings import looks_like_key

    assert not looks_like_key(where)


def test_keys_of_every_shape_are_taken_for_keys():
    """Keys as python -m sessions_kernel prints them (with or without digits) and hex
    secrets are refused where a name or a path belongs, and so never shown."""
    import base64
    import secrets

    from sessions_kernel.settings import looks_like_key

    keys = [base64.urlsafe_b64encode(secrets.token_bytes(32)).decode() for _ in range(3000)]
    digitless = [k for k in keys if not any(c.isdigit() for c in k)]
    while len(digitless) < 50:  # about 1 key in 1,500 has no digit
        key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        if not any(c.isdigit() for c in key):
            digitless.append(key)
    assert all(looks_like_key(k) for k in keys)
    assert all(looks_like_key(secrets.token_hex(32)) for _ in range(1000))
    # a digitless key is told by its rhythm of capitals and lower case: most are
    assert sum(looks_like_key(k) for k in digitless) >= 0.75 * len(digitless)
