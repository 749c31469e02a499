"""The real pyramid_sqlalchemy_sessions 0.1.0, run in a Pyramid 1 environment of its own.

The predecessor does not import under Pyramid 2, so the tests cannot load it
beside this library. :func:`environment` builds (once, cached by a hash of what
goes in it) a virtual environment with an older Python, Pyramid 1.10, the
predecessor's wheel from PyPI and the SQLAlchemy, pyramid_tm, zope.sqlalchemy
and drivers of its time; :class:`Runner` starts ``predecessor_env/runner.py``
in it, which serves real requests through the predecessor's own session
factory against the test database and answers with the cookies it set.

One gap is filled by the tests, and only that one: PyPI's wheel of 0.1.0 lacks
the library's ``config`` subpackage (its ``setup.py`` packages the top package
alone), so as published it does not import. ``predecessor_env/config/`` is a
stand-in written for these tests (the default settings, the mixin detection,
the settings object) installed in its place; the code that makes the cookie and
the rows (``session.py``, ``serializer.py``, ``model.py``) is the wheel's own.

Where the environment cannot be built (PyPI unreachable, no suitable Python),
the tests that need it are skipped with pip's reason; with
``SESSIONS_TEST_REQUIRE_SERVERS`` set (CI) they fail instead.
``SESSIONS_TEST_PREDECESSOR_PYTHON`` names the interpreter to build it with.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

HERE = Path(__file__).parent / "predecessor_env"
RUNNER = HERE / "runner.py"
SHIM = HERE / "config"

#: What the predecessor's users ran, by the Python building the environment. The
#: library's classifiers name Python 3.5 and 3.6; 0.1.0 came out in June 2017.
REQUIREMENTS = {
    "3.6": [
        "pyramid==1.10.8",
        "pyramid_sqlalchemy_sessions==0.1.0",
        "SQLAlchemy==1.2.19",
        "pyramid_tm==2.4",
        "transaction==3.1.0",
        "zope.sqlalchemy==1.1",
        "pycryptodomex>=3.4,<4",
        "WebTest==3.0.0",
        "psycopg2-binary==2.9.8",
        "PyMySQL==1.0.2",
    ],
    # the same library on a Python and a SQLAlchemy of today's (pickle protocol 5)
    "3.11": [
        "pyramid==1.10.8",
        "pyramid_sqlalchemy_sessions==0.1.0",
        "SQLAlchemy==1.4.54",
        "pyramid_tm==2.6",
        "transaction>=3,<6",
        "zope.sqlalchemy>=1.6,<5",
        "pycryptodomex>=3.4,<4",
        "WebTest>=3,<4",
        "psycopg2-binary>=2.9,<3",
        "PyMySQL>=1.1,<2",
        # Pyramid 1.10 imports pkg_resources
        "setuptools<81",
    ],
}
#: pip and setuptools that still run on Python 3.6, installed first there
BOOTSTRAP = {"3.6": ["pip==21.3.1", "setuptools==59.6.0", "wheel==0.37.1"]}
REQUIRE_ENV = "SESSIONS_TEST_REQUIRE_SERVERS"

_built: dict[str, Path | str] = {}


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0"):
        pytest.fail(f"the predecessor's environment: {reason} ({REQUIRE_ENV} is set)")
    pytest.skip(f"the predecessor's environment: {reason}")


def find_python(version: str) -> str | None:
    """pyenv's newest ``version`` interpreter, or ``pythonX.Y`` on the PATH."""
    if version == "3.6" and os.environ.get("SESSIONS_TEST_PREDECESSOR_PYTHON"):
        return os.environ["SESSIONS_TEST_PREDECESSOR_PYTHON"]
    root = Path(os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))) / "versions"
    found = sorted(
        (tuple(int(part) for part in folder.name.split(".")), folder / "bin" / "python")
        for folder in root.glob(f"{version}.*")
        if re.fullmatch(r"\d+\.\d+\.\d+", folder.name) and (folder / "bin" / "python").exists()
    )
    return str(found[-1][1]) if found else shutil.which(f"python{version}")


