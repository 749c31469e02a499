"""The factory in Pyramid's registry and introspector: one action, conflicts and overrides
as Pyramid's own session factory, details for the debug toolbar."""

from __future__ import annotations

import importlib.metadata

import pytest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationConflictError
from pyramid.interfaces import ISessionFactory
from sessions_idle_timeout import IdleMixin

from sessions_kernel import register_factory, session_factory
from sessions_kernel.crypto import parse_secret_keys
from sessions_kernel.testing import TEST_SECRET_KEY, make_model


def _config(model: type, autocommit: bool = False, **settings: str) -> Configurator:
    values = {"session.secret_key": TEST_SECRET_KEY, "session.model_class": model}
    values.update({f"session.{name}": value for name, value in settings.items()})
    return Configurator(settings=values, autocommit=autocommit)


def test_the_factory_is_introspectable_with_its_model_plugins_and_settings():
    model = make_model(IdleMixin)
    config = _config(model, idle_timeout="600")
    config.include("sessions_kernel")
    config.commit()
    factory = config.registry.getUtility(ISessionFactory)
    intr = config.introspector.get("sessions_kernel", "factory")
    assert intr.title == f"session factory of {model.__module__}.{model.__qualname__}"
    assert intr.type_name == "sessions_kernel factory"
    assert intr["factory"] is factory and intr["model"] is model
    version = importlib.metadata.version
    assert intr["plugins"] == [
        f"sessions_kernel (sessions-kernel {version('sessions-kernel')})",
        f"idle_timeout (sessions-idle-timeout {version('sessions-idle-timeout')})",
    ]
    settings = intr["settings"]
    assert settings["idle_timeout"] == 600 and settings["cookie_name"] == "session"
    assert settings["secret_key"] == "<hidden>" and settings["serializer"] is None
    assert intr["expiry"] == factory.config.expiry == "sessions expire by idle_timeout 600 s"
    shown = repr(dict(intr))
    for key in parse_secret_keys(TEST_SECRET_KEY):
        assert repr(key) not in shown
    # beside Pyramid's own entry for the session factory, and related to it
    [pyramids] = config.introspector.related(intr)
    assert pyramids.category_name == "session factory" and pyramids["factory"] is factory
    # ISessionFactory is where tools look; 0.1's registry entry stays, deprecated
    # (tests/test_deprecations.py), as a stand-in that warns, not as the factory itself
    assert config.registry["sessions_kernel.factory"] is not factory


def test_an_autocommitting_configurator_has_it_at_once():
    config = _config(make_model(), autocommit=True)
    config.include("sessions_kernel")
    factory = config.registry.getUtility(ISessionFactory)
    assert config.introspector.get("sessions_kernel", "factory")["factory"] is factory


def test_a_session_factory_set_by_the_application_overrides_it_and_its_details():
    config = _config(make_model())
    config.include("sessions_kernel")
    other = session_factory(model_class=make_model(name="Other"), secret_key=TEST_SECRET_KEY)
    config.set_session_factory(other)  # the application's own, outside the include: it wins
    config.commit()
    assert config.registry.getUtility(ISessionFactory) is other
    assert config.introspector.get("sessions_kernel", "factory") is None


def test_two_factories_at_one_level_conflict():
    config = Configurator()
    for name in ("One", "Two"):
        model = make_model(name=name)
        register_factory(config, session_factory(model_class=model, secret_key=TEST_SECRET_KEY))
    with pytest.raises(ConfigurationConflictError):
        config.commit()
