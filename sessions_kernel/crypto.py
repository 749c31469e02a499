"""The session cookie: an opaque token, encrypted and authenticated with AES-GCM.

The cookie never carries session data. Its plaintext is a random 256-bit token
followed by the small byte strings plugins ask to carry (for example a renewal
id). The database stores only the SHA-256 hash of the token, so a copy of the
session table cannot be replayed as cookies.

A cookie is bound to its purpose: the associated data AES-GCM authenticates
holds a label of this library and the cookie's name, so a cookie issued under
one name (one application) is refused under another, even when both share the
key and the table. Cookies of the earlier, unbound format are read only until
``session.accept_unbound_cookies_until``.

Keys are checked when they are parsed: a key that is not random (repeated or
patterned bytes, text such as a passphrase) or that was ever printed in this
project's documentation or tests is refused, and an error names a bad key by
its position only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import overload

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "KEY_BYTES",
    "PUBLISHED_KEYS",
    "TOKEN_BYTES",
    "UNBOUND_EXTRA",
    "AESGCMCookieSerializer",
    "KitKey",
    "SecretKeys",
    "decode_payload",
    "derive_keys",
    "encode_payload",
    "generate_secret_key",
    "key_weakness",
    "parse_secret_keys",
    "session_id_for",
]

TOKEN_BYTES = 32
KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_FORMAT = 1  # first byte of the plaintext (token and extras)
# The cookie's first byte since the cookie is bound to its name; the unbound format
# before it had none (its first byte was the nonce's).
_BOUND = 2
_LABEL = b"sessions_kernel cookie v2"
_AAD_UNBOUND = b"sessions_kernel cookie v1"
#: The extra a cookie of the unbound format is read with: the kernel's own
#: ``session_renew`` removes it, so the session's cookie is sent again, bound.
UNBOUND_EXTRA = "sessions_kernel.unbound"
# A cookie longer than this is not one of ours; refuse it before decoding.
MAX_COOKIE_LENGTH = 2048

_URLSAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
# the first line says it all (a message may be cut there); the next explains rotation
_MAKE_ONE = (
    "Make a new one with: python -m sessions_kernel\n"
    "(to rotate keys, list the new key first and keep the old ones after it, "
    "separated by white space)"
)

#: SHA-256 (hex) of the raw 32 bytes of every key ever printed in this project's
#: documentation, README files, examples or tests. Anyone can read those keys, so
#: :func:`parse_secret_keys` refuses them. A key added to a page or a test must be
#: added here (``tests/test_keys.py`` finds key-shaped strings and checks).
PUBLISHED_KEYS = frozenset(
    {
        # docs/getting-started.rst, docs/configuration.rst
        "f97049f2cd9193389a966a5361d3fb5f589e117f0b7b21b13f8f0436bd6b26f9",
        # tests/test_cookie.py and tests/test_fuzz.py until version 0.1
        "c7061572bd3ed2c9bd864ad450342cf81b51673a2c236dae36c3b33a37702e3b",
        # sessions_kernel.testing.TEST_SECRET_KEY (accepted as that object only)
        "55493a664321ce40e287d740caeb2001cf61be8fa5300498c8bb8a11bf00e360",
    }
)
_KIT_KEY = "55493a664321ce40e287d740caeb2001cf61be8fa5300498c8bb8a11bf00e360"


class KitKey(str):
    """The testing kit's key, :data:`sessions_kernel.testing.TEST_SECRET_KEY`.

    The key is published, so :func:`parse_secret_keys` refuses its text like
    any other published key: copied into an ini file, it stops the
    application. Only this very object (not a string equal to it, not a
    string containing it) is accepted, so tests that pass
    ``secret_key=TEST_SECRET_KEY`` keep working.
    """

    __slots__ = ()


class SecretKeys:
    """The raw keys of ``session.secret_key``: 32-byte keys that never show themselves.

    What :func:`parse_secret_keys` returns and ``factory.config.values`` holds:
    iterate it, index it, take its ``len``. Its ``repr`` and ``str`` say how
    many keys there are and nothing else, and it is not a tuple or a list,
    so that a traceback tool dumping local variables (which walks sequences
    item by item), a debug toolbar listing the settings,
    ``SESSIONS_TRACE_HOOKS`` or a log line of the settings cannot print a key.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[bytes] = ()) -> None:
        self._keys = tuple(keys)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> SecretKeys: ...
    def __getitem__(self, index: int | slice) -> bytes | SecretKeys:
        if isinstance(index, slice):
            return SecretKeys(self._keys[index])
        return self._keys[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SecretKeys):
            return self._keys == other._keys
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._keys)

    def __repr__(self) -> str:
        return f"<{len(self)} secret key{'s' if len(self) != 1 else ''}, hidden>"

    __str__ = __repr__


