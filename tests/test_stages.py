"""The per-request hooks: a plugin's implementations run, hooks nobody implements are skipped."""

from __future__ import annotations

import types

import pytest

import sessions_kernel
from sessions_kernel.factory import _no_implementation
from sessions_kernel.plugins import ObservedPluginManager
from sessions_kernel.testing import make_model


class ProbeMixin:
    """Activates the probe plugin; adds no column."""


def make_probe(calls: list[str], reject: bool = False) -> types.SimpleNamespace:
    @sessions_kernel.hookimpl
    def session_mixins():
        return [ProbeMixin]

    @sessions_kernel.hookimpl
    def session_load(session):
        calls.append("load")

    @sessions_kernel.hookimpl
    def session_validate(session):
        calls.append("validate")
        return "probe rejects every session" if reject else None

    @sessions_kernel.hookimpl
    def session_renew(session):
        calls.append("renew")

    return types.SimpleNamespace(
        __name__="probe",
        session_mixins=session_mixins,
        session_load=session_load,
        session_validate=session_validate,
        session_renew=session_renew,
    )


def test_unimplemented_stages_are_no_ops_and_implemented_ones_are_pluggys_callers():
    model = make_model(ProbeMixin)
    probe = make_probe([])
    factory = sessions_kernel.session_factory(
        plugins=[probe],
        model_class=model,
        secret_key=sessions_kernel.generate_secret_key(),
        max_age=None,  # only the probe's hooks
    )
    stages = factory.stages
    for name in ("session_load", "session_validate", "session_renew"):
        assert getattr(stages, name) is getattr(factory.hook, name)  # pluggy's HookCaller
    for name in ("session_extend", "session_persist", "session_cookie_attributes"):
        assert not getattr(factory.hook, name).get_hookimpls()
        assert getattr(stages, name)(session=None) is None
        assert getattr(stages, name) is not getattr(factory.hook, name)


def _factory(*plugins):
    return sessions_kernel.session_factory(
        plugins=plugins,
        model_class=make_model(ProbeMixin),
        secret_key=sessions_kernel.generate_secret_key(),
        max_age=None,  # only these plugins' hooks
    )


def _voter(name, calls, answer):
    @sessions_kernel.hookimpl
    def session_validate(session):
        calls.append(name)
        return answer

    return types.SimpleNamespace(
        __name__=name,
        session_mixins=sessions_kernel.hookimpl(lambda: [ProbeMixin]),
        session_validate=session_validate,
    )


def test_stages_keep_pluggys_order_and_first_result():
    calls: list[str] = []
    factory = _factory(_voter("a", calls, None), _voter("b", calls, "b says no"))
    expected = factory.hook.session_validate(session=None)
    pluggy_order = list(calls)
    calls.clear()
    assert factory.stages.session_validate(session=None) == expected == "b says no"
    assert calls == pluggy_order == ["b"]  # last registered first; stops at the answer


def test_stages_pass_only_the_arguments_an_implementation_names():
    seen = []

    @sessions_kernel.hookimpl
    def session_persist(row):  # asks for row only, not session
        seen.append(row)

    plugin = types.SimpleNamespace(
        __name__="rowonly",
        session_mixins=sessions_kernel.hookimpl(lambda: [ProbeMixin]),
        session_persist=session_persist,
    )
    _factory(plugin).stages.session_persist(session="s", row="r")
    assert seen == ["r"]


def test_a_wrapper_wraps_the_stage():
    seen = []

    @sessions_kernel.hookimpl(wrapper=True)
    def session_validate(session):
        answer = yield
        seen.append(answer)
        return answer or "the wrapper says no"

    plugin = types.SimpleNamespace(
        __name__="wrapping",
        session_mixins=sessions_kernel.hookimpl(lambda: [ProbeMixin]),
        session_validate=session_validate,
    )
    factory = _factory(_voter("a", [], None), plugin)
    assert factory.stages.session_validate(session=None) == "the wrapper says no"
    assert seen == [None]


