"""Configuration from ini settings through config.include('sessions_kernel'), and its errors."""

from __future__ import annotations

import kernel_support
import pytest
import sqlalchemy as sa
import sqlalchemy.orm
import webtest
from kernel_support import make_included_app, set_cookies
from pyramid.config import Configurator
from pyramid.interfaces import ISessionFactory
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sessions_kernel import BaseMixin, ConfigurationError, SessionError, session_factory
from sessions_kernel.testing import TEST_SECRET_KEY, Clock, make_model


@pytest.fixture
def ini_model(session_engine, monkeypatch):
    """A model reachable by the dotted name ``kernel_support.IniSession``."""
    model = make_model(name="IniSession")
    monkeypatch.setattr(kernel_support, "IniSession", model, raising=False)
    model.metadata.create_all(session_engine)
    yield model
    model.metadata.drop_all(session_engine)


@pytest.fixture
def ini_clock(monkeypatch):
    clock = Clock(1_000_000)
    monkeypatch.setattr(kernel_support, "ini_clock", clock, raising=False)
    return clock


def test_include_from_ini_settings(session_engine, ini_model, ini_clock):
    app = make_included_app(
        session_engine,
        {
            "session.secret_key": TEST_SECRET_KEY,
            "session.model_class": "kernel_support.IniSession",
            "session.clock": "kernel_support.ini_clock",
            "session.cookie_name": "app_session",
            "session.cookie_max_age": "600",
            "session.cookie_secure": "false",
            "session.cookie_httponly": "true",
            "session.dbsession_name": "dbsession",
            "session.data_serializer": "json",
            "other.setting": "ignored",
        },
    )
    factory = app.app.registry.getUtility(ISessionFactory)
    assert factory.model is ini_model
    assert factory.clock is ini_clock
    [cookie] = set_cookies(app.post_json("/set", {"a": 1}))
    assert cookie.startswith("app_session=") and "Max-Age=600" in cookie
    ini_clock.advance(42)
    app.get("/incr/a")
    with sa.orm.Session(session_engine) as db:
        [row] = db.scalars(sa.select(ini_model)).all()
    # the dotted clock gave every time the kernel recorded
    assert (row.created, row.updated) == (1_000_000, 1_000_042)
    assert app.get("/read").json == {
        "data": {"a": 2},
        "new": False,
        "created": 1_000_000,
        "flash": {},
    }


def _factory(**settings):
    settings.setdefault("model_class", make_model())
    settings.setdefault("secret_key", TEST_SECRET_KEY)
    return session_factory(**settings)


def _message(**settings) -> str:
    with pytest.raises(ConfigurationError) as info:
        _factory(**settings)
    return str(info.value)


def test_include_raises_configuration_error():
    with (
        pytest.raises(ConfigurationError, match=r"session\.model_class is required"),
        Configurator(settings={"session.secret_key": TEST_SECRET_KEY}) as config,
    ):
        config.include("sessions_kernel")


def test_unknown_setting_suggests_the_close_one():
    message = _message(cookie_maxage="60")
    assert message.startswith(
        "session.cookie_maxage = '60': no installed session plugin has a setting "
        "'cookie_maxage'. Did you mean session.cookie_max_age?"
    )
    assert "install that plugin's distribution" in message


def test_a_misspelt_secret_key_is_not_shown():
    message = _message(secret_kye=TEST_SECRET_KEY)
    assert message.startswith("session.secret_kye = <hidden>: no installed session plugin")
    assert "Did you mean session.secret_key?" in message
    assert TEST_SECRET_KEY not in message


