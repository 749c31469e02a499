"""``psessions new-plugin NAME``: a plugin distribution whose tests pass as generated.

The last tests build a generated plugin with this environment's setuptools,
install it into a folder of its own (its entry point is then real metadata)
and run its tests in a subprocess on the kernel's kit: on SQLite, and on the
servers this run has.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sessions_kernel import cli, scaffold
from sessions_kernel.pytest_plugin import DATABASES, _probe
from sessions_kernel.scaffold import MAX_NAME, PluginName, plugin_name

TREE = {
    "pyproject.toml",
    "README.md",
    ".gitignore",
    "sessions_login_alerts/__init__.py",
    "sessions_login_alerts/py.typed",
    "tests/test_login_alerts.py",
}


def new_plugin(*args: str) -> tuple[int, str, str]:
    """Run ``psessions new-plugin ARGS``: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    stderr, sys.stderr = sys.stderr, err
    try:
        code = cli.main(["new-plugin", *args], out=out)
    finally:
        sys.stderr = stderr
    return code, out.getvalue(), err.getvalue()


def files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["login-alerts", "Login Alerts", "login_alerts", "sessions-login-alerts", " LOGIN-alerts "],
)
def test_the_names_are_derived_from_the_name(text):
    plugin = plugin_name(text)
    assert plugin == PluginName("login-alerts")
    assert (plugin.distribution, plugin.package, plugin.entry_point) == (
        "sessions-login-alerts",
        "sessions_login_alerts",
        "login_alerts",
    )
    assert (plugin.mixin, plugin.column, plugin.setting) == (
        "LoginAlertsMixin",
        "login_alerts_seen",
        "login_alerts_interval",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the plugin's name is empty: give one, e.g. psessions new-plugin login-alerts"),
        ("sessions-", "the plugin's name is empty"),
        ("2fa", "'2fa' is not a plugin name: use lowercase letters, digits and single hyphens"),
        ("login.alerts", "'login.alerts' is not a plugin name"),
        ("login/alerts", "'login/alerts' is not a plugin name"),
        ("-login", "'-login' is not a plugin name"),
        ("login-", "'login-' is not a plugin name"),
        ("login--alerts", "'login--alerts' is not a plugin name"),
        ("naïve", "'naïve' is not a plugin name"),
        ("login;rm", "'login;rm' is not a plugin name"),
        ("a" * (MAX_NAME + 1), f"is {MAX_NAME + 1} characters long: keep the plugin's name to 30"),
        ("kernel", "'kernel' would make the package sessions_kernel, the kernel itself"),
        (
            "idle-timeout",
            "a session plugin named 'idle_timeout' is already installed (sessions-idle-timeout): "
            "two plugins of one name cannot be installed together. Choose another name (or, to "
            "generate that one again, first: pip uninstall sessions-idle-timeout)",
        ),
        ("demo", "a distribution named sessions-demo is already installed: choose another name"),
    ],
)
def test_a_bad_name_is_refused_with_the_reason(tmp_path, text, message):
    code, out, err = new_plugin("-o", str(tmp_path), "--", text)
    assert code == 2
    assert err.startswith("psessions new-plugin: ") and message in err, err
    assert out == ""
    assert list(tmp_path.iterdir()) == []


def test_the_longest_name_is_accepted():
    assert plugin_name("a" * MAX_NAME).entry_point == "a" * MAX_NAME


# -- the files --------------------------------------------------------------------------------


def test_the_generated_tree(tmp_path):
    code, out, err = new_plugin(
        "login-alerts",
        "--output-dir",
        str(tmp_path / "new"),
        "--description",
        'Tells a user about each new sign-in ("login")',
        "--author",
        "Ada Lovelace",
        "--author-email",
        "ada@example.org",
        "--url",
        "https://github.com/ada/sessions-login-alerts",
    )
    assert (code, err) == (0, "")
    root = tmp_path / "new" / "sessions-login-alerts"
    assert files(root) == TREE
    assert (
        out.splitlines()[0] == f"created the plugin login_alerts (sessions-login-alerts) in {root}:"
    )
    assert "    pip install -e '.[test]'" in out
    for path in TREE:
        assert "{{" not in (root / path).read_text(), path
    assert (root / "sessions_login_alerts" / "py.typed").read_text() == ""

    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((root / "pyproject.toml").read_text())
    meta = project["project"]
    assert meta["name"] == "sessions-login-alerts"
    assert meta["description"] == 'Tells a user about each new sign-in ("login")'
    assert meta["authors"] == [{"name": "Ada Lovelace", "email": "ada@example.org"}]
    assert meta["urls"] == {"Homepage": "https://github.com/ada/sessions-login-alerts"}
    assert meta["entry-points"] == {
        "sessions_kernel.plugins": {"login_alerts": "sessions_login_alerts"}
    }
    # the kernel's minor series, as docs/compatibility.rst asks plugins to pin
    assert meta["dependencies"][0] == "sessions-kernel>=0.2,<0.3"
    assert meta["optional-dependencies"]["test"][0] == "sessions-kernel[testing]>=0.2,<0.3"
    assert project["tool"]["setuptools"]["package-data"] == {"sessions_login_alerts": ["py.typed"]}

    module = (root / "sessions_login_alerts" / "__init__.py").read_text()
    assert module.startswith('"""Tells a user about each new sign-in (\\"login\\")\n')
    for word in ("class LoginAlertsMixin:", "login_alerts_seen: Mapped", '"login_alerts_interval"'):
        assert word in module
    readme = (root / "README.md").read_text()
    assert readme.startswith("# sessions-login-alerts\n\nTells a user about each new sign-in")
    assert "session.login_alerts_interval = 300" in readme


