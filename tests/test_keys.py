"""session.secret_key: weak, malformed and published keys are refused at start-up, and no
error shows any part of a key."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import secrets
from argparse import Namespace
from pathlib import Path

import pytest
from pyramid.config import Configurator

from sessions_kernel import ConfigurationError, generate_secret_key, session_factory
from sessions_kernel.crypto import (
    PUBLISHED_KEYS,
    KitKey,
    key_text_weakness,
    key_weakness,
    parse_secret_keys,
)
from sessions_kernel.testing import TEST_SECRET_KEY, make_model

ROOT = Path(__file__).resolve().parent.parent


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def _with(character: str) -> str:
    """A fresh random key whose standard base64 has ``character`` ('+' or '/')."""
    while True:
        key = base64.b64encode(os.urandom(32)).decode()
        if character in key[:43]:
            return key


#: what is not the repository's own text: tools' caches, builds, and virtual environments,
#: `make install`'s .venv and `make test-pythons`' .venv-3.10 and .venv-3.13 among them
#: (their site-packages print strings that look like keys)
NOT_PRINTED_HERE = {"_build", "build", "dist", "var", "__pycache__", ".hypothesis"}


def _published(root: Path = ROOT) -> list[str]:
    """The keys printed in this repository (its docs, READMEs, examples, tests)."""
    found = set()
    for folder, folders, files in os.walk(root):
        # pruned, not walked: a venv holds tens of thousands of files
        folders[:] = [
            name
            for name in folders
            if not name.startswith(".")
            and name not in NOT_PRINTED_HERE
            and not name.endswith(".egg-info")
        ]
        for name in files:
            path = Path(folder, name)
            if path.suffix not in {".py", ".rst", ".md", ".ini", ".txt", ".toml", ".cfg", ".html"}:
                continue
            text = path.read_text(errors="replace")
            for key in re.findall(r"(?<![\w+/=-])[\w+/-]{43}=?(?![\w+/=-])", text, re.ASCII):
                # a key, not an identifier: letters of both cases and a digit
                if re.search("[a-z]", key) and re.search("[A-Z]", key) and re.search("[0-9]", key):
                    found.add(key)
    return sorted(found)


def _key_like() -> str:
    """A fresh key the scan recognises (letters of both cases and a digit)."""
    while True:
        key = generate_secret_key()
        if re.search("[a-z]", key) and re.search("[A-Z]", key) and re.search("[0-9]", key):
            return key


def test_the_scan_for_printed_keys_reads_the_repository_not_its_venvs(tmp_path):
    """`make test-pythons` leaves .venv-3.10 and .venv-3.13 in the checkout: their
    site-packages are not this repository's text, and are not scanned."""
    key, other = (_key_like() for _ in range(2))
    for where in (".venv", ".venv-3.10", ".venv-3.13", ".git", "docs/_build", "x.egg-info"):
        (tmp_path / where / "lib").mkdir(parents=True)
        (tmp_path / where / "lib" / "site.py").write_text(f"URL = '{other}'\n")
    (tmp_path / "docs").joinpath("page.rst").write_text(f"session.secret_key = {key}\n")
    assert _published(tmp_path) == [key]


