"""``psessions check``: renewal left off on a model that has its columns is a finding."""

from __future__ import annotations

from sessions_renewal import session_deploy_checks


def ids(findings):
    return [finding.id for finding in findings]


def test_renewal_off_is_reported_only_for_a_model_that_has_it():
    assert ids(session_deploy_checks({"renewal_timeout": None}, active=True)) == ["renewal.off"]
    assert session_deploy_checks({"renewal_timeout": 900}, active=True) == []
    assert session_deploy_checks({}, active=False) == []  # left out of the model on purpose
