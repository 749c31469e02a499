"""A minimal application with server-side sessions: a counter kept in the session.

Run it with ``make demo`` (or ``sessions-demo --port 6543 --db sqlite:///demo.sqlite``).
"""

from __future__ import annotations

import argparse
import html
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import waitress
import zope.sqlalchemy
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPSeeOther
from pyramid.response import Response
from sqlalchemy.orm import DeclarativeBase, sessionmaker

from sessions_kernel import BaseMixin, generate_secret_key


class Base(DeclarativeBase):
    pass


class Session(BaseMixin, Base):
    __tablename__ = "session"


def counter(request: Any) -> Response:
    session = request.session
    if request.method == "POST":
        if "reset" in request.POST:
            session.invalidate()
        else:
            session["count"] = session.get("count", 0) + 1
            session.flash(f"Counted to {session['count']}.")
        return HTTPSeeOther(location=request.route_url("home"))
    messages = "".join(f"<p class=flash>{html.escape(m)}</p>" for m in session.pop_flash())
    return Response(
        "<!doctype html><title>sessions_kernel demo</title>"
        "<h1>A counter in a server-side session</h1>"
        f"{messages}<p>Count: <b id=count>{session.get('count', 0)}</b>"
        f" (session {'new' if session.new else session.session_id[:12] + '…'})</p>"
        "<form method=post><button>Count</button> <button name=reset>Reset</button></form>"
    )


def make_app(db_url: str, secret_key: str) -> Any:
    engine = sa.create_engine(db_url)
    Base.metadata.create_all(engine)
    settings = {
        "tm.manager_hook": "pyramid_tm.explicit_manager",
        "session.secret_key": secret_key,
        "session.model_class": f"{__name__}.Session",
    }
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_retry")
        factory = sessionmaker(bind=engine)

        def dbsession(request: Any) -> Any:
            db = factory(info={"request": request})
            zope.sqlalchemy.register(db, transaction_manager=request.tm)
            return db

        config.add_request_method(dbsession, reify=True)
        config.include("sessions_kernel")
        config.add_route("home", "/")
        config.add_view(counter, route_name="home")
        return config.make_wsgi_app()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=6543)
    default_db = f"sqlite:///{Path(__file__).resolve().parent.parent / 'demo.sqlite'}"
    parser.add_argument("--db", default=default_db, help="SQLAlchemy URL (default: %(default)s)")
    args = parser.parse_args(argv)
    key = os.environ.get("SESSION_SECRET_KEY") or generate_secret_key()
    print(f"Serving on http://127.0.0.1:{args.port}/ with sessions in {args.db}")
    waitress.serve(make_app(args.db, key), host="127.0.0.1", port=args.port)
