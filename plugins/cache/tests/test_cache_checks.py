"""``psessions check`` and the settings' rules: a cache left off is reported, bad bounds refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sessions_cache import CacheMixin, session_check_settings, session_deploy_checks

from sessions_kernel import ConfigurationError
from sessions_kernel.testing import make_model


def registry(url: str) -> SimpleNamespace:
    return SimpleNamespace(settings={"sqlalchemy.url": url})


@pytest.mark.parametrize("url", ["sqlite:///app.db", "mysql+pymysql://db/app"])
def test_no_max_staleness_on_a_database_without_notifications_is_a_finding(url):
    (finding,) = session_deploy_checks({"cache_max_staleness": None}, registry(url), active=True)
    assert finding.id == "cache.off"
    assert finding.setting == "session.cache_max_staleness"
    assert "cache_max_staleness" in finding.fix


def test_postgresql_or_a_bound_or_an_inactive_plugin_pass():
    none = {"cache_max_staleness": None}
    assert session_deploy_checks(none, registry("postgresql+psycopg://db/app"), True) == []
    assert session_deploy_checks({"cache_max_staleness": 2.0}, registry("sqlite://"), True) == []
    assert session_deploy_checks(none, registry("sqlite://"), active=False) == []


def test_bounds_that_would_make_revocation_slow_are_refused():
    assert session_check_settings({"cache_heartbeat": 0.25, "cache_max_staleness": 5}) == []
    problems = session_check_settings({"cache_heartbeat": 11, "cache_max_staleness": 301})
    assert len(problems) == 2
    assert "cache_heartbeat (11)" in problems[0] and "cache_max_staleness (301)" in problems[1]
    (hot,) = session_check_settings({"cache_heartbeat": 1e-6})
    assert "at least 0.01" in hot


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("cache_max_staleness", "0", "above 0"),
        ("cache_max_staleness", "soon", "not a number"),
        ("cache_max_entries", "0", "cache_max_entries"),
        ("cache_heartbeat", "-1", "above 0"),
    ],
)
def test_a_bad_setting_stops_the_application_with_its_fix(session_app, setting, value, says):
    with pytest.raises(ConfigurationError, match=says):
        session_app(make_model(CacheMixin), {setting: value})