REFUSED = {
    # not random
    "all zero": (_b64(bytes(32)), "is not random"),
    "one byte repeated": (_b64(b"\x8f" * 32), "is not random"),
    "few distinct bytes": (_b64(bytes(range(8)) * 4), "is not random"),
    "a pattern repeated": (_b64(os.urandom(8) * 4), "is not random"),
    "a counter": (_b64(bytes(range(100, 132))), "is not random"),
    # text, not random bytes
    "a passphrase": (_b64(b"correct horse battery staple 42!"), "decodes to text"),
    "a hex string": (_b64(secrets.token_hex(16).encode()), "decodes to text"),
    "a sentence with a newline": (_b64(b"my session key, do not share!!\r\n"), "decodes to text"),
    # not URL-safe base64
    "standard base64 with +": (_with("+"), "is standard base64"),
    "standard base64 with /": (_with("/"), "is standard base64"),
    "characters the decoder used to drop": (
        (lambda k: k[:20] + "!!!!" + k[20:])(generate_secret_key()),
        "has characters outside URL-safe base64",
    ),
    "one character it used to drop": (
        (lambda k: k[:20] + "*" + k[20:])(generate_secret_key()),
        "has characters outside URL-safe base64",
    ),
    # text that decodes to random-looking bytes but came from no random generator
    "43 lowercase letters": ("correcthorsebatterystaplecorrecthorsebatter=", "uses one kind"),
    "43 uppercase letters": ("CORRECTHORSEBATTERYSTAPLECORRECTHORSEBATTER=", "uses one kind"),
    "43 random digits": ("5554604796329195110330256313851580327352427=", "uses one kind"),
    "a hex digest": (hashlib.sha256(b"password").hexdigest()[:43] + "=", "is hex digits only"),
    "mixed-case hex": ("DEADbeef0123456789abcdefABCDEF0123456789abc=", "is hex digits only"),
    "no uppercase": ("correct-horse-battery-staple-1234567890-xyz=", "lacks upper- or"),
    "few distinct characters": ("aB1aB1aB1aB1cD2cD2cD2cD2eF3eF3eF3eF3gH4gH4g=", "uses too few"),
    # what the second review got past the rules above
    "the alphabet": ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopq=", "follows the alphabet"),
    "alternating case": ("AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGhIjKlMnOpQ=", "follows the alphabet"),
    "a keyboard walk": ("QwErTyUiOpAsDfGhJkLzXcVbNmQwErTyUiOpAsDfGhJ=", "follows the alphabet"),
    "a column walk": ("1qaz2wsx3edc4rfv5tgb6yhn7ujm8ikLOLPQAZWSXED=", "follows the alphabet"),
    "16 bytes padded with zeros": (_b64(os.urandom(16) + bytes(16)), "is not random"),
    "squares": (_b64(bytes(i * i % 256 for i in range(100, 132))), "is not random"),
    "a space inside": ("abc def", "is not a 256-bit key"),
    "too short": (generate_secret_key()[:40], "is not a 256-bit key"),
    # published: in the docs, in the tests before, the kit's key as text
    "the getting-started key": ("0kzAe0H8y2tQ2cV0PnZb9QF7o5m8oQ3l1hZ0XJmJq8E=", "is published"),
    "the old tests' key": ("qkO7u2sL0VZC6u1b2YfQx1wq6V3nq2wJ4Zr0bYt8e0E=", "is published"),
    "the kit's key as text": (str(TEST_SECRET_KEY), "decodes to text"),
    "the kit's key unpadded": (str(TEST_SECRET_KEY).rstrip("="), "decodes to text"),
}


def _message(secret_key: object) -> str:
    with pytest.raises(ConfigurationError) as info:
        session_factory(model_class=make_model(), secret_key=secret_key)
    return str(info.value)


def _shows_part_of(message: str, key: str) -> bool:
    """Whether ``message`` holds 6 or more consecutive characters of ``key``."""
    return any(key[i : i + 6] in message for i in range(len(key) - 5))


@pytest.mark.parametrize(("key", "reason"), REFUSED.values(), ids=REFUSED.keys())
def test_a_bad_key_is_refused_by_its_position_only(key, reason):
    good = generate_secret_key()
    for position, value in ((1, key), (2, f"{good} {key}"), (2, f"{good}\n    {key}")):
        message = _message(value)
        assert f"key {position} of session.secret_key {reason}" in message, message
        assert "python -m sessions_kernel" in message
        assert not _shows_part_of(message, key), message
        assert not _shows_part_of(message, good), message


@pytest.mark.parametrize(("key", "reason"), REFUSED.values(), ids=REFUSED.keys())
def test_a_bad_key_is_refused_by_includeme(key, reason):
    """What a user's application does: the key as text in its settings."""
    settings = {"session.secret_key": key, "session.model_class": make_model()}
    with (
        pytest.raises(ConfigurationError, match=f"key 1 of session.secret_key {reason}"),
        Configurator(settings=settings) as config,
    ):
        config.include("sessions_kernel")


