"""Plugins' merge rules: the kernel's rules, their declaration, and the start-up checks.

The renewal plugin's group rule is tested with the plugin
(``plugins/renewal/tests/test_renewal_attacks.py``).

The merges themselves, under real concurrency on every database, are in
test_concurrency.py.
"""

from __future__ import annotations

import logging
import types

import hits_plugin
import pytest
from pyramid.config import Configurator

from sessions_kernel import ConfigurationError, hookimpl, session_factory
from sessions_kernel.merge import (
    add_both,
    droppable,
    earliest,
    keep_theirs,
    latest,
)
from sessions_kernel.testing import TEST_SECRET_KEY, make_model


def test_the_kernels_rules():
    assert latest(100, 160, 130) == 160
    assert latest(100, 120, 130) == 130
    assert latest(100, None, 130) == 130 and latest(100, 130, None) == 130
    assert earliest(100, 160, 130) == 130
    assert keep_theirs(1, 2, 3) == 3
    assert add_both(5, 7, 6) == 8  # both added: 5 + 2 + 1
    assert add_both(None, 1, 1) == 2
    # a reset (None) on either side and an increment: the reset, then the increment
    assert add_both(3, None, 5) == 2 and add_both(3, 4, None) == 1
    assert latest.droppable and earliest.droppable and keep_theirs.droppable
    assert not hasattr(add_both, "droppable")  # a dropped increment would be lost


def _plugin(rules):
    module = types.ModuleType("rules_plugin")

    @hookimpl
    def session_mixins():
        return [hits_plugin.HitsMixin]

    @hookimpl
    def session_merge_rules():
        return rules

    module.session_mixins = session_mixins
    module.session_merge_rules = session_merge_rules
    return module


def _factory(*plugins):
    model = make_model(hits_plugin.HitsMixin)
    return session_factory(plugins=plugins, model_class=model, secret_key=TEST_SECRET_KEY)


def test_rules_are_resolved_once_per_factory():
    factory = _factory(hits_plugin)
    assert factory.merge_rules["hits"] == (("hits",), add_both)
    group = ("last_path", "last_seen")
    assert factory.merge_rules["last_path"] == factory.merge_rules["last_seen"]
    assert factory.merge_rules["last_seen"] == (group, hits_plugin.later_visit)
    assert factory.droppable_columns == frozenset()  # neither rule is droppable


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"data": latest}, "'data' is not a plugin column"),
        ({"version": latest}, "'version' is not a plugin column"),
        ({"nonesuch": latest}, "'nonesuch' is not a plugin column of Session"),
        ({"hits": 42}, "expected a column name .* mapped to a callable"),
        ({(): latest}, "expected a column name"),
    ],
)
def test_a_bad_declaration_is_a_start_up_error(rules, message):
    with pytest.raises(ConfigurationError, match=message):
        _factory(_plugin(rules))


def test_two_plugins_cannot_rule_one_column():
    with pytest.raises(ConfigurationError, match="already declared one for 'hits'"):
        _factory(hits_plugin, _plugin({"hits": droppable(lambda b, m, t: t)}))


def _configure(include_retry: bool) -> None:
    settings = {"session.secret_key": TEST_SECRET_KEY}
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        if include_retry:
            config.include("pyramid_retry")
        config.add_settings({"session.model_class": make_model()})
        config.include("sessions_kernel")
        config.make_wsgi_app()


def test_a_start_up_warning_without_pyramid_retry(caplog):
    with caplog.at_level(logging.WARNING, logger="sessions_kernel"):
        _configure(include_retry=False)
    (record,) = [r for r in caplog.records if "pyramid_retry" in r.getMessage()]
    assert "config.include('pyramid_retry')" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sessions_kernel"):
        _configure(include_retry=True)
    assert not [r for r in caplog.records if "pyramid_retry" in r.getMessage()]