def test_plugin_stages_run_on_every_request(session_app):
    calls: list[str] = []
    app = session_app(make_model(ProbeMixin), plugins=[make_probe(calls)])
    app.post_json("/set", {"a": 1})
    assert calls == ["load", "renew"]  # new session: load, then renew before the INSERT
    calls.clear()
    with app.count() as sql:
        assert app.get("/read").json["data"] == {"a": 1}
    assert sql.kinds() == ["SELECT"]
    assert calls == ["load", "validate", "renew"]


@pytest.mark.parametrize("path", ["/read", "/touch"])
def test_a_plugin_rejecting_the_session_still_gets_a_fresh_one(session_app, path):
    calls: list[str] = []
    app = session_app(make_model(ProbeMixin), plugins=[make_probe(calls, reject=True)])
    app.post_json("/set", {"a": 1})
    response = app.get(path)
    assert response.json["new"] is True
    assert app.rows() == []


# -- pluggy's dispatch: what is registered, blocked or monitored later is honoured ----------


def _late_plugin(calls: list[str]) -> types.SimpleNamespace:
    """Implements two stages that nothing else implements (so that the kernel skipped them)."""

    @sessions_kernel.hookimpl
    def session_extend(session):
        calls.append("late extend")

    @sessions_kernel.hookimpl
    def session_cookie_attributes(attributes):
        attributes["path"] = "/late"

    return types.SimpleNamespace(
        __name__="late",
        session_extend=session_extend,
        session_cookie_attributes=session_cookie_attributes,
    )


def test_a_plugin_registered_later_runs_from_the_next_request(session_app):
    calls: list[str] = []
    app = session_app(make_model(ProbeMixin), plugins=[make_probe(calls)])
    app.post_json("/set", {"a": 1})
    factory = app.factory
    assert "Path=/;" in app.new_browser().post_json("/set", {"a": 1}).headers["Set-Cookie"]
    assert not factory.hook.session_extend.get_hookimpls()  # skipped until now

    factory.config.pm.register(_late_plugin(calls), name="late")
    calls.clear()
    with app.count() as sql:
        app.get("/read")
    assert calls == ["load", "validate", "late extend", "renew"]
    assert sql.kinds() == ["SELECT"]
    # the cookie's attributes are no longer the settings' alone
    assert "Path=/late" in app.new_browser().post_json("/set", {"a": 1}).headers["Set-Cookie"]


def test_an_unregistered_plugin_stops_running_and_its_stages_are_skipped_again(session_app):
    """The stages are worked out again when the plugin manager changes, not per request."""
    calls: list[str] = []
    app = session_app(make_model(ProbeMixin), plugins=[make_probe(calls)])
    app.post_json("/set", {"a": 1})
    factory = app.factory
    pm = factory.config.pm
    assert isinstance(pm, ObservedPluginManager)
    pm.register(_late_plugin(calls), name="late")
    assert factory.stages.session_extend is factory.hook.session_extend
    pm.unregister(name="late")
    assert factory.stages.session_extend is _no_implementation
    calls.clear()
    app.get("/read")
    assert calls == ["load", "validate", "renew"]  # no "late extend"
    assert "Path=/;" in app.new_browser().post_json("/set", {"a": 1}).headers["Set-Cookie"]


def test_a_blocked_plugin_stops_running(session_app):
    calls: list[str] = []
    app = session_app(make_model(ProbeMixin), plugins=[make_probe(calls, reject=True)])
    app.post_json("/set", {"a": 1})
    app.factory.config.pm.set_blocked("probe")
    calls.clear()
    assert app.get("/read").json["data"] == {"a": 1}  # no longer rejected
    assert calls == []


def test_hook_call_monitoring_sees_the_request_hooks(session_app):
    calls: list[str] = []
    app = session_app(make_model(ProbeMixin), plugins=[make_probe(calls)])
    app.post_json("/set", {"a": 1})
    seen: list[tuple[str, str]] = []
    undo = app.factory.config.pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: seen.append(("before", name)),
        lambda outcome, name, impls, kwargs: seen.append(("after", name)),
    )
    try:
        app.get("/read")
    finally:
        undo()
    # unimplemented stages are skipped before pluggy is asked
    assert seen == [
        ("before", "session_load"),
        ("after", "session_load"),
        ("before", "session_validate"),
        ("after", "session_validate"),
        ("before", "session_renew"),
        ("after", "session_renew"),
    ]
