#!/usr/bin/env python
"""Where a request's time and memory go: cProfile, tracemalloc and a growth check per row
of ``bench_requests.py`` (same applications, same environs, same stack).

::

    python benchmarks/profile_requests.py profile --rows "kernel new,floor: INSERT"
    python benchmarks/profile_requests.py memory                  # peak bytes per request
    python benchmarks/profile_requests.py growth --requests 100000

``profile`` prints the functions with the largest own time (tottime) and the kernel's
functions by cumulative time; ``memory`` the peak of traced memory while one request
runs (tracemalloc, after warm-up) and what stays allocated after it; ``growth`` runs
``--requests`` requests per row and prints live objects and traced memory at the start
and at the end (after ``gc.collect()``).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import importlib.util
import io
import pstats
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_requests", HERE / "bench_requests.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _scenarios(bench: Any, args: argparse.Namespace, tmpdir: str) -> tuple[Any, list[Any]]:
    urls = bench.database_urls(bench.parse_args(["--database", args.database]), tmpdir)
    db = bench.open_database(args.database, urls[args.database])
    models = [m for m in args.model.split(",") if m]
    scenarios = bench.build_scenarios(db, models)
    if args.rows:
        wanted = [r.strip() for r in args.rows.split(",")]
        scenarios = [s for s in scenarios if s.name in wanted]
    return db, scenarios


def profile(bench: Any, db: Any, scenarios: list[Any], args: argparse.Namespace) -> None:
    for scenario in scenarios:
        for _ in range(args.warmup):
            scenario.call()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.requests):
            scenario.call()
        profiler.disable()
        bench.prune_new_rows(db)
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        total = stats.total_tt
        print(
            f"== {scenario.name}: {args.requests} requests, {total / args.requests * 1e6:.0f} "
            "µs per request under cProfile"
        )
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats("sessions_kernel|sessions_", args.top)
        text = out.getvalue()
        keep = [line for line in text.splitlines() if line.strip() and "function calls" not in line]
        print("\n".join(line.replace(str(Path(sys.prefix)), "<venv>") for line in keep))
        print()


def memory(bench: Any, db: Any, scenarios: list[Any], args: argparse.Namespace) -> None:
    print(f"{'scenario':<26} {'peak KiB':>9} {'kept B':>8}   (median of {args.requests}; kept:")
    print("    traced memory still allocated after the request and a gc.collect())")
    for scenario in scenarios:
        for _ in range(args.warmup):
            scenario.call()
        peaks, kept = [], []
        tracemalloc.start()
        for _ in range(args.requests):
            gc.collect()
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            scenario.call()
            peak = tracemalloc.get_traced_memory()[1]
            gc.collect()  # what stays once the request's cycles are collected
            peaks.append(peak - before)
            kept.append(tracemalloc.get_traced_memory()[0] - before)
        tracemalloc.stop()
        bench.prune_new_rows(db)
        peaks.sort()
        kept.sort()
        mid = len(peaks) // 2
        print(f"{scenario.name:<26} {peaks[mid] / 1024:>9.1f} {kept[mid]:>8}")


def growth(bench: Any, db: Any, scenarios: list[Any], args: argparse.Namespace) -> None:
    print(
        f"{'scenario':<26} {'requests':>9} {'objects start':>14} {'objects end':>12} "
        f"{'traced KiB start':>17} {'traced KiB end':>15}"
    )
    for scenario in scenarios:
        for _ in range(args.warmup):
            scenario.call()
        gc.collect()
        tracemalloc.start()
        start_objects = len(gc.get_objects())
        start_traced = tracemalloc.get_traced_memory()[0]
        done = 0
        while done < args.requests:
            n = min(5000, args.requests - done)
            for _ in range(n):
                scenario.call()
            done += n
            bench.prune_new_rows(db)
        gc.collect()
        end_objects = len(gc.get_objects())
        end_traced = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        print(
            f"{scenario.name:<26} {args.requests:>9} {start_objects:>14} {end_objects:>12} "
            f"{start_traced / 1024:>17.1f} {end_traced / 1024:>15.1f}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("profile", "memory", "growth"))
    parser.add_argument("--database", default="sqlite", help="sqlite, postgresql or mariadb")
    parser.add_argument("--model", default="kernel,features", help="models (kernel,features)")
    parser.add_argument("--rows", help="comma-separated row names (default: every row)")
    parser.add_argument("--requests", type=int, default=None, help="requests per row")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests first")
    parser.add_argument("--top", type=int, default=15, help="functions shown per listing")
    parser.add_argument(
        "--tmpdir", help="where the SQLite file goes (/dev/shm: no disk waits, for growth runs)"
    )
    args = parser.parse_args(argv)
    if args.requests is None:
        args.requests = {"profile": 2000, "memory": 500, "growth": 100_000}[args.mode]
    bench = _bench()
    with tempfile.TemporaryDirectory(prefix="sessions-profile-", dir=args.tmpdir) as tmpdir:
        db, scenarios = _scenarios(bench, args, tmpdir)
        try:
            {"profile": profile, "memory": memory, "growth": growth}[args.mode](
                bench, db, scenarios, args
            )
        finally:
            db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
