"""Runs the real pyramid_sqlalchemy_sessions 0.1.0 in its own Pyramid 1 environment.

Started by ``tests/predecessor.py`` with that environment's Python (3.6, the
library's era, unless told another), never imported by the test suite. It reads
one JSON command per line on standard input and answers one JSON line on
standard output:

``{"op": "app", "name", "url", "table", "mixins", "settings", "id_type"}``
    builds a Pyramid 1 application with the library's own session factory
    (``config.include("pyramid_sqlalchemy_sessions")``), pyramid_tm and
    zope.sqlalchemy, on a model of the given mixins and table name, and
    creates the table (dropping a leftover first). ``id_type`` ``"binary16"``
    overrides the ``id`` column for MariaDB, where the library's own
    ``LargeBinary(16)`` primary key cannot be created.
``{"op": "request", "app", "now", "cookie", "actions"}``
    sends one request through the application with the old library's clock
    at ``now`` and the session cookie ``cookie`` (or none); ``actions`` are what
    the view does to the session (see ``do``). Answers the status, the cookie
    the response set (``null`` if none; ``""`` when it deleted it) and what the
    view saw: whether the session was new, its data, user id, CSRF token, flash.
``{"op": "row", "app", "cookie"}``
    the table's row for that cookie as the library's model reads it.
``{"op": "drop", "app"}``
    drops the table.

An action ``["probe"]`` dooms the request's transaction, so that asking the
library whether it accepts a cookie changes nothing (it would delete a
session it refuses, and extend or renew one it accepts).

Python 3.6 code, written for these tests.
"""

import datetime
import decimal
import json
import sys
import traceback
import uuid

import pyramid_sqlalchemy_sessions as pss
import pyramid_sqlalchemy_sessions.config.settings as pss_settings
import pyramid_sqlalchemy_sessions.session as pss_session
import sqlalchemy as sa
import transaction
import zope.sqlalchemy
from pyramid.authorization import ACLAuthorizationPolicy
from pyramid.config import Configurator
from pyramid.security import remember
from sqlalchemy.ext.declarative import declarative_base
from sqlalchemy.orm import sessionmaker
from webtest import TestApp

NOW = [0]


def _now():
    return NOW[0]


# the library reads the time through util.int_now, imported by name in each module
pss_session.int_now = _now
pss_settings.int_now = _now


class Thing:
    """An application's own class, as a session may hold one (not a plain value)."""

    def __init__(self, label):
        self.label = label


class Binary16(sa.types.TypeDecorator):
    """The library's UUID type with a BINARY(16) column, for MariaDB's primary key."""

    impl = sa.types.BINARY(16)

    def process_bind_param(self, value, dialect):
        return None if value is None else value.bytes

    def process_result_value(self, value, dialect):
        return None if value is None else uuid.UUID(bytes=bytes(value))


APPS = {}


def _shown(value):
    if isinstance(value, dict):
        return {str(k): _shown(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_shown(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, uuid.UUID):
        return value.hex
    return repr(value)


def do(request):
    session = request.session
    result = {}
    for action in request.json_body:
        kind, args = action[0], action[1:]
        if kind == "set":
            session[args[0]] = args[1]
        elif kind == "special":
            session["when"] = datetime.datetime(2017, 6, 28, 12, 30, 15, 250)
            session["day"] = datetime.date(2017, 6, 28)
            session["price"] = decimal.Decimal("19.99")
            session["tags"] = {"a", "b"}
            session["key"] = uuid.UUID("12345678-1234-5678-1234-567812345678")
            session["raw"] = b"\x00\xff"
            session["pair"] = (1, 2)
            session["nested"] = {"list": [1, {"x": None}], "ok": True, "pi": 3.25}
        elif kind == "object":
            session["thing"] = Thing("mine")
        elif kind == "login":
            remember(request, args[0])
        elif kind == "logout":
            session.userid = None
        elif kind == "csrf":
            result["csrf"] = session.get_csrf_token()
        elif kind == "flash":
            session.flash(args[0], queue=args[1] if len(args) > 1 else "")
        elif kind == "settings":
            with session.settings as s:
                for name, value in args[0].items():
                    s[name] = value
        elif kind == "invalidate":
            session.invalidate()
        elif kind == "probe":
            request.tm.doom()
        else:
            raise ValueError(f"unknown action {kind!r}")
    result["new"] = session.new
    result["data"] = _shown(dict(session))
    result["created"] = session.created
    result["flash"] = _shown(session._session.flash)
    for name in ("userid", "csrf_token"):
        if hasattr(session._session, name):
            result[name] = _shown(getattr(session._session, name))
    return result


def build_app(command):
    engine = sa.create_engine(command["url"])
    Base = declarative_base()
    mixins = tuple(getattr(pss, name) for name in command["mixins"])
    body = {"__tablename__": command["table"]}
    if command.get("id_type") == "binary16":
        body["id"] = sa.Column(Binary16, primary_key=True)
    model = type("Session", (*mixins, pss.BaseMixin, Base), body)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    factory = sessionmaker(bind=engine)

    def dbsession(request):
        session = factory()
        zope.sqlalchemy.register(session, transaction_manager=request.tm)
        return session

    settings = {"session." + k: v for k, v in command["settings"].items()}
    settings["session.model_class"] = model
    settings["tm.manager_hook"] = "pyramid_tm.explicit_manager"
    config = Configurator(settings=settings)
    config.include("pyramid_tm")
    config.add_request_method(dbsession, "dbsession", reify=True)
    config.include("pyramid_sqlalchemy_sessions")
    if issubclass(model, pss.UseridMixin):
        config.set_authentication_policy(pss.UserSessionAuthenticationPolicy())
        config.set_authorization_policy(ACLAuthorizationPolicy())
    config.add_route("do", "/do")
    config.add_view(do, route_name="do", renderer="json", request_method="POST")
    APPS[command["name"]] = {
        "app": TestApp(config.make_wsgi_app()),
        "engine": engine,
        "model": model,
        "metadata": Base.metadata,
        "factory": factory,
        "cookie_name": command["settings"].get("cookie_name", "session"),
    }
    return {"ok": True}


def run_request(command):
    entry = APPS[command["app"]]
    app = entry["app"]
    app.reset()
    NOW[0] = command["now"]
    headers = {}
    if command.get("cookie") is not None:
        headers["Cookie"] = f"{entry['cookie_name']}={command['cookie']}"
    response = app.post_json("/do", command.get("actions", []), headers=headers)
    cookie = None
    set_cookies = response.headers.getall("Set-Cookie")
    for header in set_cookies:
        name, _, rest = header.partition("=")
        if name == entry["cookie_name"]:
            cookie = rest.split(";", 1)[0].strip('"')
    return {
        "status": response.status_int,
        "cookie": cookie,
        "set_cookie": set_cookies,
        "seen": response.json,
    }


def row(command):
    entry = APPS[command["app"]]
    session = entry["factory"]()
    try:
        found = {}
        for obj in session.query(entry["model"]).all():
            found[obj.id.hex] = {
                c.key: _shown(getattr(obj, c.key)) for c in entry["model"].__table__.columns
            }
        return {"rows": found}
    finally:
        session.close()


def drop(command):
    entry = APPS.pop(command["app"])
    entry["metadata"].drop_all(entry["engine"])
    entry["engine"].dispose()
    return {"ok": True}


OPS = {"app": build_app, "request": run_request, "row": row, "drop": drop}


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            command = json.loads(line)
            answer = OPS[command["op"]](command)
        except Exception:
            transaction.abort()
            answer = {"error": traceback.format_exc()}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
