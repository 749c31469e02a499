"""The documentation's examples run: the getting-started application, the features guide's
examples, the keys shown."""

from __future__ import annotations

import configparser
import importlib
import re
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
import webtest

from sessions_kernel.crypto import parse_secret_keys
from sessions_kernel.testing import TEST_SECRET_KEY, Clock, make_app

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture
def quickstart(monkeypatch):
    monkeypatch.syspath_prepend(str(DOCS / "examples"))
    import quickstart

    yield quickstart
    sys.modules.pop("quickstart", None)


def test_getting_started_application(quickstart, session_db_url):
    engine = sa.create_engine(session_db_url)
    quickstart.Base.metadata.drop_all(engine)
    quickstart.Base.metadata.create_all(engine)
    try:
        app = webtest.TestApp(
            quickstart.main(
                {},
                **{
                    "sqlalchemy.url": session_db_url,
                    "session.secret_key": TEST_SECRET_KEY,
                    "session.model_class": "quickstart.Session",
                },
            )
        )
        assert app.get("/").json == {"visits": 1, "new": True}
        assert app.get("/").json == {"visits": 2, "new": False}
        assert webtest.TestApp(app.app).get("/").json == {"visits": 1, "new": True}
    finally:
        quickstart.Base.metadata.drop_all(engine)
        engine.dispose()


def test_keys_shown_in_the_docs_are_published_and_refused():
    shown = set()
    for page in DOCS.glob("*.rst"):
        shown.update(re.findall(r"session\.secret_key = ([A-Za-z0-9_-]{43}=)", page.read_text()))
    assert shown, "the docs show no example key"
    for key in shown:
        with pytest.raises(ValueError, match="is published in the documentation"):
            parse_secret_keys(key)


# -- the features guide (docs/features.rst) -------------------------------------------------
# Its models use the table name "session", as a project's would: they run on a SQLite file of
# their own so that they never meet another test run's table on a shared server.


def feature_app(tmp_path, monkeypatch, name):
    """The example module ``features.<name>`` with its ini section, as a test app."""
    monkeypatch.syspath_prepend(str(DOCS / "examples"))
    module = importlib.import_module(f"features.{name}")
    parser = configparser.ConfigParser()
    parser.read(DOCS / "examples" / "features.ini")
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'features.sqlite'}")
    app = make_app(
        module.Session,
        engine,
        settings=dict(parser[name]),
        clock=Clock(),
        configure=module.includeme,
    )
    return module, app


def test_features_idle(tmp_path, monkeypatch):
    _, app = feature_app(tmp_path, monkeypatch, "idle")
    app.post_json("/set", {"a": 1})
    app.clock.advance(1799)
    assert app.get("/read").json["data"] == {"a": 1}
    app.clock.advance(1800)
    assert app.get("/read").json["new"] is True
    app.post_json("/set", {"a": 1})
    assert app.post("/keep-me-signed-in").json == {"idle_timeout": 8 * 3600}
    app.clock.advance(7 * 3600)
    assert app.get("/read").json["data"] == {"a": 1}


def test_features_absolute(tmp_path, monkeypatch):
    _, app = feature_app(tmp_path, monkeypatch, "absolute")
    app.post_json("/set", {"a": 1})
    for _ in range(12):
        app.clock.advance(3599)
        assert app.get("/incr/a").json["new"] is False  # activity does not extend it
    app.clock.advance(12)
    assert app.get("/read").json["new"] is True


def test_features_renewal(tmp_path, monkeypatch, caplog):
    _, app = feature_app(tmp_path, monkeypatch, "renewal")
    app.post_json("/set", {"a": 1})
    stale = app.cookies["session"]
    app.clock.advance(900)
    assert "Set-Cookie" in app.get("/read").headers  # the offer
    app.get("/read")  # the acknowledgement
    app.clock.advance(60)
    thief = app.new_browser()
    thief.set_cookie("session", stale)
    assert thief.get("/read").json["new"] is True
    assert "copied session cookie" in caplog.text
    assert app.get("/read").json["new"] is True  # every copy is logged out


def test_features_cookies(tmp_path, monkeypatch):
    _, app = feature_app(tmp_path, monkeypatch, "cookies")
    cookie = app.post("/remember-me").headers["Set-Cookie"]
    assert "Max-Age=2592000" in cookie and "secure" in cookie.lower()


def test_features_userid(tmp_path, monkeypatch):
    module, app = feature_app(tmp_path, monkeypatch, "userid")
    with sa.orm.Session(app.engine) as db:
        db.add(module.User(name="ann"))
        db.commit()
    phone = app.new_browser()
    phone.post_json("/login", {"name": "ann"})
    assert app.post_json("/login", {"name": "ann"}).json == {"name": "ann"}
    with app.count() as sql:
        listing = app.get("/your-sessions").json
    assert sql.kinds() == ["SELECT", "SELECT"]  # the session (user joined), the listing
    assert sorted(s["current"] for s in listing) == [False, True]
    app.post("/logout")
    assert len(app.rows()) == 1


