"""The per-request hooks: a plugin's implementations run, hooks nobody implements are skipped."""

from __future__ import annotations

import types

import pytest

import sessions_kernel
from sessions_kernel.factory import Stages
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


def test_unimplemented_stages_are_no_ops_and_implemented_ones_are_the_hook():
    model = make_model(ProbeMixin)
    probe = make_probe([])
    factory = sessions_kernel.session_factory(
        plugins=[probe], model_class=model, secret_key=sessions_kernel.generate_secret_key()
    )
    stages = factory.stages
    assert isinstance(stages, Stages)
    assert stages.session_load is factory.hook.session_load
    assert stages.session_validate is factory.hook.session_validate
    assert stages.session_renew is factory.hook.session_renew
    for name in ("session_extend", "session_persist", "session_cookie_attributes"):
        assert not getattr(factory.hook, name).get_hookimpls()
        assert getattr(stages, name)(session=None) is None


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
