"""Tokens carried over from another store (sessions-migrate's ``session_migrated``).

Each form another store showed its tokens in is kept, sealed, and handed out and checked
as that store showed it; a rotated key seals it again in its form; the next
``new_csrf_token()`` replaces it with a token of ours. No database needed: the hook and
the column's value are exercised through a factory's session directly.
"""

from __future__ import annotations

import base64
import os
import uuid
from types import SimpleNamespace

import pytest
import sessions_csrf
from sessions_csrf import CSRFMixin, stored_token

from sessions_kernel import session_factory
from sessions_kernel.crypto import generate_secret_key
from sessions_kernel.testing import make_model

FORMS = {
    "uuid4().hex (Pyramid's SessionCSRFStoragePolicy)": uuid.uuid4().hex,
    "hex of 20 bytes (pyramid_beaker)": os.urandom(20).hex(),
    "token_hex(32) (pyramid_session_redis)": os.urandom(32).hex(),
    "padded URL-safe base64 of 20 bytes (pyramid_sqlalchemy_sessions)": base64.urlsafe_b64encode(
        os.urandom(20)
    ).decode(),
    "padded URL-safe base64 of 16 bytes": base64.urlsafe_b64encode(os.urandom(16)).decode(),
    "ours: unpadded URL-safe base64 of 32 bytes": base64.urlsafe_b64encode(os.urandom(32))
    .decode()
    .rstrip("="),
}


def column_value(factory, text):
    """What session_migrated stores in the column for the old token ``text``."""
    stored = {}
    session = SimpleNamespace(
        set_column=stored.__setitem__,
        derived_keys=factory.derived_keys,
    )
    sessions_csrf.session_migrated(session, SimpleNamespace(csrf_token=text))
    return stored.get("csrf_token")


@pytest.fixture
def factory():
    return session_factory(model_class=make_model(CSRFMixin), secret_key=generate_secret_key())


@pytest.mark.parametrize("text", FORMS.values(), ids=FORMS.keys())
def test_each_form_is_kept_and_shown_as_before(factory, text):
    value = column_value(factory, text)
    assert value is not None and len(value) <= 64  # the column is String(64)
    assert text not in value  # sealed: the column tells nothing of the token
    assert stored_token(factory, value) == text


@pytest.mark.parametrize("text", FORMS.values(), ids=FORMS.keys())
def test_a_rotated_key_opens_it_and_another_key_does_not(text):
    model = make_model(CSRFMixin)
    old_key, new_key = generate_secret_key(), generate_secret_key()
    before = session_factory(model_class=model, secret_key=old_key)
    value = column_value(before, text)
    rotated = session_factory(model_class=model, secret_key=f"{new_key} {old_key}")
    assert stored_token(rotated, value) == text
    assert column_value(rotated, text) != value  # sealed with the first key from now on
    other = session_factory(model_class=model, secret_key=new_key)
    assert stored_token(other, value) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a token",
        os.urandom(20).hex().upper(),  # not the form any store wrote
        os.urandom(24).hex(),  # a length no store used
        base64.urlsafe_b64encode(os.urandom(20)).decode().rstrip("="),  # padding dropped
        base64.b64encode(b"\xff" * 20).decode(),  # the standard alphabet
        "é" * 40,
    ],
)
def test_other_forms_are_not_carried(factory, text):
    assert column_value(factory, text) is None
