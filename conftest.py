"""Checks over the whole test run (every test directory): no log line shows the kit's key.

Every test application uses the testing kit's key unless it makes its own, so a
log record that holds it, in any form (its text, its raw bytes as Python, hex
or base64 would print them), is the kernel or a plugin logging key material.
``tests/test_key_material.py`` checks everything else the kernel emits.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator

import pytest


def _forms(key: str) -> list[str]:
    raw = base64.urlsafe_b64decode(key)
    return [key.rstrip("="), repr(raw)[2:-1], raw.hex(), base64.b64encode(raw).decode()[:40]]


class _KeyScan(logging.Handler):
    """A handler on the root logger that notes every record showing one of ``forms``."""

    def __init__(self, forms: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.forms = forms
        self.leaks: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a record that cannot be formatted is not ours to judge
            return
        if any(form in text for form in self.forms):
            self.leaks.append(text[:300])


@pytest.fixture(scope="session", autouse=True)
def no_log_line_shows_the_kits_key() -> Iterator[None]:
    from sessions_kernel.testing import TEST_SECRET_KEY

    scan = _KeyScan(_forms(str(TEST_SECRET_KEY)))
    root = logging.getLogger()
    root.addHandler(scan)
    try:
        yield
    finally:
        root.removeHandler(scan)
    assert not scan.leaks, f"log records show the kit's key: {scan.leaks[:3]}"


# -- the documentation's examples, run by Sybil --------------------------------------------
# README.md, docs/*.rst, the plugins', the examples' and the demo's READMEs. In each page, in
# the order they appear, in one namespace per page:
#
# * ``python`` blocks run. A block whose first line is a comment naming a file of the
#   starter's package (``# myapp/models/session.py``) is written to that file in a project
#   directory of the page's own (``myapp/models/meta.py`` with the starter's ``Base`` is
#   there already) and imported, so that an ini block's ``myapp.models.session.Session``
#   resolves; its names join the page's namespace.
# * ``ini`` blocks are parsed; every ``session.*`` setting must be one an installed plugin
#   (or the kernel) declares, and its value must pass that setting's parser, unless it is a
#   placeholder (``<...>``, ``NEW_KEY_HERE``). When ``session.model_class`` resolves, the whole
#   factory is built from the block (a placeholder key replaced by the kit's).
# * ``>>>`` lines (rst ``pycon`` blocks: a pshell session) run as doctest examples.
# * ``console`` blocks: each ``$ psessions ...`` and ``$ python -m sessions_kernel`` command
#   runs in-process in the page's project directory, and the lines after it, where there are
#   any, are its expected output (doctest's ``...`` and white-space rules). Any other command
#   fails the block: a block that cannot run says why in a ``skip: next "reason"`` directive
#   before it.
# * A block a reader need not see (a set-up) is an ``invisible-code-block: python``. It has
#   ``start_app(Model, **settings)`` (a ``config`` and a ``request``) and, for ``psessions``,
#   ``write_ini(name, "myapp.models.session.Session", **settings)`` (an ini file in the
#   project directory whose application is laid out as the starter's); it finds the
#   repository's files under ``_repository``.

import configparser  # noqa: E402
import contextlib  # noqa: E402
import doctest  # noqa: E402
import importlib  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from sybil import Example, Sybil  # noqa: E402
from sybil.evaluators.python import PythonEvaluator  # noqa: E402
from sybil.parsers import markdown, rest  # noqa: E402

#: the projects the pages' file blocks and dotted names use, each with the starter's meta.py
_PROJECTS = ("myapp", "myproject")
_META = """\
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass
"""
_FILE_LINE = re.compile(rf"\A# ((?:{'|'.join(_PROJECTS)})/[\w/]+\.py)\n")
_PLACEHOLDER = re.compile(r"<[^>]*>|\b[A-Z][A-Z_]*_HERE\b")
#: settings whose value names something of the server it is deployed on (a file, a variable)
_ON_THE_SERVER = frozenset(
    {"secret_key_file", "secret_key_env", "migrate_secret_file", "migrate_secret_env"}
)
#: a key as ``python -m sessions_kernel`` prints it
_KEY = re.compile(r"\b[A-Za-z0-9_-]{43}=")


#: the application of the ini files ``write_ini`` makes (``use = call:docs_app:main``)
_DOCS_APP = """\
import sqlalchemy as sa
from pyramid.config import Configurator
from pyramid.util import DottedNameResolver

from sessions_kernel.testing import add_dbsession

ENGINES = []


def main(global_config, **settings):
    engine = sa.engine_from_config(settings, "sqlalchemy.")
    ENGINES.append(engine)
    DottedNameResolver().resolve(settings["session.model_class"]).metadata.create_all(engine)
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_retry")
        add_dbsession(config, engine)
        config.include("sessions_kernel")
        return config.make_wsgi_app()
