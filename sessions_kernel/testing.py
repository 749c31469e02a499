"""Helpers to test an application or a plugin against real databases.

* :class:`Clock`: a clock to give the factory (``clock=``) and move by hand;
* :class:`StatementCounter`: counts the SQL statements an engine executes;
* :func:`make_model`: a session model on a fresh declarative base;
* :func:`make_app`: a real Pyramid application (pyramid_tm, zope.sqlalchemy,
  pyramid_retry, ``request.dbsession``) with the session factory and a few
  JSON views over the session (:func:`add_test_views`, in :mod:`.testing_views`),
  wrapped for WebTest (:class:`SessionTestApp`);
* :class:`Race`: requests of one session run side by side, each paused where
  the test says (after its load, before its commit), to test merges;
* :class:`ApplicationTestApp`: your own application, from its ``main()``,
  wrapped the same way (real commits, the clock, the statement counter).

The pytest plugin :mod:`sessions_kernel.pytest_plugin` turns these into
fixtures that run a test on SQLite, PostgreSQL and MariaDB. Install both with
``pip install 'sessions-kernel[testing]'``; importing this module without
that extra raises an :class:`ImportError` that says so.
"""

from __future__ import annotations

import functools
import http.cookiejar
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
import transaction
import zope.sqlalchemy
from pyramid.config import Configurator
from sqlalchemy.orm import DeclarativeBase, sessionmaker

from .crypto import KitKey
from .maintenance import add_ddl
from .model import BaseMixin
from .racing import Race, Racer
from .testing_views import add_test_views

if TYPE_CHECKING:
    from .factory import SessionFactory

#: The extra that installs what the kit needs beyond the kernel's own dependencies.
_INSTALL_HINT = "pip install 'sessions-kernel[testing]'"

try:  # the ``testing`` extra: the kit drives applications through WebTest, with retries
    import pyramid_retry  # noqa: F401
    import webtest
except ImportError as exc:
    raise ImportError(
        f"sessions_kernel.testing needs {exc.name}, which is not installed: {_INSTALL_HINT}",
        name=exc.name,
    ) from exc

__all__ = [
    "TEST_SECRET_KEY",
    "ApplicationTestApp",
    "Clock",
    "Race",
    "Racer",
    "SessionTestApp",
    "StatementCounter",
    "add_dbsession",
    "add_test_views",
    "make_app",
    "make_model",
    "make_wsgi_app",
    "reset_transaction_manager",
]

#: A fixed key for tests only. It is published, so the kernel refuses its text
#: (copied into an ini file, say); it accepts this object, wherever a test passes
#: it (``secret_key=TEST_SECRET_KEY``, an application's settings).
TEST_SECRET_KEY = KitKey("c2Vzc2lvbnMta2VybmVsLXRlc3Qta2V5LTMyYnl0ZXM=")


class Clock:
    """A clock for tests: ``clock()`` returns the time it was set to.

    Pass it as the factory's ``clock`` (the test apps and fixtures do);
    :meth:`advance` moves time forward instead of sleeping::

        clock = Clock()
        app = make_app(model, engine, settings={"idle_timeout": "60"}, clock=clock)
        clock.advance(61)

    :param start: the time it starts at, in seconds since the epoch (a fixed
        moment in June 2025 by default, so that runs repeat exactly).
    """

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        #: The time it answers, in seconds since the epoch; assign it to jump.
        self.time = float(start)

    def __call__(self) -> float:
        """The current :attr:`time`."""
        return self.time

    def advance(self, seconds: float) -> float:
        """Move the time forward by ``seconds`` (backward if negative); return the new time."""
        self.time += seconds
        return self.time


