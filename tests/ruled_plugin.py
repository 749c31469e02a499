"""A plugin whose columns merge by every kind of rule (used by the merge tests, not shipped).

One column per stock rule of :mod:`sessions_kernel.merge`, a group of two
columns under a rule of its own (a third-party group rule), a column whose
rule refuses to merge different writes, and one with no rule at all. The
test view ``/op`` writes what its body says, so that a test (or hypothesis)
chooses every request's writes:

``{"data": {"k": 1, "gone": null}, "set": {"c_latest": 5}, "add": {"c_add": 1}}``

sets and deletes data keys, assigns columns, and adds to ``c_add``
(``"regenerate": "hold"`` or ``true`` first regenerates the id, and
``"then_regenerate"`` last). Its response
carries ``X-Session-Data``: the session's data once the transaction committed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from sessions_kernel import hookimpl
from sessions_kernel.merge import MergeConflict, add_both, earliest, keep_theirs, latest


def higher_level(
    base: Mapping[str, Any], mine: Mapping[str, Any], theirs: Mapping[str, Any]
) -> Mapping[str, Any]:
    """The higher ``g_level`` wins, with its ``g_at``; on a tie, the other request's pair."""
    return mine if (mine["g_level"] or 0) > (theirs["g_level"] or 0) else theirs


def same_or_refuse(base: Any, mine: Any, theirs: Any) -> Any:
    """Both requests wrote it: only the same value merges."""
    if mine != theirs:
        raise MergeConflict(f"c_strict: {mine!r} and {theirs!r}")
    return mine


#: column -> its rule (``None``: no rule; both changing it is a conflict)
RULES: dict[str, Any] = {
    "c_latest": latest,
    "c_earliest": earliest,
    "c_theirs": keep_theirs,
    "c_add": add_both,
    "c_strict": same_or_refuse,
    "c_plain": None,
}
#: the group's columns, merged together by ``higher_level``
GROUP = ("g_level", "g_at")
COLUMNS = (*RULES, *GROUP)


class RuledMixin:
    c_latest: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    c_earliest: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    c_theirs: Mapped[str | None] = mapped_column(sa.String(20), nullable=True)
    c_add: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    c_strict: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    c_plain: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    g_level: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    g_at: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)


@hookimpl
def session_mixins() -> list[type]:
    return [RuledMixin]


@hookimpl
def session_merge_rules() -> dict[Any, Any]:
    return {
        **{name: rule for name, rule in RULES.items() if rule is not None},
        GROUP: higher_level,
    }


def apply_op(session: Any, body: Mapping[str, Any]) -> None:
    """What ``/op`` does with its body (see the module's documentation)."""
    if body.get("regenerate"):  # "hold": as "log out everywhere else" does
        session.regenerate_id(hold=body["regenerate"] == "hold")
    for key, value in body.get("data", {}).items():
        if value is None:
            session.pop(key, None)
        else:
            session[key] = value
    for name, value in body.get("set", {}).items():
        session.set_column(name, value)
    for name, amount in body.get("add", {}).items():
        session.set_column(name, (session.get_column(name) or 0) + amount)
    if body.get("then_regenerate"):
        session.regenerate_id(hold=body["then_regenerate"] == "hold")


def configure(config: Any) -> None:
    """Add the ``/op`` view (``configure=`` of the test app)."""

    def op(request: Any) -> dict[str, Any]:
        apply_op(request.session, request.json_body if request.body else {})
        request.add_response_callback(after_commit)
        return {"data": dict(request.session)}

    def after_commit(request: Any, response: Any) -> None:
        # what the session holds once its transaction committed
        response.headers["X-Session-Data"] = json.dumps(dict(request.session), sort_keys=True)

    config.add_route("op", "/op")
    config.add_view(op, route_name="op", renderer="json")


def make_app(engine: Any, *mixins: type, configure: Any = configure, **settings: str) -> Any:
    """A test app whose model has :class:`RuledMixin` (and ``mixins``), its table created.

    A session that lost a conflict would load locked for ``lock_contended_for``
    seconds: a request a race left paused would then hold the row's lock, and
    the next one wait for it (see ``Race``), so it is 0 here.
    """
    from sessions_kernel.testing import SessionTestApp, make_model

    model = make_model(RuledMixin, *mixins)
    model.metadata.drop_all(engine)
    model.metadata.create_all(engine)
    return SessionTestApp(
        model,
        engine,
        plugins=[sys.modules[__name__]],
        configure=configure,
        settings={"lock_contended_for": "0", **settings},
    )