def test_the_published_list_holds_sha256_of_raw_keys_only():
    for digest in PUBLISHED_KEYS:
        assert re.fullmatch("[0-9a-f]{64}", digest)
    assert hashlib.sha256(bytes(32)).hexdigest() not in PUBLISHED_KEYS  # refused anyway


def test_every_key_printed_in_the_repository_is_published_and_refused():
    """A key in the docs, a README, an example or a test is readable by anyone: the kernel
    refuses it. Add a new one's SHA-256 to crypto.PUBLISHED_KEYS (or make it at run time)."""
    found = _published()
    assert "0kzAe0H8y2tQ2cV0PnZb9QF7o5m8oQ3l1hZ0XJmJq8E=" in found  # the scan works
    for key in found:
        raw = base64.urlsafe_b64decode(key.replace("+", "-").replace("/", "_").rstrip("=") + "=")
        assert len(raw) == 32, key
        refused = key_weakness(raw) or key_text_weakness(key)
        assert refused, f"{key} is printed in the repository but not published"
        with pytest.raises(ValueError, match=r"key 1 of session\.secret_key"):
            parse_secret_keys(key)


def test_the_kit_key_is_accepted_as_its_object_only():
    model = make_model()
    assert session_factory(model_class=model, secret_key=TEST_SECRET_KEY)
    assert session_factory(model_class=model, secret_key=[generate_secret_key(), TEST_SECRET_KEY])
    with Configurator(
        settings={"session.secret_key": TEST_SECRET_KEY, "session.model_class": model}
    ) as config:
        config.include("sessions_kernel")  # the test kit passes the object through settings
    # its text, as a user would copy it into an ini file, is refused everywhere
    for text in (
        str(TEST_SECRET_KEY),
        f" {TEST_SECRET_KEY} ",
        f"{generate_secret_key()} {TEST_SECRET_KEY}",
    ):
        assert "of session.secret_key decodes to text" in _message(text)
    # and the marker opens no door for another key
    assert "is not random" in _message(KitKey(_b64(bytes(32))))


def test_generated_keys_are_accepted():
    keys = [generate_secret_key() for _ in range(2000)]
    assert len(parse_secret_keys(" ".join(keys))) == 2000
    # the rules refuse a random key once in a billion or less: never in 20 000
    assert not [raw for raw in (os.urandom(32) for _ in range(20_000)) if key_weakness(raw)]
    texts = (_b64(os.urandom(32)) for _ in range(20_000))
    assert not [text for text in texts if key_text_weakness(text)]


def test_an_unknown_setting_holding_a_key_is_not_shown():
    key = generate_secret_key()
    for name in ("aes", "encryption", "cookie_key", "session_secret"):
        with pytest.raises(ConfigurationError) as info:
            session_factory(model_class=make_model(), secret_key=TEST_SECRET_KEY, **{name: key})
        message = str(info.value)
        assert message.startswith(f"session.{name} = <hidden>: no installed session plugin")
        assert not _shows_part_of(message, key)


SECRET_PLUGIN = """
from sessions_kernel import Setting, hookimpl
from sessions_kernel.settings import text


class VaultMixin:
    pass


@hookimpl
def session_mixins():
    return [VaultMixin]


@hookimpl
def session_settings():
    return [Setting("vault_token", "", text, "a token", runtime=False, secret=True)]
"""


def test_psessions_plugins_never_lists_a_secret_setting(tmp_path, monkeypatch):
    from kernel_support import install_distribution

    from sessions_kernel import cli, maintenance

    install_distribution(
        tmp_path, "sessions-vault", {"vault": "vault_plugin"}, {"vault_plugin": SECRET_PLUGIN}
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import vault_plugin

    token = generate_secret_key()
    factory = session_factory(
        model_class=make_model(vault_plugin.VaultMixin),
        secret_key=TEST_SECRET_KEY,
        vault_token=token,
    )
    [report] = [r for r in maintenance.plugin_report(factory) if r.name == "vault"]
    assert report.active and report.settings[0].secret and report.settings[0].value is None
    for as_json in (False, True):
        out = io.StringIO()
        cli._plugins(Namespace(json=as_json), factory, out)
        assert "vault_token" in out.getvalue()
        assert not _shows_part_of(out.getvalue(), token)
