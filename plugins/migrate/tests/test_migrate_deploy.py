"""``psessions check``: a migration whose cut-off has passed is a finding, one before it is not."""

from __future__ import annotations

import datetime

from sessions_migrate import MigrateMixin

from sessions_kernel import session_factory
from sessions_kernel.deploy import plugin_findings
from sessions_kernel.testing import TEST_SECRET_KEY, Clock, make_model

DAY = 24 * 3600


def factory(clock, until_days, monkeypatch):
    monkeypatch.setenv("TEST_MIGRATE_DEPLOY_SECRET", "an old secret")
    until = datetime.datetime.fromtimestamp(clock() + until_days * DAY, datetime.timezone.utc)
    return session_factory(
        model_class=make_model(MigrateMixin),
        secret_key=TEST_SECRET_KEY,
        clock=clock,
        migrate_from="beaker",
        migrate_until=until.date().isoformat(),
        migrate_secret_env="TEST_MIGRATE_DEPLOY_SECRET",
    )


def test_a_cut_off_that_passed_is_reported_with_the_fix(monkeypatch):
    clock = Clock()
    made = factory(clock, 10, monkeypatch)
    assert [f.id for f in plugin_findings(made) if f.id.startswith("migrate.")] == []
    clock.advance(11 * DAY)
    (finding,) = [f for f in plugin_findings(made) if f.id.startswith("migrate.")]
    assert finding.id == "migrate.over"
    assert finding.setting == "session.migrate_until"
    assert "remove MigrateMixin" in finding.fix
    assert "an old secret" not in repr(finding)
