"""Keeps the benchmark scripts (gc, concurrency, plugins, HTTP, workers, revocation) from
rotting: small runs on SQLite (the revocation delay on PostgreSQL, when its URL is set).

Asserts on what they count (rows deleted, updates lost), never on time.
"""

from __future__ import annotations

import json
import os
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


def _needs_wrk_and_gunicorn() -> None:
    if not shutil.which("wrk") or not Path(sys.executable).with_name("gunicorn").exists():
        pytest.skip("wrk (Debian) or gunicorn (the bench extra) is not installed")


def _http_cells(*args: str, sessions: int = 5) -> list[dict]:
    tiny = ("--duration", "1", "--warmup", "1", "--sessions", str(sessions), "--json")
    return json.loads(run("bench_http.py", *args, *tiny))


def _assert_every_request_answered(cells: list[dict]) -> None:
    for cell in cells:
        assert cell["requests"] > 0, cell
        assert (cell["non_2xx"], cell["errors"], cell["warmup_failures"]) == (0, 0, 0), cell


def test_http_benchmark_cache_backend_and_realistic_scenario_on_sqlite():
    """sqlite-cache: each worker's cache served reads (none bypassed); both scenarios.

    50 sessions: with a handful, two workers' writes of one session conflict (each
    worker's copy of the other's write is up to cache_max_staleness old on SQLite, and
    the kernel merges, or runs again), and a row that lost a conflict loads locked,
    past the cache, for lock_contended_for seconds."""
    _needs_wrk_and_gunicorn()
    cells = _http_cells(
        *("--backend", "sqlite-cache", "--workers", "2", "--scenario", "plain,realistic"),
        sessions=50,
    )
    assert [(c["backend"], c["scenario"], c["workers"]) for c in cells] == [
        ("sqlite-cache", "plain", 2),
        ("sqlite-cache", "realistic", 2),
    ]
    _assert_every_request_answered(cells)
    for cell in cells:
        cache = cell["cache"]
        assert cache["hits"] > 0 and cache["hit_percent"] > 0, cache
        assert cache["bypassed"] == 0 and cache["workers_restarted"] == 0, cache


def test_http_benchmark_postgresql_with_and_without_the_cache():
    """The trigger installed, every worker's listener live before wrk starts."""
    _needs_wrk_and_gunicorn()
    if not os.environ.get("SESSIONS_TEST_POSTGRESQL_URL"):
        pytest.skip("$SESSIONS_TEST_POSTGRESQL_URL is not set")
    cells = _http_cells(
        *("--backend", "postgresql,postgresql-cache", "--workers", "2"),
        *("--scenario", "plain,realistic"),
    )
    assert [(c["backend"], c["scenario"]) for c in cells] == [
        ("postgresql", "plain"),
        ("postgresql", "realistic"),
        ("postgresql-cache", "plain"),
        ("postgresql-cache", "realistic"),
    ]
    _assert_every_request_answered(cells)
    for cell in cells[2:]:
        assert cell["cache"]["hits"] > 0, cell["cache"]
        assert cell["cache"]["workers_restarted"] == 0
    assert "cache" not in cells[0]


def test_http_benchmark_redis_realistic_scenario():
    """pyramid_session_redis, with the application's own query on a database."""
    _needs_wrk_and_gunicorn()
    pytest.importorskip("pyramid_session_redis")
    redis = pytest.importorskip("redis")
    url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url).ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {url}")
    (cell,) = _http_cells("--backend", "redis", "--workers", "1", "--scenario", "realistic")
    assert (cell["backend"], cell["scenario"]) == ("redis", "realistic")
    _assert_every_request_answered([cell])


def test_http_benchmark_refuses_an_unknown_backend_or_scenario():
    for option in (("--backend", "sqlite,nope"), ("--scenario", "nope")):
        result = subprocess.run(
            [sys.executable, str(BENCHMARKS / "bench_http.py"), *option],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2 and "unknown ['nope']" in result.stderr


def test_http_app_counts_a_lost_session_as_a_failure(tmp_path, monkeypatch):
    """A cookie whose session is not found is a 500 (counted by wrk), never a fresh session;
    the realistic views answer their own query's row."""
    webtest = pytest.importorskip("webtest")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_http
        import http_app
    finally:
        sys.path.remove(str(BENCHMARKS))
    env = {
        "BENCH_URL": f"sqlite:///{tmp_path}/app.sqlite",
        "BENCH_TABLE": "bench_lost",
        "BENCH_EXPECT_SESSION": "1",
        "BENCH_APP_QUERY": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    bench_http.prepare_table(env, "bench_lost")
    app = webtest.TestApp(http_app.make_app())
    assert app.get("/ping").text == "ok"
    app.post("/new")
    assert app.post("/write").text.startswith("1 item ")
    assert app.get("/read").text.startswith("1 item ")
    stranger = webtest.TestApp(app.app)
    stranger.set_cookie("session", "not-a-stored-session")
    assert stranger.get("/read", status=500).text.startswith("the cookie's session")
    assert stranger.post("/write", status=500).status_int == 500
    assert app.get("/bench-stats").json["cache"] is None
    bench_http.drop_table(env, "bench_lost")


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
