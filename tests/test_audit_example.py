"""The hook reference's audit-log example (``docs/examples/audit``): one log line for each
committed change of the session rows, on SQLite, PostgreSQL and MariaDB.

A login (a new id, then the user in the data), a write and a logout each commit one
change, and the plugin writes one line for each; so does a batch of garbage collection.
A request that changes nothing, and one whose transaction aborts, write none; a
logout its failed request held is logged once it was run again.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import pytest

from sessions_kernel.maintenance import collect_garbage
from sessions_kernel.testing import make_model

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples" / "audit"
LINEAGE_CHARS = 24  # every id of one session starts with these hex digits of its first


@pytest.fixture
def sessions_audit(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    yield importlib.import_module("sessions_audit")
    sys.modules.pop("sessions_audit", None)


@pytest.fixture
def audited(sessions_audit, session_app, caplog):
    """A test app with the audit plugin, plus ``/login`` and ``/logout`` views; ``lines()``
    returns (and forgets) what the plugin logged so far."""

    def configure(config):
        def login(request):
            request.session.regenerate_id()  # a new id at every change of privilege
            request.session["user"] = request.json_body["user"]
            return {"ok": True}

        def logout(request):
            request.session.invalidate()
            return {"ok": True}

        def logout_then_fail(request):
            request.session.invalidate()
            raise RuntimeError("the view failed after the logout")

        views = (("login", login), ("logout", logout), ("logout_then_fail", logout_then_fail))
        for name, view in views:
            config.add_route(f"audit_{name}", f"/{name}")
            config.add_view(view, route_name=f"audit_{name}", renderer="json")

    app = session_app(
        make_model(sessions_audit.AuditMixin),
        {"max_age": "3600"},
        plugins=[sessions_audit],
        configure=configure,
    )
    caplog.set_level(logging.INFO, "sessions_audit")

    def lines():
        found = [r.getMessage() for r in caplog.records if r.name == "sessions_audit"]
        caplog.clear()
        return found

    app.lines = lines
    return app


def test_one_line_for_each_committed_change(audited):
    app = audited
    app.post_json("/set", {"cart": [3]})  # a new session: its INSERT
    first = app.row().id
    assert app.lines() == [f"source=request written={first}"]

    app.post_json("/login", {"user": "alice"})  # one UPDATE gives the row its new id
    second = app.row().id
    assert second != first and second[:LINEAGE_CHARS] == first[:LINEAGE_CHARS]
    assert app.lines() == [f"source=request written={second} rekeyed={first}>{second}"]

    app.get("/read")  # nothing changed: no line
    assert app.lines() == []

    app.post_json("/set", {"theme": "dark"})
    assert app.lines() == [f"source=request written={second}"]

    app.post("/logout")
    assert app.rows() == []
    lineage = first[:LINEAGE_CHARS]
    assert app.lines() == [f"source=request deleted={second} lineages={lineage}"]


def test_an_aborted_request_writes_no_line(audited):
    app = audited
    app.post_json("/set", {"a": 1})
    app.lines()
    app.post_json("/fail", {"b": 2}, expect_errors=True)
    assert app.lines() == []
    assert app.get("/read").json["data"] == {"a": 1}


def test_a_logout_run_again_after_an_abort_is_one_line(audited):
    app = audited
    app.post_json("/set", {"a": 1})
    row_id = app.row().id
    app.lines()
    app.post("/logout_then_fail", expect_errors=True)
    assert app.rows() == []  # the logout holds, though its request failed
    lineage = row_id[:LINEAGE_CHARS]
    assert app.lines() == [f"source=replay deleted={row_id} lineages={lineage}"]


def test_a_gc_batch_is_one_line(audited):
    app = audited
    for _ in range(2):
        app.new_browser().post_json("/set", {"a": 1})
    ids = sorted(row.id for row in app.rows())
    app.lines()
    app.clock.advance(3601)
    assert collect_garbage(app.factory, app.engine).deleted == 2
    assert app.lines() == [f"source=gc deleted={','.join(ids)}"]
