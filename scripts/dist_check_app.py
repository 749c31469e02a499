"""The smoke application of ``scripts/dist-check``: what a user builds from the wheels alone.

``python dist_check_app.py DIR`` writes ``DIR/smoke.ini`` (SQLite, a key in a file beside
it), creates the tables and drives the application through WebTest: a login, a CSRF
token, a protected write, the cookie round trip, a read; then runs ``psessions`` on the
ini (``check``, ``plugins``, ``gc``). Every plugin of the repository is active (the model
lists each one's mixin). It prints each check and exits non-zero at the first failure.

It runs in a fresh venv that holds the built wheels and no checkout: it imports nothing
of the repository but the installed distributions, and ``dist-check`` runs it from a
temporary directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import webtest
import zope.sqlalchemy
from pyramid.config import Configurator
from pyramid.csrf import get_csrf_token
from pyramid.paster import get_app
from pyramid.security import remember
from sessions_absolute_timeout import AbsoluteMixin
from sessions_cache import CacheMixin
from sessions_cookie_settings import ConfigCookieMixin
from sessions_csrf import ColumnCSRFStoragePolicy, CSRFMixin
from sessions_idle_timeout import IdleMixin
from sessions_migrate import MigrateMixin
from sessions_renewal import RenewalMixin
from sessions_userid import UseridMixin, UserSessionSecurityPolicy
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

import sessions_kernel
from sessions_kernel import BaseMixin, add_indexes


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)


#: every plugin's mixin: each plugin of the repository is active
MIXINS = (
    IdleMixin,
    AbsoluteMixin,
    RenewalMixin,
    ConfigCookieMixin,
    UseridMixin,
    CSRFMixin,
    CacheMixin,
    MigrateMixin,
)


class Session(*MIXINS, BaseMixin, Base):
    __tablename__ = "session"
    userid: Mapped[int | None] = mapped_column(
        sa.ForeignKey(User.id, ondelete="CASCADE"), index=True
    )


add_indexes(Session)


INI = """\
[app:main]
use = call:dist_check_app:main
sqlalchemy.url = sqlite:///%(here)s/smoke.sqlite
tm.annotate_user = false
session.secret_key_file = %(here)s/session.key
session.model_class = dist_check_app.Session
session.cookie_name = __Host-session
session.cookie_secure = true
session.idle_timeout = 1800
session.absolute_timeout = 43200
session.renewal_timeout = 900
session.cache_max_staleness = 2
session.migrate_from = beaker
session.migrate_until = {until}
session.migrate_secret_file = %(here)s/beaker.secret

# one process of one thread: what SQLite can serve (psessions check reads this section)
[server:main]
use = egg:waitress#main
threads = 1
"""


def main(global_config: dict[str, str], **settings: str) -> Any:
    """The application: the starter's request.dbsession, sessions, a login, a CSRF form."""
    engine = sa.create_engine(settings["sqlalchemy.url"])
    factory = sessionmaker(bind=engine)
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_retry")

        def dbsession(request: Any) -> Any:
            db = factory()
            zope.sqlalchemy.register(db, transaction_manager=request.tm)
            return db

        config.add_request_method(dbsession, reify=True)
        config.include("sessions_kernel")
        config.set_security_policy(UserSessionSecurityPolicy())
        config.set_csrf_storage_policy(ColumnCSRFStoragePolicy())
        config.set_default_csrf_options(require_csrf=True)

        def view(name: str, func: Any, **kw: Any) -> None:
            config.add_route(name, "/" + name)
            config.add_view(func, route_name=name, renderer="json", **kw)

        def login(request: Any) -> dict[str, Any]:
            remember(request, int(request.params["user"]))
            return {"userid": request.authenticated_userid}

        def write(request: Any) -> dict[str, Any]:
            request.session["note"] = request.params["note"]
            return {"ok": True}

        def read(request: Any) -> dict[str, Any]:
            return {"userid": request.authenticated_userid, "note": request.session.get("note")}

        # the login form is exempt here (a real one would carry a pre-login token)
        view("login", login, request_method="POST", require_csrf=False)
        view("token", lambda request: {"token": get_csrf_token(request)})
        view("write", write, request_method="POST")
        view("read", read)
    return config.make_wsgi_app()


def check(what: str, ok: bool, detail: object = "") -> None:
    if not ok:
        print(f"FAILED: {what} {detail}", flush=True)
        raise SystemExit(1)
    print(f"  ok: {what}", flush=True)


