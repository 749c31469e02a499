"""Helpers to test an application or a plugin against real databases.

* :class:`Clock`: a clock to give the factory (``clock=``) and move by hand;
* :class:`StatementCounter`: counts the SQL statements an engine executes;
* :func:`make_model`: a session model on a fresh declarative base;
* :func:`make_app`: a real Pyramid application (pyramid_tm, zope.sqlalchemy,
  pyramid_retry, ``request.dbsession``) with the session factory and a few
  JSON views over the session, wrapped for WebTest;
* :class:`ApplicationTestApp`: your own application, from its ``main()``,
  wrapped the same way (real commits, the clock, the statement counter).

The pytest plugin :mod:`sessions_kernel.pytest_plugin` turns these into
fixtures that run a test on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import functools
import http.cookiejar
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
import transaction
import zope.sqlalchemy
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPFound
from sqlalchemy.orm import DeclarativeBase, sessionmaker

from .crypto import KitKey
from .model import BaseMixin

#: The extra that installs what the kit needs beyond the kernel's own dependencies.
_INSTALL_HINT = "pip install 'sessions-kernel[testing]'"

try:  # the ``testing`` extra: the kit drives applications through WebTest, with retries
    import pyramid_retry  # noqa: F401
    import webtest  # noqa: F401
except ImportError as exc:
    raise ImportError(
        f"sessions_kernel.testing needs {exc.name}, which is not installed: {_INSTALL_HINT}",
        name=exc.name,
    ) from exc

__all__ = [
    "TEST_SECRET_KEY",
    "ApplicationTestApp",
    "Clock",
    "SessionTestApp",
    "StatementCounter",
    "add_dbsession",
    "add_test_views",
    "make_app",
    "make_model",
]

#: A fixed key for tests only. It is published, so the kernel refuses its text
#: (copied into an ini file, say); it accepts this object, wherever a test passes
#: it (``secret_key=TEST_SECRET_KEY``, an application's settings).
TEST_SECRET_KEY = KitKey("c2Vzc2lvbnMta2VybmVsLXRlc3Qta2V5LTMyYnl0ZXM=")


class Clock:
    """A clock for tests: ``clock()`` returns the time it was set to.

    Pass it as the factory's ``clock``; :meth:`advance` moves time forward
    instead of sleeping.
    """

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.time = float(start)

    def __call__(self) -> float:
        return self.time

    def advance(self, seconds: float) -> float:
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
        self.engine = engine
        self.statements: list[str] = []
        self._active = False
        sa.event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if self._active:
            self.statements.append(" ".join(statement.split()))

    @property
    def count(self) -> int:
        return len(self.statements)

    def kinds(self) -> list[str]:
        """The first word of each statement: ``['SELECT', 'UPDATE']``."""
        return [s.split(None, 1)[0].upper() for s in self.statements]

    def __enter__(self) -> StatementCounter:
        self.statements = []
        self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._active = False


def make_model(
    *mixins: type, name: str = "Session", tablename: str | None = None, **attributes: Any
) -> type:
    """A session model on a new declarative base: ``class name(*mixins, BaseMixin, Base)``.

    The table is named ``sessions_<pid>`` unless ``tablename`` says otherwise, so
    that test runs in several processes can share one database server.
    """
    tablename = tablename or f"sessions_{os.getpid()}"

    class Base(DeclarativeBase):
        pass

    namespace = {"__tablename__": tablename, **attributes}
    return type(name, (*mixins, BaseMixin, Base), namespace)


def _json_body(request: Any) -> Any:
    return request.json_body if request.body else {}


def add_test_views(config: Configurator) -> None:
    """JSON views over ``request.session`` that the kernel's tests (and yours) drive."""

    def view(path: str, func: Callable[[Any], Any], **kw: Any) -> None:
        name = path.strip("/").replace("/", "_").replace("{", "").replace("}", "") or "root"
        config.add_route(name, path)
        config.add_view(func, route_name=name, renderer="json", **kw)

    def state(request: Any) -> dict[str, Any]:
        s = request.session
        return {
            "data": dict(s),
            "new": s.new,
            "created": s.created,
            "flash": {q: s.peek_flash(q) for q in s._flash},
        }

    def set_values(request: Any) -> Any:
        request.session.update(_json_body(request))
        return state(request)

    def incr(request: Any) -> Any:
        key = request.matchdict["key"]
        request.session[key] = request.session.get(key, 0) + 1
        return state(request)

    def append(request: Any) -> Any:
        request.session.setdefault("items", []).append(_json_body(request)["item"])
        return state(request)

    def flash(request: Any) -> Any:
        body = _json_body(request)
        request.session.flash(body["msg"], body.get("queue", ""), body.get("allow_duplicate", True))
        return state(request)

    def pop_flash(request: Any) -> Any:
        return {"messages": request.session.pop_flash(request.params.get("queue", ""))}

    def invalidate(request: Any) -> Any:
        request.session.invalidate()
        request.session.update(_json_body(request))
        return state(request)

    def regenerate(request: Any) -> Any:
        request.session.regenerate_id()
        return state(request)

    def clear(request: Any) -> Any:
        request.session.clear()
        return state(request)

    def fail(request: Any) -> Any:
        request.session.update(_json_body(request))
        raise RuntimeError("the view failed after changing the session")

    def redirect(request: Any) -> Any:
        request.session.update(_json_body(request))
        raise HTTPFound(location="/read")

    def settings(request: Any) -> Any:
        body = _json_body(request)
        if body:
            with request.session.settings as s:
                for name, value in body.items():
                    s[name] = value
        return dict(request.session.settings)

    def failed(exc: Exception, request: Any) -> Any:
        request.response.status = 500
        return {"error": str(exc)}

    view("/none", lambda request: {"ok": True})
    view("/touch", lambda request: {"new": request.session.new})
    view("/read", state)
    view("/set", set_values)
    view("/incr/{key}", incr)
    view("/append", append)
    view("/flash", flash)
    view("/pop_flash", pop_flash)
    view("/invalidate", invalidate)
    view("/regenerate", regenerate)
    view("/clear", clear)
    view("/fail", fail)
    view("/redirect", redirect)
    view("/settings", settings)
    config.add_exception_view(failed, context=RuntimeError, renderer="json")


