"""The idle timeout's settings: start-up validation, cross-setting rules, runtime changes."""

from __future__ import annotations

from typing import Any

import pytest
import sessions_idle_timeout
from sessions_idle_timeout import ConfigIdleMixin, IdleMixin

from sessions_kernel import ConfigurationError, Setting, SettingsError, hookimpl, session_factory
from sessions_kernel.settings import integer, optional
from sessions_kernel.testing import TEST_SECRET_KEY, SessionTestApp, make_model

TEN_YEARS = 10 * 365 * 24 * 3600


def factory(model: type | None = None, plugins: Any = (), **settings: Any) -> Any:
    return session_factory(
        plugins=plugins,
        model_class=model or make_model(IdleMixin),
        secret_key=TEST_SECRET_KEY,
        **settings,
    )


# -- start-up ------------------------------------------------------------------------------


def test_defaults_leave_the_feature_off():
    values = factory().config.values
    assert {name: values[name] for name in ("idle_timeout", "extension_delay")} == {
        "idle_timeout": None,
        "extension_delay": None,
    }
    assert (values["extension_chance"], values["extension_deadline"]) == (100, 1)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"idle_timeout": "3600"}, {"idle_timeout": 3600}),
        ({"idle_timeout": "none"}, {"idle_timeout": None}),
        ({"idle_timeout": str(TEN_YEARS)}, {"idle_timeout": TEN_YEARS}),
        (
            {
                "idle_timeout": "900",
                "extension_delay": " 60 ",
                "extension_chance": "10",
                "extension_deadline": "300",
            },
            {
                "idle_timeout": 900,
                "extension_delay": 60,
                "extension_chance": 10,
                "extension_deadline": 300,
            },
        ),
        # chance 100: the deadline plays no part, so it need not sit between delay and timeout
        ({"idle_timeout": 2, "extension_delay": 1, "extension_deadline": 5}, {"idle_timeout": 2}),
    ],
)
def test_valid_settings_are_parsed(settings, expected):
    values = factory(**settings).config.values
    assert {name: values[name] for name in expected} == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("idle_timeout", "0"),
        ("idle_timeout", -5),
        ("idle_timeout", "1.5"),
        ("idle_timeout", 1.5),
        ("idle_timeout", True),
        ("idle_timeout", "an hour"),
        ("idle_timeout", TEN_YEARS + 1),
        ("extension_delay", 0),
        ("extension_delay", "soon"),
        ("extension_chance", 0),
        ("extension_chance", 101),
        ("extension_chance", "none"),
        ("extension_deadline", 0),
        ("extension_deadline", None),
    ],
)
def test_bad_values_are_refused_at_start_up(name, value):
    with pytest.raises(ConfigurationError) as info:
        factory(**{name: value})
    message = str(info.value)
    assert message.startswith(f"session.{name} = {value!r}: expected a whole number from 1 to")
    assert "default:" in message


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        (
            {"idle_timeout": 100, "extension_delay": 100},
            ["extension_delay (100) must be less than idle_timeout (100)", "Lower"],
        ),
        (
            {"idle_timeout": 100, "extension_chance": 50, "extension_deadline": 100},
            ["extension_deadline (100) must be less than idle_timeout (100)", "chance"],
        ),
        (
            {"extension_delay": 30, "extension_chance": 50, "extension_deadline": 30},
            ["extension_deadline (30) must be greater than extension_delay (30)", "Raise"],
        ),
    ],
)
def test_settings_that_do_not_fit_together_are_refused(settings, words):
    with pytest.raises(ConfigurationError) as info:
        factory(**settings)
    message = str(info.value)
    assert message.startswith("session settings do not fit together")
    for word in words:
        assert word in message


@pytest.mark.parametrize("name", ["idle_timeout", "extension_delay"])
def test_setting_without_the_mixin_is_refused(name):
    with pytest.raises(ConfigurationError) as info:
        factory(make_model(), **{name: "60"})
    message = str(info.value)
    assert f"session.{name} = '60' is set" in message
    assert "IdleMixin or ConfigIdleMixin" in message
    assert "sessions-idle-timeout" in message


def test_absolute_timeout_rule_between_the_two_timeouts():
    check = sessions_idle_timeout.session_check_settings
    assert check({"idle_timeout": 100}) == []  # absolute_timeout absent (no such plugin active)
    assert check({"idle_timeout": 100, "absolute_timeout": None}) == []
    assert check({"idle_timeout": None, "absolute_timeout": 10}) == []
    assert check({"idle_timeout": 100, "absolute_timeout": 101}) == []
    (problem,) = check({"idle_timeout": 100, "absolute_timeout": 100})
    assert problem.startswith("absolute_timeout (100) must be greater than idle_timeout (100)")


class StandInAbsoluteMixin:
    """Activates the stand-in absolute timeout below."""


class StandInAbsolute:
    """Declares ``absolute_timeout`` when the real absolute-timeout plugin is not installed."""

    @hookimpl
    def session_mixins(self) -> list[type]:
        return [StandInAbsoluteMixin]

    @hookimpl
    def session_settings(self) -> list[Setting]:
        return [Setting("absolute_timeout", None, optional(integer(1)), "stand-in")]