def psessions(ini: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("psessions")
    return subprocess.run(
        [str(script), str(ini), *args], capture_output=True, text=True, timeout=120
    )


def run(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ini = folder / "smoke.ini"
    until = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 30 * 24 * 3600))
    ini.write_text(INI.replace("{until}", until))
    (folder / "beaker.secret").write_text("the old store's secret\n")
    key = folder / "session.key"
    key.write_text(sessions_kernel.generate_secret_key() + "\n")
    key.chmod(0o600)
    print(
        f"smoke application: sessions-kernel {sessions_kernel.__version__} from "
        f"{Path(sessions_kernel.__file__).parent}"
    )
    purelib = Path(sysconfig.get_paths()["purelib"]).resolve()
    for module in (sessions_kernel, *(sys.modules[m.__module__] for m in MIXINS)):
        where = Path(module.__file__ or "").resolve()
        check(
            f"{module.__name__} is the installed wheel in this venv, not a checkout",
            where.is_relative_to(purelib),
            where,
        )

    app = get_app(str(ini))
    engine = sa.create_engine(f"sqlite:///{folder / 'smoke.sqlite'}")
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(User), [{"id": 7}])
    # HTTPS (the cookie is __Host-, secure) from a browser of the same origin
    https = {"wsgi.url_scheme": "https", "HTTP_HOST": "x.test", "HTTP_ORIGIN": "https://x.test"}
    test = webtest.TestApp(app, extra_environ=https)

    # every plugin of the repository is active for this model
    result = psessions(ini, "plugins", "--json")
    check("psessions plugins exits 0", result.returncode == 0, result.stderr)
    listed = json.loads(result.stdout)
    text = json.dumps(listed)
    for name in (
        "idle_timeout",
        "absolute_timeout",
        "renewal",
        "cookie_settings",
        "userid",
        "csrf",
        "cache",
        "migrate",
    ):
        check(f"psessions plugins lists {name}", f'"{name}"' in text)

    check("an anonymous read sets no cookie", "Set-Cookie" not in test.get("/read").headers)
    forged = webtest.TestApp(app, extra_environ=https)
    forged.set_cookie("beaker.session.id", "0" * 40 + "f" * 32)
    answer = forged.get("/read")
    check(
        "a forged Beaker cookie (sessions-migrate) reads as no session, sets no cookie",
        answer.json == {"userid": None, "note": None} and "Set-Cookie" not in answer.headers,
        answer.headers,
    )
    test.post("/login", {"user": "7"})
    cookie = test.cookies.get("__Host-session")
    check("the login sets the __Host-session cookie", bool(cookie))
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT userid, idle_expire, created FROM session"))
        (row,) = rows.all()
    check(
        "the login stored one row with the user and the timeouts",
        row[0] == 7 and row[1] is not None and row[2] is not None,
        row,
    )

    token = test.get("/token").json["token"]
    check("a CSRF token is handed out", bool(token))
    refused = test.post("/write", {"note": "x"}, expect_errors=True)
    check("a write without the token is refused (400)", refused.status_int == 400, refused.status)
    test.post("/write", {"note": "hello", "csrf_token": token})
    check(
        "a write with the token is stored", test.get("/read").json == {"userid": 7, "note": "hello"}
    )

    # the cookie round trip: a new client with only the cookie's value sees the session
    other = webtest.TestApp(app, extra_environ=https)
    other.set_cookie("__Host-session", test.cookies["__Host-session"])
    check(
        "the cookie alone carries the session to another client",
        other.get("/read").json == {"userid": 7, "note": "hello"},
    )
    other.set_cookie("__Host-session", test.cookies["__Host-session"][:-4] + "AAAA")
    check(
        "a damaged cookie is a fresh session",
        other.get("/read").json == {"userid": None, "note": None},
    )

    # psessions: check, gc (one session made to look idle for a day)
    result = psessions(ini, "check")
    check(
        "psessions check exits 0 (nothing weak)",
        result.returncode == 0,
        result.stdout + result.stderr,
    )
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE session SET idle_expire = :t"), {"t": int(time.time()) - 86400}
        )
    # --progress: the bar even through a pipe, so that tqdm (a dependency the wheel must
    # declare) is imported as on an operator's terminal
    result = psessions(ini, "gc", "--progress")
    check("psessions gc exits 0", result.returncode == 0, result.stdout + result.stderr)
    check("psessions gc --progress shows its bar", "1/1" in result.stderr, result.stderr)
    with engine.connect() as conn:
        left = conn.execute(sa.text("SELECT count(*) FROM session")).scalar_one()
    check("psessions gc deleted the expired session", left == 0, f"{left} rows left")
    print("smoke application: all checks passed")


if __name__ == "__main__":
    os.environ.pop("SESSIONS_KERNEL_LOAD_PLUGINS", None)
    run(Path(sys.argv[1]))