def _clean_env() -> dict[str, str]:
    """This process's environment without the variables that point Python at our packages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _version_of(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
        env=_clean_env(),
    )
    return out.stdout.strip()


def environment(version: str = "3.6") -> Path:
    """The ``bin/python`` of the predecessor's environment on Python ``version``.

    Built under the temporary directory, in a folder named by a hash of the
    interpreter, the requirements and the runner's files; reused while that
    folder is there. Skips (fails under CI) when it cannot be built.
    """
    cached = _built.get(version)
    if isinstance(cached, Path):
        return cached
    if isinstance(cached, str):
        _unavailable(cached)
    python = find_python(version)
    if python is None:
        _built[version] = f"no Python {version} (pyenv's or python{version} on the PATH)"
        _unavailable(str(_built[version]))
    assert python is not None
    actual = _version_of(python)
    requirements = REQUIREMENTS.get(actual, REQUIREMENTS["3.11"])
    digest = hashlib.sha256()
    digest.update(os.path.realpath(python).encode())
    digest.update(json.dumps([BOOTSTRAP.get(actual), requirements]).encode())
    for path in sorted(SHIM.glob("*.py")):
        digest.update(path.read_bytes())
    target = Path(tempfile.gettempdir()) / f"sessions-migrate-predecessor-{digest.hexdigest()[:16]}"
    ready = target / "bin" / "python"
    if not ready.exists():
        reason = _build(python, actual, requirements, target)
        if reason is not None:
            _built[version] = reason
            _unavailable(reason)
    _built[version] = ready
    return ready


def _build(python: str, version: str, requirements: list[str], target: Path) -> str | None:
    """Build the environment in a scratch folder, then move it to ``target``; None or why not."""
    scratch = Path(tempfile.mkdtemp(prefix=target.name + "-", dir=target.parent))
    try:
        env = _clean_env()
        subprocess.run(
            [python, "-m", "venv", str(scratch)], check=True, capture_output=True, env=env
        )
        pip = [str(scratch / "bin" / "python"), "-m", "pip", "install", "-q"]
        for group in (BOOTSTRAP.get(version), requirements):
            if not group:
                continue
            done = subprocess.run(pip + group, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                lines = [
                    line
                    for line in (done.stderr + done.stdout).splitlines()
                    if line.strip() and "is ignored" not in line
                ]
                return f"pip could not install it ({' / '.join(lines[-3:])})"
        # the stand-in for the subpackage PyPI's wheel lacks (see the module's docstring)
        packages = list(scratch.glob("lib/python*/site-packages/pyramid_sqlalchemy_sessions"))
        if len(packages) != 1:
            return "pyramid_sqlalchemy_sessions was not installed where expected"
        if (packages[0] / "config").exists():
            return "the wheel now has a config subpackage: the stand-in would hide it"
        shutil.copytree(SHIM, packages[0] / "config", ignore=shutil.ignore_patterns("__pycache__"))
        check = subprocess.run(
            [str(scratch / "bin" / "python"), "-c", "import pyramid_sqlalchemy_sessions"],
            capture_output=True,
            text=True,
            env=env,
        )
        if check.returncode != 0:
            return f"the predecessor does not import: {check.stderr.strip().splitlines()[-1:]}"
        # moved whole, so that a half-built one is never taken for ready; the moved venv
        # is run through its bin/python only (its scripts name the scratch folder)
        try:
            scratch.rename(target)
        except OSError:
            if not (target / "bin" / "python").exists():
                raise
        return None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def old_url(url: str) -> str:
    """The test database's URL as the predecessor's SQLAlchemy (1.2, 1.4) spells it."""
    parsed = sa.engine.make_url(url)
    driver = {
        "postgresql+psycopg": "postgresql+psycopg2",
        "mariadb+pymysql": "mysql+pymysql",
        "mariadb+mysqldb": "mysql+pymysql",
    }.get(parsed.drivername, parsed.drivername)
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


class PredecessorError(RuntimeError):
    """The runner answered with a traceback."""


class Runner:
    """One runner process in the predecessor's environment; its commands are methods."""

    def __init__(self, python: Path, log_path: Path) -> None:
        self.log = open(log_path, "w")  # noqa: SIM115 - closed by close()
        self.process = subprocess.Popen(
            [str(python), str(RUNNER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=_clean_env(),
        )
        self.log_path = log_path

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise PredecessorError(f"the runner stopped; its log: {self.log_path}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise PredecessorError(answer["error"])
        return answer

    def close(self) -> None:
        """Stop the runner (by its own pid) and close its log."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.log.close()


class OldApp:
    """A Pyramid 1 application of the predecessor's on the test database, in the runner."""

    def __init__(
        self,
        runner: Runner,
        name: str,
        url: str,
        table: str,
        mixins: list[str],
        settings: dict[str, Any],
    ) -> None:
        self.runner = runner
        self.name = name
        self.table = table
        dialect = sa.engine.make_url(url).get_backend_name()
        runner.call(
            "app",
            name=name,
            url=old_url(url),
            table=table,
            mixins=mixins,
            settings=settings,
            # the library's LargeBinary(16) primary key is a BLOB, which MariaDB cannot
            # index without a prefix length: its users there declared id as BINARY(16)
            id_type="binary16" if dialect in ("mysql", "mariadb") else None,
        )

    def request(
        self, now: int, cookie: str | None = None, actions: list[Any] | None = None
    ) -> dict[str, Any]:
        """One request at ``now`` with ``cookie``; see ``runner.py``."""
        return self.runner.call(
            "request", app=self.name, now=now, cookie=cookie, actions=actions or []
        )

    def accepts(self, cookie: str, now: int) -> bool:
        """Whether the predecessor serves the session of ``cookie`` at ``now`` (changes nothing)."""
        seen = self.request(now, cookie, [["probe"]])["seen"]
        return not seen["new"]

    def rows(self) -> dict[str, dict[str, Any]]:
        """The table's rows by id hex, as the predecessor's model reads them."""
        rows: dict[str, dict[str, Any]] = self.runner.call("row", app=self.name)["rows"]
        return rows

    def drop(self) -> None:
        self.runner.call("drop", app=self.name)