def derive_keys(secret_keys: Iterable[bytes], label: bytes, length: int = 32) -> SecretKeys:
    """One key of ``length`` bytes per secret key, for ``label``'s own use (HKDF-SHA256).

    A plugin that encrypts or authenticates something of its own (a column,
    a token) must not use the cookie's key itself: each use gets keys of its
    own, derived with a label that names it. The order is the secret keys':
    the first is current, the others are for what older keys made.
    """
    return SecretKeys(
        HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=label).derive(key)
        for key in secret_keys
    )


def key_weakness(raw: bytes) -> str | None:
    """Why the 32 raw bytes of a key are not fit to be one, or ``None`` if they are.

    The rules refuse what people write instead of a random key, and almost
    never a random one (each below one in ten billion):

    * 31 or more of the 32 bytes printable ASCII or white space (a passphrase
      or a hex string in base64); a random key has about 12;
    * fewer than 16 distinct byte values, or fewer than 16 distinct steps
      between neighbouring bytes, or between neighbouring steps (all zeros, a
      repeated pattern, a counter, squares); a random key has about 30 of each;
    * six equal bytes in a row (a short key padded with zeros);
    * a key :data:`PUBLISHED_KEYS` lists.
    """
    if sum(32 <= b < 127 or 9 <= b <= 13 for b in raw) >= 31:
        return "decodes to text (a passphrase?), not to random bytes"
    steps = [(b - a) % 256 for a, b in itertools.pairwise(raw)]
    curves = {(b - a) % 256 for a, b in itertools.pairwise(steps)}
    if len(set(raw)) < 16 or len(set(steps)) < 16 or len(curves) < 16:
        return "is not random: its bytes repeat or follow a pattern"
    if any(len(set(raw[i : i + 6])) == 1 for i in range(len(raw) - 5)):
        return "is not random: it has a run of equal bytes (padding?)"
    if hashlib.sha256(raw).hexdigest() in PUBLISHED_KEYS:
        return (
            "is published in the documentation or the tests of sessions_kernel, "
            "so anyone can forge cookies with it"
        )
    return None


_HEX = frozenset("0123456789abcdefABCDEF")


def key_text_weakness(text: str) -> str | None:
    """Why the 43 characters of a key's base64 cannot have come from a random generator.

    What people type instead of a key decodes to 32 bytes that look random
    enough (43 lowercase letters, a passphrase with its spaces removed, a hex
    digest), so its text is checked too. A random key's text draws 43 of the
    64 URL-safe symbols; the rules refuse one about once in two billion:

    * letters of one case only, or digits only (about once in 10^15);
    * hex digits only (about once in 10^20);
    * no uppercase letter, or no lowercase letter (about once in 5 billion each);
    * fewer than 17 distinct symbols (about once in 10^12; a random key has about 31);
    * 30 or more of its 42 neighbouring pairs next to each other in the alphabet,
      among the digits or on a keyboard, or the same letter (a keyboard walk, the
      alphabet; about once in 10^10, a random key has about 9).
    """
    body = text.rstrip("=")
    kinds = [any(c.isupper() for c in body), any(c.islower() for c in body)]
    kinds.append(any(c.isdigit() for c in body))
    if sum(kinds) <= 1:
        return "uses one kind of character only (a word or a number?), not random base64"
    if set(body) <= _HEX:
        return "is hex digits only (a digest or a hex string?), not random base64"
    if not (kinds[0] and kinds[1]):
        return "lacks upper- or lowercase letters (typed or derived?), not random base64"
    if len(set(body)) < 17:
        return "uses too few distinct characters to be random base64"
    if sum(_neighbours(a, b) for a, b in itertools.pairwise(body.lower())) >= 30:
        return "follows the alphabet or the keyboard (a walk?), not random base64"
    return None


_KEYBOARD = ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm")
_KEY_AT = {
    key: (row, column) for row, keys in enumerate(_KEYBOARD) for column, key in enumerate(keys)
}


