"""Every way a request can change the data is saved; a request that cannot have changed it
writes nothing (and skips serializing the data)."""

from __future__ import annotations

import pytest

from sessions_kernel.serializers import JSONSerializer
from sessions_kernel.testing import make_model

START = {"n": 1, "s": "text", "items": ["x"], "d": {"k": 1}}


def _get_append(s):
    s.get("items").append("y")


def _getitem_setkey(s):
    s["d"]["k"] = 2


def _values_mutate(s):
    for value in s.values():
        if isinstance(value, list):
            value.append("y")


def _items_mutate(s):
    for key, value in s.items():
        if key == "d":
            value["new"] = True


def _setdefault_existing(s):
    s.setdefault("items", []).append("y")


def _pop(s):
    s.pop("n")


def _popitem(s):
    s.popitem()


def _del(s):
    del s["s"]


def _update(s):
    s.update(n=2)


def _clear(s):
    s.clear()


def _set_scalar(s):
    s["n"] = 5


CHANGES = {
    f.__name__.lstrip("_"): f
    for f in (
        _get_append,
        _getitem_setkey,
        _values_mutate,
        _items_mutate,
        _setdefault_existing,
        _pop,
        _popitem,
        _del,
        _update,
        _clear,
        _set_scalar,
    )
}


def _read_scalars(s):
    assert (s["n"], s.get("s"), s.get("missing", []), "d" in s, len(s)) == (1, "text", [], True, 4)
    assert sorted(s) == sorted(START) and sorted(s.keys()) == sorted(START)


def _read_mutables_unchanged(s):
    assert s["items"] == ["x"] and s.get("d") == {"k": 1}
    assert dict(s.items()) == START and list(s.values())


def _set_same_value(s):
    s["n"] = 1
    s.update(items=["x"])


NO_CHANGES = {
    f.__name__.lstrip("_"): f for f in (_read_scalars, _read_mutables_unchanged, _set_same_value)
}


def views(config):
    def start(request):
        request.session.update(START)
        return {}

    def run(request):
        op = request.matchdict["op"]
        if op in NO_CHANGES:
            NO_CHANGES[op](request.session)
            return {}  # dict(session) would hand out the lists
        CHANGES[op](request.session)
        return dict(request.session)

    config.add_route("op_start", "/op-start")
    config.add_view(start, route_name="op_start", renderer="json")
    config.add_route("op_run", "/op/{op}")
    config.add_view(run, route_name="op_run", renderer="json")


@pytest.fixture
def app(session_app):
    app = session_app(make_model(), configure=views)
    app.get("/op-start")
    return app


@pytest.mark.parametrize("op", sorted(CHANGES))
def test_every_change_is_saved(app, op):
    with app.count() as sql:
        after = app.get(f"/op/{op}").json
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assert after != START
    assert app.get("/read").json["data"] == after


@pytest.mark.parametrize("op", sorted(NO_CHANGES))
def test_a_request_that_changes_nothing_writes_nothing(app, op):
    updated = app.row().updated
    app.clock.advance(5)
    with app.count() as sql:
        response = app.get(f"/op/{op}")
    assert sql.kinds() == ["SELECT"], sql.statements
    assert "Set-Cookie" not in response.headers
    assert app.row().updated == updated
    assert app.get("/read").json["data"] == START


def test_nested_change_after_invalidate_is_stored_as_a_new_session(app):
    old = app.row().id
    with app.count() as sql:
        app.post_json("/invalidate", {"fresh": [1]})
    assert sorted(sql.kinds()) == ["DELETE", "INSERT", "SELECT"], sql.statements
    row = app.row()
    assert row.id != old
    assert app.get("/read").json["data"] == {"fresh": [1]}


class CountingJSON(JSONSerializer):
    """The default JSON format, counting how often the data is serialized."""

    def __init__(self) -> None:
        self.dumps_calls = 0

    def dumps(self, value):
        self.dumps_calls += 1
        return super().dumps(value)


@pytest.mark.parametrize(
    ("op", "serialized"),
    [("read_scalars", 0), ("read_mutables_unchanged", 1), ("set_same_value", 1)],
)
def test_data_is_serialized_only_when_the_request_could_have_changed_it(
    session_app, op, serialized
):
    counting = CountingJSON()
    app = session_app(make_model(), settings={"data_serializer": counting}, configure=views)
    app.get("/op-start")
    counting.dumps_calls = 0
    with app.count() as sql:
        app.get(f"/op/{op}")
    assert sql.kinds() == ["SELECT"]
    assert counting.dumps_calls == serialized
