"""The sessions_kernel demo: sign-up, login and a live view of the session, with every plugin.

Run it with ``make demo`` (or ``sessions-demo --port 6543``); ``sessions-demo --help``
lists the options (database URL, timeouts).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import waitress
import zope.sqlalchemy
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from sessions_userid import UserSessionSecurityPolicy
from sqlalchemy.orm import sessionmaker

from sessions_kernel import generate_secret_key

from .models import Base, Session, User

__all__ = ["DEFAULT_DB_URL", "DemoOptions", "main", "make_app"]

#: SQLite file beside the package (``demo/demo.sqlite``, git-ignored)
DEFAULT_DB_URL = f"sqlite:///{Path(__file__).resolve().parent.parent / 'demo.sqlite'}"


@dataclass(frozen=True)
class DemoOptions:
    """The demo's timeouts, short by default so that a visitor sees them act within a minute.

    ``remember_max_age`` is the cookie's Max-Age for a login with "remember me"
    ticked; without it the cookie ends with the browser (no Max-Age).
    """

    idle_timeout: int = 30
    absolute_timeout: int = 300
    renewal_timeout: int = 60
    remember_max_age: int = 7 * 24 * 3600


def load_user(userid: int, request: Any) -> User | None:
    """The security policy's callback: the user came with the session (joined), no SQL."""
    return request.dbsession.get(User, userid)


def make_app(
    db_url: str = DEFAULT_DB_URL,
    secret_key: str | None = None,
    options: DemoOptions | None = None,
    *,
    clock: Callable[[], float] | None = None,
) -> Any:
    """The demo's WSGI application on the database at ``db_url`` (its tables are created).

    ``secret_key`` defaults to a fresh one (sessions then end with the process);
    ``clock`` replaces ``time.time`` for the sessions and the pages (tests move it).
    Bad option values stop here with a ``ConfigurationError`` naming the setting.
    """
    options = options or DemoOptions()
    engine = sa.create_engine(db_url)
    Base.metadata.create_all(engine)
    settings: dict[str, Any] = {
        "tm.manager_hook": "pyramid_tm.explicit_manager",
        # pyramid_tm would otherwise load the session on every request (also the status
        # poll) to annotate the transaction with the user id, and so extend the idle timeout
        "tm.annotate_user": False,
        "jinja2.filters": "clock = sessions_demo.views:format_clock",
        "session.secret_key": secret_key or generate_secret_key(),
        "session.model_class": Session,
        "session.idle_timeout": options.idle_timeout,
        "session.absolute_timeout": options.absolute_timeout,
        "session.renewal_timeout": options.renewal_timeout,
        "demo.remember_max_age": options.remember_max_age,
    }
    if clock is not None:
        settings["session.clock"] = clock
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_retry")
        config.include("pyramid_jinja2")
        factory = sessionmaker(bind=engine)

        def dbsession(request: Any) -> Any:
            db = factory(info={"request": request})
            zope.sqlalchemy.register(db, transaction_manager=request.tm)
            return db

        config.add_request_method(dbsession, reify=True)
        config.registry["demo.engine"] = engine  # for tests that count statements
        config.include("sessions_kernel")
        # installs sessions_csrf.ColumnCSRFStoragePolicy (the token in the csrf_token column)
        # and checks at commit that the model has CSRFMixin
        config.include("sessions_csrf")
        config.set_default_csrf_options(require_csrf=True)
        config.set_security_policy(UserSessionSecurityPolicy(callback=load_user))
        config.include(".views")
        config.add_static_view("static", "sessions_demo:static", cache_max_age=0)
        return config.make_wsgi_app()


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected whole seconds of at least 1, got {value}")
    return number


def main(argv: list[str] | None = None) -> None:
    """``sessions-demo``: serve the demo with waitress on 127.0.0.1."""
    defaults = DemoOptions()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, default=6543, help="port (default: %(default)s)")
    parser.add_argument(
        "--db", default=DEFAULT_DB_URL, help="SQLAlchemy URL (default: %(default)s)"
    )
    parser.add_argument(
        "--idle-timeout",
        type=_positive,
        default=defaults.idle_timeout,
        help="seconds without activity that end a session (default: %(default)s)",
    )
    parser.add_argument(
        "--absolute-timeout",
        type=_positive,
        default=defaults.absolute_timeout,
        help="seconds after its creation that end a session (default: %(default)s)",
    )
    parser.add_argument(
        "--renewal-timeout",
        type=_positive,
        default=defaults.renewal_timeout,
        help="seconds between two renewals of the cookie's id (default: %(default)s)",
    )
    parser.add_argument(
        "--remember-max-age",
        type=_positive,
        default=defaults.remember_max_age,
        help="cookie Max-Age when 'remember me' is ticked (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    options = DemoOptions(
        idle_timeout=args.idle_timeout,
        absolute_timeout=args.absolute_timeout,
        renewal_timeout=args.renewal_timeout,
        remember_max_age=args.remember_max_age,
    )
    key = os.environ.get("SESSION_SECRET_KEY")
    try:
        app = make_app(args.db, key, options)
    except ConfigurationError as exc:  # a timeout the plugins refuse, with the fix
        parser.error(str(exc))
    print(f"Serving on http://127.0.0.1:{args.port}/ with sessions in {args.db}")
    if not key:
        print(
            "(a fresh secret key: sessions end when the demo stops; set SESSION_SECRET_KEY "
            "to keep them)"
        )
    waitress.serve(app, host="127.0.0.1", port=args.port)
