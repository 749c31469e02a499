"""`make test-pythons` (the SQLite suite on Python 3.10 and 3.13): which interpreter it
picks, and a missing one fails CI with the fix named, and is skipped elsewhere."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    shutil.which("make") is None or not (ROOT / "Makefile").exists(),
    reason="needs make and the checkout's Makefile",
)


def make(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"CI", "PYTHONS", "MAKEFLAGS"}}
    clean.pop("SESSIONS_TEST_REQUIRE_SERVERS", None)
    return subprocess.run(
        ["make", "-s", "--no-print-directory", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_missing_python_is_skipped_with_a_message_outside_ci():
    run = make("test-pythons", "TEST_PYTHON_VERSIONS=3.99")
    assert run.returncode == 0, run.stderr
    assert "no Python 3.99" in run.stdout and "skipped here" in run.stdout
    assert "== Python" not in run.stdout  # no suite ran


@pytest.mark.parametrize(
    "ci",
    [{"CI": "true"}, {"SESSIONS_TEST_REQUIRE_SERVERS": "1"}],
    ids=["CI", "SESSIONS_TEST_REQUIRE_SERVERS"],
)
def test_a_missing_python_fails_in_ci_and_names_the_fix(ci):
    run = make("test-pythons", "TEST_PYTHON_VERSIONS=3.99", **ci)
    assert run.returncode != 0
    assert "no Python 3.99" in run.stderr
    assert "pyenv install 3.99" in run.stderr and "PYTHONS=" in run.stderr
    assert "== Python" not in run.stdout


def test_ci_false_is_not_ci():
    run = make("test-pythons", "TEST_PYTHON_VERSIONS=3.99", CI="false")
    assert run.returncode == 0 and "skipped here" in run.stdout


def test_the_newest_release_of_each_version_from_pyenv(tmp_path):
    """3.10.13 over 3.10.9 (not the string order), never a free-threaded 3.13.0t."""
    for version in ("3.10.9", "3.10.13", "3.13.0", "3.13.0t", "3.130.1"):
        (tmp_path / "versions" / version / "bin").mkdir(parents=True)
        (tmp_path / "versions" / version / "bin" / "python").touch()
    run = make(
        "--eval",
        "print-pythons: ; @echo $(PYTHONS)",
        "print-pythons",
        f"PYENV_ROOT={tmp_path}",
    )
    versions = tmp_path / "versions"
    assert run.stdout.split() == [
        f"{versions}/3.10.13/bin/python",
        f"{versions}/3.13.0/bin/python",
    ]
