"""Per-request plugin state (``session.stash``, typed keys); the attributes the kernel reserves.

The stash tests that run requests run on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import types

import pytest
from pyramid.interfaces import ISessionFactory

import sessions_kernel
from sessions_kernel import ConfigurationError, Session, Stash, StashKey
from sessions_kernel.testing import TEST_SECRET_KEY, make_model

# -- the Stash itself -----------------------------------------------------------------------


def test_a_stash_maps_keys_to_values():
    count, name = StashKey[int]("count"), StashKey[str]()
    stash = Stash()
    assert len(stash) == 0 and count not in stash
    stash[count] = 1
    assert stash[count] == 1 and count in stash and name not in stash
    assert stash.get(name, "none") == "none"
    assert stash.setdefault(name, "a") == "a" and stash.setdefault(name, "b") == "a"
    assert len(stash) == 2
    del stash[count]
    assert count not in stash
    with pytest.raises(KeyError):
        stash[count]
    assert stash.pop(name, None) == "a" and stash.pop(name, None) is None


def test_keys_are_equal_only_to_themselves_whatever_their_names():
    first, second = StashKey[int]("same"), StashKey[int]("same")
    stash = Stash()
    stash[first] = 1
    assert second not in stash
    stash[second] = 2
    assert (stash[first], stash[second]) == (1, 2)
    assert "same" in repr(first)


# -- session.stash in requests --------------------------------------------------------------


class StashMixin:
    """Activates the stash probe plugin; adds no column."""


SEEN = StashKey[list]("probe: the hooks that saw the request's stash")


def make_probe(stashes: list) -> types.SimpleNamespace:
    """A plugin that appends each hook's name to a list kept in the stash."""

    def record(session, hook):
        session.stash.setdefault(SEEN, []).append(hook)
        stashes.append(session.stash)

    hooks = {
        name: sessions_kernel.hookimpl(
            # the default argument binds each hook's own name
            lambda session, _name=name: record(session, _name)
        )
        for name in ("session_load", "session_extend", "session_renew")
    }

    @sessions_kernel.hookimpl
    def session_validate(session):
        record(session, "session_validate")

    @sessions_kernel.hookimpl
    def session_persist(session, row):
        record(session, "session_persist")
        row.data  # noqa: B018 (the row is there)

    return types.SimpleNamespace(
        __name__="stashprobe",
        session_mixins=sessions_kernel.hookimpl(lambda: [StashMixin]),
        session_validate=session_validate,
        session_persist=session_persist,
        **hooks,
    )


def stash_views(config):
    def seen(request):
        session = request.session
        session.new  # noqa: B018 (loads the session: reading the stash does not)
        return {"seen": list(session.stash.get(SEEN, []))}

    def stash_only(request):
        return {"empty": len(request.session.stash) == 0}

    def peek_then_seen(request):
        valid = request.registry.queryUtility(ISessionFactory).peek(request).valid
        return {"valid": valid, **seen(request)}

    config.add_route("peek_then_seen", "/peek_then_seen")
    config.add_view(peek_then_seen, route_name="peek_then_seen", renderer="json")
    config.add_route("seen", "/seen")
    config.add_view(seen, route_name="seen", renderer="json")
    config.add_route("stash_only", "/stash_only")
    config.add_view(stash_only, route_name="stash_only", renderer="json")


@pytest.fixture
def stashes():
    return []


@pytest.fixture
def app(session_app, stashes):
    return session_app(make_model(StashMixin), plugins=[make_probe(stashes)], configure=stash_views)


def test_every_hook_of_one_request_shares_its_stash(app, stashes):
    app.post_json("/set", {"a": 1})
    stashes.clear()
    assert app.post_json("/set", {"b": 2}).status_int == 200
    assert len(stashes) == 5 and all(s is stashes[0] for s in stashes)
    assert stashes[0][SEEN] == [
        "session_load",
        "session_validate",
        "session_extend",
        "session_renew",
        "session_persist",
    ]


