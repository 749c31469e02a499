"""Renewal settings: start-up validation and per-session values with ConfigRenewalMixin."""

from __future__ import annotations

import pytest
from pyramid.interfaces import ISessionFactory
from sessions_renewal import COOKIE_KEY, ConfigRenewalMixin, RenewalMixin, next_renewal_id

from sessions_kernel import ConfigurationError, SettingsError, session_factory
from sessions_kernel.crypto import decode_payload
from sessions_kernel.testing import TEST_SECRET_KEY, make_model


def factory(model=None, **settings):
    return session_factory(
        model_class=model or make_model(RenewalMixin), secret_key=TEST_SECRET_KEY, **settings
    )


# -- start-up -----------------------------------------------------------------------


def test_defaults():
    values = factory().config.values
    assert (values["renewal_timeout"], values["renewal_try_every"]) == (None, 5)
    values = factory(renewal_timeout="600", renewal_try_every="10").config.values
    assert (values["renewal_timeout"], values["renewal_try_every"]) == (600, 10)
    assert factory(renewal_timeout="none").config.values["renewal_timeout"] is None


def test_renewal_timeout_without_the_mixin_is_a_startup_error():
    with pytest.raises(ConfigurationError) as info:
        factory(make_model(), renewal_timeout=600)
    message = str(info.value)
    assert "session.renewal_timeout = 600" in message
    assert "RenewalMixin or ConfigRenewalMixin" in message


@pytest.mark.parametrize(("timeout", "try_every"), [(5, 5), (10, 30), ("60", "60")])
def test_try_every_not_below_timeout_is_a_startup_error(timeout, try_every):
    with pytest.raises(ConfigurationError) as info:
        factory(renewal_timeout=timeout, renewal_try_every=try_every)
    assert f"renewal_try_every = {int(try_every)} must be less than renewal_timeout" in str(
        info.value
    )
    assert "Lower renewal_try_every or raise renewal_timeout" in str(info.value)


def test_try_every_alone_is_not_checked_against_an_unset_timeout():
    assert factory(renewal_try_every=3600).config.values["renewal_try_every"] == 3600


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("renewal_timeout", 0),
        ("renewal_timeout", 1),
        ("renewal_timeout", -60),
        ("renewal_timeout", "ten"),
        ("renewal_timeout", True),
        ("renewal_timeout", 366 * 24 * 3600),
        ("renewal_try_every", 0),
        ("renewal_try_every", None),
        ("renewal_try_every", "5s"),
        ("renewal_try_every", 24 * 3600 + 1),
    ],
)
def test_bad_values_are_startup_errors_naming_the_setting(name, value):
    with pytest.raises(ConfigurationError) as info:
        factory(
            **{name: value, "renewal_timeout": 600} if name != "renewal_timeout" else {name: value}
        )
    assert f"session.{name} = {value!r}" in str(info.value)
    assert "whole number" in str(info.value)


# -- runtime ------------------------------------------------------------------------------


def _settings_view(config):
    """POST a JSON dict of settings: saved, or the SettingsError message returned."""

    def change(request):
        try:
            with request.session.settings as s:
                for name, value in request.json_body.items():
                    s[name] = value
        except SettingsError as exc:
            return {"error": str(exc)}
        request.session["changed"] = True
        return dict(request.session.settings)

    config.add_route("change", "/change")
    config.add_view(change, route_name="change", renderer="json")


def renewal_id(app):
    f = app.wsgi.registry.queryUtility(ISessionFactory)
    return decode_payload(f.serializer.loads(app.cookies["session"]))[1].get(COOKIE_KEY)


def test_plain_mixin_refuses_runtime_changes_naming_the_config_mixin(session_app):
    app = session_app(make_model(RenewalMixin), {"renewal_timeout": 60}, configure=_settings_view)
    app.post_json("/set", {"a": 1})
    for name in ("renewal_timeout", "renewal_try_every"):
        error = app.post_json("/change", {name: 30}).json["error"]
        assert f"{name} is not runtime-configurable" in error
        assert "use ConfigRenewalMixin from renewal (sessions-renewal)" in error
    assert app.get("/settings").json["renewal_timeout"] == 60


