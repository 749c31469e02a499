"""``psessions new-plugin NAME``: start a plugin distribution from the kernel's template.

::

    psessions new-plugin login-alerts --description "..." --author "Ada Lovelace"

writes ``./sessions-login-alerts/``: a distribution ``sessions-login-alerts``
(import name ``sessions_login_alerts``, entry point ``login_alerts`` in the
group ``sessions_kernel.plugins``) with a mixin of one column, a setting, a
stage hook that uses both, a README, ``py.typed`` and tests on the kernel's
test kit that pass as generated. Like a cookiecutter template (datasette's
``datasette-plugin``), it asks for a name, a description and an author; the
rest is derived from the name.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO

from .plugins import ENTRY_POINT_GROUP

#: The option of ``pip install -e`` that type checkers can follow: setuptools' strict
#: editable mode (docs/writing-plugins.rst says why).
EDITABLE_MODE = "--config-settings editable_mode=strict"

__all__ = ["PluginName", "generate", "main", "plugin_name"]

#: The longest name (its underscored form), so that every generated line, column and
#: setting name fits (line length 100; identifiers within PostgreSQL's 63 characters).
MAX_NAME = 30

#: (template file in ``sessions_kernel/plugin_template``, path in the new distribution)
FILES = (
    ("pyproject.toml.tmpl", "pyproject.toml"),
    ("README.md.tmpl", "README.md"),
    ("gitignore.tmpl", ".gitignore"),
    ("__init__.py.tmpl", "{package}/__init__.py"),
    ("py.typed.tmpl", "{package}/py.typed"),
    ("test_plugin.py.tmpl", "tests/test_{entry_point}.py"),
)

_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*\Z")
_PLACEHOLDER = re.compile(r"\{\{ (\w+) \}\}")


class NewPluginError(Exception):
    """A NAME or an option the command cannot use; the message says how to fix it."""


@dataclass(frozen=True)
class PluginName:
    """The names of a new plugin, all derived from one: ``login-alerts``."""

    #: lowercase words joined by hyphens: ``login-alerts``
    name: str

    @property
    def entry_point(self) -> str:
        """``login_alerts``: the entry point's name, the plugin's name in messages."""
        return self.name.replace("-", "_")

    @property
    def distribution(self) -> str:
        """``sessions-login-alerts``"""
        return f"sessions-{self.name}"

    @property
    def package(self) -> str:
        """``sessions_login_alerts``"""
        return f"sessions_{self.entry_point}"

    @property
    def mixin(self) -> str:
        """``LoginAlertsMixin``"""
        return "".join(word.capitalize() for word in self.name.split("-")) + "Mixin"

    @property
    def column(self) -> str:
        """``login_alerts_seen``: the mixin's column, prefixed with the plugin's name."""
        return f"{self.entry_point}_seen"

    @property
    def setting(self) -> str:
        """``login_alerts_interval``: the plugin's setting (``session.login_alerts_interval``)."""
        return f"{self.entry_point}_interval"


