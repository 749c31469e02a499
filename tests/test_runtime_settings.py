"""request.session.settings: read as attributes and a dict; edit, save, discard."""

from __future__ import annotations

from typing import Any

import pytest

from sessions_kernel import SettingsError


def _views(config: Any) -> None:
    def read(request: Any) -> Any:
        s = request.session.settings
        return {
            "attr": s.example_note,
            "item": s["example_note"],
            "dict": dict(s),
            "configurable": [n for n in s if s.is_configurable(n)],
        }

    def errors(request: Any) -> Any:
        s = request.session.settings
        out = {}

        def record(name: str, func: Any) -> None:
            try:
                func()
            except Exception as exc:
                out[name] = [type(exc).__name__, str(exc)]

        def not_editing() -> None:
            s["example_note"] = "abc"

        def not_configurable() -> None:
            s.edit()
            s.cookie_max_age = 5

        def start_up_only() -> None:
            s.edit()
            s["secret_key"] = "x"

        record("not_editing", not_editing)
        record("not_configurable", not_configurable)
        record("start_up_only", start_up_only)
        record("read_secret", lambda: s["secret_key"])
        record("read_unknown", lambda: s.nothing)
        s.discard()
        return out

    def edit_and_leave(request: Any) -> Any:
        s = request.session.settings
        s.edit()
        s.example_note = "Unsaved"
        return {"while_editing": s.example_note}

    def discard(request: Any) -> Any:
        s = request.session.settings
        s.edit()
        s["example_note"] = "Dropped"
        s.discard()
        return {"after": s.example_note}

    def invalid(request: Any) -> Any:
        s = request.session.settings
        out = {}
        s.edit()
        s["example_note"] = "no digits 123"
        with pytest.raises(SettingsError) as info:
            s.save()
        out["validator"] = str(info.value)
        out["kept"] = s.example_note  # still editing, edits kept
        s["example_note"] = "locked"  # valid alone; breaks the cross-setting rule
        with pytest.raises(SettingsError) as info:
            s.save()
        out["cross"] = str(info.value)
        s.discard()
        with pytest.raises(ValueError), request.session.settings as t:
            t["example_note"] = "Inside"
            raise ValueError("the block failed")
        out["after_failed_block"] = s.example_note
        return out

    for name, view in [("s_read", read), ("s_errors", errors), ("s_leave", edit_and_leave),
                       ("s_discard", discard), ("s_invalid", invalid)]:  # fmt: skip
        config.add_route(name, f"/{name}")
        config.add_view(view, route_name=name, renderer="json")


@pytest.fixture
def configurable_app(session_app, example_plugin):
    from sessions_kernel.testing import make_model

    return session_app(make_model(example_plugin.ConfigExampleMixin), configure=_views)


def test_read_as_attributes_and_dict(configurable_app):
    app = configurable_app
    body = app.get("/s_read").json
    assert body["attr"] is None and body["item"] is None
    assert body["dict"]["example_epoch"] == 0
    assert body["dict"]["cookie_path"] == "/" and body["dict"]["cookie_samesite"] == "Lax"
    assert "secret_key" not in body["dict"] and "model_class" not in body["dict"]
    assert body["configurable"] == ["example_note"]


def test_context_manager_saves_on_an_existing_session(configurable_app):
    app = configurable_app
    app.post_json("/set", {"a": 1})
    with app.count() as sql:
        assert app.post_json("/settings", {"example_note": "Hello"}).json["example_note"] == "Hello"
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assert app.row().example_note == "Hello"
    assert app.get("/s_read").json["attr"] == "Hello"
    assert app.new_browser().get("/s_read").json["attr"] is None  # per session


def test_saved_setting_on_a_new_session_is_stored(configurable_app):
    app = configurable_app
    with app.count() as sql:
        app.post_json("/settings", {"example_note": "Fresh"})
    assert sql.kinds() == ["INSERT"], sql.statements
    assert app.row().example_note == "Fresh"
    assert app.get("/s_read").json["item"] == "Fresh"


def test_unsaved_edits_are_dropped_at_the_end_of_the_request(configurable_app):
    app = configurable_app
    app.post_json("/set", {"a": 1})
    with app.count() as sql:
        assert app.get("/s_leave").json == {"while_editing": "Unsaved"}
    assert sql.count == 0  # edits alone neither load nor write the session
    assert app.get("/s_read").json["attr"] is None
    assert app.row().example_note is None


def test_discard(configurable_app):
    app = configurable_app
    app.post_json("/settings", {"example_note": "Kept"})
    assert app.get("/s_discard").json == {"after": "Kept"}


def test_save_validates(configurable_app):
    app = configurable_app
    app.post_json("/set", {"a": 1})
    body = app.get("/s_invalid").json
    assert body["validator"] == (
        "example_note = 'no digits 123': expected up to 20 letters, got 'no digits 123'"
    )
    assert body["kept"] == "no digits 123"
    assert body["cross"] == "example_note = 'locked' needs example_epoch of at least 1"
    assert body["after_failed_block"] is None
    assert app.row().example_note is None


def test_errors_name_the_problem(configurable_app):
    errors = configurable_app.get("/s_errors").json
    assert errors["not_editing"] == [
        "SettingsError",
        "settings are read-only until you call request.session.settings.edit() (or use "
        "'with request.session.settings as s:'); example_note was not changed",
    ]
    kind, message = errors["not_configurable"]
    assert kind == "SettingsError"
    assert message.startswith("cookie_max_age is not runtime-configurable with Session")
    assert errors["start_up_only"] == [
        "SettingsError",
        "secret_key is set once at start-up and cannot be read or changed per session",
    ]
    assert errors["read_secret"][0] == "KeyError"
    assert errors["read_unknown"][0] == "AttributeError"
    assert "no runtime setting 'nothing'" in errors["read_unknown"][1]


def test_non_configurable_setting_names_the_mixin(session_app, example_plugin):
    from sessions_kernel.testing import make_model

    def view(request: Any) -> Any:
        with pytest.raises(SettingsError) as info, request.session.settings as s:
            s.example_note = "Nope"
        return {"message": str(info.value)}

    def configure(config: Any) -> None:
        config.add_route("note", "/note")
        config.add_view(view, route_name="note", renderer="json")

    app = session_app(make_model(example_plugin.ExampleMixin), configure=configure)
    assert app.get("/note").json["message"] == (
        "example_note is not runtime-configurable with Session: use ConfigExampleMixin from "
        "example (sessions-example-plugin) among its bases to change it per session"
    )