def test_the_optional_answers_may_be_left_out(tmp_path):
    code, _, _ = new_plugin("login-alerts", "-o", str(tmp_path))
    assert code == 0
    pyproject = (tmp_path / "sessions-login-alerts" / "pyproject.toml").read_text()
    assert 'description = "The login-alerts plugin for sessions_kernel"' in pyproject
    assert "authors" not in pyproject and "[project.urls]" not in pyproject
    assert "\n\n\n" not in pyproject


def test_the_current_directory_is_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert new_plugin("login-alerts")[0] == 0
    assert files(tmp_path / "sessions-login-alerts") == TREE


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--description", "two\nlines"], "--description must be one line of text"),
        (["--author", "Ada\tLovelace"], "--author must be one line of text"),
        (["--author-email", "ada"], "--author-email 'ada' is not an email address"),
        (["--author-email", "Ada <ada@example.org>"], "is not an email address"),
        (["--url", "github.com/ada"], "--url 'github.com/ada' is not an http:// or https://"),
    ],
)
def test_bad_answers_are_refused(tmp_path, args, message):
    code, _, err = new_plugin("login-alerts", "-o", str(tmp_path), *args)
    assert code == 2
    assert err.startswith("psessions new-plugin: ") and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_kept_unless_forced(tmp_path):
    assert new_plugin("login-alerts", "-o", str(tmp_path))[0] == 0
    root = tmp_path / "sessions-login-alerts"
    (root / "README.md").write_text("mine")
    (root / "NOTES.txt").write_text("mine")

    code, out, err = new_plugin("login-alerts", "-o", str(tmp_path))
    assert (code, out) == (2, "")
    assert err == (
        f"psessions new-plugin: {root} already exists: choose another --output-dir, or add "
        "--force to write the generated files over those in it (other files are left alone)\n"
    )
    assert (root / "README.md").read_text() == "mine"

    assert new_plugin("login-alerts", "-o", str(tmp_path), "--force")[0] == 0
    assert (root / "README.md").read_text().startswith("# sessions-login-alerts")
    assert (root / "NOTES.txt").read_text() == "mine"


def test_a_file_in_the_way_is_refused_even_when_forced(tmp_path):
    (tmp_path / "sessions-login-alerts").write_text("a file")
    code, _, err = new_plugin("login-alerts", "-o", str(tmp_path), "--force")
    assert code == 2
    assert "sessions-login-alerts is not a directory: choose another --output-dir" in err


def test_the_help_of_psessions_names_the_command(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    assert "psessions new-plugin NAME" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit) as info:
        cli.main(["new-plugin", "--help"])
    assert info.value.code == 0
    usage = capsys.readouterr().out
    for option in ("--output-dir", "--description", "--author", "--author-email", "--url"):
        assert option in usage
    assert "--force" in usage


# -- the generated plugin works ---------------------------------------------------------------


def tool(name: str) -> str:
    """A console script of this environment (ruff)."""
    path = Path(sys.executable).with_name(name)
    return str(path) if path.exists() else shutil.which(name) or name


