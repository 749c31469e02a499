"""The session cookie: an opaque token, encrypted and authenticated with AES-GCM.

The cookie never carries session data. Its plaintext is a random 256-bit token
followed by the small byte strings plugins ask to carry (for example a renewal
id). The database stores only the SHA-256 hash of the token, so a copy of the
session table cannot be replayed as cookies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "TOKEN_BYTES",
    "AESGCMCookieSerializer",
    "decode_payload",
    "encode_payload",
    "generate_secret_key",
    "parse_secret_keys",
    "session_id_for",
]

TOKEN_BYTES = 32
_NONCE_BYTES = 12
_FORMAT = 1
_AAD = b"sessions_kernel cookie v1"
# A cookie longer than this is not one of ours; refuse it before decoding.
MAX_COOKIE_LENGTH = 2048


def generate_secret_key() -> str:
    """Return a fresh 256-bit key, URL-safe base64 encoded, for ``session.secret_key``."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


def parse_secret_keys(value: str | bytes | Iterable[str | bytes]) -> list[bytes]:
    """Parse one or more keys (white-space separated in a string) into raw 32-byte keys.

    Raises :class:`ValueError` whose message says what is wrong and shows a
    freshly generated key to use instead.
    """
    if isinstance(value, (str, bytes)):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        items: list[str | bytes] = list(text.split())
    else:
        items = list(value)
    if not items:
        raise ValueError(
            "no key given. Put one in your ini file, for example\n"
            f"    session.secret_key = {generate_secret_key()}"
        )
    keys = []
    for position, item in enumerate(items, 1):
        text = item.decode("ascii", "replace") if isinstance(item, bytes) else item
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            shown = text if len(text) <= 12 else text[:6] + "…"
            raise ValueError(
                f"key {position} ({shown!r}) is not a 256-bit key in URL-safe base64 "
                "(44 characters). Here is a freshly generated one you can use:\n"
                f"    session.secret_key = {generate_secret_key()}\n"
                "(python -m sessions_kernel prints another; to rotate keys, list the new "
                "key first and keep the old ones after it, separated by white space)"
            )
        keys.append(raw)
    return keys


class AESGCMCookieSerializer:
    """Encrypts and authenticates the cookie's payload with AES-256-GCM.

    The first key encrypts; every key is tried to decrypt, so a new key can be
    put in front of the old ones without logging anybody out. :meth:`loads`
    raises :class:`ValueError` for anything that is not a cookie this
    serializer made with one of its keys.
    """

    def __init__(self, keys: Iterable[bytes]) -> None:
        self._ciphers = [AESGCM(key) for key in keys]
        if not self._ciphers:
            raise ValueError("AESGCMCookieSerializer needs at least one key")

    def dumps(self, payload: bytes) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[0].encrypt(nonce, payload, _AAD)
        return base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")

    def loads(self, value: str) -> bytes:
        if len(value) > MAX_COOKIE_LENGTH:
            raise ValueError("cookie too long")
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError) as exc:
            raise ValueError("cookie is not base64") from exc
        if len(raw) < _NONCE_BYTES + 16 + TOKEN_BYTES:
            raise ValueError("cookie too short")
        nonce, sealed = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
        for cipher in self._ciphers:
            try:
                return cipher.decrypt(nonce, sealed, _AAD)
            except InvalidTag:
                continue
        raise ValueError("cookie failed authentication")


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