def plugin_name(text: str) -> PluginName:
    """Check a NAME from the command line and derive the plugin's names from it.

    Like datasette's template, ``Login Alerts`` and ``login_alerts`` become
    ``login-alerts``; a leading ``sessions-`` is dropped (it is added back to
    the distribution's name). Raises :class:`NewPluginError` for a name that
    makes no valid distribution, package and column names, for the kernel's
    own, and for a name an installed plugin or distribution has.
    """
    name = re.sub(r"[\s_]+", "-", text.strip().lower())
    name = name.removeprefix("sessions-")
    example = "e.g. psessions new-plugin login-alerts"
    if not name:
        raise NewPluginError(f"the plugin's name is empty: give one, {example}")
    if not _NAME.match(name):
        raise NewPluginError(
            f"{text!r} is not a plugin name: use lowercase letters, digits and single "
            "hyphens, starting with a letter (the name becomes the distribution "
            f"sessions-<name> and the package sessions_<name>), {example}"
        )
    if len(name) > MAX_NAME:
        raise NewPluginError(
            f"{text!r} is {len(name)} characters long: keep the plugin's name to "
            f"{MAX_NAME} (it prefixes the names of its columns and settings)"
        )
    plugin = PluginName(name)
    if plugin.package == "sessions_kernel":
        raise NewPluginError(
            f"{text!r} would make the package sessions_kernel, the kernel itself: "
            "choose another name"
        )
    # Installed beside it, a plugin of the same name stops the application at start-up, and
    # a distribution of the same name is replaced: refused, even if it is this one (again).
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == plugin.entry_point:
            dist = ep.dist.name if ep.dist is not None else ep.value
            raise NewPluginError(
                f"a session plugin named {ep.name!r} is already installed ({dist}): two "
                "plugins of one name cannot be installed together. Choose another name "
                f"(or, to generate that one again, first: pip uninstall {dist})"
            )
    try:
        importlib.metadata.distribution(plugin.distribution)
    except importlib.metadata.PackageNotFoundError:
        return plugin
    raise NewPluginError(
        f"a distribution named {plugin.distribution} is already installed: choose another "
        f"name (or, to generate that one again, first: pip uninstall {plugin.distribution})"
    )


def _one_line(option: str, value: str) -> str:
    value = value.strip()
    if any(ord(c) < 32 or c == "\x7f" for c in value):
        raise NewPluginError(f"{option} must be one line of text, got {value!r}")
    return value


def kernel_specifier(version: str) -> str:
    """The kernel's minor series for ``version``, as docs/compatibility.rst asks plugins to pin.

    ``0.2.0`` and ``0.2.5`` give ``>=0.2,<0.3``. A pre-release or development
    version (``0.3.0.dev0``, ``0.3.0rc1``) names itself as the lower bound,
    ``>=0.3.0.dev0,<0.4``: a plain ``>=0.3`` excludes it, so the plugin could not
    be installed beside the kernel that made it.
    """
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        return ""
    major, minor = int(match.group(1)), int(match.group(2))
    lower = f"{major}.{minor}"
    if re.search(r"(a|b|rc|dev)\d*", version[match.end() :]):
        lower = version
    return f">={lower},<{major}.{minor + 1}"


def _kernel_specifier() -> str:
    """The installed kernel's minor series (``>=0.2,<0.3``), for the new dependency."""
    try:
        version = importlib.metadata.version("sessions-kernel")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        return ""
    return kernel_specifier(version)


