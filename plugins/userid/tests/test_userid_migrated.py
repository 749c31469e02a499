"""sessions-migrate's ``session_migrated``: an old store's user id is carried only as it was.

A user id converts to the column's type only where nothing is lost or guessed; any other
raises ``ValueError`` (the session is then not migrated). No database: the hook is called
on a factory's session class with its column type.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from sessions_userid import UseridMixin, session_migrated
from sqlalchemy.orm import mapped_column

from sessions_kernel.testing import make_model

UID = uuid.UUID("12345678-1234-5678-1234-567812345678")
MODELS = {
    int: lambda: make_model(UseridMixin),
    str: lambda: make_model(UseridMixin, userid=mapped_column(sa.String(64), nullable=True)),
    uuid.UUID: lambda: make_model(UseridMixin, userid=mapped_column(sa.Uuid, nullable=True)),
}


def carried(column: type, value: object) -> object:
    stored: dict[str, object] = {}
    session = SimpleNamespace(
        model=MODELS[column](),
        row=None,
        stash={},
        set_column=stored.__setitem__,
    )
    session_migrated(session, SimpleNamespace(userid=value))
    return stored.get("userid")


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        (int, 42, 42),
        (int, "42", 42),
        (str, "alice", "alice"),
        (str, 42, "42"),
        (str, "a" * 64, "a" * 64),
        (int, 2**31 - 1, 2**31 - 1),
        (uuid.UUID, UID, UID),
        (uuid.UUID, str(UID), UID),
    ],
)
def test_converted_where_nothing_is_lost(column, value, expected):
    assert carried(column, value) == expected


@pytest.mark.parametrize(
    ("column", "value"),
    [
        (int, "042"),  # another text than the number's: a guess
        (int, "4.2"),
        (int, 4.0),
        (int, True),
        (int, "alice"),
        (int, "٤٢"),  # digits, but not ASCII ones
        (str, b"alice"),  # its repr would be another user's name
        (str, 4.2),
        (str, False),
        (str, ["alice"]),
        (uuid.UUID, "not a uuid"),
        (uuid.UUID, 42),
        (str, "a" * 65),  # longer than the column's String(64): the INSERT would fail
        (int, 2**31),  # beyond Integer's 32 bits
        (int, "-2147483649"),
    ],
)
def test_refused_otherwise(column, value):
    with pytest.raises(ValueError, match="does not fit"):
        carried(column, value)


def test_no_user_no_column():
    assert carried(int, None) is None