def add_dbsession(config: Configurator, engine: sa.Engine, name: str = "dbsession") -> None:
    """Give requests ``request.<name>``: a SQLAlchemy session joined to the request's transaction.

    What Pyramid's SQLAlchemy starter sets up (include ``pyramid_tm`` first):
    one session per request, created on first use, registered with
    zope.sqlalchemy so that pyramid_tm commits or aborts it with the request.
    """
    factory = sessionmaker(bind=engine)

    def dbsession(request: Any) -> Any:
        session = factory(info={"request": request})
        zope.sqlalchemy.register(session, transaction_manager=request.tm)
        return session

    config.add_request_method(dbsession, name=name, reify=True)


def make_wsgi_app(
    model: type,
    engine: sa.Engine,
    *,
    settings: dict[str, Any] | None = None,
    clock: Callable[[], float] | None = None,
    plugins: Iterable[object] = (),
    configure: Callable[[Configurator], None] | None = None,
    retry: bool = True,
    test_views: bool = True,
) -> Any:
    """A WSGI application laid out like Pyramid's SQLAlchemy starter, with sessions."""
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
        from .factory import factory_args_from_settings, session_factory

        args = factory_args_from_settings(config.get_settings())
        args["model_class"] = model
        if clock is not None:
            args["clock"] = clock
        config.set_session_factory(session_factory(plugins=plugins, **args))
        if test_views:
            add_test_views(config)
        if configure is not None:
            configure(config)
        return config.make_wsgi_app()


class _Browsers:
    """WebTest browsers over ``self.wsgi``, counting statements on ``self.engine``."""

    wsgi: Any
    engine: sa.Engine
    counter: StatementCounter
    browser: Any

    def new_browser(self) -> Any:
        """A WebTest app with a cookie jar of its own (another browser).

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
        """``with app.count() as sql: app.get(...)``; then ``sql.count``."""
        with self.counter:
            yield self.counter

    def rows(self) -> list[Any]:
        """Every stored session row, read outside any request."""
        with sa.orm.Session(self.engine) as db:
            return list(db.scalars(sa.select(self.model)))

    def row(self) -> Any:
        rows = self.rows()
        assert len(rows) == 1, f"expected one session row, found {len(rows)}"
        return rows[0]

    @property
    def model(self) -> type:
        """The session model (the application's, for :class:`ApplicationTestApp`)."""
        return self.__dict__.get("_model") or self.factory.model

    @property
    def factory(self) -> Any:
        """The application's session factory."""
        from pyramid.interfaces import ISessionFactory

        return self.wsgi.registry.queryUtility(ISessionFactory)


class SessionTestApp(_Browsers):
    """A test application on one database: WebTest browsers, a clock, a statement counter."""

    def __init__(self, model: type, engine: sa.Engine, **kwargs: Any) -> None:
        self._model = model
        self.engine = engine
        self.clock: Clock = kwargs.pop("clock", None) or Clock()
        self.counter = StatementCounter(engine)
        self.wsgi = make_wsgi_app(model, engine, clock=self.clock, **kwargs)
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
        """Drop the metadata's tables."""
        if self.metadata is not None:
            self.metadata.drop_all(self.engine)


@functools.cache
def _browser_class() -> type:
    import webtest
    from webtest.app import escape_cookie_value

    class Browser(webtest.TestApp):  # type: ignore[misc]
        def set_cookie(self, name: str, value: str) -> None:
            host = self.extra_environ.get("HTTP_HOST", "localhost").split(":", 1)[0]
            domain = host if "." in host else f"{host}.local"  # what the jar stores for a response
            cookie = http.cookiejar.Cookie(
                0, name, escape_cookie_value(value), None, False, domain, False, False,
                "/", True, False, None, False, None, None, {},
            )  # fmt: skip
            self.cookiejar.set_cookie(cookie)

    return Browser


def make_app(model: type, engine: sa.Engine, **kwargs: Any) -> SessionTestApp:
    """Create ``model``'s table on ``engine`` (dropping any leftover) and build a test app."""
    model.metadata.drop_all(engine)
    model.metadata.create_all(engine)
    return SessionTestApp(model, engine, **kwargs)


def reset_transaction_manager() -> None:
    """Abort whatever the thread-local transaction manager holds (between tests)."""
    transaction.manager.abort()