def test_unknown_setting_without_a_close_one():
    message = _message(frobnicate="1")
    assert "Did you mean" not in message and "Known settings: " in message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("cookie_max_age", "soon", "expected a whole number from 0 to 315360000, got 'soon'"),
        ("cookie_secure", "maybe", "expected true or false, got 'maybe'"),
        ("cookie_path", "app", "expected a path starting with '/', got 'app'"),
        ("cookie_name", "my session", "expected a cookie name (RFC 6265 token)"),
        ("clock", "no.such.clock", "cannot import 'no.such.clock'"),
        ("data_serializer", "yaml", "cannot import 'yaml'"),
    ],
)
def test_bad_value_names_setting_value_and_fix(name, value, expected):
    message = _message(**{name: value})
    assert message.startswith(f"session.{name} = {value!r}: ")
    assert expected in message
    assert "default: " in message  # what to fall back to


def test_missing_model_class():
    with pytest.raises(ConfigurationError) as info:
        session_factory(secret_key=TEST_SECRET_KEY)
    assert str(info.value) == (
        "session.model_class is required: the dotted name of your session model, e.g.\n"
        "    session.model_class = myapp.models.Session"
    )


def test_missing_secret_key_says_how_to_make_one():
    with pytest.raises(ConfigurationError) as info:
        session_factory(model_class=make_model())
    message = str(info.value)
    assert message.startswith("session.secret_key is required")
    assert "python -m sessions_kernel" in message
    assert message.splitlines()[-1] == "    session.secret_key = <the key it printed>"


def test_model_not_a_base_mixin_subclass():
    class Base(DeclarativeBase):
        pass

    class Other(Base):
        __tablename__ = "other"
        id: Mapped[int] = mapped_column(primary_key=True)

    message = _message(model_class=Other)
    assert "is not a subclass of sessions_kernel.BaseMixin" in message
    assert "class Session(<feature mixins>, BaseMixin, Base)" in message


def test_model_not_mapped():
    class Unmapped(BaseMixin):
        pass

    message = _message(model_class=Unmapped)
    assert "is not a mapped SQLAlchemy class" in message


def test_model_dotted_name_that_does_not_import():
    message = _message(model_class="myapp.models.Nope")
    assert message.startswith("session.model_class = 'myapp.models.Nope': cannot import")


def test_plugin_setting_without_its_mixin(example_plugin):
    message = _message(example_epoch="3")
    assert message == (
        "session.example_epoch = '3' is set, but Session does not include ExampleMixin or "
        "ConfigExampleMixin from example (sessions-example-plugin), so that feature is off. "
        "Add the mixin to the bases of Session, or remove session.example_epoch."
    )


def test_plugin_setting_left_at_its_default_without_the_mixin_is_accepted(example_plugin):
    assert _factory(example_epoch="0").config.values.get("example_epoch") is None


def test_ini_strings_are_parsed():
    factory = _factory(
        cookie_max_age="none", cookie_secure="yes", cookie_httponly="off", cookie_domain=""
    )
    values = factory.config.values
    assert (values["cookie_max_age"], values["cookie_secure"]) == (None, True)
    assert (values["cookie_httponly"], values["cookie_domain"]) == (False, None)


def _touching_app(include_tm: bool, dbsession: bool) -> webtest.TestApp:
    def view(request):
        try:
            request.session["a"] = 1
        except SessionError as exc:
            return {"error": str(exc)}
        return {}

    with Configurator(settings={"tm.manager_hook": "pyramid_tm.explicit_manager"}) as config:
        if include_tm:
            config.include("pyramid_tm")
        if dbsession:
            config.add_request_method(lambda request: None, "dbsession", reify=True)
        config.set_session_factory(_factory())
        config.add_route("touch", "/touch")
        config.add_view(view, route_name="touch", renderer="json")
        return webtest.TestApp(config.make_wsgi_app())


def test_session_outside_pyramid_tm_is_a_clear_error():
    error = _touching_app(include_tm=False, dbsession=True).get("/touch").json["error"]
    assert error.startswith("request.session needs request.tm")
    assert "config.include('pyramid_tm')" in error


def test_missing_dbsession_is_a_clear_error():
    error = _touching_app(include_tm=True, dbsession=False).get("/touch").json["error"]
    assert error.startswith("request.dbsession does not exist")
    assert "session.dbsession_name" in error
