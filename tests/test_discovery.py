"""Plugins come from entry points; a factory sees only those its model activates."""

from __future__ import annotations

import importlib

import pytest
from kernel_support import factory_of, install_distribution, table_name

from sessions_kernel import ConfigurationError, hookimpl, hookspec, session_factory
from sessions_kernel.plugins import LOAD_PLUGINS_ENV, discover
from sessions_kernel.testing import TEST_SECRET_KEY, make_app, make_model

BROKEN = "raise ImportError('sessions_broken_plugin needs libfoo 2')\n"


@pytest.fixture
def broken_dist(tmp_path, monkeypatch):
    install_distribution(
        tmp_path / "broken",
        "sessions-broken",
        {"broken": "sessions_broken_plugin"},
        {"sessions_broken_plugin": BROKEN},
        version="0.3",
    )
    monkeypatch.syspath_prepend(str(tmp_path / "broken"))
    importlib.invalidate_caches()


def test_entry_point_that_fails_to_import_is_a_start_up_error(broken_dist):
    with pytest.raises(ConfigurationError) as info:
        session_factory(model_class=make_model(), secret_key=TEST_SECRET_KEY)
    message = str(info.value)
    assert "session plugin 'broken' from distribution 'sessions-broken'" in message
    assert "ImportError: sessions_broken_plugin needs libfoo 2" in message
    assert "Fix or uninstall sessions-broken" in message
    assert LOAD_PLUGINS_ENV in message


def test_listing_reports_the_broken_plugin_without_failing(broken_dist):
    [broken] = [i for i in discover(strict=False) if i.name == "broken"]
    assert (broken.distribution, broken.version, broken.plugin) == ("sessions-broken", "0.3", None)
    assert broken.error == "ImportError: sessions_broken_plugin needs libfoo 2"


def test_load_plugins_variable_restricts_loading(broken_dist, example_plugin, monkeypatch):
    model = make_model(example_plugin.ExampleMixin)
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "example")
    factory = session_factory(model_class=model, secret_key=TEST_SECRET_KEY)
    assert [i.name for i in factory.config.active] == ["sessions_kernel", "example"]
    assert "broken" not in {i.name for i in factory.config.installed}

    monkeypatch.setenv(LOAD_PLUGINS_ENV, "")
    factory = session_factory(model_class=model, secret_key=TEST_SECRET_KEY)
    assert [i.name for i in factory.config.installed] == ["sessions_kernel"]
    # with the plugin not loaded, its setting is unknown
    with pytest.raises(ConfigurationError, match="no installed session plugin has a setting"):
        session_factory(model_class=model, secret_key=TEST_SECRET_KEY, example_epoch="1")


def test_plugin_is_inactive_without_its_mixin(example_plugin):
    factory = session_factory(model_class=make_model(), secret_key=TEST_SECRET_KEY)
    assert "example" in {i.name for i in factory.config.installed}
    assert "example" not in {i.name for i in factory.config.active}
    assert "example_note" not in factory.config.runtime_names


def test_two_factories_do_not_see_each_others_plugins(session_engine, example_plugin):
    with_plugin = make_model(example_plugin.ExampleMixin, tablename=table_name("_with"))
    without = make_model(name="Plain", tablename=table_name("_without"))
    app_with = make_app(with_plugin, session_engine)
    app_without = make_app(without, session_engine)
    try:
        app_without.post_json("/set", {"a": 1})
        app_without.get("/incr/a")
        app_without.get("/read")
        assert example_plugin.CALLS == []  # not one call for the model without the mixin
        app_with.post_json("/set", {"a": 1})
        app_with.get("/incr/a")
        assert {model for _, model in example_plugin.CALLS} == {"Session"}
        assert {hook for hook, _ in example_plugin.CALLS} == {
            "session_load",
            "session_validate",
            "session_persist",
        }
        assert not hasattr(app_without.row(), "example_created_epoch")
        assert app_with.row().example_created_epoch == 0
        assert "example" not in repr(factory_of(app_without))
        assert "example" in repr(factory_of(app_with))
    finally:
        with_plugin.metadata.drop_all(session_engine)
        without.metadata.drop_all(session_engine)


# -- session_addhooks: plugins offer hooks of their own ------------------------------


class OfferedHooks:
    """The hook specification module of an imaginary plugin."""

    @staticmethod
    @hookspec
    def session_offered(session, value):
        """An offered hook."""


class OfferingMixin:
    pass


class Offering:
    """A plugin that adds a hook of its own and calls it."""

    @hookimpl
    def session_addhooks(self, pluginmanager):
        pluginmanager.add_hookspecs(OfferedHooks)

    @hookimpl
    def session_mixins(self):
        return [OfferingMixin]


