"""When the session uses request.dbsession: only when it has a row to read or write."""

from __future__ import annotations

import pytest

from sessions_kernel import SessionError
from sessions_kernel.testing import make_model


def probe_views(config):
    def touch(request):
        new = request.session.new
        return {"new": new, "dbsession_made": "dbsession" in vars(request)}

    def store(request):
        request.session["a"] = 1
        return {"dbsession_made": "dbsession" in vars(request)}

    def hooks(request):
        session = request.session
        session.get("a")
        if "set" in request.params:
            session[request.params["set"]] = 1
        if "flash" in request.params:
            session.flash("hi")
        if "extra" in request.params:  # what a plugin does for a cookie-only session
            session.cookie_extras["probe"] = b"x"
        txn = request.tm.get()
        return {
            "before_commit": len(list(txn.getBeforeCommitHooks())),
            "after_commit": len(list(txn.getAfterCommitHooks())),
        }

    config.add_route("probe_hooks", "/probe/hooks")
    config.add_view(hooks, route_name="probe_hooks", renderer="json")
    config.add_route("probe_touch", "/probe/touch")
    config.add_view(touch, route_name="probe_touch", renderer="json")
    config.add_route("probe_store", "/probe/store")
    config.add_view(store, route_name="probe_store", renderer="json")


@pytest.fixture
def app(session_app):
    return session_app(make_model(), configure=probe_views)


def test_anonymous_request_makes_no_sqlalchemy_session(app):
    with app.count() as sql:
        response = app.get("/probe/touch")
    assert response.json == {"new": True, "dbsession_made": False}
    assert sql.count == 0
    assert response.headers["Vary"] == "Cookie"
    assert "Set-Cookie" not in response.headers


def test_anonymous_request_that_stores_data_writes_through_the_dbsession(app):
    with app.count() as sql:
        response = app.get("/probe/store")
    assert sql.kinds() == ["INSERT"]
    assert response.headers["Set-Cookie"].startswith("session=")
    assert app.get("/read").json["data"] == {"a": 1}


def test_request_with_a_cookie_reads_through_the_dbsession(app):
    app.post_json("/set", {"a": 1})
    with app.count() as sql:
        response = app.get("/probe/touch")
    assert response.json == {"new": False, "dbsession_made": True}
    assert sql.kinds() == ["SELECT"]


def test_missing_dbsession_is_a_clear_error_at_first_use(session_app):
    app = session_app(make_model(), settings={"dbsession_name": "nodb"})
    response = app.get("/touch", status=500)  # the test app's view for RuntimeError
    assert response.json["error"].startswith("request.nodb does not exist")
    assert issubclass(SessionError, RuntimeError)
    assert app.get("/none").json == {"ok": True}


def test_a_visitor_who_stores_nothing_joins_no_transaction(app):
    """No cookie, nothing stored: no transaction hooks, no persist stage, only Vary."""
    response = app.get("/probe/hooks")
    assert response.json == {"before_commit": 0, "after_commit": 0}
    assert response.headers["Vary"] == "Cookie"
    assert "Set-Cookie" not in response.headers


@pytest.mark.parametrize("change", ["set=a", "flash=1", "extra=1"])
def test_the_first_change_joins_the_transaction(app, change):
    response = app.get(f"/probe/hooks?{change}")
    assert response.json == {"before_commit": 1, "after_commit": 1}
    assert response.headers["Set-Cookie"].startswith("session=")
    assert app.get("/probe/hooks").json == {"before_commit": 1, "after_commit": 1}


def test_a_presented_cookie_joins_at_the_first_use(app):
    app.post_json("/set", {"a": 1})
    assert app.get("/probe/hooks").json == {"before_commit": 1, "after_commit": 1}


@pytest.mark.parametrize("cookie", [False, True], ids=["anonymous", "with_cookie"])
def test_the_applications_own_vary_is_kept(session_app, cookie):
    """Vary: Cookie is added to what the view's response varies on, never replacing it."""

    def configure(config):
        def varied(request):
            request.session.get("a")
            response = request.response
            response.vary = ("Accept-Encoding",)
            response.text = "ok"
            return response

        def already(request):
            request.session.get("a")
            response = request.response
            response.headerlist.append(("vary", "Cookie"))
            response.text = "ok"
            return response

        config.add_route("varied", "/varied")
        config.add_view(varied, route_name="varied")
        config.add_route("already", "/already")
        config.add_view(already, route_name="already")

    app = session_app(make_model(), configure=configure)
    if cookie:
        app.post_json("/set", {"a": 1})
    response = app.get("/varied")
    assert response.headers.getall("Vary") == ["Accept-Encoding, Cookie"]
    response = app.get("/already")
    assert [v.lower() for v in response.headers.getall("Vary")] == ["cookie"]