def absolute_plugin() -> tuple[type, list[object]]:
    """The absolute-timeout mixin and the extra plugins needed to declare its setting."""
    try:
        from sessions_absolute_timeout import AbsoluteMixin  # type: ignore[import-not-found]
    except ImportError:
        return StandInAbsoluteMixin, [StandInAbsolute()]
    return AbsoluteMixin, []


def test_absolute_timeout_not_above_idle_timeout_is_refused_at_start_up():
    mixin, plugins = absolute_plugin()
    model = make_model(IdleMixin, mixin)
    assert factory(model, plugins, idle_timeout=100, absolute_timeout=101)
    with pytest.raises(ConfigurationError, match=r"absolute_timeout \(100\) must be greater"):
        factory(model, plugins, idle_timeout=100, absolute_timeout=100)


# -- runtime ------------------------------------------------------------------------------


def settings_views(config: Any) -> None:
    """Views that change ``request.session.settings`` in each supported way."""

    def view(path: str, func: Any) -> None:
        name = "idle_" + path.strip("/")
        config.add_route(name, path)
        config.add_view(func, route_name=name, renderer="json")

    def body(request: Any) -> dict[str, Any]:
        return request.json_body if request.body else {}

    def read(request: Any) -> Any:
        s = request.session.settings
        return {
            "attribute": s.idle_timeout,
            "item": s["extension_chance"],
            "all": dict(s),
            "configurable": s.is_configurable("idle_timeout"),
        }

    def save(request: Any) -> Any:
        values = body(request)
        request.session.update(values.get("data", {}))
        s = request.session.settings
        try:
            s.edit()
            for name, value in values.get("settings", {}).items():
                setattr(s, name, value)
            s.save()
        except SettingsError as exc:
            return {"error": str(exc), "editing_value": s.idle_timeout}
        return {"settings": dict(s)}

    def context(request: Any) -> Any:
        values = body(request)
        request.session.update(values.get("data", {}))
        try:
            with request.session.settings as s:
                for name, value in values.get("settings", {}).items():
                    s[name] = value
        except SettingsError as exc:
            return {"error": str(exc)}
        return {"settings": dict(request.session.settings)}

    def context_failure(request: Any) -> Any:
        request.session["x"] = 1
        try:
            with request.session.settings as s:
                s["idle_timeout"] = 5
                raise LookupError("the view failed half-way")
        except LookupError:
            pass
        return {"settings": dict(request.session.settings)}

    def discard(request: Any) -> Any:
        request.session["x"] = 1
        s = request.session.settings.edit()
        s.idle_timeout = 5
        s.discard()
        return {"settings": dict(s)}

    def unsaved(request: Any) -> Any:
        request.session["x"] = 1
        s = request.session.settings.edit()
        s.idle_timeout = 5
        return {"pending": s.idle_timeout}

    view("/idle_read", read)
    view("/idle_save", save)
    view("/idle_context", context)
    view("/idle_context_failure", context_failure)
    view("/idle_discard", discard)
    view("/idle_unsaved", unsaved)


GLOBAL = {"idle_timeout": 100, "extension_delay": 10}


@pytest.fixture
def config_app(session_app) -> SessionTestApp:
    return session_app(make_model(ConfigIdleMixin), GLOBAL, configure=settings_views)


@pytest.fixture
def plain_app(session_app) -> SessionTestApp:
    return session_app(make_model(IdleMixin), GLOBAL, configure=settings_views)


@pytest.mark.parametrize(("mixin", "configurable"), [(IdleMixin, False), (ConfigIdleMixin, True)])
def test_settings_read_as_attributes_and_items(session_app, mixin, configurable):
    app = session_app(make_model(mixin), GLOBAL, configure=settings_views)
    app.post_json("/set", {"a": 1})
    json = app.get("/idle_read").json
    assert (json["attribute"], json["item"], json["configurable"]) == (100, 100, configurable)
    expected = {
        "idle_timeout": 100,
        "extension_delay": 10,
        "extension_chance": 100,
        "extension_deadline": 1,
    }
    assert {name: json["all"][name] for name in expected} == expected


@pytest.mark.parametrize("path", ["/idle_save", "/idle_context"])
@pytest.mark.parametrize("new_timeout", [30, 1000])
def test_new_timeout_sets_the_expiry_in_the_same_response(config_app, path, new_timeout):
    app = config_app
    app.post_json("/set", {"a": 1})
    t0 = int(app.clock())
    app.clock.advance(20)
    with app.count() as sql:
        response = app.post_json(path, {"settings": {"idle_timeout": new_timeout}})
    assert response.json["settings"]["idle_timeout"] == new_timeout
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assert response.headers["Set-Cookie"].startswith("session=")
    row = app.row()
    assert (row.idle_timeout, row.idle_expire, row.updated) == (
        new_timeout,
        t0 + 20 + new_timeout,
        t0 + 20,
    )
    app.clock.time = float(t0 + 20 + new_timeout - 1)
    assert app.get("/read").json["new"] is False  # extends (past the delay): expiry moves
    app.clock.time = float(t0 + 20 + new_timeout - 1 + new_timeout)
    response = app.get("/read")
    assert response.json["new"] is True  # expired by the session's own timeout
    assert app.rows() == []


