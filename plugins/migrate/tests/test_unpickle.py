"""The restricted unpickler: plain values load, every pickle that names code is refused."""

from __future__ import annotations

import datetime
import decimal
import os
import pickle
import subprocess
import uuid

import pytest
from sessions_migrate.source import Unrepresentable
from sessions_migrate.unpickle import safe_loads

PLAIN = {
    "list": [1, 2.5, "x", b"y", None, True, -(2**70)],
    "set": {1, 2},
    "frozen": frozenset([3]),
    "when": datetime.datetime(2020, 1, 1, 12, tzinfo=datetime.timezone.utc),
    "naive": datetime.datetime(2020, 1, 1, 12),
    "day": datetime.date(2020, 1, 1),
    "time": datetime.time(12, 30),
    "delta": datetime.timedelta(days=3),
    "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "price": decimal.Decimal("1.50"),
    "pair": (1, (2, 3)),
    "raw": bytearray(b"ab"),
    "nested": {"a": {"b": [{"c": 1}]}},
}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_values_load_in_every_protocol(protocol):
    assert safe_loads(pickle.dumps(PLAIN, protocol=protocol)) == PLAIN


class Runs:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


class Application:
    """A class of the application's: loading it would import and run the application's code."""

    def __init__(self):
        self.x = 1


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("value", [Runs(), Application(), {"cart": Application()}])
def test_a_pickle_naming_code_is_refused_before_anything_runs(protocol, value):
    raw = pickle.dumps(value, protocol=protocol)
    with pytest.raises(Unrepresentable, match="not a plain value"):
        safe_loads(raw)


def test_the_refused_code_never_ran(tmp_path):
    marker = tmp_path / "ran"

    class Touch:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(marker)],))

    with pytest.raises(Unrepresentable):
        safe_loads(pickle.dumps(Touch()))
    assert not marker.exists()
    pickle.loads(pickle.dumps(Touch()))  # the same pickle, loaded as pickle.loads would
    assert marker.exists()  # ... runs it: the test's pickle is a real exploit


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x80\x05", b"not a pickle", pickle.dumps({"a": 1})[:-3]],
    ids=["empty", "header", "text", "truncated"],
)
def test_damaged_bytes_are_refused(raw):
    with pytest.raises(Unrepresentable, match="cannot be read"):
        safe_loads(raw)


def test_builtins_other_than_the_allowed_are_refused():
    # a hand-written protocol 0 pickle calling builtins.eval
    raw = b"cbuiltins\neval\n(S'1+1'\ntR."
    with pytest.raises(Unrepresentable, match=r"builtins\.eval"):
        safe_loads(raw)
    assert pickle.loads(raw) == 2


class _Items(dict):
    """A caller's stand-in: a plain dict that also takes its items as pickle state."""

    def __setstate__(self, state):
        self.update(state)


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_a_stand_in_is_built_for_the_name_it_replaces(protocol):
    from sqlalchemy.ext.mutable import MutableDict

    raw = pickle.dumps(MutableDict({"a": 1, "when": PLAIN["when"]}), protocol=protocol)
    with pytest.raises(Unrepresentable, match=r"sqlalchemy\.ext\.mutable\.MutableDict"):
        safe_loads(raw)
    stand_ins = {("sqlalchemy.ext.mutable", "MutableDict"): _Items}
    loaded = safe_loads(raw, stand_ins=stand_ins)
    assert type(loaded) is _Items and loaded == {"a": 1, "when": PLAIN["when"]}
    # only that name: code inside it is still refused
    inside = pickle.dumps(MutableDict({"x": Application()}), protocol=protocol)
    with pytest.raises(Unrepresentable, match="Application"):
        safe_loads(inside, stand_ins=stand_ins)