"""


def _ini_writer(root: Path) -> Any:
    def write_ini(name: str, model: str, **settings: Any) -> Path:
        """An ini file ``name`` in the page's project directory, for ``psessions``: an
        application laid out as the starter's (pyramid_tm, pyramid_retry,
        ``request.dbsession``, ``config.include("sessions_kernel")``) on the page's SQLite
        file, its session model the dotted name ``model``, a new key, and ``settings``
        (``session.`` is added to a name without a dot)."""
        from sessions_kernel.crypto import generate_secret_key

        lines = [
            "[app:main]",
            "use = call:docs_app:main",
            f"sqlalchemy.url = sqlite:///{root / 'app.sqlite'}",
            f"session.secret_key = {generate_secret_key()}",
            f"session.model_class = {model}",
        ]
        for key, value in settings.items():
            lines.append(f"{key if '.' in key else 'session.' + key} = {value}")
        path = root / name
        path.write_text("\n".join(lines) + "\n")
        return path

    return write_ini


def _docs_setup(namespace: dict[str, Any]) -> None:
    root = Path(tempfile.mkdtemp(prefix="sessions-docs-"))
    for project in _PROJECTS:
        package = root / project / "models"
        package.mkdir(parents=True)
        (root / project / "__init__.py").write_text("")
        (package / "__init__.py").write_text("")
        (package / "meta.py").write_text(_META)
    namespace["__name__"] = "__docs__"
    namespace["_project_dir"] = root
    namespace["_closers"] = []
    namespace["Base"] = _fresh_base()
    namespace["start_app"] = _starter(namespace)
    namespace["_repository"] = Path(__file__).resolve().parent
    (root / "docs_app.py").write_text(_DOCS_APP)
    namespace["write_ini"] = _ini_writer(root)
    sys.path.insert(0, str(root))


def _docs_teardown(namespace: dict[str, Any]) -> None:
    root = namespace["_project_dir"]
    with contextlib.suppress(ValueError):
        sys.path.remove(str(root))
    docs_app = sys.modules.pop("docs_app", None)
    for engine in getattr(docs_app, "ENGINES", ()):
        engine.dispose()
    for name in [n for n in sys.modules if n.split(".")[0] in _PROJECTS]:
        del sys.modules[name]
    for close in reversed(namespace["_closers"]):
        close()
    shutil.rmtree(root, ignore_errors=True)


def _fresh_base() -> type:
    """Your declarative ``Base``, as the pages' models name it (a new one per page)."""
    from sqlalchemy.orm import DeclarativeBase

    class Base(DeclarativeBase):
        pass

    return Base


def _starter(namespace: dict[str, Any]) -> Any:
    def start_app(model: type, **settings: Any) -> tuple[Any, Any]:
        """A page's ``config`` and ``request`` (an invisible block calls it): ``model``'s
        table on a SQLite file of the page's own, an application laid out as the starter's
        with ``settings`` (without the prefix), and a request of it in a begun transaction,
        as pshell gives; ``config`` is a Configurator with those settings and pyramid_tm,
        committed when the page ends."""
        import sqlalchemy as sa
        from pyramid.config import Configurator
        from pyramid.scripting import prepare

        from sessions_kernel.testing import TEST_SECRET_KEY, add_dbsession, make_wsgi_app

        root: Path = namespace["_project_dir"]
        engine = sa.create_engine(f"sqlite:///{root / 'app.sqlite'}")
        namespace["_closers"].append(engine.dispose)
        model.metadata.create_all(engine)  # type: ignore[attr-defined]
        app = make_wsgi_app(model, engine, settings=dict(settings), test_views=False)
        env = prepare(registry=app.registry)
        request = env["request"]
        request.tm.begin()

        def close() -> None:
            if request.tm.isDoomed() or request.tm.get().status == "Active":
                request.tm.abort()
            env["closer"]()

        namespace["_closers"].append(close)
        ini = {
            "session.secret_key": TEST_SECRET_KEY,
            "session.model_class": model,
            "tm.manager_hook": "pyramid_tm.explicit_manager",
            **{f"session.{name}": value for name, value in settings.items()},
        }
        config = Configurator(settings=ini)
        config.include("pyramid_tm")
        add_dbsession(config, engine)
        namespace["_closers"].append(config.commit)
        return config, request

    return start_app


_run_python = PythonEvaluator()


def _python(example: Example) -> None:
    source = str(example.parsed)
    match = _FILE_LINE.match(source)
    if match is None:
        _run_python(example)
        return
    root: Path = example.namespace["_project_dir"]
    target = root / match.group(1)
    target.parent.mkdir(parents=True, exist_ok=True)
    for parent in target.relative_to(root).parents:
        init = root / parent / "__init__.py"
        if parent != Path(".") and not init.exists():
            init.write_text("")
    target.write_text(source)
    module_name = ".".join(target.relative_to(root).with_suffix("").parts)
    sys.modules.pop(module_name, None)
    importlib.invalidate_caches()
    module = importlib.import_module(module_name)
    example.namespace.update(
        {name: value for name, value in vars(module).items() if not name.startswith("__")}
    )