def test_turning_renewal_on_for_one_session_adopts_it_at_once(session_app):
    app = session_app(make_model(ConfigRenewalMixin), configure=_settings_view)
    app.post_json("/set", {"a": 1})
    assert renewal_id(app) is None
    other = app.new_browser()
    other.post_json("/set", {"b": 1})
    response = app.post_json("/change", {"renewal_timeout": 30})
    assert response.json["renewal_timeout"] == 30
    first = renewal_id(app)
    assert first is not None, "the response that turns renewal on carries the first id"
    app.clock.advance(29)
    assert "Set-Cookie" not in app.get("/read").headers
    app.clock.advance(1)
    app.get("/read")
    assert renewal_id(app) == next_renewal_id(first)
    # the other session keeps the global value (off)
    app.clock.advance(3600)
    assert "Set-Cookie" not in other.get("/read").headers
    assert {row.renewal_timeout for row in app.rows()} == {30, None}


def test_per_session_try_every_drives_reoffers_and_grace(session_app):
    app = session_app(
        make_model(ConfigRenewalMixin),
        {"renewal_timeout": 60, "renewal_try_every": 5},
        configure=_settings_view,
    )
    app.post_json("/set", {"a": 1})
    assert app.post_json("/change", {"renewal_try_every": 20}).json["renewal_try_every"] == 20
    first = app.cookies["session"]
    app.clock.advance(60)
    app.get("/read")  # offer
    offered = app.cookies["session"]
    app.cookiejar.clear()
    app.set_cookie("session", first)  # the offer got lost
    app.clock.advance(19)
    assert "Set-Cookie" not in app.get("/read").headers
    app.clock.advance(1)
    assert "Set-Cookie" in app.get("/read").headers  # re-offer after 20 s, not 5
    app.get("/read")  # acknowledgement
    late = app.new_browser()
    late.set_cookie("session", first)
    app.clock.advance(19)
    assert late.get("/read").json["data"]["a"] == 1  # within the 20 s grace
    assert offered != first


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"renewal_try_every": 60},
            "renewal_try_every = 60 must be less than renewal_timeout = 60",
        ),
        ({"renewal_timeout": 5}, "renewal_try_every = 5 must be less than renewal_timeout = 5"),
        (
            {"renewal_timeout": 10, "renewal_try_every": 10},
            "renewal_try_every = 10 must be less than renewal_timeout = 10",
        ),
        ({"renewal_timeout": 1}, "renewal_timeout = 1: expected a whole number from 2"),
        ({"renewal_try_every": "often"}, "renewal_try_every = 'often': expected a whole number"),
    ],
)
def test_runtime_changes_are_validated_like_at_startup(session_app, change, message):
    app = session_app(
        make_model(ConfigRenewalMixin), {"renewal_timeout": 60}, configure=_settings_view
    )
    app.post_json("/set", {"a": 1})
    with app.count() as sql:
        response = app.post_json("/change", change)
    assert message in response.json["error"]
    assert set(sql.kinds()) <= {"SELECT"}, "a refused change writes nothing"
    row = app.row()
    assert (row.renewal_timeout, row.renewal_try_every) == (None, None)


def test_saved_values_can_be_reset_to_the_global_value(session_app):
    app = session_app(
        make_model(ConfigRenewalMixin), {"renewal_timeout": 60}, configure=_settings_view
    )
    app.post_json("/set", {"a": 1})
    app.post_json("/change", {"renewal_timeout": 600})
    assert app.row().renewal_timeout == 600
    app.post_json("/change", {"renewal_timeout": None})
    assert app.row().renewal_timeout is None
    assert app.get("/settings").json["renewal_timeout"] == 60


def test_a_grace_window_changed_in_the_request_classifies_the_id_again(session_app, monkeypatch):
    import sessions_renewal

    kinds = []
    classify = sessions_renewal._classify

    def counted(row, presented, now, try_every):
        kinds.append((kind := classify(row, presented, now, try_every), try_every))
        return kind

    def configure(config):
        def load_then_change(request):
            request.session.new  # noqa: B018 (loaded, and validated, under 5 s of grace)
            with request.session.settings as s:
                s.renewal_try_every = 20
            return {}

        config.add_route("load_then_change", "/load_then_change")
        config.add_view(load_then_change, route_name="load_then_change", renderer="json")

    monkeypatch.setattr(sessions_renewal, "_classify", counted)
    app = session_app(
        make_model(ConfigRenewalMixin),
        {"renewal_timeout": 60, "renewal_try_every": 5},
        configure=configure,
    )
    app.post_json("/set", {"a": 1})
    kinds.clear()
    app.get("/load_then_change")
    # validate's classification was made under 5 s of grace: renew makes its own under 20
    assert kinds == [("current", 5), ("current", 20)]
    kinds.clear()
    app.get("/read")
    assert kinds == [("current", 20)]
