"""Keeps the benchmark scripts (gc, concurrency, plugins, HTTP, workers, revocation) from
rotting: small runs on SQLite (the revocation delay on PostgreSQL, when its URL is set).

Asserts on what they count (rows deleted, updates lost), never on time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_gc_benchmark_deletes_the_expired_half(tmp_path):
    out = run(
        "bench_gc.py",
        "--rows",
        "1000",
        "--batch-size",
        "300",
        "--url",
        f"sqlite:///{tmp_path}/gc.sqlite",
    )
    assert "deleted          500 in 2 batches of 300" in out
    assert "left             500" in out
    assert "longest" in out and "peak memory" in out


def test_concurrency_benchmark_loses_nothing_and_reports_failures(tmp_path):
    url = f"sqlite:///{tmp_path}/c.sqlite"
    out = run(
        "bench_concurrency.py",
        *("--url", url, "--keys", "6", "--increments", "6", "--threads", "3"),
        *("--read-rounds", "2", "--readers", "3", "--json"),
    )
    hammer, reads = json.loads(out)
    assert hammer["scenario"] == "hammer" and hammer["attempts"] == 3  # pyramid_retry's default
    assert hammer["statuses"] == {"200": 12} and hammer["failed"] == 0
    assert (hammer["lost_increments"], hammer["lost_keys"]) == (0, 0)
    assert reads["scenario"] == "reads"
    assert reads["statuses"] == {"200": 6} and reads["failed"] == 0
    assert reads["retries"] == 0


def test_plugin_benchmark_measures_every_model(tmp_path):
    out = run("bench_plugins.py", "--rounds", "1", "--iterations", "3")
    lines = out.splitlines()
    assert lines[0].startswith("sqlite: median µs per read")
    labels = [line[:18].strip() for line in lines[1:]]
    assert labels == [
        "kernel",
        "idle timeout",
        "absolute timeout",
        "renewal",
        "cookie settings",
        "all four",
    ]


def test_http_benchmark_runs_gunicorn_and_wrk_on_sqlite():
    import shutil

    import pytest

    if not shutil.which("wrk") or not Path(sys.executable).with_name("gunicorn").exists():
        pytest.skip("wrk (Debian) or gunicorn (the bench extra) is not installed")
    out = run(
        "bench_http.py",
        *("--backend", "sqlite", "--workers", "2", "--duration", "1", "--sessions", "5"),
        "--json",
    )
    (cell,) = json.loads(out)
    assert (cell["backend"], cell["workers"]) == ("sqlite", 2)
    assert cell["requests"] > 0
    assert cell["non_2xx"] == 0


def test_workers_benchmark_hammers_one_session_through_gunicorn():
    import pytest

    if not Path(sys.executable).with_name("gunicorn").exists():
        pytest.skip("gunicorn (the bench extra) is not installed")
    out = run(
        "bench_workers.py",
        *("--database", "sqlite", "--workers", "2", "--runs", "1"),
        *("--keys", "6", "--increments", "6", "--threads", "3", "--json"),
    )
    (cell,) = json.loads(out)
    assert (cell["database"], cell["workers"]) == ("sqlite", 2)
    assert cell["statuses"] == {"200": 12} and cell["failed"] == 0
    assert cell["attempts"] == 12 + cell["retries"]  # every worker's events were summed
    assert (cell["lost_increments"], cell["lost_keys"]) == (0, 0)


def test_revocation_benchmark_evicts_every_logout_and_serves_nothing_stale():
    import os

    import pytest

    url = os.environ.get("SESSIONS_TEST_POSTGRESQL_URL")
    if not url:
        pytest.skip("SESSIONS_TEST_POSTGRESQL_URL is not set: the revocation delay is PostgreSQL's")
    out = run("bench_revocation.py", "--url", url, "--count", "20", "--json")
    figures = json.loads(out)
    assert (figures["count"], figures["measured"], figures["missed"]) == (20, 20, 0)
    assert figures["stale"] == 0
    assert figures["b_notifications"] >= 20  # evicted by B's listener, one NOTIFY each
    delays = figures["from_commit_sent_ms"]
    assert 0 <= delays["median"] <= delays["p99"] <= delays["max"]


def test_instruction_counts_name_unknown_rows_before_running_valgrind():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "count_instructions.py"), "--rows", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "no row ['nope']" in result.stderr and "kernel anonymous" in result.stderr


def test_instruction_counts_of_a_row():
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed (Debian's package valgrind)")
    out = json.loads(
        run(
            "count_instructions.py",
            "--rows",
            "no session,kernel anonymous",
            "--requests",
            "20",
            "--warmup",
            "5",
            "--json",
        )
    )
    counts = {row["row"]: row["ir_per_request"] for row in out["rows"]}
    assert set(counts) == {"no session", "kernel anonymous"}
    assert out["sessions_kernel"].endswith("sessions_kernel")
    # a request that uses the session executes more than one that never touches it
    assert 0 < counts["no session"] < counts["kernel anonymous"]
