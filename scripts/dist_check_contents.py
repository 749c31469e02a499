"""What must be inside the wheels and sdists that ``scripts/dist-check`` built.

``python dist_check_contents.py CHECKOUT DIST`` reads each project of the checkout (the
kernel at its root, each plugin under ``plugins/``) and finds its wheel and sdist in
``DIST``; then checks, printing each check:

* each wheel: the package's ``py.typed``; the LICENSE; no ``tests/``; the entry points:
  each plugin's in the group ``sessions_kernel.plugins`` as its pyproject.toml declares it,
  the kernel's ``pytest11`` plugin and its ``psessions`` console script, and every template of
  ``sessions_kernel/plugin_template`` (what ``psessions new-plugin`` writes);
* each sdist: the README, the LICENSE, pyproject.toml and every file of the project's ``tests/``.

Exits 1 at the end if any check failed.
"""

from __future__ import annotations

import configparser
import sys
import tarfile
import zipfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: build's own dependency
    import tomli as tomllib

failures: list[str] = []


def check(what: str, ok: bool, detail: object = "") -> None:
    print(f"  {'ok' if ok else 'FAILED'}: {what}" + (f" ({detail})" if detail and not ok else ""))
    if not ok:
        failures.append(what)


def entry_points(wheel: zipfile.ZipFile) -> dict[str, dict[str, str]]:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(wheel.read(name).decode())
    return {section: dict(parser[section]) for section in parser.sections()}


def tracked(folder: Path) -> list[str]:
    """The files under ``folder`` an sdist should hold (no caches)."""
    return sorted(
        p.relative_to(folder.parent).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )


def main(checkout: Path, dist: Path) -> int:
    projects = [checkout, *sorted(p.parent for p in checkout.glob("plugins/*/pyproject.toml"))]
    for root in projects:
        project = tomllib.loads((root / "pyproject.toml").read_text())
        meta = project["project"]
        name, version = meta["name"], meta["version"]
        stem = f"{name.replace('-', '_')}-{version}"
        (package,) = (
            p.removesuffix("*")
            for p in project["tool"]["setuptools"]["packages"]["find"]["include"]
        )
        wheel_path = dist / f"{stem}-py3-none-any.whl"
        sdist_path = dist / f"{stem}.tar.gz"
        print(f"{name} {version}:")
        check(f"{wheel_path.name} was built", wheel_path.is_file())
        check(f"{sdist_path.name} was built", sdist_path.is_file())
        if not (wheel_path.is_file() and sdist_path.is_file()):
            continue

        with zipfile.ZipFile(wheel_path) as wheel:
            names = set(wheel.namelist())
            check(f"the wheel holds {package}/py.typed", f"{package}/py.typed" in names)
            check(
                "the wheel holds the license",
                f"{stem}.dist-info/licenses/LICENSE" in names,
                sorted(n for n in names if "dist-info" in n),
            )
            top = {n.split("/", 1)[0] for n in names}
            check(
                "the wheel holds no tests",
                not any(n.startswith("tests/") or "/tests/" in n for n in names),
                sorted(top),
            )
            found = entry_points(wheel)
            for group, declared in meta.get("entry-points", {}).items():
                check(
                    f"the wheel's entry points in {group}: {declared}",
                    found.get(group) == declared,
                    found.get(group),
                )
            if root == checkout:
                check(
                    "the wheel's pytest11 entry point",
                    found.get("pytest11") == {"sessions_kernel": "sessions_kernel.pytest_plugin"},
                    found.get("pytest11"),
                )
                check(
                    "the wheel's psessions console script",
                    found.get("console_scripts") == meta["scripts"],
                    found.get("console_scripts"),
                )
                templates = sorted(
                    p.relative_to(root).as_posix()
                    for p in (root / package / "plugin_template").glob("*.tmpl")
                )
                check(
                    f"the wheel holds the {len(templates)} plugin templates",
                    bool(templates) and set(templates) <= names,
                    set(templates) - names,
                )
            else:
                check(
                    "the plugin declares an entry point in sessions_kernel.plugins",
                    bool(found.get("sessions_kernel.plugins")),
                )

        with tarfile.open(sdist_path) as sdist:
            held = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
        for required in ("README.md", "LICENSE", "pyproject.toml", f"{package}/__init__.py"):
            check(f"the sdist holds {required}", required in held)
        tests = tracked(root / "tests")
        check(
            f"the sdist holds the {len(tests)} files of tests/",
            bool(tests) and set(tests) <= held,
            sorted(set(tests) - held)[:5],
        )
    print(f"{len(failures)} failed" if failures else "contents: every check passed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()))