class AnsweringMixin:
    pass


class Answering:
    """A plugin that implements the offered hook, optionally."""

    @hookimpl
    def session_mixins(self):
        return [AnsweringMixin]

    @hookimpl(optionalhook=True)
    def session_offered(self, value):
        return value * 2


class Misspelt:
    """A plugin whose hook name has a typo and that is not marked optional."""

    @hookimpl
    def session_ofered(self, value):
        return value


class MisspeltKernelHook:
    @hookimpl
    def session_valdate(self, session):
        return "never"


class WrongArguments:
    """Implements the offered hook with an argument its specification does not name."""

    @hookimpl(optionalhook=True)
    def session_offered(self, session, valeu):
        return None


def test_an_offered_hook_is_called_through_the_factory():
    model = make_model(OfferingMixin, AnsweringMixin)
    factory = session_factory(
        plugins=[Offering(), Answering()], model_class=model, secret_key=TEST_SECRET_KEY
    )
    assert factory.hook.session_offered(session=None, value=21) == [42]


def test_an_optional_implementation_works_without_the_offering_plugin():
    # the offering plugin is not installed: the answering one loads all the same
    model = make_model(AnsweringMixin)
    factory = session_factory(plugins=[Answering()], model_class=model, secret_key=TEST_SECRET_KEY)
    assert factory.hook.session_offered(session=None, value=1) == [1 * 2]


@pytest.mark.parametrize("plugins", [[Misspelt()], [Offering(), Misspelt()]])
def test_a_misspelt_hook_is_still_a_start_up_error(plugins):
    with pytest.raises(ConfigurationError, match="session_ofered"):
        session_factory(plugins=plugins, model_class=make_model(), secret_key=TEST_SECRET_KEY)


def test_a_misspelt_kernel_hook_is_a_start_up_error_with_offering_plugins():
    with pytest.raises(ConfigurationError, match="session_valdate"):
        session_factory(
            plugins=[Offering(), MisspeltKernelHook()],
            model_class=make_model(),
            secret_key=TEST_SECRET_KEY,
        )


@pytest.mark.parametrize("order", ["spec first", "implementation first"])
def test_an_implementation_not_matching_the_offered_specification_fails(order):
    plugins = [Offering(), WrongArguments()]
    if order == "implementation first":
        plugins.reverse()
    with pytest.raises(ConfigurationError, match="valeu"):
        session_factory(plugins=plugins, model_class=make_model(), secret_key=TEST_SECRET_KEY)


# -- a misspelt hook names the hook it was meant to be ----------------------------------

MISSPELT_EXTEND = """\
from sessions_kernel import hookimpl


class MisspeltMixin:
    pass


@hookimpl
def session_mixins():
    return [MisspeltMixin]


@hookimpl
def session_extnd(session):
    pass
"""


def test_a_misspelt_hook_names_the_plugin_and_the_closest_hook(tmp_path, monkeypatch):
    install_distribution(
        tmp_path / "site",
        "sessions-misspelt",
        {"misspelt": "sessions_misspelt_plugin"},
        {"sessions_misspelt_plugin": MISSPELT_EXTEND},
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    # the plugin is installed, not even active: a typo fails every start-up
    with pytest.raises(ConfigurationError) as info:
        session_factory(model_class=make_model(), secret_key=TEST_SECRET_KEY)
    message = str(info.value)
    assert "session plugin 'misspelt (sessions-misspelt)'" in message
    assert "implements session_extnd (did you mean session_extend?)" in message
    assert "optionalhook=True" in message


def test_a_misspelt_hook_of_an_offering_plugin_names_the_offered_one():
    with pytest.raises(ConfigurationError) as info:
        session_factory(
            plugins=[Offering(), Misspelt()], model_class=make_model(), secret_key=TEST_SECRET_KEY
        )
    assert "'Misspelt' implements session_ofered (did you mean session_offered?)" in str(info.value)


def test_a_hook_name_close_to_none_says_so():
    class Unrelated:
        @hookimpl
        def frobnicate_everything(self):
            pass

    with pytest.raises(ConfigurationError) as info:
        session_factory(plugins=[Unrelated()], model_class=make_model(), secret_key=TEST_SECRET_KEY)
    assert "frobnicate_everything (no hook has a name close to it)" in str(info.value)


def test_one_hookimpl_marker_for_the_kernel_and_its_plugins():
    import sessions_kernel
    from sessions_kernel import builtin, hookspecs

    assert sessions_kernel.hookimpl is hookspecs.hookimpl is builtin.hookimpl
    assert sessions_kernel.hookspec is hookspecs.hookspec
