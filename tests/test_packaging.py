"""Every library distribution of the repository ships ``py.typed``, and mypy checks it.

The kernel, each plugin under ``plugins/`` and each example under ``examples/``
carries type hints for its users' type checkers (PEP 561): its package holds a
``py.typed`` marker and its ``pyproject.toml`` puts the marker in the wheel
(setuptools' ``package-data``). The checks here read the project files;
``make dist-check`` (scripts/dist-check) builds the wheels and sdists and
checks what is inside them. The demo is an application, not a library: it
has no marker.

The distributions are released together: one version, and each plugin
requires the kernel's minor series (a 0.x minor release may break plugins).

``make typecheck`` runs mypy over the packages that ``[tool.mypy] files``
lists (mypy cannot follow the default editable installs of ``make install``),
so each package must be listed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = [
    ROOT,
    *sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml")),
    *sorted(p.parent for p in ROOT.glob("examples/*/pyproject.toml")),
]


def _project(root: Path) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))


def _package(root: Path) -> Path:
    """The distribution's one top-level package, as its packages.find include names it."""
    (pattern,) = _project(root)["tool"]["setuptools"]["packages"]["find"]["include"]
    name = pattern.removesuffix("*")
    assert (root / name / "__init__.py").is_file(), f"{root}: no package {name}"
    return root / name


def _label(root: Path) -> str:
    return "kernel" if root == ROOT else root.relative_to(ROOT).as_posix()


def test_the_libraries_are_the_kernel_the_plugins_and_the_examples():
    labels = [_label(root) for root in LIBRARIES]
    assert labels[0] == "kernel"
    assert {"plugins/idle_timeout", "plugins/userid", "examples/device"} <= set(labels)


@pytest.mark.parametrize("root", LIBRARIES, ids=_label)
def test_each_library_ships_py_typed_in_its_wheel(root):
    package = _package(root)
    marker = package / "py.typed"
    assert marker.is_file(), f"{marker.relative_to(ROOT)} is missing"
    package_data = _project(root)["tool"]["setuptools"].get("package-data", {})
    assert "py.typed" in package_data.get(package.name, []), (
        f"{_label(root)}/pyproject.toml does not put py.typed in the wheel: add "
        f'[tool.setuptools.package-data] {package.name} = ["py.typed"]'
    )


def test_mypy_checks_every_library_package():
    files = _project(ROOT)["tool"]["mypy"]["files"]
    assert sorted(files) == sorted(
        _package(root).relative_to(ROOT).as_posix() for root in LIBRARIES
    )


def test_no_module_is_exempt_from_type_checking_but_the_session_pipeline():
    """The temporary override that lifts errors names the modules the pipeline refactor
    rewrites, and no other (it goes when that refactor lands)."""
    exempt = {
        module
        for override in _project(ROOT)["tool"]["mypy"]["overrides"]
        if override.get("ignore_errors")
        for module in override["module"]
    }
    assert exempt <= {"sessions_kernel.session", "sessions_kernel.storage"}


PLUGINS = [root for root in LIBRARIES if root.parent.name == "plugins"]


def _series(version: str) -> str:
    """``>=0.2,<0.3`` for 0.2.x: the kernel's minor series."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return f">={major}.{minor},<{major}.{minor + 1}"


def test_the_distributions_share_the_kernels_version_and_setuptools():
    version = _project(ROOT)["project"]["version"]
    for root in [*LIBRARIES, ROOT / "demo"]:
        project = _project(root)
        assert project["project"]["version"] == version, _label(root)
        # 77 reads the SPDX license string (license = "MIT")
        assert project["build-system"]["requires"] == ["setuptools>=77"], _label(root)


def test_each_distribution_ships_the_projects_license():
    """setuptools puts the LICENSE of a project's folder in its wheel and sdist, so each
    distribution's folder holds the repository's own, word for word."""
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License")
    for root in [*LIBRARIES, ROOT / "demo"]:
        assert (root / "LICENSE").read_text() == license_text, _label(root)
        assert _project(root)["project"]["license"] == "MIT", _label(root)


def test_each_plugin_requires_the_kernels_minor_series():
    series = _series(_project(ROOT)["project"]["version"])
    for root in PLUGINS:
        requires = [
            d for d in _project(root)["project"]["dependencies"] if d.startswith("sessions-")
        ]
        assert requires == [f"sessions-kernel{series}"], _label(root)
    demo = [d for d in _project(ROOT / "demo")["project"]["dependencies"] if "sessions-" in d]
    assert demo and all(d.endswith(series) for d in demo), demo


def test_the_installed_kernel_is_this_checkouts_version():
    import sessions_kernel

    version = _project(ROOT)["project"]["version"]
    assert sessions_kernel.__version__ == version, (
        f"the installed sessions-kernel is {sessions_kernel.__version__}, pyproject.toml says "
        f"{version}: install the checkout again (make install)"
    )