def _neighbours(a: str, b: str) -> bool:
    """Whether two (lowercased) characters are the same, next in the alphabet or among the
    digits, or next to each other on a keyboard (in a row, or on the rows above or below)."""
    if a == b or (
        a.isalnum() and b.isalnum() and a.isalpha() == b.isalpha() and abs(ord(a) - ord(b)) == 1
    ):
        return True
    if a in _KEY_AT and b in _KEY_AT:
        (row_a, col_a), (row_b, col_b) = _KEY_AT[a], _KEY_AT[b]
        return (row_a == row_b and abs(col_a - col_b) == 1) or (
            abs(row_a - row_b) == 1 and abs(col_a - col_b) <= 1
        )
    return False


def generate_secret_key() -> str:
    """Return a fresh 256-bit key, URL-safe base64 encoded, for ``session.secret_key``."""
    while True:
        raw = os.urandom(KEY_BYTES)
        text = base64.urlsafe_b64encode(raw).decode("ascii")
        # the checks refuse about one key in a billion
        if key_weakness(raw) is None and key_text_weakness(text) is None:
            return text


def _decode_key(text: str) -> bytes | str:
    """The 32 bytes of a key in URL-safe base64, or what is wrong with the text."""
    data = text.encode("ascii", "replace")
    body = data[:-1] if data.endswith(b"=") else data
    if b"+" in body or b"/" in body:
        return (
            "is standard base64 (it has '+' or '/'); the key must be URL-safe base64: "
            "write '-' for '+' and '_' for '/' (the same key), or make a new one"
        )
    if not set(body) <= _URLSAFE:
        return (
            "has characters outside URL-safe base64 (A-Z, a-z, 0-9, '-', '_', one '=' at the end)"
        )
    if len(body) != 43:
        return f"is not a 256-bit key: it has {len(data)} characters, a key has 44"
    return base64.urlsafe_b64decode(body + b"=")


def parse_secret_keys(
    value: str | bytes | Iterable[str | bytes], setting: str = "session.secret_key"
) -> SecretKeys:
    """Parse one or more keys (white-space separated in a string) into raw 32-byte keys.

    Returns them as :class:`SecretKeys`, which never shows them.

    Each key must be 44 characters of URL-safe base64 decoding to 32 random
    bytes (:func:`key_weakness`). Raises :class:`ValueError` naming a bad key
    by its position in ``setting`` only (never any part of it) and saying how
    to make a new one.
    """
    if isinstance(value, KitKey):
        items: list[str | bytes] = [value]
    elif isinstance(value, (str, bytes)):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        items = list(text.split())
    else:
        items = list(value)
    if not items:
        raise ValueError(f"no key given. {_MAKE_ONE}")
    keys: list[bytes] = []
    for position, item in enumerate(items, 1):
        text = item.decode("ascii", "replace") if isinstance(item, bytes) else item
        raw = _decode_key(text.strip())
        if isinstance(raw, bytes):
            kit = isinstance(item, KitKey) and hashlib.sha256(raw).hexdigest() == _KIT_KEY
            problem = None if kit else key_weakness(raw) or key_text_weakness(text.strip())
            if problem is None:
                keys.append(raw)
                continue
        else:
            problem = raw  # what is wrong with the text
        raise ValueError(f"key {position} of {setting} {problem}. {_MAKE_ONE}")
    return SecretKeys(keys)