class StatementCounter:
    """Records every SQL statement an engine executes while it is active.

    ::

        counter = StatementCounter(engine)
        with counter:
            app.get("/read")
        assert counter.count == 1, counter.statements
    """

    def __init__(self, engine: sa.Engine) -> None:
        #: The engine it listens to.
        self.engine = engine
        #: The statements recorded since it was last entered, white space collapsed.
        self.statements: list[str] = []
        self._active = False
        sa.event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if self._active:
            self.statements.append(" ".join(statement.split()))

    @property
    def count(self) -> int:
        """How many statements were recorded."""
        return len(self.statements)

    def kinds(self) -> list[str]:
        """The first word of each statement: ``['SELECT', 'UPDATE']``."""
        return [s.split(None, 1)[0].upper() for s in self.statements]

    def __enter__(self) -> StatementCounter:
        """Start recording, from an empty list."""
        self.statements = []
        self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop recording; :attr:`statements` keeps what was recorded."""
        self._active = False


def make_model(
    *mixins: type, name: str = "Session", tablename: str | None = None, **attributes: Any
) -> type[BaseMixin]:
    """A session model on a new declarative base: ``class name(*mixins, BaseMixin, Base)``.

    ``make_model(IdleMixin)`` is what a user writes as ``class Session(IdleMixin,
    BaseMixin, Base)``. The table is named ``sessions_<pid>`` unless
    ``tablename`` says otherwise, so that test runs in several processes can
    share one database server; ``attributes`` become class attributes (a
    column that overrides a mixin's, say). The table is not created:
    :func:`make_app` and the ``session_app`` fixture do that, with what its
    active plugins need there (:func:`~sessions_kernel.add_ddl`: sessions-cache's
    trigger on PostgreSQL).
    """
    tablename = tablename or f"sessions_{os.getpid()}"

    class Base(DeclarativeBase):
        pass

    namespace = {"__tablename__": tablename, **attributes}
    model = cast("type[BaseMixin]", type(name, (*mixins, BaseMixin, Base), namespace))
    add_ddl(model)
    return model


def add_dbsession(
    config: Configurator, engine: sa.Engine, name: str = "dbsession"
) -> sessionmaker[Any]:
    """Give requests ``request.<name>``: a SQLAlchemy session joined to the request's transaction.

    What Pyramid's SQLAlchemy starter sets up (include ``pyramid_tm`` first):
    one session per request, created on first use, registered with
    zope.sqlalchemy so that pyramid_tm commits or aborts it with the request;
    or, as the starter's test fixtures do, the one the environ holds as
    ``app.dbsession`` (with ``tm.active`` and ``tm.manager``: one transaction
    shared across requests). Returns the ``sessionmaker``.
    """
    factory = sessionmaker(bind=engine)

    def dbsession(request: Any) -> Any:
        session = request.environ.get("app.dbsession")
        if session is None:
            session = factory(info={"request": request})
            zope.sqlalchemy.register(session, transaction_manager=request.tm)
        return session

    config.add_request_method(dbsession, name=name, reify=True)
    return factory


def make_wsgi_app(
    model: type[BaseMixin],
    engine: sa.Engine,
    *,
    settings: dict[str, Any] | None = None,
    clock: Callable[[], float] | None = None,
    plugins: Iterable[object] = (),
    configure: Callable[[Configurator], None] | None = None,
    retry: bool = True,
    test_views: bool = True,
) -> Any:
    """A WSGI application laid out like Pyramid's SQLAlchemy starter, with sessions.

    What :class:`SessionTestApp` wraps, with the same arguments (``clock``
    is the factory's real clock unless given): for benchmarks and servers
    that need the application without WebTest. pyramid_tm joins the
    request's transaction (its ``explicit_manager``), pyramid_retry runs a
    request again up to 3 attempts, and ``request.dbsession`` is
    :func:`add_dbsession`'s.
    """
    app_settings = {
        "tm.manager_hook": "pyramid_tm.explicit_manager",
        "retry.attempts": "3",
        "session.secret_key": TEST_SECRET_KEY,
    }
    for key, value in (settings or {}).items():
        app_settings[key if key.startswith(("session.", "tm.", "retry.")) else f"session.{key}"] = (
            value
        )
    with Configurator(settings=app_settings) as config:
        config.include("pyramid_tm")
        if retry:
            config.include("pyramid_retry")
        add_dbsession(config, engine)
        from .factory import factory_args_from_settings, register_factory, session_factory

        args = factory_args_from_settings(config.get_settings())
        args["model_class"] = model
        if clock is not None:
            args["clock"] = clock
        # as config.include('sessions_kernel') does: the plugins' session_includeme runs
        register_factory(config, session_factory(plugins=plugins, **args))
        if test_views:
            add_test_views(config)
        if configure is not None:
            configure(config)
        return config.make_wsgi_app()


class _Browsers:
    """WebTest browsers over ``self.wsgi``, counting statements on ``self.engine``."""

    #: The WSGI application under test (Pyramid's router: ``app.wsgi.registry``).
    wsgi: Any
    #: The SQLAlchemy engine of the database under test.
    engine: sa.Engine
    #: The factory's :class:`Clock`: ``app.clock.advance(60)`` moves the application's time.
    clock: Clock
    #: The :class:`StatementCounter` on :attr:`engine` that :meth:`count` activates.
    counter: StatementCounter
    #: The default browser, a ``webtest.TestApp`` (see :meth:`new_browser`): the
    #: attributes this class does not have are its (``app.get`` is ``app.browser.get``).
    browser: webtest.TestApp

    def new_browser(self) -> webtest.TestApp:
        """A WebTest app with a cookie jar of its own (another browser), on the same application.

        Its ``set_cookie(name, value)`` stores the cookie as the application's
        own ``Set-Cookie`` would, so that the application's next cookie of that
        name replaces it, as in a real browser (WebTest's own keeps both, and
        sends both).
        """
        return _browser_class()(self.wsgi)

    def __getattr__(self, name: str) -> Any:
        # app.get(...), app.post_json(...), app.cookies ... go to the default browser
        return getattr(self.browser, name)

    @contextmanager
    def count(self) -> Iterator[StatementCounter]:
        """Record the SQL statements of the requests inside the block.

        ::

            with app.count() as sql:
                app.get("/read")
            assert sql.kinds() == ["SELECT"], sql.statements

        Statements of any browser of this application are recorded, those of
        :meth:`rows` and :meth:`row` too (call them after the block).
        """
        with self.counter:
            yield self.counter

    def rows(self) -> list[Any]:
        """Every stored session row (instances of :attr:`model`), read outside any request."""
        with sa.orm.Session(self.engine) as db:
            return list(db.scalars(sa.select(self.model)))

    def row(self) -> Any:
        """The one stored session row; an ``AssertionError`` if there are more, or none."""
        rows = self.rows()
        assert len(rows) == 1, f"expected one session row, found {len(rows)}"
        return rows[0]

    @property
    def model(self) -> type[BaseMixin]:
        """The session model (the application's, for :class:`ApplicationTestApp`)."""
        model: type[BaseMixin] | None = self.__dict__.get("_model")
        return model or self.factory.model

    @property
    def factory(self) -> SessionFactory:
        """The application's :class:`~sessions_kernel.SessionFactory`.

        ``app.factory.config.values`` holds the settings in force,
        ``app.factory.config.active`` the active plugins.
        """
        from pyramid.interfaces import ISessionFactory

        factory: SessionFactory = self.wsgi.registry.queryUtility(ISessionFactory)
        return factory


class SessionTestApp(_Browsers):
    """A real Pyramid application with sessions on one database, under WebTest.

    The application is laid out like Pyramid's SQLAlchemy starter (see
    :func:`make_wsgi_app`): every request runs in its own transaction and
    commits, so the next request reads what the previous one stored. It has
    the JSON views of :func:`add_test_views`. The table of ``model`` must
    exist: :func:`make_app` and the ``session_app`` fixture create it.

    ::

        app = SessionTestApp(make_model(IdleMixin), engine, settings={"idle_timeout": "60"})
        app.post_json("/set", {"a": 1})
        app.clock.advance(61)
        assert app.get("/read").json["new"] is True

    Attributes this class does not have are the default browser's
    (:attr:`browser`, a ``webtest.TestApp``): ``app.get``, ``app.post``,
    ``app.post_json``, ``app.put_json``, ``app.delete``, ``app.cookies``,
    ``app.set_cookie``, ``app.reset`` (forget the cookies), ... A second
    application on the same table (other settings, the same cookies) is
    ``SessionTestApp(app.model, app.engine, settings=..., clock=app.clock)``.

    :param model: the session model, e.g. from :func:`make_model`.
    :param engine: the SQLAlchemy engine of the database.
    :param settings: session settings by name, as an ini file gives them
        (``{"idle_timeout": "60"}``), with or without the ``session.``
        prefix; names starting with ``tm.`` or ``retry.`` go to pyramid_tm
        and pyramid_retry. ``secret_key`` is :data:`TEST_SECRET_KEY` unless
        given. A bad setting raises ``ConfigurationError`` here.
    :param clock: the factory's clock, :attr:`clock`; a new :class:`Clock`
        unless given.
    :param plugins: plugin objects registered beside the installed plugins:
        modules, or objects whose methods are marked ``@hookimpl``. Each is
        registered under its ``__name__`` (an object without one, under its
        class's name) exactly as an entry point's plugin, and is active only
        when ``model`` subclasses one of the mixins its ``session_mixins``
        returns. For a plugin a test needs that is not installed (one under
        development, a stand-in for another distribution's), or hook
        implementations that record what the kernel calls. An object that is
        also installed through an entry point is registered once.
    :param configure: ``configure(config)`` is called with the
        Configurator after the test views were added: add views,
        subscribers, exception views of your own.
    :param retry: include pyramid_retry (3 attempts), as an application
        should; ``False`` lets a retryable error reach the test.
    :param test_views: add :func:`add_test_views`' views.
    """

    def __init__(
        self,
        model: type[BaseMixin],
        engine: sa.Engine,
        *,
        settings: dict[str, Any] | None = None,
        clock: Clock | None = None,
        plugins: Iterable[object] = (),
        configure: Callable[[Configurator], None] | None = None,
        retry: bool = True,
        test_views: bool = True,
    ) -> None:
        self._model = model
        self.engine = engine
        self.clock = clock or Clock()
        self.counter = StatementCounter(engine)
        self.wsgi = make_wsgi_app(
            model,
            engine,
            settings=settings,
            clock=self.clock,
            plugins=plugins,
            configure=configure,
            retry=retry,
            test_views=test_views,
        )
        self.browser = self.new_browser()


class ApplicationTestApp(_Browsers):
    """Your application, built by its own ``main()``, under WebTest with real commits.

    ::

        app = ApplicationTestApp(myapp.main, get_appsettings("testing.ini"),
                                 engine=engine, metadata=Base.metadata)
        app.post("/login", {...})
        app.clock.advance(3600)            # the factory's clock: session.clock
        with app.count() as sql:
            app.get("/")
        assert sql.kinds() == ["SELECT"]

    Each request runs through pyramid_tm and commits, as in production; the
    next request reads what the previous one stored. ``main(global_config,
    **settings)`` receives ``settings`` plus ``sqlalchemy.url`` (the
    engine's), ``dbengine`` (the engine itself: the SQLAlchemy starter's
    ``models/__init__.py`` uses it instead of making an engine, so the
    statement counter sees every statement) and ``session.clock``.

    ``metadata``: its tables are dropped and created on ``engine`` first, and
    dropped by :meth:`close`. The pytest fixture ``session_application``
    builds one per database and closes it.
    """

    def __init__(
        self,
        main: Callable[..., Any],
        settings: dict[str, Any] | None = None,
        *,
        engine: sa.Engine,
        metadata: sa.MetaData | None = None,
        clock: Clock | None = None,
        global_config: dict[str, Any] | None = None,
    ) -> None:
        self.engine = engine
        #: The application's metadata, whose tables :meth:`close` drops.
        self.metadata = metadata
        self.clock = clock or Clock()
        self.counter = StatementCounter(engine)
        if metadata is not None:
            metadata.drop_all(engine)
            metadata.create_all(engine)
        app_settings = dict(settings or {})
        app_settings["sqlalchemy.url"] = engine.url.render_as_string(hide_password=False)
        app_settings["dbengine"] = engine
        app_settings["session.clock"] = self.clock
        self.wsgi = main(dict(global_config or {}), **app_settings)
        self.browser = self.new_browser()

    def close(self) -> None:
        """Drop the tables of ``metadata`` (nothing without it)."""
        if self.metadata is not None:
            self.metadata.drop_all(self.engine)


@functools.cache
def _browser_class() -> type[webtest.TestApp]:
    import webtest
    from webtest.app import escape_cookie_value  # type: ignore[attr-defined]  # not in its stubs

    class Browser(webtest.TestApp):
        # WebTest's stubs take a value of None, which its own set_cookie cannot escape either
        def set_cookie(self, name: str, value: str) -> None:  # type: ignore[override]
            host = self.extra_environ.get("HTTP_HOST", "localhost").split(":", 1)[0]
            domain = host if "." in host else f"{host}.local"  # what the jar stores for a response
            cookie = http.cookiejar.Cookie(
                0, name, escape_cookie_value(value), None, False, domain, False, False,
                "/", True, False, None, False, None, None, {},
            )  # fmt: skip
            self.cookiejar.set_cookie(cookie)

    return Browser


def make_app(model: type[BaseMixin], engine: sa.Engine, **kwargs: Any) -> SessionTestApp:
    """Create ``model``'s table on ``engine`` (dropping any leftover) and build a test app.

    ``kwargs`` are :class:`SessionTestApp`'s (``settings``, ``clock``,
    ``plugins``, ``configure``, ``retry``, ``test_views``). The table is
    not dropped afterwards (the ``session_app`` fixture does that).
    """
    model.metadata.drop_all(engine)
    model.metadata.create_all(engine)
    return SessionTestApp(model, engine, **kwargs)


def reset_transaction_manager() -> None:
    """Abort whatever the thread-local transaction manager holds (between tests).

    For tests that use ``transaction.manager`` outside a request (pyramid_tm's
    requests use their own manager): a test that failed half-way leaves the
    next one a clean transaction.
    """
    transaction.manager.abort()
