"""The test kit is documented in full: docs/testing.rst, the docstrings autodoc shows there,
and the fixtures' docstrings that ``pytest --fixtures`` prints."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from pyramid.interfaces import IRoutesMapper
from sphinx.pycode import ModuleAnalyzer

from sessions_kernel import testing
from sessions_kernel.testing import ApplicationTestApp, SessionTestApp

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "testing.rst").read_text()


def fixtures_listing(tmp_path: Path) -> dict[str, str]:
    """What ``pytest --fixtures -v`` prints of the kit's fixtures: name -> docstring."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONS_TEST_")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--fixtures", "-v", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout
    section = out.split("fixtures defined from sessions_kernel.pytest_plugin", 1)[1]
    section = re.split(r"\n[-=]+ ", section, maxsplit=1)[0]
    listed: dict[str, str] = {}
    for block in re.split(r"\n(?=\S)", section.strip("- \n")):
        head, _, doc = block.partition("\n")
        listed[head.split()[0]] = doc.strip()
    return listed


def test_pytest_fixtures_shows_every_fixture_of_the_kit_with_its_docstring(tmp_path):
    listed = fixtures_listing(tmp_path)
    assert set(listed) >= {"session_db_url", "session_engine", "session_clock", "session_app"}
    for name, doc in listed.items():
        assert doc and "no docstring available" not in doc, name
        assert f".. autofixture:: sessions_kernel.pytest_plugin.{name}\n" in PAGE, name


def test_every_public_name_of_the_kit_is_on_the_page():
    names = set(testing.__all__)
    public = {
        name
        for name, obj in vars(testing).items()
        if not name.startswith("_")
        and getattr(obj, "__module__", None) == testing.__name__
        and (inspect.isclass(obj) or inspect.isfunction(obj))
    }
    assert public <= names, "public but not in __all__"
    for name in names:
        assert re.search(rf"\.\. auto\w+:: sessions_kernel\.testing\.{name}\n", PAGE), name


def documented(cls: type) -> set[str]:
    """The public members of ``cls`` (inherited ones too) autodoc can show: those with a
    docstring, and attributes with a ``#:`` comment."""
    attr_docs = ModuleAnalyzer.for_module(testing.__name__).find_attr_docs()
    names = set()
    for klass in cls.__mro__[:-1]:
        names |= {attr for (owner, attr) in attr_docs if owner == klass.__name__}
        names |= {
            name
            for name, member in vars(klass).items()
            if (inspect.getdoc(member) or "").strip()
            and (inspect.isfunction(member) or isinstance(member, property))
        }
    return names


@pytest.fixture
def app(tmp_path: Path) -> SessionTestApp:
    """A test app on SQLite (these tests read the kit, not a database)."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'kit.sqlite'}")
    return testing.make_app(testing.make_model(), engine)


@pytest.mark.parametrize("cls", [SessionTestApp, ApplicationTestApp])
def test_every_public_member_of_the_test_apps_is_documented(cls, app):
    app = app if cls is SessionTestApp else None
    members = {
        name
        for klass in cls.__mro__[:-1]
        for name in [*vars(klass), *getattr(klass, "__annotations__", {})]
        if not name.startswith("_")
    }
    if app is not None:  # what __init__ assigns
        members |= {name for name in vars(app) if not name.startswith("_")}
    assert members - documented(cls) == set()
    assert {"count", "rows", "row", "new_browser", "clock", "model", "factory"} <= members


def test_every_test_view_is_in_the_table(app):
    mapper = app.wsgi.registry.queryUtility(IRoutesMapper)
    paths = [route.pattern for route in mapper.get_routes()]
    assert len(paths) >= 14
    doc = testing.add_test_views.__doc__ or ""
    for path in paths:
        assert f"* - ``{path}``" in doc, path


# -- a key for an application's tests in CI (docs/testing.rst, "A key ... in CI") ----------

CI = ROOT / "docs" / "examples" / "ci"


def _key_step(path: Path) -> str:
    """The one command of a CI file that makes the key, as the docs show it."""
    [line] = [
        line
        for line in path.read_text().splitlines()
        if "python -m sessions_kernel" in line and not line.lstrip().startswith("#")
    ]
    return line.strip().removeprefix("- ").removeprefix("run: ")


def _shell(command: str, tmp_path: Path, **env: str) -> str:
    """Run ``command`` with sh, ``python`` being this environment's; return its stdout."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    run = subprocess.run(
        ["sh", "-c", command],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PATH": path, **env},
        timeout=60,
        check=True,
    )
    return run.stdout


def _starts_with_the_key(key: str) -> None:
    from sessions_kernel import session_factory
    from sessions_kernel.crypto import parse_secret_keys
    from sessions_kernel.testing import make_model

    assert [len(k) for k in parse_secret_keys(key)] == [32]
    os.environ["SESSIONS_SECRET_KEY"] = key
    try:  # what testing.ini's session.secret_key_env = SESSIONS_SECRET_KEY reads
        session_factory(model_class=make_model(), secret_key_env="SESSIONS_SECRET_KEY")
    finally:
        del os.environ["SESSIONS_SECRET_KEY"]


def test_the_documented_ci_files_are_included_in_the_testing_page():
    for name in ("github-actions.yml", "gitlab-ci.yml"):
        assert f".. literalinclude:: examples/ci/{name}" in PAGE
    assert "session.secret_key_env = SESSIONS_SECRET_KEY" in PAGE
    tutorial_ini = (ROOT / "docs" / "examples" / "tutorial" / "testing.ini").read_text()
    assert "\nsession.secret_key_env = SESSIONS_SECRET_KEY\n" in tutorial_ini


def test_the_github_actions_step_gives_the_later_steps_a_key(tmp_path):
    step = _key_step(CI / "github-actions.yml")
    assert step == 'echo "SESSIONS_SECRET_KEY=$(python -m sessions_kernel)" >> "$GITHUB_ENV"'
    github_env = tmp_path / "github_env"
    github_env.write_text("")
    _shell(step, tmp_path, GITHUB_ENV=str(github_env))
    # GitHub reads NAME=value lines from that file into the environment of later steps
    [line] = github_env.read_text().splitlines()
    name, _, key = line.partition("=")
    assert name == "SESSIONS_SECRET_KEY"
    _starts_with_the_key(key)


def test_the_gitlab_ci_line_exports_a_key(tmp_path):
    step = _key_step(CI / "gitlab-ci.yml")
    assert step == "export SESSIONS_SECRET_KEY=$(python -m sessions_kernel)"
    key = _shell(f'{step}; printf %s "$SESSIONS_SECRET_KEY"', tmp_path)
    _starts_with_the_key(key)
    assert key != _shell(f'{step}; printf %s "$SESSIONS_SECRET_KEY"', tmp_path)  # fresh each run