class AESGCMCookieSerializer:
    """Encrypts and authenticates the cookie's payload with AES-256-GCM.

    The first key encrypts; every key is tried to decrypt, so a new key can be
    put in front of the old ones without logging anybody out.

    The associated data is a label of this library and ``cookie_name``: a
    cookie made for one name fails authentication under any other. A cookie
    starts with a format byte. One of the earlier format, whose associated
    data named no cookie, is read only while the clock is before
    ``accept_unbound_until`` (seconds since the epoch; ``None``: never), and
    is read with the extra :data:`UNBOUND_EXTRA` so that the session sends it
    again in the current format.

    :meth:`loads` raises :class:`ValueError` for anything that is not a cookie
    this serializer made with one of its keys, under its name.
    """

    def __init__(
        self,
        keys: Iterable[bytes],
        *,
        cookie_name: str = "session",
        accept_unbound_until: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ciphers = [AESGCM(key) for key in keys]
        if not self._ciphers:
            raise ValueError("AESGCMCookieSerializer needs at least one key")
        self._aad = _LABEL + b"\0" + cookie_name.encode("ascii")
        self._unbound_until = accept_unbound_until
        self._clock = clock

    def __repr__(self) -> str:
        return f"<AESGCMCookieSerializer {len(self._ciphers)} key(s), bound>"

    def dumps(self, payload: bytes) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[0].encrypt(nonce, payload, self._aad)
        value = base64.urlsafe_b64encode(bytes((_BOUND,)) + nonce + sealed).rstrip(b"=").decode()
        if len(value) > MAX_COOKIE_LENGTH:  # loads would refuse it: the session would be lost
            raise ValueError(
                f"the cookie would be {len(value)} characters, over the {MAX_COOKIE_LENGTH} "
                "a session cookie may have; plugins keep too much in cookie_extras "
                f"({len(payload)} bytes with the token)"
            )
        return value

    def _open(self, nonce: bytes, sealed: bytes, aad: bytes) -> bytes | None:
        for cipher in self._ciphers:
            try:
                return cipher.decrypt(nonce, sealed, aad)
            except InvalidTag:
                continue
        return None

    def loads(self, value: str) -> bytes:
        if len(value) > MAX_COOKIE_LENGTH:
            raise ValueError("cookie too long")
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError) as exc:
            raise ValueError("cookie is not base64") from exc
        if len(raw) < _NONCE_BYTES + _TAG_BYTES + 1 + TOKEN_BYTES:
            raise ValueError("cookie too short")
        # The decoder skips characters outside the alphabet, takes + and / for - and _,
        # and ignores the unused low bits of the last character: only the one encoding
        # dumps() makes is a cookie of ours, so that no two cookie values open one session.
        if base64.urlsafe_b64encode(raw).rstrip(b"=") != value.encode("ascii", "replace"):
            raise ValueError("cookie is not in its canonical encoding")
        if raw[0] == _BOUND:
            payload = self._open(raw[1 : 1 + _NONCE_BYTES], raw[1 + _NONCE_BYTES :], self._aad)
            if payload is not None:
                return payload
        # The unbound format: no format byte, the nonce first (which starts with the
        # format byte once in 256 cookies, hence tried after the bound format fails).
        payload = self._open(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _AAD_UNBOUND)
        if payload is None:
            raise ValueError("cookie failed authentication")
        if self._unbound_until is None or self._clock() >= self._unbound_until:
            raise ValueError(
                "cookie of the unbound format (not bound to its cookie name), read only "
                "before session.accept_unbound_cookies_until"
            )
        name = UNBOUND_EXTRA.encode("ascii")
        return payload + bytes((len(name),)) + name + b"\0"


def encode_payload(token: bytes, extras: Mapping[str, bytes]) -> bytes:
    """Frame the token and the plugins' extra byte strings as the cookie's plaintext."""
    parts = [bytes((_FORMAT,)), token]
    for key in sorted(extras):
        name = key.encode("ascii")
        value = extras[key]
        if not 0 < len(name) < 256 or len(value) > 255:
            raise ValueError(f"cookie extra {key!r}: name 1-255 ASCII bytes, value at most 255")
        parts += [bytes((len(name),)), name, bytes((len(value),)), value]
    return b"".join(parts)


def decode_payload(payload: bytes) -> tuple[bytes, dict[str, bytes]]:
    """Inverse of :func:`encode_payload`; raises :class:`ValueError` on a malformed payload."""
    if len(payload) < 1 + TOKEN_BYTES or payload[0] != _FORMAT:
        raise ValueError("unknown cookie payload format")
    token = payload[1 : 1 + TOKEN_BYTES]
    extras: dict[str, bytes] = {}
    pos = 1 + TOKEN_BYTES
    end = len(payload)
    while pos < end:
        n = payload[pos]
        name = payload[pos + 1 : pos + 1 + n]
        pos += 1 + n
        if pos >= end:
            raise ValueError("truncated cookie extra")
        m = payload[pos]
        value = payload[pos + 1 : pos + 1 + m]
        pos += 1 + m
        if len(name) != n or len(value) != m:
            raise ValueError("truncated cookie extra")
        extras[name.decode("ascii", "replace")] = value
    return token, extras


def session_id_for(token: bytes) -> str:
    """The row key for a token: its SHA-256, hex encoded."""
    return hashlib.sha256(token).hexdigest()