def test_the_generated_code_is_lint_clean_for_the_longest_name(tmp_path):
    name = "-".join(["abcdefghij", "klmnopqrst", "uvwxyz0123"])[:MAX_NAME]
    description = " ".join(["word"] * 40) + ' with "quotes" and \\ a backslash'
    assert new_plugin(name, "-o", str(tmp_path), "--description", description)[0] == 0
    (root,) = tmp_path.iterdir()
    for command in (["check", "--no-cache", "."], ["format", "--no-cache", "--check", "."]):
        result = subprocess.run(
            [tool("ruff"), *command], cwd=root, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr


def servers_of_this_run() -> list[str]:
    """The servers whose URL this run has and that answer."""
    return [
        database
        for database, variable in DATABASES.items()
        if os.environ.get(variable) and _probe(os.environ[variable]) is None
    ]


def test_a_generated_plugin_builds_and_its_tests_pass(tmp_path):
    assert new_plugin("login-alerts", "-o", str(tmp_path))[0] == 0
    root = tmp_path / "sessions-login-alerts"
    site = tmp_path / "site"
    # What `pip install .` does, into a folder of its own (no network, this environment's
    # setuptools): the entry point becomes real metadata that importlib.metadata finds.
    build = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"),
            *("--no-build-isolation", "--no-index", "--target", str(site), str(root)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert (site / "sessions_login_alerts" / "py.typed").exists()
    (info,) = site.glob("sessions_login_alerts-0.1.0.dist-info")
    assert (info / "entry_points.txt").read_text().split() == [
        "[sessions_kernel.plugins]",
        "login_alerts",
        "=",
        "sessions_login_alerts",
    ]

    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("SESSIONS_KERNEL_LOAD_PLUGINS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    summary = out.split("sessions_kernel databases", 1)[1]
    # the app's tests: a new session, a read, the merge rule with either read last
    assert "sqlite: ran (5 tests)" in summary
    for database in servers_of_this_run():
        assert f"{database}: ran (5 tests)" in summary
    assert " failed" not in out and " error" not in out


def test_mypy_sees_the_kernels_types_from_a_generated_plugin(tmp_path):
    """The install the docs give (setuptools' strict editable mode) is one mypy follows.

    A venv of its own (this environment's packages on its path, the kernel left out)
    gets the kernel installed editable with the option ``psessions new-plugin`` prints;
    mypy, run as the generated README says, passes on the generated plugin, and reports
    a wrong use of a kernel API, which it can only do when it sees the kernel's hints.
    setuptools' default editable mode fails the first step: mypy cannot follow its
    import hook and reports the kernel's modules as not found.
    """
    assert new_plugin("login-alerts", "-o", str(tmp_path))[0] == 0
    root = tmp_path / "sessions-login-alerts"
    kernel = Path(__file__).resolve().parent.parent
    for page in (kernel / "docs" / "getting-started.rst", root / "README.md"):
        assert scaffold.EDITABLE_MODE.split()[1] in page.read_text(), page

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        env={},
    ).stdout.strip()
    # this environment's packages (SQLAlchemy, pluggy...), as folders only: their .pth
    # files, among them the kernel's own editable install, are not run
    folders = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "zz_outer.pth").write_text("".join(f"{p}\n" for p in folders))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    install = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"),
            *("--no-deps", "--no-build-isolation", "--no-index", "-e", str(kernel)),
            *scaffold.EDITABLE_MODE.split(),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    def mypy() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *(sys.executable, "-m", "mypy", "--python-executable", str(python)),
                *("--cache-dir", str(tmp_path / "mypy-cache")),
            ],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )

    result = mypy()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Success: no issues found in 1 source file")

    module = root / "sessions_login_alerts" / "__init__.py"
    lines = module.read_text().count("\n")
    with module.open("a") as f:
        f.write("\n\nKEY_LENGTH: int = generate_secret_key()\n")
    module.write_text(
        module.read_text().replace(
            "from sessions_kernel import ", "from sessions_kernel import generate_secret_key, ", 1
        )
    )
    result = mypy()
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"sessions_login_alerts/__init__.py:{lines + 3}: error: Incompatible types in "
        'assignment (expression has type "str", variable has type "int")  [assignment]'
    ) in result.stdout, result.stdout
    assert "Found 1 error in 1 file" in result.stdout


# -- the documentation's first step ------------------------------------------------------------


def code_blocks(text: str) -> list[tuple[str, str]]:
    """The ``.. code-block::`` directives of an rst text: (language, content)."""
    blocks = []
    for match in re.finditer(r"^\.\. code-block:: (\w+)\n\n((?:   .*\n|\n)+)", text, re.M):
        blocks.append((match.group(1), textwrap.dedent(match.group(2)).strip("\n") + "\n"))
    return blocks


def test_the_first_step_of_writing_plugins_shows_what_the_command_writes(tmp_path, monkeypatch):
    page = (Path(__file__).resolve().parent.parent / "docs" / "writing-plugins.rst").read_text()
    step = page.split(".. _new-plugin:", 1)[1].split("\n1. The folder\n", 1)[0]
    blocks = code_blocks(step)
    (language, console), *python = blocks
    assert language == "console" and [lang for lang, _ in python] == ["python", "python"]
    command, *shown = console.splitlines()
    assert command.startswith("$ psessions new-plugin ")
    monkeypatch.chdir(tmp_path)
    code, out, err = new_plugin(*shlex.split(command)[3:])
    assert (code, err) == (0, "")
    assert out.splitlines() == shown
    generated = "".join(
        path.read_text() for path in (tmp_path / "sessions-login-alerts").rglob("*.py")
    )
    for _, block in python:
        assert block in generated, block


@pytest.mark.parametrize(
    ("version", "specifier"),
    [
        ("0.2.0", ">=0.2,<0.3"),
        ("0.2.7", ">=0.2,<0.3"),
        ("1.0", ">=1.0,<1.1"),
        # a development kernel: a plain >=0.3 would exclude it (PEP 440)
        ("0.3.0.dev0", ">=0.3.0.dev0,<0.4"),
        ("0.3.0rc1", ">=0.3.0rc1,<0.4"),
    ],
)
def test_the_template_pins_the_kernels_minor_series(version, specifier):
    """What the plugin template requires of the kernel that made it (release or not)."""
    from sessions_kernel.scaffold import kernel_specifier

    assert kernel_specifier(version) == specifier
    specifiers = pytest.importorskip("packaging.specifiers")
    assert specifiers.SpecifierSet(specifier).contains(version)  # installable beside it
