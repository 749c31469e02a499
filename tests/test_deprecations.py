"""Deprecations: a pattern the docs discourage still works, and warns once, naming the replacement.

The tests that run requests run on SQLite, PostgreSQL and MariaDB. Each
resets the process's record of what was already told, so that the order of
the tests does not matter.
"""

from __future__ import annotations

import types
import warnings

import pytest

import sessions_kernel
from sessions_kernel import SessionsDeprecationWarning, StashKey, deprecation
from sessions_kernel.testing import make_model


@pytest.fixture(autouse=True)
def nothing_told_yet(monkeypatch):
    monkeypatch.setattr(deprecation, "_warned", set())


def deprecations(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, SessionsDeprecationWarning)]


# -- the warning class and warn_once -----------------------------------------------------------


def test_the_warning_class_is_a_deprecation_warning_users_can_filter():
    assert issubclass(SessionsDeprecationWarning, DeprecationWarning)
    assert sessions_kernel.SessionsDeprecationWarning is SessionsDeprecationWarning
    assert "SessionsDeprecationWarning" in sessions_kernel.__all__
    with warnings.catch_warnings():
        warnings.simplefilter("error", SessionsDeprecationWarning)
        with pytest.raises(SessionsDeprecationWarning, match="use the new way"):
            deprecation.warn_once(("a pattern", "x"), "use the new way")


def test_warn_once_tells_each_pattern_and_name_once_per_process():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert deprecation.warn_once(("pattern", "a"), "A: do this instead")
        assert not deprecation.warn_once(("pattern", "a"), "A: do this instead")
        assert deprecation.warn_once(("pattern", "b"), "B: do this instead")
    assert deprecations(record) == ["A: do this instead", "B: do this instead"]


def test_the_warning_points_at_the_caller():
    def deprecated_api():
        deprecation.warn_once(("api", "f"), "f() is deprecated: call g()")

    with pytest.warns(SessionsDeprecationWarning) as record:
        deprecated_api()
    assert record[0].filename == __file__


# -- state kept on the session object (0.1) instead of session.stash (0.2) ---------------------


class ProbeMixin:
    """Activates the probe plugins; adds no column."""


ARRIVED = StashKey[str]("probe: the id the request arrived with")


def attribute_plugin() -> types.SimpleNamespace:
    """The 0.1 way: a hook keeps state of the request as an attribute of the session."""

    @sessions_kernel.hookimpl
    def session_load(session):
        session.probe_arrived = session.session_id

    @sessions_kernel.hookimpl
    def session_extend(session):
        assert session.probe_arrived == session.session_id  # still readable: it works

    return types.SimpleNamespace(
        __name__="attributeprobe",
        session_mixins=sessions_kernel.hookimpl(lambda: [ProbeMixin]),
        session_load=session_load,
        session_extend=session_extend,
    )


def stash_plugin() -> types.SimpleNamespace:
    """The 0.2 way: the same state in the stash, under a key of the plugin's own."""

    @sessions_kernel.hookimpl
    def session_load(session):
        session.stash[ARRIVED] = session.session_id

    @sessions_kernel.hookimpl
    def session_extend(session):
        assert len(session.stash[ARRIVED]) == 64  # what session_load kept

    @sessions_kernel.hookimpl
    def session_attributes():
        return {"probe_label": property(lambda session: "probe", lambda session, value: None)}

    return types.SimpleNamespace(
        __name__="stashprobe",
        session_mixins=sessions_kernel.hookimpl(lambda: [ProbeMixin]),
        session_load=session_load,
        session_extend=session_extend,
        session_attributes=session_attributes,
    )


def test_state_on_the_session_object_warns_once_naming_the_stash(session_app):
    app = session_app(make_model(ProbeMixin), plugins=[attribute_plugin()])
    with pytest.warns(SessionsDeprecationWarning) as record:
        app.post_json("/set", {"a": 1})
    [message] = deprecations(record)
    assert "request.session.probe_arrived" in message
    assert "session.stash" in message and "StashKey" in message  # the replacement
    assert "0.2" in message and "docs/compatibility.rst" in message
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        assert app.get("/read").json["data"] == {"a": 1}  # the old way still works
        app.post_json("/set", {"b": 2})
    assert deprecations(again) == []  # once per process, not once per request


def test_the_stash_and_a_plugins_declared_attribute_do_not_warn(session_app):
    def views(config):
        def label(request):
            request.session.probe_label = "set through the plugin's property"
            return {"label": request.session.probe_label}

        config.add_route("label", "/label")
        config.add_view(label, route_name="label", renderer="json")

    app = session_app(make_model(ProbeMixin), plugins=[stash_plugin()], configure=views)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        app.post_json("/set", {"a": 1})
        app.get("/read")
        assert app.get("/label").json == {"label": "probe"}
        app.get("/regenerate")
        app.get("/invalidate")
    assert deprecations(record) == []


def test_an_attribute_a_view_sets_warns_too(session_app):
    def views(config):
        def remember_cart(request):
            request.session.cart_total = 12  # not stored: it was never part of the session
            request.session["cart"] = [1, 2]
            return {"ok": True}

        config.add_route("cart", "/cart")
        config.add_view(remember_cart, route_name="cart", renderer="json")

    app = session_app(make_model(), configure=views)
    with pytest.warns(SessionsDeprecationWarning, match=r"request\.session\.cart_total") as record:
        app.get("/cart")
    assert "request.session[key]" in deprecations(record)[0]


# -- registry["sessions_kernel.factory"] (0.1) instead of the ISessionFactory utility ----------


def test_the_registry_key_of_0_1_still_gives_the_factory_and_warns_once(session_app):
    """0.1 documented ``registry["sessions_kernel.factory"]`` (sessions-userid's README):
    it still reaches the factory, and says once to use the ISessionFactory utility."""
    from pyramid.interfaces import ISessionFactory

    app = session_app(make_model())
    app.post_json("/set", {"a": 1})
    registry = app.app.registry
    factory = registry.queryUtility(ISessionFactory)
    with pytest.warns(SessionsDeprecationWarning) as record:
        old = registry["sessions_kernel.factory"]
        assert old.model is factory.model  # an attribute of the factory
    [message] = deprecations(record)
    assert "queryUtility" in message and "ISessionFactory" in message and "0.3" in message
    assert record[0].filename == __file__  # points at the line that used the key
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        row = app.row()
        assert old.describe(row) == factory.describe(row)  # once per process
    assert deprecations(again) == []


def test_the_documented_pytest_option_turns_the_warning_into_a_failure(tmp_path):
    """docs/compatibility.rst: ``pytest -W error::sessions_kernel.SessionsDeprecationWarning``
    fails a test that uses a deprecated pattern, and passes it without the option."""
    import subprocess
    import sys

    (tmp_path / "test_old_way.py").write_text(
        "from sessions_kernel import deprecation\n"
        "def test_uses_a_deprecated_pattern():\n"
        "    deprecation.warn_once(('docs', 'option'), 'the old way: use the new way')\n"
    )
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
    plain = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert plain.returncode == 0, plain.stdout
    strict = subprocess.run(
        [*command, "-W", "error::sessions_kernel.SessionsDeprecationWarning"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert strict.returncode == 1, strict.stdout
    assert "SessionsDeprecationWarning: the old way: use the new way" in strict.stdout
