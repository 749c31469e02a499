#!/usr/bin/env python
"""Instructions per request (callgrind) for rows of ``bench_requests.py``: the same
applications and environs, counted instead of timed.

::

    python benchmarks/count_instructions.py
    python benchmarks/count_instructions.py --rows "kernel anonymous,signed cookie anonymous"
    python benchmarks/count_instructions.py --requests 500 --json

For each row, a child process builds ``bench_requests``' scenarios, runs ``--warmup``
requests of the row, then N requests, under ``valgrind --tool=callgrind``; a second
child does the same with 2N requests. The figure is (Ir(2N) - Ir(N)) / N: the start-up
(interpreter, imports, the applications, the warm-up) is the same in both and cancels.
Both children run with ``PYTHONHASHSEED=0``. Counts are of this process's user-space
instructions only: a database server's work and the kernel's system calls (SQLite's
fsyncs) are not in them, so they measure the Python (and SQLite library) side of a
request and repeat to within a fraction of a percent between runs, whatever the load.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_ROWS = (
    "no session",
    "signed cookie anonymous",
    "kernel anonymous",
    "floor: PK SELECT",
    "kernel read",
)
VALGRIND = "/usr/bin/valgrind"
SUMMARY = re.compile(rb"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_requests", HERE / "bench_requests.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _models_for(bench: Any, rows: list[str]) -> list[str]:
    """The models whose applications the rows need (``features read`` needs ``features``)."""
    return [m for m in bench.MODELS if any(r.startswith(m + " ") for r in rows)]


def _row_names(bench: Any, database: str, models: list[str]) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="sessions-count-") as tmpdir:
        urls = bench.database_urls(bench.parse_args(["--database", database]), tmpdir)
        db = bench.open_database(database, urls[database])
        try:
            return [s.name for s in bench.build_scenarios(db, models)]
        finally:
            db.close()


def _check_rows(bench: Any, rows: list[str], database: str) -> None:
    """Fail before any callgrind run when a row does not exist (built without valgrind)."""
    names = _row_names(bench, database, _models_for(bench, rows))
    unknown = [r for r in rows if r not in names]
    if unknown:
        every = _row_names(bench, database, list(bench.MODELS))  # every model's rows too
        raise SystemExit(f"--rows: no row {unknown}; rows: {every}")


# -- the child: runs under callgrind -----------------------------------------------------
def child(args: argparse.Namespace) -> int:
    """Build the scenarios, check the row once, warm up, run ``--requests`` requests."""
    bench = _bench()
    import sessions_kernel

    rows = [args.child]
    with tempfile.TemporaryDirectory(prefix="sessions-count-") as tmpdir:
        urls = bench.database_urls(bench.parse_args(["--database", args.database]), tmpdir)
        db = bench.open_database(args.database, urls[args.database])
        try:
            scenarios = bench.build_scenarios(db, _models_for(bench, rows))
            by_name = {s.name: s for s in scenarios}
            if args.child not in by_name:
                raise SystemExit(f"no row {args.child!r}; rows: {list(by_name)}")
            scenario = by_name[args.child]
            bench.count_statements(db, [scenario])
            for _ in range(args.warmup):
                scenario.call()
            bench.prune_new_rows(db)
            gc.collect()
            call = scenario.call
            for _ in range(args.requests):
                call()
            result = {
                "row": scenario.name,
                "statements": scenario.statements,
                "expected_statements": list(scenario.expected),
                "body": scenario.body.decode("utf-8", "replace"),
                "expected_body": (
                    None
                    if scenario.expected_body is None
                    else scenario.expected_body.decode("utf-8", "replace")
                ),
                "sessions_kernel": str(Path(sessions_kernel.__file__).parent),
                "bench_requests": str(Path(bench.__file__)),
            }
        finally:
            db.close()
    Path(args.result).write_text(json.dumps(result))
    return 0


# -- the parent: two callgrind runs per row ----------------------------------------------
def _callgrind(row: str, requests: int, args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    """Run one child under callgrind; returns its instruction count and its report."""
    with tempfile.TemporaryDirectory(prefix="sessions-callgrind-") as tmpdir:
        out = os.path.join(tmpdir, "callgrind.out")
        result = os.path.join(tmpdir, "result.json")
        command = [
            args.valgrind,
            "--tool=callgrind",
            "--quiet",
            f"--callgrind-out-file={out}",
            sys.executable,
            str(Path(__file__).resolve()),
            *("--child", row, "--requests", str(requests), "--warmup", str(args.warmup)),
            *("--database", args.database, "--result", result),
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{row} ({requests} requests) failed:\n{done.stderr[-4000:]}")
        match = SUMMARY.search(Path(out).read_bytes())
        if match is None:
            raise SystemExit(f"{row}: no summary/totals line in {out}")
        return int(match.group(1)), json.loads(Path(result).read_text())


def count(row: str, args: argparse.Namespace) -> dict[str, Any]:
    n = args.requests
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        single, double = pool.map(lambda k: _callgrind(row, k * n, args), (1, 2))
    (ir_n, report), (ir_2n, _) = single, double
    notes = []
    if report["statements"] != report["expected_statements"]:
        notes.append(f"issued {report['statements']}, expected {report['expected_statements']}")
    if report["expected_body"] is not None and report["body"] != report["expected_body"]:
        notes.append(f"answered {report['body']!r}, expected {report['expected_body']!r}")
    return {
        **report,
        "requests": n,
        "ir_n": ir_n,
        "ir_2n": ir_2n,
        "ir_per_request": (ir_2n - ir_n) / n,
        "notes": notes,
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"Python {report['python']}, {report['valgrind']}, {report['database']}; "
        f"sessions_kernel from {report['sessions_kernel']}; {report['bench_requests']} "
        f"(sha256 {report['bench_requests_sha256'][:12]})",
        f"instructions per request = (Ir({2 * report['requests']}) - Ir({report['requests']})) "
        f"/ {report['requests']}, after {report['warmup']} warm-up requests, PYTHONHASHSEED=0",
        "",
    ]
    rows = {r["row"]: r for r in report["rows"]}
    header = f"{'row':<30} {'Ir/request':>11} {'- no session':>13} {'x own':>6}  own floor"
    lines += [header, "-" * len(header)]
    plain = rows.get("no session", {}).get("ir_per_request")
    for row in report["rows"]:
        ir = row["ir_per_request"]
        over = f"{ir - plain:>13,.0f}" if plain is not None else f"{'':>13}"
        floor = row.get("floor")
        own = f"{ir / rows[floor]['ir_per_request']:>6.2f}" if floor in rows else f"{'':>6}"
        lines.append(f"{row['row']:<30} {ir:>11,.0f} {over} {own}  {floor or ''}")
        lines += [f"  note: {note}" for note in row["notes"]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows",
        default=",".join(DEFAULT_ROWS),
        help=f"comma-separated rows of bench_requests.py (default: {', '.join(DEFAULT_ROWS)})",
    )
    parser.add_argument(
        "--requests", type=int, default=1000, help="N: requests of the shorter run (1000)"
    )
    parser.add_argument("--warmup", type=int, default=200, help="requests before the N (200)")
    parser.add_argument(
        "--database",
        default="sqlite",
        help="sqlite (default), postgresql or mariadb (a server's work is not counted)",
    )
    parser.add_argument(
        "--jobs", type=int, default=2, help="callgrind runs at a time (2; counts do not change)"
    )
    parser.add_argument("--valgrind", default=VALGRIND, help=f"valgrind binary ({VALGRIND})")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.requests < 1 or args.warmup < 0 or args.jobs < 1:
        parser.error("--requests and --jobs must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    if not shutil.which(args.valgrind):
        raise SystemExit(f"{args.valgrind} not found (Debian: apt-get install valgrind)")
    bench = _bench()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    _check_rows(bench, rows, args.database)
    version = subprocess.run([args.valgrind, "--version"], capture_output=True, text=True)
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "valgrind": version.stdout.strip(),
        "database": args.database,
        "bench_requests": str(Path(bench.__file__)),
        "bench_requests_sha256": hashlib.sha256(Path(bench.__file__).read_bytes()).hexdigest(),
        "requests": args.requests,
        "warmup": args.warmup,
        "rows": [],
    }
    for row in rows:
        if not args.json:
            print(f"counting {row} ...", file=sys.stderr, flush=True)
        counted = count(row, args)
        kind = row.rsplit(" ", 1)[-1]
        group = row[: -len(kind) - 1]
        if group in bench.MODELS and kind in bench.FLOOR_OF:
            counted["floor"] = bench.floor_of(group, kind)
        report["rows"].append(counted)
    report["sessions_kernel"] = report["rows"][0]["sessions_kernel"] if rows else None
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
