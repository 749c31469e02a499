"""The ``testing`` extra: what the test kit imports, and a clear error without it.

``pip install 'sessions-kernel[testing]'`` is what a plugin's or an application's
tests need for :mod:`sessions_kernel.testing` and the pytest fixtures. Each check
runs in a fresh interpreter, where a module can be hidden (``sys.modules[name] =
None`` makes its import fail as if it were not installed).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HINT = "pip install 'sessions-kernel[testing]'"


def python(code: str, cwd: os.PathLike[str] | str | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter of this environment, with no database server set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONS_TEST_")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def requirements(dist: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """The names of the distributions ``dist[extras]`` requires, installed ones, recursively."""
    found: set[str] = set()
    todo = [(dist, extras)]
    while todo:
        name, wanted = todo.pop()
        try:
            declared = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here (a marker left it out)
        for line in declared:
            req = Requirement(line)
            if req.marker is not None and not any(
                req.marker.evaluate({**default_environment(), "extra": extra})
                for extra in (wanted or {""})
            ):
                continue
            key = canonicalize_name(req.name)
            if key not in found:
                found.add(key)
                todo.append((req.name, frozenset(req.extras)))
    return found


KIT_RUN = """
import importlib.metadata, json, sys
for name in {hidden!r}:
    sys.modules[name] = None  # as if its distribution were not installed
before = set(sys.modules)
import sqlalchemy as sa
import sessions_kernel.pytest_plugin
from sessions_kernel.testing import make_app, make_model

app = make_app(make_model(), sa.create_engine("sqlite:///kit.sqlite"))
assert app.post_json("/set", {{"a": 1}}).json["data"] == {{"a": 1}}
assert app.get("/read").json["data"] == {{"a": 1}}
by_module = importlib.metadata.packages_distributions()
loaded = {{name.split(".")[0] for name in set(sys.modules) - before}}
print(json.dumps(sorted({{d for m in loaded for d in by_module.get(m, [])}})))
"""


def test_the_testing_extra_holds_what_the_kit_imports(tmp_path, monkeypatch):
    # The kit builds an application on SQLite and drives it (its lazy imports happen too),
    # with no plugin loaded: what it imports must come with sessions-kernel[testing].
    monkeypatch.setenv("SESSIONS_KERNEL_LOAD_PLUGINS", "")
    result = python(KIT_RUN.format(hidden=[]), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    imported = {canonicalize_name(d) for d in json.loads(result.stdout)}
    assert {"webtest", "pyramid-retry", "pytest"} <= imported
    # Others are imported when installed (the kernel recognises database drivers' errors,
    # WebTest uses what it finds); the kit must work without every one of them.
    allowed = requirements("sessions-kernel", frozenset({"testing"})) | {"sessions-kernel"}
    if "setuptools" in allowed:
        # Pyramid imports pkg_resources, which setuptools (81, Pyramid 2.1 caps it below 82)
        # takes from its "core" extra's distributions where installed, and from its own
        # vendored copies where not: hiding the installed ones is not their absence
        allowed |= requirements("setuptools", frozenset({"core"}))
    optional = imported - allowed
    # a top-level module that an allowed distribution shares (a namespace package such as
    # jaraco) stays: hiding it would hide the allowed one too
    owners = [
        (module, {canonicalize_name(d) for d in dists})
        for module, dists in importlib.metadata.packages_distributions().items()
    ]
    hidden = sorted(m for m, dists in owners if dists & optional and not dists & allowed)
    sharing = {d for _, dists in owners if dists & allowed for d in dists}
    result = python(KIT_RUN.format(hidden=hidden), cwd=tmp_path)
    assert result.returncode == 0, f"without {sorted(optional)}: {result.stderr}"
    assert {canonicalize_name(d) for d in json.loads(result.stdout)} <= allowed | sharing


def test_the_testing_extra_is_slim_and_the_kernel_test_extra_includes_it():
    def extra(name: str) -> set[str]:
        lines = importlib.metadata.requires("sessions-kernel") or []
        return {
            line.split(";")[0].strip()
            for line in lines
            if Requirement(line).marker is not None
            and Requirement(line).marker.evaluate({"extra": name})
        }

    testing = extra("testing")
    assert {Requirement(r).name.lower() for r in testing} == {"pytest", "webtest", "pyramid_retry"}
    assert testing <= extra("test")


@pytest.mark.parametrize("module", ["webtest", "pyramid_retry"])
def test_the_kit_without_the_extra_says_what_to_install(module):
    result = python(
        f"""
        import sys
        sys.modules[{module!r}] = None  # as if it were not installed
        import sessions_kernel.testing
        """
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"ImportError: sessions_kernel.testing needs {module}, which is not installed: {HINT}"
    )


def test_pytest_runs_without_the_extra_and_the_fixtures_say_what_to_install(tmp_path):
    # The pytest plugin is loaded in every run of an environment with sessions-kernel:
    # tests that use none of its fixtures do not need the extra.
    (tmp_path / "test_mine.py").write_text(
        textwrap.dedent(
            """
            def test_without_the_kit():
                assert True

            def test_with_the_kit(session_app):
                session_app(object)
            """
        )
    )
    result = python(
        """
        import sys
        sys.modules["webtest"] = None
        import pytest
        sys.exit(pytest.main(["-p", "no:cacheprovider", "-q", "test_mine.py"]))
        """,
        cwd=tmp_path,
    )
    out = result.stdout
    assert re.search(r"1 passed, 2 skipped, .*1 error", out), out
    assert f"sessions_kernel.testing needs webtest, which is not installed: {HINT}" in out