def test_new_session_with_settings_is_one_insert(config_app):
    app = config_app
    with app.count() as sql:
        app.post_json("/idle_save", {"data": {"a": 1}, "settings": {"idle_timeout": 30}})
    assert sql.kinds() == ["INSERT"], sql.statements
    row = app.row()
    assert (row.idle_timeout, row.idle_expire) == (30, int(app.clock()) + 30)


def test_settings_alone_store_a_new_session_with_its_expiry(config_app):
    app = config_app
    with app.count() as sql:
        response = app.post_json("/idle_save", {"settings": {"idle_timeout": 30}})
    assert response.json["settings"]["idle_timeout"] == 30
    assert sql.kinds() == ["INSERT"]
    assert "Set-Cookie" in response.headers
    row = app.row()
    assert (row.idle_timeout, row.idle_expire) == (30, int(app.clock()) + 30)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"idle_timeout": 0}, ["idle_timeout = 0: expected a whole number from 1 to"]),
        ({"extension_chance": 101}, ["extension_chance = 101: expected a whole number"]),
        ({"extension_delay": "soon"}, ["extension_delay = 'soon'"]),
        ({"extension_delay": 100}, ["extension_delay (100) must be less than idle_timeout (100)"]),
        (
            {"extension_chance": 50, "extension_deadline": 10},
            ["extension_deadline (10) must be greater than extension_delay (10)"],
        ),
        (
            {"idle_timeout": 5},  # below the global delay of 10
            ["extension_delay (10) must be less than idle_timeout (5)"],
        ),
    ],
)
@pytest.mark.parametrize("path", ["/idle_save", "/idle_context"])
def test_invalid_runtime_values_raise_settings_error(config_app, path, settings, words):
    app = config_app
    app.post_json("/set", {"a": 1})
    t0 = int(app.clock())
    app.clock.advance(5)  # inside the delay: a refused change leaves nothing to write
    with app.count() as sql:
        response = app.post_json(path, {"settings": settings})
    for word in words:
        assert word in response.json["error"]
    # A value its validator refuses fails before the session is even loaded.
    assert "UPDATE" not in sql.kinds(), sql.statements
    assert "Set-Cookie" not in response.headers
    row = app.row()
    assert (row.idle_timeout, row.extension_delay, row.extension_chance) == (None, None, None)
    assert row.idle_expire == t0 + 100


def test_refused_save_keeps_the_edit_for_the_view_but_not_beyond(config_app):
    app = config_app
    app.post_json("/set", {"a": 1})
    response = app.post_json(
        "/idle_save", {"data": {"b": 2}, "settings": {"idle_timeout": 5}}
    )  # refused (below the delay); the data is still written
    assert response.json["editing_value"] == 5
    row = app.row()
    assert (row.idle_timeout, row.idle_expire) == (None, int(app.clock()) + 100)
    assert app.get("/idle_read").json["attribute"] == 100


@pytest.mark.parametrize("path", ["/idle_discard", "/idle_context_failure", "/idle_unsaved"])
def test_edits_not_saved_are_dropped(config_app, path):
    app = config_app
    app.post_json("/set", {"a": 1})
    app.clock.advance(3)
    response = app.post_json(path)
    if path == "/idle_unsaved":
        assert response.json == {"pending": 5}  # the view sees its own pending edit
    else:
        assert response.json["settings"]["idle_timeout"] == 100
    row = app.row()
    # The data write refreshed the expiry with the timeout in force, not the edit.
    assert (row.idle_timeout, row.idle_expire) == (None, int(app.clock()) + 100)
    assert app.get("/idle_read").json["attribute"] == 100


def test_plain_mixin_refuses_runtime_changes_naming_the_configurable_mixin(plain_app):
    app = plain_app
    app.post_json("/set", {"a": 1})
    for path in ("/idle_save", "/idle_context"):
        error = app.post_json(path, {"settings": {"idle_timeout": 30}}).json["error"]
        assert "idle_timeout is not runtime-configurable" in error
        assert "ConfigIdleMixin" in error
    assert app.get("/idle_read").json["attribute"] == 100


def test_runtime_idle_timeout_must_stay_below_absolute_timeout(session_app):
    mixin, plugins = absolute_plugin()
    app = session_app(
        make_model(ConfigIdleMixin, mixin),
        {"idle_timeout": 100, "absolute_timeout": 1000},
        plugins=plugins,
        configure=settings_views,
    )
    app.post_json("/set", {"a": 1})
    error = app.post_json("/idle_save", {"settings": {"idle_timeout": 1000}}).json["error"]
    assert "absolute_timeout (1000) must be greater than idle_timeout (1000)" in error
    ok = app.post_json("/idle_save", {"settings": {"idle_timeout": 999}}).json
    assert ok["settings"]["idle_timeout"] == 999