def test_features_csrf(tmp_path, monkeypatch):
    _, app = feature_app(tmp_path, monkeypatch, "csrf")
    token = app.get("/form").json["csrf_token"]
    assert app.post("/form", expect_errors=True).status_int == 400
    assert app.post("/form", {"csrf_token": token}).json == {"posted": True}


# -- the settings tables name every setting ---------------------------------------------------

ROOT = DOCS.parent


def table_settings(text: str, pattern: str) -> set[str]:
    return set(re.findall(pattern, text, re.M))


def test_the_readmes_settings_table_names_every_setting_of_the_kernel():
    from sessions_kernel.builtin import session_settings

    shown = table_settings((ROOT / "README.md").read_text(), r"^\| `(\w+)` \|")
    missing = {s.name for s in session_settings()} - shown
    assert missing == set(), f"README.md's settings table leaves out {sorted(missing)}"


def test_the_configuration_pages_tables_name_every_setting_of_the_installed_plugins():
    from sessions_kernel.plugins import discover

    page = (DOCS / "configuration.rst").read_text()
    shown = table_settings(page, r"^   \* - ``(\w+)``")
    # "``cookie_max_age`` … ``cookie_samesite``" stands for the kernel's cookie settings
    shown |= {name for name in re.findall(r"``(cookie_\w+)``", page)}
    repository = {"sessions_kernel", "absolute_timeout", "idle_timeout", "renewal", "userid"}
    declared = {s.name for info in discover() if info.name in repository for s in info.settings}
    missing = declared - shown
    assert missing == set(), f"docs/configuration.rst's tables leave out {sorted(missing)}"


# -- getting-started's migration is what Alembic's autogenerate writes ----------------------


def code_block_after(page: str, marker: str) -> str:
    """The first ``code-block`` after ``marker`` in ``page``, dedented."""
    rest = page[page.index(marker) :]
    body = rest[rest.index(".. code-block::") :].split("\n", 2)[2]
    lines = []
    for line in body.splitlines():
        if line and not line.startswith("   "):
            break
        lines.append(line[3:])
    return "\n".join(lines)


def op_calls(source: str) -> str:
    """The ``op.`` calls of a migration, without quotes' style, white space or comments."""
    body = "".join(
        line.split("#")[0]
        for line in source.splitlines()
        if not line.startswith(("def ", "import", "from"))
    )
    return re.sub(r"\s+", "", body).replace('"', "'").replace(",)", ")")


def test_the_migration_getting_started_shows_is_what_autogenerate_writes(quickstart):
    from alembic.autogenerate import produce_migrations, render_python_code
    from alembic.migration import MigrationContext

    shown = code_block_after((DOCS / "getting-started.rst").read_text(), "The migration it writes")
    upgrade = shown[shown.index("def upgrade") : shown.index("def downgrade")]
    engine = sa.create_engine("sqlite://")  # an empty database: the whole table is new
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"target_metadata": quickstart.Base.metadata}
        )
        written = render_python_code(
            produce_migrations(context, quickstart.Base.metadata).upgrade_ops
        )
    assert op_calls(upgrade) == op_calls(written)
    assert "from sqlalchemy.dialects import mysql" in shown


# -- what the pages include from files --------------------------------------------------------


def literalincludes():
    """(page, line, file, options) of every ``literalinclude`` of the docs."""
    for page in sorted(DOCS.glob("*.rst")):
        lines = page.read_text().splitlines()
        for number, line in enumerate(lines):
            match = re.match(r"(\s*)\.\. literalinclude:: (\S+)", line)
            if not match:
                continue
            options = {}
            for option in lines[number + 1 :]:
                found = re.match(r"\s+:([\w-]+):\s*(.*)", option)
                if not found:
                    break
                options[found.group(1)] = found.group(2) or True
            yield page.name, number + 1, (page.parent / match.group(2)).resolve(), options


@pytest.mark.parametrize(
    "page, line, path, options", list(literalincludes()), ids=lambda v: str(v)[-40:]
)
def test_an_included_excerpt_is_whole(page, line, path, options):
    """Every excerpt a page includes exists and does not end in the middle of a
    definition: no decorator left without its function."""
    from sphinx.config import Config
    from sphinx.directives.code import LiteralIncludeReader

    assert path.exists(), f"{page}:{line} includes {path}, which does not exist"
    reader = LiteralIncludeReader(str(path), dict(options, tab_width=8), Config())
    text, _ = reader.read()
    last = [s for s in text.splitlines() if s.strip()][-1]
    assert not last.lstrip().startswith("@"), f"{page}:{line} ends with a decorator: {last}"


def test_the_example_plugin_lists_the_test_kit_as_writing_plugins_says():
    """docs/writing-plugins.rst: "The test extra lists ``sessions-kernel[testing]``"."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10 has no tomllib: tomli is its backport (the test extra lists it)
        import tomli as tomllib

    assert (
        "The test extra lists ``sessions-kernel[testing]``"
        in (DOCS / "writing-plugins.rst").read_text()
    )
    project = tomllib.loads((ROOT / "examples" / "device" / "pyproject.toml").read_text())
    test_extra = project["project"]["optional-dependencies"]["test"]
    assert any(r.startswith("sessions-kernel[testing]") for r in test_extra), test_extra