def test_each_request_gets_a_stash_of_its_own(app, stashes):
    app.post_json("/set", {"a": 1})
    first = stashes[0]
    assert app.get("/seen").json["seen"] == ["session_load", "session_validate"]
    assert stashes[-1] is not first
    assert app.get("/seen").json["seen"] == ["session_load", "session_validate"]


def test_the_stash_of_a_new_session_is_there_from_its_load(app):
    assert app.get("/seen").json["seen"] == ["session_load"]


def test_reading_the_stash_loads_nothing(app, stashes):
    app.post_json("/set", {"a": 1})
    stashes.clear()
    with app.count() as sql:
        response = app.get("/stash_only")
    assert response.json["empty"] is True
    assert sql.count == 0 and stashes == []  # no hook ran: the session was never loaded
    assert "Set-Cookie" not in response.headers


def test_a_peek_has_a_stash_of_its_own(app, stashes):
    app.post_json("/set", {"a": 1})
    stashes.clear()
    response = app.get("/peek_then_seen").json
    assert response == {"valid": True, "seen": ["session_load", "session_validate"]}
    peeked, used = stashes[0], stashes[-1]
    assert peeked is not used and peeked[SEEN] == ["session_load", "session_validate"]


# -- the attributes the kernel reserves -------------------------------------------------------


class ClaimMixin:
    """Activates a plugin that claims attributes; adds no column."""


def claiming(name: str, plugin: str = "claimer") -> types.SimpleNamespace:
    return types.SimpleNamespace(
        __name__=plugin,
        session_mixins=sessions_kernel.hookimpl(lambda: [ClaimMixin]),
        session_attributes=sessions_kernel.hookimpl(lambda: {name: property(lambda s: 1)}),
    )


def build(*plugins):
    return sessions_kernel.session_factory(
        plugins=plugins, model_class=make_model(ClaimMixin), secret_key=TEST_SECRET_KEY
    )


@pytest.mark.parametrize("name", ["request", "row", "now", "new", "cookie_extras", "stash"])
def test_claiming_an_attribute_plugins_rely_on_fails_at_start_up(name):
    with pytest.raises(ConfigurationError) as failed:
        build(claiming(name))
    message = str(failed.value)
    assert f"session plugin 'claimer' adds request.session.{name}" in message
    assert "attributes plugins rely on" in message
    assert "Rename the plugin's attribute, prefixed with the plugin's name" in message
    assert f"'claimer_{name}'" in message


@pytest.mark.parametrize("name", ["invalidate", "settings", "get_column", "get", "session_id"])
def test_claiming_a_name_of_the_sessions_api_fails_at_start_up(name):
    with pytest.raises(
        ConfigurationError, match=f"'claimer' adds request.session.{name} .*own API"
    ):
        build(claiming(name))


def test_claiming_a_private_name_fails_at_start_up():
    with pytest.raises(
        ConfigurationError, match=r"'claimer' adds request\.session\._state .*private"
    ):
        build(claiming("_state"))


def test_two_plugins_claiming_one_name_fail_at_start_up():
    with pytest.raises(ConfigurationError, match=r"'second' adds .*'first' already adds it"):
        build(claiming("shared", "first"), claiming("shared", "second"))


def test_the_declared_attributes_are_on_the_class():
    public = {name for name in Session.__annotations__ if not name.startswith("_")}
    assert public == {
        "request",
        "row",
        "now",
        "new",
        "cookie_extras",
        "stash",
    }
    reserved = sessions_kernel.session.RESERVED_ATTRIBUTES
    assert {"request", "now", "stash", "invalidate"} <= reserved
    assert {"_cookies", "_binding"} <= reserved  # the kernel's request state, made on first use


def test_a_plugins_own_attribute_still_works(session_app):
    plugin = claiming("claimer_answer")
    app = session_app(make_model(ClaimMixin), plugins=[plugin])
    session_class = app.factory.session_class
    assert session_class is not Session and session_class.claimer_answer.fget(None) == 1
