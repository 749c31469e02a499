"""session_includeme: an active plugin configures the application that includes the kernel.

The plugin and the application's views are the hook reference's example
(``docs/examples/includeme``): the application includes ``sessions_kernel``
only, never the plugin.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest
from kernel_support import install_distribution, make_included_app
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid.interfaces import ISessionFactory

from sessions_kernel import hookimpl, register_factory, session_factory
from sessions_kernel.testing import TEST_SECRET_KEY, make_model

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples" / "includeme"


@pytest.fixture
def examples(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    yield importlib.import_module("sessions_views")
    for name in ("sessions_views", "shop"):
        sys.modules.pop(name, None)


@pytest.fixture
def installed(examples, tmp_path, monkeypatch):
    """``sessions_views`` installed as the entry point ``views`` of ``sessions-views``."""
    install_distribution(tmp_path / "site", "sessions-views", {"views": "sessions_views"})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    return examples


@pytest.fixture
def shop(session_engine):
    """``shop(model)``: the example's views in an application that includes the kernel."""
    models = []

    def build(model):
        models.append(model)
        model.metadata.drop_all(session_engine)
        model.metadata.create_all(session_engine)
        settings = {"session.secret_key": TEST_SECRET_KEY, "session.model_class": model}
        return make_included_app(session_engine, settings, lambda config: config.include("shop"))

    yield build
    for model in models:
        model.metadata.drop_all(session_engine)


def test_an_active_plugin_adds_a_view_predicate_and_a_request_method(installed, shop):
    app = shop(make_model(installed.ViewsMixin))
    # the predicate: without a cart in the session, the other view answers
    assert app.get("/checkout").json == {"checkout": None, "message": "your cart is empty"}
    assert app.post_json("/cart", {"item": 3}).json == {"cart": [3]}
    assert app.get("/checkout").json == {"checkout": [3]}
    # the request method: a peek through the factory the plugin was given
    assert app.get("/status").json == {"stored": True, "reason": None}
    browser = type(app)(app.app)
    assert browser.get("/status").json == {"stored": False, "reason": "no session cookie"}


def test_an_installed_plugin_the_model_does_not_activate_configures_nothing(installed, shop):
    with pytest.raises(ConfigurationError, match="session_has"):
        shop(make_model())  # the views ask for a predicate nobody added


def test_the_test_kit_runs_the_hook_of_a_plugin_it_is_given(examples, session_app):
    app = session_app(
        make_model(examples.ViewsMixin),
        plugins=[examples],
        configure=lambda config: config.include("shop"),
    )
    assert app.post_json("/cart", {"item": "pen"}).json == {"cart": ["pen"]}
    assert app.get("/checkout").json == {"checkout": ["pen"]}
    with app.count() as sql:
        assert app.get("/status").json == {"stored": True, "reason": None}
    assert sql.kinds() == ["SELECT"]


class SpyMixin:
    pass


class Spy:
    def __init__(self):
        self.calls = []

    @hookimpl
    def session_mixins(self):
        return [SpyMixin]

    @hookimpl
    def session_includeme(self, config, factory):
        self.calls.append((config.registry, factory))


def test_register_factory_gives_the_plugins_the_factory_it_registers():
    spy = Spy()
    factory = session_factory(
        plugins=[spy], model_class=make_model(SpyMixin), secret_key=TEST_SECRET_KEY
    )
    config = Configurator()
    register_factory(config, factory)
    config.commit()
    assert spy.calls == [(config.registry, factory)]
    assert config.registry.getUtility(ISessionFactory) is factory


def test_a_plugin_implementing_only_some_arguments_is_called_with_those():
    seen = []
    plugin = types.SimpleNamespace(
        __name__="config_only",
        session_mixins=hookimpl(lambda: [SpyMixin]),
        session_includeme=hookimpl(lambda config: seen.append(config)),
    )
    factory = session_factory(
        plugins=[plugin], model_class=make_model(SpyMixin), secret_key=TEST_SECRET_KEY
    )
    config = Configurator()
    register_factory(config, factory)
    assert seen == [config]
