"""SessionFactory.derived_keys: keys for plugins' own cryptography, never the cookie's key."""

from __future__ import annotations

import pytest

from sessions_kernel import ConfigurationError, generate_secret_key, session_factory
from sessions_kernel.crypto import parse_secret_keys
from sessions_kernel.testing import make_model


def test_one_key_per_secret_key_in_order_never_the_secret_itself():
    first, second = generate_secret_key(), generate_secret_key()
    factory = session_factory(model_class=make_model(), secret_key=f"{first} {second}")
    keys = factory.derived_keys(b"sessions_test column", 64)
    assert len(keys) == 2 and all(len(key) == 64 for key in keys)
    assert not set(keys) & set(parse_secret_keys(f"{first} {second}"))
    assert keys is factory.derived_keys(b"sessions_test column", 64)  # computed once
    assert factory.derived_keys(b"another use", 64) != keys  # each label its own keys
    assert repr(keys) == "<2 secret keys, hidden>"
    # rotating the secret key rotates them: the old one's is still there, second
    rotated = session_factory(model_class=make_model(), secret_key=second)
    assert rotated.derived_keys(b"sessions_test column", 64) == keys[1:]


def test_without_a_secret_key_it_says_what_to_set():
    class Serializer:
        def dumps(self, value: bytes) -> str:
            return value.hex()

        def loads(self, value: str) -> bytes:
            return bytes.fromhex(value)

    factory = session_factory(model_class=make_model(), serializer=Serializer())
    with pytest.raises(ConfigurationError, match=r"set session\.secret_key as well"):
        factory.derived_keys(b"sessions_test column")
