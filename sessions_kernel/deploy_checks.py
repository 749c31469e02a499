"""The kernel's own deploy checks (ids ``kernel.*``), and what every check returns.

:class:`Finding` is what a check reports (the kernel's and the plugins'
:func:`~sessions_kernel.hookspecs.session_deploy_checks` alike) and
:class:`Deployment` what it knows of the application beyond its session
factory. :func:`kernel_findings` runs the kernel's checks: the cookie's
attributes, the data's serializer and limits, expiry, the secret key, the
database and the server's concurrency, the application's setup (pyramid_retry,
pyramid_tm, the debug toolbar) and the model's indexes.
:func:`~sessions_kernel.deploy.run_checks` (:mod:`.deploy`) runs them with the
plugins' checks; import these names from :mod:`sessions_kernel.deploy`.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pyramid.settings import asbool

from . import maintenance
from .serializers import PickleSerializer

if TYPE_CHECKING:
    from pyramid.registry import Registry

    from .factory import SessionFactory

__all__ = ["Deployment", "Finding", "duration", "kernel_findings", "server_concurrency"]


@dataclass(frozen=True)
class Finding:
    """One weak setting: what :func:`~sessions_kernel.hookspecs.session_deploy_checks` returns.

    :param id: the name to silence it by, ``<plugin name>.<what>``, e.g.
        ``idle_timeout.off``; the kernel's own are ``kernel.<what>``.
    :param setting: the setting to change, as the user writes it
        (``session.idle_timeout``, ``tm.annotate_user``, ``[server:main] threads``);
        empty when no one setting is at fault.
    :param message: what is weak, with the value in force, and what it exposes.
    :param fix: what to do instead.
    """

    id: str
    setting: str
    message: str
    fix: str

    def line(self) -> str:
        """The finding on one line, as ``psessions check`` prints it."""
        where = f" [{self.setting}]" if self.setting else ""
        return f"{self.id}{where}: {self.message}. Fix: {self.fix}."

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Deployment:
    """What the checks know of the application beyond its session factory.

    :param registry: the Pyramid application's registry; ``None`` to check a
        factory on its own (the checks of the application's setup are skipped).
    :param bind: the engine (or connection) the sessions are stored through.
    :param server: the settings of the ini file's ``[server:NAME]`` section,
        or ``None`` when the file has none.
    :param server_section: that section's name, for messages.
    """

    registry: Registry | None = None
    bind: Any = None
    server: Mapping[str, str] | None = None
    server_section: str = "server:main"


def kernel_findings(factory: SessionFactory, deployment: Deployment | None = None) -> list[Finding]:
    """The kernel's own checks (ids ``kernel.*``), in the order ``psessions check`` prints them."""
    deployment = deployment or Deployment()
    values = factory.config.values
    return [
        *_cookie(values),
        *_data(values),
        *_expiry(factory),
        *_key(values, deployment.registry),
        *_database(deployment),
        *_application(deployment.registry),
        *_model(factory),
    ]


def duration(seconds: int) -> str:
    """``seconds`` in the largest whole unit that fits: ``30 days``, ``8 hours``, ``90 s``."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count > 1 else ''}"
    return f"{seconds} s"


def _cookie(values: Mapping[str, Any]) -> list[Finding]:
    found = []
    secure = values["cookie_secure"]
    name = values["cookie_name"]
    path, domain = values["cookie_path"], values["cookie_domain"]
    if not secure:
        found.append(
            Finding(
                "kernel.cookie_secure",
                "session.cookie_secure",
                "session.cookie_secure = false: browsers send the session cookie over plain "
                "HTTP too, where anyone on the network path can copy it and use the session",
                "set session.cookie_secure = true and serve the application over HTTPS only "
                "(redirect HTTP to HTTPS)",
            )
        )
    if not name.startswith("__Host-"):
        needs = [
            need
            for need, missing in (
                ("session.cookie_secure = true", not secure),
                ("session.cookie_path = /", path != "/"),
                ("no session.cookie_domain", bool(domain)),
            )
            if missing
        ]
        base = name.removeprefix("__Secure-")
        also = f" (which also needs {', '.join(needs)})" if needs else ""
        scope = f"; every host under cookie_domain = {domain!r} gets the cookie" if domain else ""
        found.append(
            Finding(
                "kernel.cookie_prefix",
                "session.cookie_name",
                f"session.cookie_name = {name!r} has no __Host- prefix: a sibling subdomain, or "
                "whoever answers a plain HTTP request for your host, can plant a cookie of that "
                f"name (session fixation, a forced logout){scope}",
                f"session.cookie_name = __Host-{base}{also}; renaming the cookie logs current "
                "visitors out once",
            )
        )
    if not values["cookie_httponly"]:
        found.append(
            Finding(
                "kernel.cookie_httponly",
                "session.cookie_httponly",
                "session.cookie_httponly = false: any script on your pages, an injected one "
                "included, can read the session cookie and send it away",
                "remove session.cookie_httponly (true by default)",
            )
        )
    samesite = values["cookie_samesite"]
    if samesite in ("None", None):
        what = (
            "session.cookie_samesite = None: browsers send the cookie with the requests other "
            "sites start (forms, images, scripts)"
            if samesite
            else "the cookie has no SameSite attribute (session.cookie_samesite is empty): "
            "browsers that do not default to Lax send it with the requests other sites start"
        )
        found.append(
            Finding(
                "kernel.cookie_samesite",
                "session.cookie_samesite",
                f"{what}, so any site can act in your visitors' sessions (cross-site request "
                "forgery)",
                "remove session.cookie_samesite (Lax by default) or set it to Strict",
            )
        )
    max_age = values["cookie_max_age"]
    if max_age == 0:
        found.append(
            Finding(
                "kernel.cookie_max_age",
                "session.cookie_max_age",
                "session.cookie_max_age = 0: browsers drop the cookie as soon as they get it, so "
                "no session outlives its first response",
                "remove session.cookie_max_age",
            )
        )
    elif max_age is not None:
        found.append(
            Finding(
                "kernel.cookie_max_age",
                "session.cookie_max_age",
                f"session.cookie_max_age = {max_age} ({duration(max_age)}): every browser keeps "
                "the cookie on disk that long, also once it is closed, so the next user of a "
                "shared computer gets the session (OWASP: keep session cookies non-persistent)",
                "remove session.cookie_max_age (the cookie then ends with the browser session); "
                "for a 'remember me', set cookie_max_age per session, for the visitors who ask",
            )
        )
    return found


def _data(values: Mapping[str, Any]) -> list[Finding]:
    found = []
    if isinstance(values["data_serializer"], PickleSerializer):
        found.append(
            Finding(
                "kernel.data_serializer",
                "session.data_serializer",
                "session.data_serializer = pickle: whoever can write to the session table (a SQL "
                "injection anywhere in the application, another application's database user, a "
                "restored backup) runs code in the application when a session is read",
                "remove session.data_serializer (json by default) and keep JSON values in sessions",
            )
        )
    if values["max_data_size"] is None:
        found.append(
            Finding(
                "kernel.max_data_size",
                "session.max_data_size",
                "session.max_data_size = none: one session may hold any amount of data, which "
                "every later request of it loads",
                "remove session.max_data_size (1 MiB by default), or give a limit in bytes",
            )
        )
    if values["lock_contended_for"] == 0:
        found.append(
            Finding(
                "kernel.lock_contended_for",
                "session.lock_contended_for",
                "session.lock_contended_for = 0: the concurrent writers of a contended session "
                "each run, lose and run again instead of queueing on its row (measured: 15 to 72 "
                "retries where 30 s gives one per worker)",
                "remove session.lock_contended_for (30 s by default)",
            )
        )
    until = values["accept_unbound_cookies_until"]
    if until is not None and until <= values["clock"]():
        day = datetime.fromtimestamp(until, timezone.utc).date().isoformat()
        found.append(
            Finding(
                "kernel.unbound_cookies",
                "session.accept_unbound_cookies_until",
                f"session.accept_unbound_cookies_until = {day} has passed: the window for the "
                "cookies of sessions-kernel 0.1 is closed and the setting does nothing",
                "remove session.accept_unbound_cookies_until",
            )
        )
    if values.get("cookie_previous_name"):
        found.append(
            Finding(
                "kernel.cookie_previous_name",
                "session.cookie_previous_name",
                f"session.cookie_previous_name = {values['cookie_previous_name']} is on: a "
                "cookie of that name, which another host can plant, is still read and "
                "replaced by one of the current name",
                "remove session.cookie_previous_name once your longest session has passed "
                "since the rename",
            )
        )
    return found


def _expiry(factory: SessionFactory) -> list[Finding]:
    """``kernel.expiry``: no active plugin expires every session (the kernel's max_age alone)."""
    values = factory.config.values
    policies = [p for p in factory.hook.session_expiry_policy(settings=values) if p]
    if policies:
        return []
    max_age = values["max_age"]
    fix = (
        "activate a timeout plugin (psessions plugins lists the installed ones) and set its "
        "timeout: OWASP advises ending a session after minutes to hours without activity, "
        "and at the latest hours after its creation"
    )
    if max_age is None:
        return [
            Finding(
                "kernel.expiry",
                "session.max_age",
                "stored sessions never expire: session.max_age = none and no active plugin "
                "expires sessions, so a copied cookie works for ever",
                fix + "; or remove session.max_age (30 days by default)",
            )
        ]
    return [
        Finding(
            "kernel.expiry",
            "session.max_age",
            f"no active plugin expires sessions: each ends only {duration(max_age)} after its "
            f"creation (session.max_age = {max_age}), however long it has been unused",
            fix + "; or lower session.max_age to the longest session you accept",
        )
    ]


def _key(values: Mapping[str, Any], registry: Registry | None) -> list[Finding]:
    if values.get("serializer") is not None or registry is None:
        return []  # a cookie serializer of the application's own: its keys are not ours to judge
    settings = registry.settings
    found = []
    if settings.get("session.secret_key") is not None:
        found.append(
            Finding(
                "kernel.secret_key_inline",
                "session.secret_key",
                "the key is written in the application's settings (the ini file), which travel "
                "where configuration goes: version control, backups, support tickets",
                "move it into a file readable by the application's user only "
                "(session.secret_key_file = %(here)s/session.key; chmod 600 session.key) or an "
                "environment variable (session.secret_key_env)",
            )
        )
    path = settings.get("session.secret_key_file")
    if isinstance(path, str) and os.name == "posix":
        path = os.path.expanduser(path.strip())
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            mode = 0  # the application read it at start-up: gone since, nothing to judge
        if mode & 0o077:
            others = " and ".join(
                who for who, bits in (("its group", 0o070), ("every user", 0o007)) if mode & bits
            )
            found.append(
                Finding(
                    "kernel.secret_key_file",
                    "session.secret_key_file",
                    f"the key file {path} (mode {mode:04o}) is open to {others} of the "
                    "machine: whoever reads it can decrypt the session cookies they capture "
                    "and make cookies the application accepts",
                    f"chmod 600 {path} (owned by the application's user)",
                )
            )
    return found


def server_concurrency(server: Mapping[str, str] | None) -> tuple[int | None, str]:
    """How many requests the ini file's server section serves at once, and how it says so.

    Knows waitress (``threads``, 4 by default) and gunicorn (``workers`` times
    ``threads``, 1 each by default, ``WEB_CONCURRENCY`` for ``workers``).
    ``None`` when the file has no server section, another server, or a
    gunicorn ``config`` file that may set the workers.
    """
    if server is None:
        return None, "the ini file has no server section"
    use = server.get("use", "")
    try:
        if "waitress" in use:
            threads = int(server.get("threads", 4))
            return threads, f"waitress, {threads} thread{'s' if threads > 1 else ''}"
        if "gunicorn" in use:
            if "workers" not in server and "config" in server:
                return None, f"gunicorn reads its workers from {server['config']}"
            workers = int(server.get("workers", os.environ.get("WEB_CONCURRENCY", 1)))
            threads = int(server.get("threads", 1))
            return workers * threads, f"gunicorn, {workers} worker(s) of {threads} thread(s)"
    except ValueError:
        return None, f"the server section's values do not parse ({use})"
    return None, f"the server section uses {use or 'an unknown server'}"


def _database(deployment: Deployment) -> list[Finding]:
    bind = deployment.bind
    if bind is None:
        return []
    engine = getattr(bind, "engine", bind)
    url = engine.url
    found = []
    if url.get_backend_name() == "sqlite":
        if url.database in (None, "", ":memory:") or "mode=memory" in str(url):
            found.append(
                Finding(
                    "kernel.sqlite_memory",
                    "sqlalchemy.url",
                    f"the sessions are in an in-memory SQLite database ({url.render_as_string()}): "
                    "each process has its own and loses it when it stops",
                    "store sessions in a database file or server",
                )
            )
        else:
            count, how = server_concurrency(deployment.server)
            if count is None or count > 1:
                section = f"[{deployment.server_section}]"
                serves = (
                    f"{section} serves it with {how}"
                    if count
                    else f"how many workers serve it is not known ({how})"
                )
                found.append(
                    Finding(
                        "kernel.sqlite",
                        f"sqlalchemy.url, {section}",
                        f"the sessions are in the SQLite file {url.database}, and {serves}: "
                        "SQLite runs one write at a time for the whole file, so under load "
                        "writers queue and fail with 'database is locked' after its busy "
                        "timeout, and the file ties the application to one machine",
                        "store sessions in PostgreSQL or MariaDB; or serve with one worker of "
                        "one thread and silence kernel.sqlite",
                    )
                )
    if url.get_backend_name() == "postgresql":
        level = engine.get_execution_options().get("isolation_level") or getattr(
            engine.dialect, "_on_connect_isolation_level", None
        )
        if level and str(level).upper() not in ("READ COMMITTED", "AUTOCOMMIT"):
            found.append(
                Finding(
                    "kernel.isolation",
                    "sqlalchemy.isolation_level",
                    f"PostgreSQL at {level}: the database refuses the second of two concurrent "
                    "writes of a session before the kernel can merge them, so parallel requests "
                    "of one session run again (or fail once retries are spent)",
                    "use READ COMMITTED (PostgreSQL's default): remove the isolation_level",
                )
            )
    return found


def _tween_names(registry: Registry) -> list[str]:
    from pyramid.interfaces import ITweens

    tweens = registry.queryUtility(ITweens)
    if tweens is None:
        return []
    return [name for name, _ in (tweens.explicit or tweens.implicit())]


def _application(registry: Registry | None) -> list[Finding]:
    if registry is None:
        return []
    from pyramid.interfaces import IExecutionPolicy, ISecurityPolicy

    settings = registry.settings
    found = []
    policy = registry.queryUtility(IExecutionPolicy)
    if not getattr(policy, "__module__", "").startswith("pyramid_retry"):
        found.append(
            Finding(
                "kernel.retry",
                "config.include('pyramid_retry')",
                "pyramid_retry is not included: a request that loses a conflict with a "
                "concurrent request of its session (SessionConflictError, a deadlock, a "
                "serialization failure) fails instead of running again",
                "add config.include('pyramid_retry') to main() (retry.attempts = 3 by default)",
            )
        )
    else:
        attempts = int(settings.get("retry.attempts") or 3)
        if attempts < 2:
            found.append(
                Finding(
                    "kernel.retry_attempts",
                    "retry.attempts",
                    f"retry.attempts = {attempts}: pyramid_retry never runs a request again, so "
                    "one that loses a conflict with a concurrent request of its session fails",
                    "remove retry.attempts (3 by default)",
                )
            )
    tweens = _tween_names(registry)
    annotate = asbool(settings.get("tm.annotate_user", True))
    if (
        annotate
        and "pyramid_tm.tm_tween_factory" in tweens
        and registry.queryUtility(ISecurityPolicy)
    ):
        found.append(
            Finding(
                "kernel.annotate_user",
                "tm.annotate_user",
                "tm.annotate_user is on (pyramid_tm's default): pyramid_tm asks the security "
                "policy for the user at the start of every request, and a policy that keeps the "
                "user in the session loads it (1 SELECT) on every request that carries a cookie, "
                "also where the view never uses it",
                "tm.annotate_user = false",
            )
        )
    if any(name.startswith("pyramid_debugtoolbar") for name in tweens):
        found.append(
            Finding(
                "kernel.debugtoolbar",
                "pyramid.includes",
                "pyramid_debugtoolbar is included: it shows session data, cookies and settings, "
                "and its debugger runs code, for every address debugtoolbar.hosts allows",
                "remove pyramid_debugtoolbar from the production configuration",
            )
        )
    return found


def _model(factory: SessionFactory) -> list[Finding]:
    model = factory.model
    missing: Sequence[tuple[str, ...]] = maintenance.missing_indexes(model)
    if not missing:
        return []
    shown = ", ".join(f"({', '.join(columns)})" for columns in missing)
    return [
        Finding(
            "kernel.indexes",
            f"the model {model.__name__}",
            f"{model.__name__} lacks the indexes {shown} that gc and the active plugins' queries "
            "need: on a large table they scan every row",
            f"add sessions_kernel.add_indexes({model.__name__}) after the class and migrate "
            "(psessions CONFIG indexes --sql prints the statements)",
        )
    ]