def _ini(example: Example) -> None:
    from pyramid.exceptions import ConfigurationError

    from sessions_kernel import session_factory
    from sessions_kernel.plugins import discover
    from sessions_kernel.testing import TEST_SECRET_KEY

    text = str(example.parsed)
    if not re.match(r"\s*\[", text):
        text = "[app:main]\n" + text
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    known = {s.name: s for info in discover() for s in info.settings}
    for section in parser.sections():
        settings = {
            key[len("session.") :]: value
            for key, value in parser[section].items()
            if key.startswith("session.")
        }
        for name, value in settings.items():
            assert name in known, f"session.{name} is no setting of an installed plugin"
            if name in _ON_THE_SERVER | {"model_class"} or _PLACEHOLDER.search(value):
                continue
            try:
                known[name].parse(value)
            except ValueError as exc:
                if "published in the documentation" in str(exc):
                    continue  # a page's example key: refused on purpose
                raise AssertionError(f"session.{name} = {value!r}: {exc}") from None
        model = settings.get("model_class")
        if model is None:
            continue
        module_name, _, class_name = model.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue  # a model the page does not define
        if not hasattr(module, class_name):
            continue
        built: dict[str, Any] = {
            name: value for name, value in settings.items() if name not in _ON_THE_SERVER
        }
        for name, value in settings.items():
            if name == "secret_key" or name in _ON_THE_SERVER:
                built["secret_key"] = TEST_SECRET_KEY
            elif _PLACEHOLDER.search(value):
                built[name] = known[name].default
        try:
            session_factory(**built)
        except ConfigurationError as exc:
            raise AssertionError(f"[{section}] does not configure a factory: {exc}") from None


_RUNNABLE = ("psessions", "python -m sessions_kernel")
_checker = doctest.OutputChecker()
_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _run_command(command: str, cwd: Path) -> str:
    from sessions_kernel import cli
    from sessions_kernel.crypto import generate_secret_key

    argv = shlex.split(command.replace("\\\n", " "))
    out = io.StringIO()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        if argv[:3] == ["python", "-m", "sessions_kernel"]:
            assert argv[3:] == [], f"{command!r}: python -m sessions_kernel takes no argument"
            out.write(generate_secret_key() + "\n")
            code = 0
        else:
            code = cli.main(argv[1:], out)
    finally:
        os.chdir(previous)
    assert code in (0, 3), f"{command!r} exited with {code}:\n{out.getvalue()}"
    return out.getvalue()


def _console(example: Example) -> None:
    lines = str(example.parsed).splitlines(keepends=True)
    commands: list[tuple[str, str]] = []
    for line in lines:
        if line.startswith("$ "):
            commands.append((line[2:], ""))
        elif commands and commands[-1][0].rstrip().endswith("\\"):
            commands[-1] = (commands[-1][0] + line, "")
        elif commands:
            commands[-1] = (commands[-1][0], commands[-1][1] + line)
        else:
            raise AssertionError(f"a console block's first line is not a command: {line!r}")
    for command, expected in commands:
        command = re.sub(r"\s+#.*$", "", command.strip())
        if not command.startswith(_RUNNABLE):
            raise AssertionError(
                f"{command!r} does not run here: put a skip directive with the reason "
                "before its block"
            )
        got = _run_command(command, example.namespace["_project_dir"])
        # a key the page shows stands for any key
        printed_key = _KEY.search(got)
        if printed_key is not None:
            expected = _KEY.sub(printed_key[0], expected)
        if expected.strip() and not _checker.check_output(expected, got, _FLAGS):
            raise AssertionError(f"{command!r} printed:\n{got}\nthe page shows:\n{expected}")


class _Pages(Sybil):
    """A Sybil for the pages its patterns name, matched from the repository's root (Sybil's
    own match is from the right: ``README.md`` would also be benchmarks/README.md)."""

    def should_parse(self, path: Path) -> bool:
        try:
            relative = path.relative_to(self.path)
        except ValueError:
            return False
        return any(_full_match(relative, p) for p in self.patterns)


def _full_match(path: Path, pattern: str) -> bool:
    parts = pattern.split("/")
    return len(path.parts) == len(parts) and path.match(pattern)


def _parsers(module: Any) -> list[Any]:
    parsers = [
        module.CodeBlockParser(language="python", evaluator=_python),
        module.CodeBlockParser(language="ini", evaluator=_ini),
        module.CodeBlockParser(language="console", evaluator=_console),
        module.SkipParser(),
    ]
    if module is rest:
        parsers.append(rest.DocTestParser(optionflags=_FLAGS))
    return parsers


pytest_collect_file = (
    _Pages(
        parsers=_parsers(rest),
        patterns=["docs/*.rst"],
        setup=_docs_setup,
        teardown=_docs_teardown,
        name="rst",
    )
    + _Pages(
        parsers=_parsers(markdown),
        patterns=["README.md", "plugins/*/README.md", "examples/*/README.md", "demo/README.md"],
        setup=_docs_setup,
        teardown=_docs_teardown,
        name="md",
    )
).pytest()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Sybil runs a page's ``>>>`` lines in the page's namespace; pytest's doctest plugin would
    run them a second time, without it, in a page named on the command line."""
    from _pytest.doctest import DoctestItem

    items[:] = [i for i in items if not (isinstance(i, DoctestItem) and i.path.suffix == ".rst")]
