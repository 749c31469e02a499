"""The kernel's layering contract (``.importlinter``): no module imports one above it."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".importlinter"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the test extra (pip install -e '.[test]')")
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(CONFIG), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def layers() -> list[set[str]]:
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    lines = parser["importlinter:contract:layers"]["layers"].split("\n")
    return [{name.strip() for name in line.split("|")} for line in lines if line.strip()]


def test_the_kernel_keeps_its_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "The kernel's layers KEPT" in result.stdout


def test_every_module_of_the_kernel_has_a_layer():
    package = ROOT / "sessions_kernel"
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {p.parent.name for p in package.glob("*/__init__.py")}
    placed = set().union(*layers())
    assert modules - placed == set(), "add the new module to a layer in .importlinter"
    assert placed - modules == set(), "a layer names a module that does not exist"


@pytest.mark.parametrize(
    ("module", "upward"),
    [
        ("cookies", "session"),  # the transport reaching for the ISession object
        ("storage", "pipeline"),  # the SQL reaching for the stages
        ("session", "factory"),  # the request's session reaching for its factory at run time
    ],
)
def test_an_import_of_a_module_above_breaks_the_contract(tmp_path, module, upward):
    copy = tmp_path / "sessions_kernel"
    shutil.copytree(ROOT / "sessions_kernel", copy, ignore=shutil.ignore_patterns("__pycache__"))
    source = copy / f"{module}.py"
    source.write_text(source.read_text() + f"\nfrom . import {upward}  # noqa\n")
    result = lint_imports(tmp_path, pythonpath=tmp_path)
    assert result.returncode != 0, result.stdout
    assert "The kernel's layers BROKEN" in result.stdout
    assert f"sessions_kernel.{module} -> sessions_kernel.{upward}" in result.stdout