def _toml(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def _values(
    plugin: PluginName, description: str, author: str, author_email: str, url: str
) -> dict[str, str]:
    author_fields = [f"name = {_toml(author)}"] if author else []
    if author_email:
        author_fields.append(f"email = {_toml(author_email)}")
    authors = f"authors = [{{ {', '.join(author_fields)} }}]" if author_fields else ""
    urls = (
        f"\n[project.urls]\nHomepage = {_toml(url)}\n" if url else ""
    )  # a table of its own, before the entry points
    return {
        "name": plugin.name,
        "entry_point": plugin.entry_point,
        "distribution": plugin.distribution,
        "package": plugin.package,
        "mixin": plugin.mixin,
        "column": plugin.column,
        "setting": plugin.setting,
        "description": description,
        "description_toml": _toml(description),
        # the module docstring's first lines, within the line length
        "description_py": "\n".join(
            textwrap.wrap(description.replace("\\", "\\\\").replace('"', '\\"'), 96)
        ),
        "authors_toml": authors,
        "urls_toml": urls,
        "kernel_specifier": _kernel_specifier(),
    }


def _render(template: str, values: dict[str, str]) -> str:
    lines = []
    for line in template.splitlines(keepends=True):
        whole = _PLACEHOLDER.fullmatch(line.strip())
        if whole and not values[whole.group(1)]:
            continue  # an optional line left out (no author, no URL)
        lines.append(_PLACEHOLDER.sub(lambda m: values[m.group(1)], line))
    return "".join(lines)


def generate(
    plugin: PluginName,
    output_dir: Path,
    *,
    description: str = "",
    author: str = "",
    author_email: str = "",
    url: str = "",
    force: bool = False,
) -> tuple[Path, list[Path]]:
    """Write the new distribution into ``output_dir/<distribution>``.

    Returns its folder and the files written, relative to it. Raises
    :class:`NewPluginError` if the folder exists, unless ``force`` (then the
    generated files are written over those of the same name, and other files
    are left alone).
    """
    description = _one_line("--description", description) or (
        f"The {plugin.name} plugin for sessions_kernel"
    )
    author = _one_line("--author", author)
    author_email = _one_line("--author-email", author_email)
    if author_email and not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", author_email):
        raise NewPluginError(f"--author-email {author_email!r} is not an email address")
    url = _one_line("--url", url)
    if url and not re.fullmatch(r"https?://\S+", url):
        raise NewPluginError(f"--url {url!r} is not an http:// or https:// address")
    root = output_dir / plugin.distribution
    if root.exists() or root.is_symlink():
        if not root.is_dir():
            raise NewPluginError(f"{root} is not a directory: choose another --output-dir")
        if not force:
            raise NewPluginError(
                f"{root} already exists: choose another --output-dir, or add --force to "
                "write the generated files over those in it (other files are left alone)"
            )
    values = _values(plugin, description, author, author_email, url)
    templates = resources.files(__package__) / "plugin_template"
    written = []
    for template, target in FILES:
        path = Path(target.format(package=plugin.package, entry_point=plugin.entry_point))
        text = _render(templates.joinpath(template).read_text(encoding="utf-8"), values)
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8", newline="\n")
        written.append(path)
    return root, written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="psessions new-plugin",
        description="Start a sessions_kernel plugin: a distribution with a mixin, a setting, a "
        "hook, a README and tests that pass (no config file needed).",
        epilog=f"Then: cd sessions-NAME && pip install -e '.[test]' {EDITABLE_MODE} && pytest "
        "&& mypy",
    )
    parser.add_argument(
        "name",
        metavar="NAME",
        help="the plugin's name, e.g. login-alerts: the distribution sessions-login-alerts, "
        "the package sessions_login_alerts, the entry point login_alerts",
    )
    parser.add_argument(
        "-o",
        "--output-dir",
        type=Path,
        default=Path("."),
        help="where to create the folder sessions-NAME (default: the current directory)",
    )
    parser.add_argument("--description", default="", help="one line for pyproject.toml and README")
    parser.add_argument("--author", default="", help="the author's name, for pyproject.toml")
    parser.add_argument("--author-email", default="", help="the author's email address")
    parser.add_argument("--url", default="", help="the project's home page (its repository)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into an existing sessions-NAME folder, over the files generated there",
    )
    return parser


def main(argv: Sequence[str], out: IO[str] | None = None) -> int:
    """Run ``psessions new-plugin``; return the exit code (0, or 2 for bad usage)."""
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    try:
        plugin = plugin_name(args.name)
        root, written = generate(
            plugin,
            args.output_dir,
            description=args.description,
            author=args.author,
            author_email=args.author_email,
            url=args.url,
            force=args.force,
        )
    except NewPluginError as exc:
        print(f"psessions new-plugin: {exc}", file=sys.stderr)
        return 2
    print(f"created the plugin {plugin.entry_point} ({plugin.distribution}) in {root}:", file=out)
    notes = {
        Path(plugin.package, "__init__.py"): f"{plugin.mixin} (column {plugin.column}), "
        f"session.{plugin.setting}, session_extend",
        Path("tests", f"test_{plugin.entry_point}.py"): "tests on the kernel's test kit",
    }
    for path in written:
        note = notes.get(path)
        print(f"    {path.as_posix()}" + (f"\n        {note}" if note else ""), file=out)
    # strict: the package's files linked into a folder on sys.path, which type checkers
    # read (the default editable mode imports through a hook that mypy cannot follow)
    print(
        f"next:\n    cd {root}\n    pip install -e '.[test]' {EDITABLE_MODE}\n    pytest\n    mypy",
        file=out,
    )
    return 0
