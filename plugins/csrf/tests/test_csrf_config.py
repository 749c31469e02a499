"""Installing the csrf plugin: activation by the mixin, and clear errors when it is missing.

Configuration does not depend on the database; these tests use SQLite in memory.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
import webtest
from pyramid.csrf import get_csrf_token
from pyramid.interfaces import ICSRFStoragePolicy, ISessionFactory
from pyramid.session import SignedCookieSessionFactory
from sessions_csrf import ColumnCSRFStoragePolicy, CSRFMixin

from sessions_kernel import ConfigurationError, session_factory
from sessions_kernel.testing import TEST_SECRET_KEY, make_model, make_wsgi_app


@pytest.fixture
def engine():
    engine = sa.create_engine("sqlite://")
    yield engine
    engine.dispose()


def token_view(config):
    config.add_route("token", "/token")
    config.add_view(lambda r: {"token": get_csrf_token(r)}, route_name="token", renderer="json")


def test_the_mixin_activates_the_plugin_and_its_session_api():
    with_csrf = session_factory(model_class=make_model(CSRFMixin), secret_key=TEST_SECRET_KEY)
    without = session_factory(model_class=make_model(), secret_key=TEST_SECRET_KEY)
    assert "csrf" in {info.name for info in with_csrf.config.active}
    assert "csrf" not in {info.name for info in without.config.active}
    for name in ("csrf_token", "get_csrf_token", "new_csrf_token"):
        assert hasattr(with_csrf.session_class, name)
        assert not hasattr(without.session_class, name)  # factories do not share attributes


def test_include_installs_the_policy(engine):
    model = make_model(CSRFMixin)
    app = make_wsgi_app(model, engine, configure=lambda c: c.include("sessions_csrf"))
    policy = app.registry.getUtility(ICSRFStoragePolicy)
    assert isinstance(policy, ColumnCSRFStoragePolicy)
    assert app.registry.getUtility(ISessionFactory).model is model


def test_include_without_the_mixin_fails_at_start_up(engine):
    model = make_model(name="PlainSession")
    with pytest.raises(ConfigurationError) as info:
        make_wsgi_app(model, engine, configure=lambda c: c.include("sessions_csrf"))
    message = str(info.value)
    assert "PlainSession does not include sessions_csrf.CSRFMixin" in message
    assert "Add CSRFMixin to the bases of PlainSession" in message


def test_include_skips_the_check_when_another_policy_replaces_it(engine):
    from pyramid.csrf import SessionCSRFStoragePolicy

    def configure(config):
        config.include("sessions_csrf")
        # the including configuration's own action wins over the included one
        config.set_csrf_storage_policy(SessionCSRFStoragePolicy())

    app = make_wsgi_app(make_model(), engine, configure=configure)
    assert isinstance(app.registry.getUtility(ICSRFStoragePolicy), SessionCSRFStoragePolicy)


def test_policy_without_the_mixin_fails_clearly_at_the_first_use(engine):
    model = make_model(name="PlainSession")
    model.metadata.create_all(engine)

    def configure(config):
        config.set_csrf_storage_policy(ColumnCSRFStoragePolicy())
        token_view(config)

    app = webtest.TestApp(make_wsgi_app(model, engine, configure=configure))
    with pytest.raises(ConfigurationError, match="PlainSession does not include sessions_csrf"):
        app.get("/token")
    with pytest.raises(ConfigurationError, match="PlainSession does not include sessions_csrf"):
        app.post("/token", {"csrf_token": "x"})


def test_policy_with_a_session_factory_of_another_kind_fails_clearly(engine):
    def configure(config):
        config.commit()  # replace the kernel's factory that make_wsgi_app set
        config.set_session_factory(SignedCookieSessionFactory("not-ours"))
        config.set_csrf_storage_policy(ColumnCSRFStoragePolicy())
        token_view(config)

    app = webtest.TestApp(make_wsgi_app(make_model(), engine, configure=configure))
    with pytest.raises(ConfigurationError, match="not a sessions_kernel one"):
        app.get("/token")


def test_include_with_a_session_factory_of_another_kind_fails_at_start_up(engine):
    def configure(config):
        config.commit()  # replace the kernel's factory that make_wsgi_app set
        config.set_session_factory(SignedCookieSessionFactory("not-ours"))
        config.include("sessions_csrf")

    with pytest.raises(ConfigurationError, match="not a sessions_kernel one"):
        make_wsgi_app(make_model(), engine, configure=configure)


def test_a_cookie_serializer_of_your_own_needs_a_secret_key_too():
    """The column's tokens are sealed with a key derived from session.secret_key."""
    from sessions_kernel import AESGCMCookieSerializer
    from sessions_kernel.crypto import parse_secret_keys

    serializer = AESGCMCookieSerializer(parse_secret_keys(TEST_SECRET_KEY))
    with pytest.raises(ConfigurationError, match=r"Set session\.secret_key as well"):
        session_factory(model_class=make_model(CSRFMixin), serializer=serializer)
    factory = session_factory(
        model_class=make_model(CSRFMixin), serializer=serializer, secret_key=TEST_SECRET_KEY
    )
    assert "csrf" in {info.name for info in factory.config.active}
    # without the mixin the plugin is off, and asks for nothing
    session_factory(model_class=make_model(), serializer=serializer)


def test_a_cryptography_without_aes_siv_fails_at_start_up(monkeypatch):
    """The column is sealed with AES-SIV: a cryptography built without it (an OpenSSL
    before 3.0) is a start-up error that says so, not a 500 at the first token."""
    import sessions_csrf
    from cryptography.exceptions import UnsupportedAlgorithm, _Reasons

    def unsupported(key):
        raise UnsupportedAlgorithm("AES-SIV is not supported", _Reasons.UNSUPPORTED_CIPHER)

    monkeypatch.setattr(sessions_csrf, "AESSIV", unsupported)
    sessions_csrf._siv_problem.cache_clear()
    try:
        with pytest.raises(ConfigurationError, match="with AES-SIV, which this build"):
            session_factory(model_class=make_model(CSRFMixin), secret_key=TEST_SECRET_KEY)
    finally:
        sessions_csrf._siv_problem.cache_clear()
