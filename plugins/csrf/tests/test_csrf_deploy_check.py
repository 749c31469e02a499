"""``psessions check``: another CSRF storage policy, or require_csrf off, is a finding."""

from __future__ import annotations

from pyramid.config import Configurator
from sessions_csrf import ColumnCSRFStoragePolicy, session_deploy_checks


def ids(registry, active=True):
    return [finding.id for finding in session_deploy_checks(registry, active=active)]


def test_pyramids_defaults_are_two_findings():
    config = Configurator()
    config.commit()
    assert ids(config.registry) == ["csrf.policy", "csrf.require"]
    assert ids(config.registry, active=False) == []
    assert ids(None) == []  # a factory checked on its own: nothing to say


def test_the_plugins_policy_and_require_csrf_pass():
    config = Configurator()
    config.set_csrf_storage_policy(ColumnCSRFStoragePolicy())
    config.set_default_csrf_options(require_csrf=True)
    config.commit()
    assert ids(config.registry) == []
