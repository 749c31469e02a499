"""A reference model of merging, and hypothesis strategies for the requests it runs.

The model is what the docs promise, written apart from the kernel's code: a
request reads the session at its load; at its commit, if nobody wrote since,
what it changed is stored; otherwise each data key and column it changed
merges onto the newer row by its rule, and when no merge is right (both
changed one data key, a column without a rule, a rule that refuses) the
request runs again on the newer row (pyramid_retry). A request may give the
session a new id first (a login); another that loaded the old id merges onto
the new one all the same. The columns and rules are ``ruled_plugin``'s;
``/op`` bodies are the requests' writes.

``test_merge_model.py`` drives real requests through :class:`~sessions_kernel.testing.Race`
in a generated order and compares the stored row with :func:`run`. Property
tests of later features (a cache, new rules) build on these strategies and
this model.
"""

from __future__ import annotations

import copy
from typing import Any

import ruled_plugin
from hypothesis import strategies as st

from sessions_kernel.merge import MISSING

KEYS = ("k0", "k1", "k2")
INTS = st.one_of(st.none(), st.integers(0, 3))
#: what each column may be set to
VALUES = {name: INTS for name in ruled_plugin.COLUMNS} | {
    "c_theirs": st.sampled_from([None, "a", "b"]),
}
SETTABLE = ruled_plugin.COLUMNS  # c_add too: set (to None, say) or added to


@st.composite
def initial_states(draw: Any) -> dict[str, Any]:
    """A stored session: some data keys, every column (and a key no request writes, so that
    the session is stored even when everything else is empty)."""
    data = {"_seed": 1, **draw(st.dictionaries(st.sampled_from(KEYS), st.integers(0, 2)))}
    return {"data": data, **{name: draw(VALUES[name]) for name in ruled_plugin.COLUMNS}}


@st.composite
def ops(draw: Any) -> dict[str, Any]:
    """One request's writes: data keys set or deleted, columns set, ``c_add`` increased."""
    data = draw(
        st.dictionaries(st.sampled_from(KEYS), st.one_of(st.none(), st.integers(0, 2)), max_size=2)
    )
    names = draw(st.lists(st.sampled_from(SETTABLE), unique=True, max_size=3))
    op: dict[str, Any] = {"data": data, "set": {name: draw(VALUES[name]) for name in names}}
    if draw(st.booleans()):
        op["add"] = {"c_add": draw(st.integers(1, 2))}
    if draw(st.integers(0, 3)) == 0:  # a login: a new id first (the data merges all the same)
        op["regenerate"] = True
    return op


@st.composite
def scenarios(draw: Any, requests: tuple[int, int] = (2, 3)) -> tuple[Any, list[Any], list[Any]]:
    """(initial state, each request's op, the order of ("load"|"commit", request) events)."""
    count = draw(st.integers(*requests))
    initial = draw(initial_states())
    request_ops = [draw(ops()) for _ in range(count)]
    tokens = draw(st.permutations([i for i in range(count) for _ in (0, 1)]))
    seen: set[int] = set()
    order = []
    for i in tokens:  # each request's first token is its load, the second its commit
        order.append(("commit" if i in seen else "load", i))
        seen.add(i)
    return initial, request_ops, order


# -- the reference model ----------------------------------------------------------------------


def apply(state: dict[str, Any], op: dict[str, Any]) -> dict[str, Any]:
    """What a request that read ``state`` wants to write (its "mine")."""
    mine = copy.deepcopy(state)
    for key, value in op.get("data", {}).items():
        if value is None:
            mine["data"].pop(key, None)
        else:
            mine["data"][key] = value
    for name, value in op.get("set", {}).items():
        mine[name] = value
    for name, amount in op.get("add", {}).items():
        mine[name] = (mine[name] or 0) + amount
    return mine


def _pick(base: Any, mine: Any, theirs: Any, rule: str) -> Any:
    """A single column's rule, as its docs say; ``MISSING`` when no merge is right."""
    if rule in ("c_latest", "c_earliest"):
        if mine is None or theirs is None:
            return theirs if mine is None else mine
        return max(mine, theirs) if rule == "c_latest" else min(mine, theirs)
    if rule == "c_theirs":
        return theirs
    if rule == "c_add":  # None counts as 0
        return (theirs or 0) + ((mine or 0) - (base or 0))
    if rule == "c_strict":
        return mine if mine == theirs else MISSING
    return MISSING  # c_plain: no rule


def merge(state: dict[str, Any], base: dict[str, Any], mine: dict[str, Any]) -> Any:
    """``mine`` (read as ``base``) merged onto ``state``; ``None`` when it must run again."""
    new = copy.deepcopy(state)
    for key in base["data"].keys() | mine["data"].keys():
        before, after = base["data"].get(key, MISSING), mine["data"].get(key, MISSING)
        if before == after:
            continue
        if state["data"].get(key, MISSING) != before:
            return None  # both changed the key (even to one value: two increments)
        if after is MISSING:
            new["data"].pop(key, None)
        else:
            new["data"][key] = after
    for name in ruled_plugin.RULES:
        if mine[name] == base[name] or state[name] == base[name]:
            new[name] = mine[name] if mine[name] != base[name] else state[name]
            continue
        value = _pick(base[name], mine[name], state[name], name)
        if value is MISSING:
            return None
        new[name] = value
    group = ruled_plugin.GROUP
    if any(mine[name] != base[name] for name in group):
        if all(state[name] == base[name] for name in group):
            winner = mine
        else:  # ruled_plugin.higher_level: the higher level wins; a tie, the other's pair
            winner = mine if (mine["g_level"] or 0) > (state["g_level"] or 0) else state
        new.update({name: winner[name] for name in group})
    return new


def commit(
    state: dict[str, Any], base: dict[str, Any], op: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """The state after a request that read ``base`` commits ``op`` over ``state``, and
    whether the request succeeded.

    ``_version`` counts writes, ``_id`` the session's ids: a request whose
    session got a new id from another since it read it merges onto the new id
    (its own new id dropped); when no merge is right there, it is refused
    (run again, it would present the old id and start a new session), unless
    it changed only columns (plugins' bookkeeping): then its write gives way.
    """
    mine = apply(base, op)
    regenerate = bool(op.get("regenerate"))
    if mine == base and not regenerate:
        return state, True  # nothing changed: nothing written (a new id is a write)
    if state["_version"] == base["_version"]:
        return {**mine, "_version": state["_version"] + 1, "_id": base["_id"] + regenerate}, True
    merged = merge(state, base, mine)
    moved = state["_id"] != base["_id"]
    if merged is None:
        if moved:  # refused; or, when it changed only columns (bookkeeping), it gives way
            return state, mine["data"] == base["data"]
        return commit(state, state, op)  # run again on the newer row: nothing in between
    new_id = state["_id"] + (regenerate and not moved)
    return {**merged, "_version": state["_version"] + 1, "_id": new_id}, True


def run(
    initial: dict[str, Any], request_ops: list[Any], order: list[Any]
) -> tuple[dict[str, Any], dict[int, bool]]:
    """The state the model stores after the requests ran in ``order``, and which succeeded."""
    state = {**copy.deepcopy(initial), "_version": 1, "_id": 0}
    loaded: dict[int, dict[str, Any]] = {}
    succeeded: dict[int, bool] = {}
    for event, i in order:
        if event == "load":
            loaded[i] = copy.deepcopy(state)
        else:
            state, succeeded[i] = commit(state, loaded[i], request_ops[i])
    del state["_version"], state["_id"]
    return state, succeeded
