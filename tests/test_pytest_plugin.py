"""The pytest plugin on a machine without database servers: SQLite runs, the servers are
skipped with the reason, the summary says which ran; CI's variable turns that into failures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

# nothing listens on port 1: what a bare machine looks like to the probe
CLOSED = {
    "SESSIONS_TEST_POSTGRESQL_URL": "postgresql+psycopg://postgres:secret@127.0.0.1:1/test",
    "SESSIONS_TEST_MARIADB_URL": "mariadb+pymysql://root@127.0.0.1:1/test",
}


def run_pytest(tmp_path, env_overrides):
    (tmp_path / "test_app.py").write_text(
        textwrap.dedent(
            """
            def test_a(session_db_url):
                assert session_db_url

            def test_b(session_db_url):
                assert session_db_url
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONS_TEST_")}
    env.update(env_overrides)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.returncode, result.stdout


def test_unreachable_servers_are_skipped_and_the_summary_says_so(tmp_path):
    code, out = run_pytest(tmp_path, CLOSED)
    assert code == 0, out
    assert "2 passed, 4 skipped" in out
    assert "postgresql: not reachable at postgresql+psycopg://postgres:***@127.0.0.1:1/test" in out
    assert "secret" not in out
    summary = out.split("sessions_kernel databases", 1)[1]
    assert "sqlite: ran (2 tests)" in summary
    assert "postgresql: SKIPPED, not reachable at" in summary
    assert "mariadb: SKIPPED, not reachable at mariadb+pymysql://root@127.0.0.1:1/test" in summary


def test_unset_servers_are_skipped_with_the_variable_named(tmp_path):
    code, out = run_pytest(tmp_path, {})
    assert code == 0, out
    assert "mariadb: SESSIONS_TEST_MARIADB_URL is not set" in out


def test_ci_variable_turns_a_missing_server_into_a_failure(tmp_path):
    code, out = run_pytest(tmp_path, {**CLOSED, "SESSIONS_TEST_REQUIRE_SERVERS": "1"})
    assert code != 0
    assert re.search(r"2 passed, .*4 errors", out), out
    assert "SESSIONS_TEST_REQUIRE_SERVERS is set" in out


@pytest.mark.parametrize("database", ["postgresql", "mariadb"])
def test_reachable_server_runs(tmp_path, database):
    from sessions_kernel.pytest_plugin import server_url

    url = server_url(database)  # this run's own server, skipped where there is none
    variable = f"SESSIONS_TEST_{database.upper()}_URL"
    _, out = run_pytest(tmp_path, {variable: url, "SESSIONS_TEST_REQUIRE_SERVERS": "1"})
    assert f"{database}: ran (2 tests)" in out.split("sessions_kernel databases", 1)[1]


def test_make_demo_does_not_reinstall_an_installed_checkout():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, ".venv", ".installed")):
        pytest.skip("no .venv installed by make in this checkout")
    dry = subprocess.run(
        ["make", "-n", "demo"], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0, dry.stderr
    assert "pip install" not in dry.stdout
    assert "sessions-demo --port" in dry.stdout
