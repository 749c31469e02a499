"""The documentation's examples run: the getting-started application, the keys shown."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
import webtest

from sessions_kernel.crypto import parse_secret_keys
from sessions_kernel.testing import TEST_SECRET_KEY

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


def test_keys_shown_in_the_docs_are_valid():
    shown = set()
    for page in DOCS.glob("*.rst"):
        shown.update(re.findall(r"session\.secret_key = ([A-Za-z0-9_-]{43}=)", page.read_text()))
    assert shown, "the docs show no example key"
    for key in shown:
        assert len(parse_secret_keys(key)) == 1
