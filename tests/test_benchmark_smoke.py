"""Keeps benchmarks/bench_requests.py from rotting: a couple of requests per row on SQLite.

Asserts on what each row does (its SQL statements) and on the output's shape, never
on time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_requests.py"
# without Redis's rows: their own tests below need a Redis server
FAST = [
    "--database",
    "sqlite",
    "--iterations",
    "3",
    "--rounds",
    "2",
    "--warmup",
    "1",
    "--redis",
    "",
]
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_requests", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def report(bench):
    return bench.run(bench.parse_args(FAST))


def test_every_row_issues_the_statements_it_stands_for(report):
    (db,) = report["databases"]
    assert db["database"] == "sqlite"
    statements = {row["name"]: row["statements"] for row in db["rows"]}
    assert statements == {
        "no session": [],
        "signed cookie read": [],
        "signed cookie anonymous": [],
        "floor: PK SELECT": ["SELECT"],
        "floor: SELECT+UPDATE": ["SELECT", "UPDATE"],
        "floor: INSERT": ["INSERT"],
        "kernel read": ["SELECT"],
        "kernel write": ["SELECT", "UPDATE"],
        "kernel new": ["INSERT"],
        "kernel anonymous": [],
    } | {
        row["name"]: row["expected_statements"]
        for row in db["rows"]
        if row["group"] not in ("baseline", "kernel")
    }
    for row in db["rows"]:
        assert row["statements"] == row["expected_statements"], row["name"]


def test_every_row_answers_what_its_view_computes(report):
    (db,) = report["databases"]
    bodies = {row["name"]: row["body"] for row in db["rows"]}
    assert bodies["no session"] == "ok"
    assert bodies["signed cookie read"] == "1"  # the signed cookie was read back
    assert bodies["floor: PK SELECT"] == "7"  # len(b'{"a":1}')
    assert bodies["floor: SELECT+UPDATE"].isdigit() and bodies["floor: INSERT"] == "1"
    assert bodies["kernel read"] == "1"  # the kernel's cookie was read back
    assert bodies["kernel write"].isdigit()
    assert bodies["kernel anonymous"] == "None"
    assert [n for n in report["notes"] if "skipped" not in n] == []


def test_rows_report_medians_p90_and_request_counts(report):
    (db,) = report["databases"]
    for row in db["rows"]:
        assert row["requests"] == 3 * 2
        assert len(row["round_medians_us"]) == 2
        assert row["median_us"] > 0 and row["p90_us"] > 0
    assert set(db["ratios"]) >= {
        "kernel read / floor: PK SELECT",
        "kernel write / floor: SELECT+UPDATE",
        "kernel new / floor: INSERT",
        "kernel anonymous / signed cookie anonymous",
    }
    names = {r["name"] for r in db["rows"]}
    for row in db["rows"]:
        assert row["cpu_us"] > 0
        if row["group"] != "baseline" and " floor: " not in row["name"]:
            assert row["x_floor"] > 0 and row["floor"] in names


def test_a_model_with_plugins_is_measured_against_floors_on_its_own_table(report):
    """Same statements on its own table (its width, its indexes), and the bare floors too."""
    (db,) = report["databases"]
    rows = {row["name"]: row for row in db["rows"]}
    if "features read" not in rows:
        pytest.skip("the feature plugins are not installed")
    for kind, floor in (("read", "PK SELECT"), ("write", "SELECT+UPDATE"), ("new", "INSERT")):
        row = rows[f"features {kind}"]
        assert row["floor"] == f"features floor: {floor}"
        assert rows[row["floor"]]["statements"] == row["statements"]
        assert row["bare_floor"] == f"floor: {floor}"
        assert row["x_bare_floor"] > 0
        assert f"features {kind} / floor: {floor}" in db["bare_ratios"]
    assert rows["features floor: PK SELECT"]["body"] == "7"
    assert rows["features anonymous"]["floor"] == "signed cookie anonymous"


def test_a_model_whose_plugins_are_missing_is_skipped_with_a_note(bench, report):
    groups = {row["group"] for row in report["databases"][0]["rows"]}
    try:
        bench.MODELS["features"].load_mixins()
    except ImportError:
        assert "features" not in groups
        assert any("'features' skipped" in note for note in report["notes"])
    else:
        assert "features" in groups


def test_json_output_and_table(bench, capsys):
    assert bench.main([*FAST, "--json", "--model", "kernel"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in data["databases"][0]["rows"]][:3] == [
        "no session",
        "signed cookie read",
        "signed cookie anonymous",
    ]
    table = bench.format_report(data)
    assert "== sqlite ==" in table and "kernel read / floor: PK SELECT:" in table


@pytest.mark.parametrize(
    "argv", [["--model", "nope"], ["--database", "oracle"], ["--iterations", "0"]]
)
def test_bad_options_are_refused(bench, argv):
    with pytest.raises(SystemExit):
        bench.run(bench.parse_args(["--database", "sqlite", *argv]))


class PlainMixin:
    """A mixin that activates no plugin: stands for a model added to the registry."""


def test_a_registered_model_gets_its_own_kernel_rows(bench, monkeypatch):
    spec = bench.ModelSpec("plain", "BaseMixin and a mixin of its own", (f"{__name__}:PlainMixin",))
    monkeypatch.setitem(bench.MODELS, "plain", spec)
    report = bench.run(bench.parse_args([*FAST, "--model", "plain"]))
    (db,) = report["databases"]
    plain = {row["name"]: row["statements"] for row in db["rows"] if row["group"] == "plain"}
    assert plain == {
        "plain floor: PK SELECT": ["SELECT"],
        "plain floor: SELECT+UPDATE": ["SELECT", "UPDATE"],
        "plain floor: INSERT": ["INSERT"],
        "plain read": ["SELECT"],
        "plain write": ["SELECT", "UPDATE"],
        "plain new": ["INSERT"],
        "plain anonymous": [],
    }
    assert not any(row["group"] == "kernel" for row in db["rows"])
    assert set(db["ratios"]) == {
        "plain read / plain floor: PK SELECT",
        "plain write / plain floor: SELECT+UPDATE",
        "plain new / plain floor: INSERT",
        "plain anonymous / signed cookie anonymous",
    }
    assert set(db["bare_ratios"]) == {
        "plain read / floor: PK SELECT",
        "plain write / floor: SELECT+UPDATE",
        "plain new / floor: INSERT",
    }
    assert report["notes"] == []


def _rows_of(report):
    (db,) = report["databases"]
    return db, {row["name"]: row for row in db["rows"]}


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_cached_read_runs_no_sql_and_is_held_to_half_the_floor(bench, database):
    """sessions-cache's rows: warm before anything is counted, every timed read a hit."""
    try:
        bench.MODELS["cached"].load_mixins()
    except ImportError:
        pytest.skip("sessions-cache is not installed")
    if database == "postgresql" and not os.environ.get(bench.DATABASE_ENV["postgresql"]):
        pytest.skip(f"${bench.DATABASE_ENV['postgresql']} is not set")
    argv = [*FAST, "--model", "cached", "--database", database]
    report = bench.run(bench.parse_args(argv))
    db, rows = _rows_of(report)
    read = rows["cached read"]
    assert read["statements"] == [] == read["expected_statements"]
    assert read["body"] == "1"  # the cookie's session, served from the cache
    assert read["floor"] == "cached floor: PK SELECT"
    assert read["bare_floor"] == "floor: PK SELECT"
    assert db["target_keys"]["cached read / cached floor: PK SELECT"] == "cached read"
    assert report["targets"]["cached read"] == 0.5
    assert rows["cached write"]["statements"] == ["SELECT", "UPDATE"]
    counted = db["counters"]["cached"]
    # warm-up (1) and timed (3 x 2) reads, each a hit; nothing bypassed the cache
    assert counted["hits"] >= 1 + 3 * 2 and counted["bypassed"] == 0
    assert [n for n in report["notes"] if "skipped" not in n] == []
    assert "cached, counted over the warm-up and timed requests: hits" in bench.format_report(
        report
    )


def test_redis_rows_read_and_write_pyramid_session_redis(bench):
    pytest.importorskip("pyramid_session_redis")
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    argv = [*FAST, "--model", "kernel", "--redis", REDIS_URL]
    report = bench.run(bench.parse_args(argv))
    _, rows = _rows_of(report)
    assert rows["redis read"]["statements"] == [] and rows["redis read"]["body"] == "1"
    assert rows["redis write"]["statements"] == [] and rows["redis write"]["body"].isdigit()
    assert rows["redis read"]["group"] == "baseline"
    assert report["notes"] == []
    assert "redis read" in bench.format_report(report)


def test_redis_rows_are_skipped_with_a_note_when_redis_does_not_answer(bench):
    pytest.importorskip("pyramid_session_redis")
    argv = [*FAST, "--model", "kernel", "--redis", "redis://127.0.0.1:1/0"]
    report = bench.run(bench.parse_args(argv))
    _, rows = _rows_of(report)
    assert "redis read" not in rows
    assert any(n.startswith("redis rows skipped: no Redis answers") for n in report["notes"])
