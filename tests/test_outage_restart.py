"""A real restart of PostgreSQL and MariaDB under write load through gunicorn, with the
outage tween: ``benchmarks/bench_outage.py`` in short (a server of its own per
database, started and stopped by the script, on a free port of 127.0.0.1).

Asserts what the tween promises, never on time: every failed request was a 503 with
``Retry-After``, no 500 and no traceback in gunicorn's log, no acknowledged write lost,
and the application served writes again after the restart without being restarted.
"""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_OUTAGE = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_outage.py"


def binaries_of(backend: str) -> bool:
    if backend == "postgresql":
        return bool(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return bool(shutil.which("mariadb-install-db")) and bool(
        shutil.which("mariadbd") or Path("/usr/sbin/mariadbd").exists()
    )


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_a_restart_under_load_gives_200s_and_clean_503s_only(backend):
    if not Path(sys.executable).with_name("gunicorn").exists():
        pytest.skip("gunicorn (the bench extra) is not installed")
    if not binaries_of(backend):
        pytest.skip(f"the {backend} server binaries are not installed")
    args = ["--backend", backend, "--mode", "after", "--duration", "8", "--restart-at", "3"]
    result = subprocess.run(
        [sys.executable, str(BENCH_OUTAGE), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (figures,) = json.loads(result.stdout)
    print(f"\n[outage restart] {figures}")
    assert figures["restart_s"] is not None
    assert figures["failed"] == figures["503_with_retry_after"], figures
    assert figures["500"] == 0 and not figures["other"], figures
    assert figures["tracebacks_logged"] == 0, figures
    assert figures["lost_acknowledged_writes"] == 0, figures
    assert figures["succeeded_after_restart"] > 0, figures  # the same workers, no restart
