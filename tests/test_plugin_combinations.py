"""The four feature plugins together: all combinations, start-up errors, concurrent renewal."""

from __future__ import annotations

import itertools
import json

import pytest
from concurrency_support import browser_with, build, run_paused
from pyramid.interfaces import ISessionFactory
from sessions_absolute_timeout import AbsoluteMixin, ConfigAbsoluteMixin
from sessions_cookie_settings import ConfigCookieMixin
from sessions_idle_timeout import ConfigIdleMixin, IdleMixin
from sessions_renewal import ConfigRenewalMixin, RenewalMixin, RenewalViolation

from sessions_kernel import ConfigurationError, session_factory
from sessions_kernel.testing import TEST_SECRET_KEY, make_model

# name: (plain mixin, configurable mixin, the settings that turn the feature on)
FEATURES = {
    "idle_timeout": (IdleMixin, ConfigIdleMixin, {"idle_timeout": 600}),
    "absolute_timeout": (AbsoluteMixin, ConfigAbsoluteMixin, {"absolute_timeout": 3600}),
    "renewal": (RenewalMixin, ConfigRenewalMixin, {"renewal_timeout": 300}),
    "cookie_settings": (ConfigCookieMixin, ConfigCookieMixin, {}),
}
COMBINATIONS = [
    combo for size in range(len(FEATURES) + 1) for combo in itertools.combinations(FEATURES, size)
]


def active_plugins(app) -> set[str]:
    factory = app.wsgi.registry.queryUtility(ISessionFactory)
    return {info.name for info in factory.config.active}


@pytest.mark.parametrize("configurable", [False, True], ids=["plain", "config"])
@pytest.mark.parametrize("combo", COMBINATIONS, ids=lambda c: "+".join(c) or "kernel-only")
def test_every_combination_starts_and_serves(session_app, combo, configurable):
    mixins = [FEATURES[name][int(configurable)] for name in combo]
    settings = {k: v for name in combo for k, v in FEATURES[name][2].items()}
    app = session_app(make_model(*mixins), settings)
    assert active_plugins(app) == {"sessions_kernel", *combo}

    with app.count() as sql:
        created = app.post_json("/set", {"a": 1})
    assert sql.kinds() == ["INSERT"]
    assert created.headers["Set-Cookie"].startswith("session=")
    app.clock.advance(10)
    with app.count() as sql:
        read = app.get("/read")
    assert read.json["data"] == {"a": 1} and read.json["new"] is False
    # a read costs its SELECT; only the idle timeout may add the UPDATE of its expiry
    expected = ["SELECT", "UPDATE"] if "idle_timeout" in combo else ["SELECT"]
    assert sql.kinds() == expected, sql.statements
    with app.count() as sql:
        app.get("/incr/a")
    assert sql.kinds() == ["SELECT", "UPDATE"]
    assert app.get("/read").json["data"] == {"a": 2}


@pytest.mark.parametrize(
    ("setting", "value", "mixins"),
    [
        ("idle_timeout", 600, "IdleMixin or ConfigIdleMixin"),
        ("absolute_timeout", 3600, "AbsoluteMixin or ConfigAbsoluteMixin"),
        ("renewal_timeout", 300, "RenewalMixin or ConfigRenewalMixin"),
    ],
)
def test_a_timeout_without_its_mixin_stops_start_up(setting, value, mixins):
    others = [m for name, (m, _, _) in FEATURES.items() if mixins.split()[0] != m.__name__]
    model = make_model(*others, tablename="startup_check")
    with pytest.raises(ConfigurationError) as error:
        session_factory(model_class=model, secret_key=TEST_SECRET_KEY, **{setting: value})
    message = str(error.value)
    assert f"session.{setting} = {value!r}" in message
    assert f"does not include {mixins}" in message
    assert "Add the mixin to the bases of Session" in message


def test_idle_and_absolute_rules_meet_at_start_up():
    model = make_model(IdleMixin, AbsoluteMixin, tablename="startup_rules")
    with pytest.raises(ConfigurationError, match="absolute_timeout") as error:
        session_factory(
            model_class=model, secret_key=TEST_SECRET_KEY, idle_timeout=600, absolute_timeout=300
        )
    assert "idle_timeout" in str(error.value)


# -- renewal across concurrent requests ------------------------------------------------------


@pytest.fixture
def renewal_app(session_engine):
    violations: list[RenewalViolation] = []

    def configure(config):
        config.add_subscriber(violations.append, RenewalViolation)

    app = build(
        session_engine,
        model=make_model(IdleMixin, RenewalMixin, ConfigCookieMixin),
        settings={
            "session.renewal_timeout": "300",
            "session.renewal_try_every": "5",
            "session.idle_timeout": "900",
        },
        configure=configure,
    )
    app.violations = violations
    yield app
    app.model.metadata.drop_all(session_engine)


def test_a_request_in_flight_with_the_old_id_is_not_taken_for_theft(renewal_app):
    app = renewal_app
    app.post_json("/set", {"a": 1})
    old_cookie = app.cookies["session"]
    app.clock.advance(300)
    offer = app.get("/read")  # the renewal is due: the candidate arrives in a new cookie
    assert offer.headers["Set-Cookie"].startswith("session=")
    new_cookie = app.cookies["session"]
    assert new_cookie != old_cookie

    # A request sent before the new cookie arrived is still running (it loaded the row
    # under the old id) when the browser's next request acknowledges the candidate.
    app.set_cookie("session", old_cookie)
    acknowledge = browser_with(app, new_cookie)
    slow, ack = run_paused(app, {"set": {"slow": 1}}, lambda: acknowledge.get("/read"))

    assert ack.status_int == 200 and slow.status_int == 200
    assert app.violations == []
    (row,) = app.rows()
    assert json.loads(row.data) == {"a": 1, "slow": 1}
    # the slow response, sent with the old id, hands out no id: not the current one (a
    # thief replaying the old cookie would keep it), not the old one (it would replace
    # the browser's); the browser keeps the acknowledged cookie, which works after the
    # grace window
    assert "Set-Cookie" not in slow.headers
    app.clock.advance(5)
    assert acknowledge.get("/read").json["data"] == {"a": 1, "slow": 1}
    assert app.violations == []


def test_the_old_id_after_the_grace_window_is_still_theft(renewal_app):
    app = renewal_app
    app.post_json("/set", {"a": 1})
    stolen = app.cookies["session"]
    app.clock.advance(300)
    app.get("/read")  # offer
    app.get("/read")  # acknowledgement by the owner's browser
    app.clock.advance(5)  # the grace window for in-flight requests is over
    thief = browser_with(app, stolen)
    assert thief.get("/read").json["new"] is True
    assert [v.detail for v in app.violations] == ["previous id after the grace window"]
    assert app.get("/read").json["new"] is True  # the owner is logged out too
