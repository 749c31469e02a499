"""Switch to sessions_kernel without logging anyone out.

Add :class:`MigrateMixin` to the session model and name the old store
(``session.migrate_from``), its secret (``session.migrate_secret_file`` or
``session.migrate_secret_env``) and the cut-off date
(``session.migrate_until``). Then each user's next visit moves their session
over, and nobody notices:

1. The request carries the old store's cookie and no session cookie of ours.
   The source verifies the old cookie with the old secret, offline
   (:meth:`Source.open_cookie <sessions_migrate.source.Source.open_cookie>`);
   a forged, damaged or foreign cookie ends here, without SQL.
2. The plugin names the token of the new session (the kernel's
   ``session_fallback_token``): ``HMAC(key, source + old id)`` with a key
   derived from ``session.secret_key``. If that session is stored already
   (``psessions migrate`` copied it, or a concurrent first visit did), it is
   loaded, and its cookie is sent.
3. If not, the source reads the old session, and refuses it if the old
   store's own rules expired it. Its data, flash messages, creation time,
   user id (sessions-userid), CSRF token (sessions-csrf) and per-session
   timeouts become the new session's; the source deletes the old session in
   the request's transaction (a SQL store) or after its commit (Redis).
4. After the commit the old cookie is deleted and ours is set.

An old session the new store cannot hold (a pickled object under the JSON
serializer, more than ``max_data_size``) is not migrated: the reason is
logged, the old session is left where it is, and the request goes on with a
new, empty session. Old cookies are read only until ``session.migrate_until``
(at most a year ahead); after it, the plugin deletes any old cookie it sees
and reads nothing. Remove the mixin and the settings then.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
import weakref
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from pyramid.path import DottedNameResolver
from zope.sqlalchemy import mark_changed

from sessions_kernel import SessionConflictError, Setting, StashKey, hookimpl
from sessions_kernel.cookies import cookie_values
from sessions_kernel.crypto import SecretKeys
from sessions_kernel.settings import integer, looks_like_key, moment, optional, text

from . import hookspecs
from .outcome import ALREADY, COPIED, GONE, NOT_MIGRATED, OUTCOME, Outcome
from .source import (
    Claim,
    ClaimedElsewhere,
    ClaimHeld,
    OldSession,
    Source,
    SourceOptions,
    Unrepresentable,
)

if TYPE_CHECKING:
    from pyramid.request import Request

    from sessions_kernel import Session, SessionFactory
    from sessions_kernel.cli import Command
    from sessions_kernel.deploy import Finding

__all__ = [
    "ENTRY_POINT_GROUP",
    "MAX_WINDOW",
    "SETTINGS",
    "MigrateMixin",
    "Migration",
    "migration_of",
]

log = logging.getLogger(__name__)

#: The entry-point group sources are registered in (``session.migrate_from`` takes their names).
ENTRY_POINT_GROUP = "sessions_migrate.sources"
#: How far ahead ``session.migrate_until`` may be: a year, as the kernel's own windows.
MAX_WINDOW = 366 * 24 * 3600
#: The label of the key the new sessions' tokens are derived with.
TOKEN_LABEL = b"sessions_migrate token"
#: The environ key ``psessions migrate`` names an old session by (server-side only:
#: a browser's headers arrive as ``HTTP_*`` keys and cannot set it).
BULK_ENVIRON = "sessions_migrate.old_id"

_OLD_ID = StashKey[str]("sessions_migrate: the old session's id the cookie carried")
_DELETE_COOKIE = StashKey[bool]("sessions_migrate: the old cookie is deleted after the commit")


class MigrateMixin:
    """Turns the migration from an old session store on. Adds no column.

    Keep it in the model until ``session.migrate_until`` has passed, then
    remove it with the ``session.migrate_*`` settings.
    """


# -- settings ---------------------------------------------------------------------------------


def _source(value: Any) -> type[Source]:
    """a source's name (pyramid_sqlalchemy_sessions, beaker, pyramid_session_redis) or the
    dotted name of an adapter class"""
    if isinstance(value, type):
        found: Any = value
    else:
        name = text(value)
        known = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
        if name in known:
            try:
                found = known[name].load()
            except Exception as exc:  # its distribution is broken, or lacks a dependency
                raise ValueError(
                    f"the source {name!r} ({known[name].value}) failed to import: "
                    f"{type(exc).__name__}: {exc}; reinstall the distribution that provides it"
                ) from None
        elif "." in name or ":" in name:
            try:
                found = DottedNameResolver().resolve(name)
            except ImportError as exc:
                raise ValueError(f"cannot import {name!r}: {exc}") from None
        else:
            names = ", ".join(sorted(known)) or "none installed"
            raise ValueError(
                f"no source named {name!r}: the installed ones are {names} (or give the "
                "dotted name of an adapter class)"
            )
    missing = [m for m in ("open_cookie", "read", "take", "cookie_name") if not hasattr(found, m)]
    if not isinstance(found, type) or missing:
        raise ValueError(
            f"{value!r} is not a source adapter: it lacks {', '.join(missing) or 'a class'} "
            "(see sessions_migrate.source.Source)"
        )
    return found


def _secrets(content: str, where: str) -> SecretKeys:
    found = [line.strip().encode("utf-8") for line in content.splitlines() if line.strip()]
    if not found:
        raise ValueError(f"{where} is empty: write the old store's secret into it")
    return SecretKeys(found)  # never shows itself: not in a repr, a traceback, a listing


class HiddenURL(str):
    """A URL that may hold a password (``redis://:pw@host``): its ``repr`` shows none of it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<URL, hidden>"


def _url(value: Any) -> HiddenURL:
    """a URL (redis://host:port/db); it may hold a password, never shown"""
    return HiddenURL(text(value))


def _secret_file(value: Any) -> SecretKeys:
    """the path of a file holding the old store's secret (one per line, the newest first)"""
    if looks_like_key(value):
        raise ValueError(
            "expected the path of a file holding the old secret, got what looks like a secret "
            "itself: write it into a file readable by the application only and give its path"
        )
    path = os.path.expanduser(text(value))
    if not os.path.exists(path):
        # not repeated: what was written here may be the secret itself, pasted by mistake
        raise ValueError(
            "there is no file at the path given (not shown, in case it is the secret "
            "itself): give the path of a file holding the old store's secret"
        )
    try:
        with open(path, encoding="utf-8") as f:
            content = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"cannot read the old secret's file {path!r}: {reason}") from None
    return _secrets(content, f"the file {path!r}")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: how environment variables are named by convention (shells, systemd, containers)
_CONVENTIONAL_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


def _secret_env(value: Any) -> SecretKeys:
    """the name of an environment variable holding the old store's secret"""
    if looks_like_key(value):
        raise ValueError(
            "expected the name of an environment variable, got what looks like a secret "
            "itself: export it in a variable and give the variable's name"
        )
    name = text(value)
    if not _ENV_NAME.fullmatch(name):
        # not repeated: what was written here may be the secret itself, pasted by mistake
        raise ValueError(
            "expected the name of an environment variable (letters, digits and _), got "
            "something else (not shown, in case it is the secret itself)"
        )
    content = os.environ.get(name)
    if content is None or not content.strip():
        state = "empty" if content is not None else "not set"
        # a name that is no variable may be a secret pasted here (a word, as Beaker's often
        # are): repeated only when written as variables are named (upper case, digits, _)
        where = (
            f"the environment variable {name}"
            if content is not None or _CONVENTIONAL_ENV_NAME.fullmatch(name)
            else "the environment variable session.migrate_secret_env names (not shown: it "
            "is not in upper case, and may be the secret itself)"
        )
        raise ValueError(
            f"{where} is {state}: export the old store's secret in the environment the "
            "application starts in"
        )
    return _secrets(content, f"the environment variable {name}")


def _options(value: Any) -> dict[str, str]:
    """key=value pairs separated by white space, for what only one source knows"""
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    pairs: dict[str, str] = {}
    for item in text(value).split():
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value pairs, got {item!r}")
        pairs[key] = val
    return pairs


SETTINGS = (
    Setting(
        "migrate_from",
        None,
        optional(_source),
        "the old session store: pyramid_sqlalchemy_sessions, beaker, pyramid_session_redis, "
        "or the dotted name of an adapter",
        runtime=False,
    ),
    Setting(
        "migrate_until",
        None,
        optional(moment),
        "the cut-off: old cookies are read until this date (UTC), at most a year ahead",
        runtime=False,
    ),
    Setting(
        "migrate_secret_file",
        None,
        optional(_secret_file),
        "a file holding the old store's secret (one per line, the newest first)",
        runtime=False,
        secret=True,
    ),
    Setting(
        "migrate_secret_env",
        None,
        optional(_secret_env),
        "an environment variable holding the old store's secret",
        runtime=False,
        secret=True,
    ),
    Setting(
        "migrate_cookie_name",
        None,
        optional(text),
        "the old store's cookie name; unset: the old store's default",
        runtime=False,
    ),
    Setting(
        "migrate_table",
        None,
        optional(text),
        "the old store's table, where it is SQL; unset: the old store's default",
        runtime=False,
    ),
    Setting(
        "migrate_url",
        None,
        optional(_url),
        "where the old store is, when not in the application's database (a Redis URL)",
        runtime=False,
        secret=True,
    ),
    Setting(
        "migrate_timeout",
        None,
        optional(integer(1)),
        "the old store's session timeout in seconds, where its sessions do not record it",
        runtime=False,
    ),
    Setting(
        "migrate_options",
        {},
        _options,
        "key=value pairs only one source knows (see its documentation)",
        runtime=False,
    ),
)


def _source_options(values: Mapping[str, Any]) -> SourceOptions:
    return SourceOptions(
        secrets=values.get("migrate_secret_file") or values.get("migrate_secret_env") or (),
        cookie_name=values.get("migrate_cookie_name"),
        url=values.get("migrate_url"),
        table=values.get("migrate_table"),
        timeout=values.get("migrate_timeout"),
        options=dict(values.get("migrate_options") or {}),
    )


# -- one factory's migration ------------------------------------------------------------------


class Migration:
    """A factory's migration: its source, its cut-off and the key of the new tokens."""

    def __init__(self, factory: SessionFactory) -> None:
        values = factory.config.values
        self.factory = factory
        self.source: Source = values["migrate_from"](_source_options(values), factory.clock)
        self.until: int = values["migrate_until"]
        self.cookie_name: str = self.source.cookie_name()
        self._key = factory.derived_keys(TOKEN_LABEL, 32)[0]

    def token_for(self, old_id: str) -> bytes:
        """The token of the new session the old session ``old_id`` becomes.

        The same old session always gives the same token, so that a copy
        ``psessions migrate`` made and two concurrent first visits find one
        row; without ``session.secret_key`` nobody can compute it.
        """
        message = f"{self.source.name}\0{old_id}".encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def open(self, request: Request) -> str | None:
        """The old session's id the request's old cookies carry, or ``None``.

        Every value of the old cookie's name is tried (a cookie planted from
        a sibling domain is sent beside the user's own); two that open to
        different sessions open none.
        """
        header = request.environ.get("HTTP_COOKIE")
        if not header:
            return None
        found: str | None = None
        for value in cookie_values(header, self.cookie_name):
            try:
                old_id = self.source.open_cookie(value)
            except Exception:  # a source's bug on odd bytes must not fail the request
                log.exception("%s could not read an old cookie", self.source.name)
                old_id = None
            if old_id is None:
                continue
            if found is not None and found != old_id:
                log.warning(
                    "two old %s cookies name different sessions: none is migrated", self.source.name
                )
                return None
            found = old_id
        return found


_MIGRATIONS: weakref.WeakKeyDictionary[Any, Migration] = weakref.WeakKeyDictionary()


def migration_of(factory: SessionFactory) -> Migration:
    """The :class:`Migration` of ``factory`` (whose model includes :class:`MigrateMixin`)."""
    found = _MIGRATIONS.get(factory)
    if found is None:
        found = _MIGRATIONS[factory] = Migration(factory)
    return found


def _short(old_id: str) -> str:
    """What logs show of an old id: a hash's start, never the id (it is the old key)."""
    return hashlib.sha256(old_id.encode()).hexdigest()[:12]


# -- hooks ------------------------------------------------------------------------------------


@hookimpl
def session_addhooks(pluginmanager: Any) -> None:
    pluginmanager.add_hookspecs(hookspecs)


@hookimpl
def session_mixins() -> Sequence[type]:
    return [MigrateMixin]


@hookimpl
def session_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def session_check_settings(settings: Mapping[str, Any]) -> list[str]:
    problems = []
    source = settings.get("migrate_from")
    if source is None:
        problems.append(
            "the model includes MigrateMixin but session.migrate_from is not set: set it to "
            "the old store (pyramid_sqlalchemy_sessions, beaker or pyramid_session_redis), "
            "or remove MigrateMixin once the migration is over"
        )
    until = settings.get("migrate_until")
    if until is None:
        problems.append(
            "session.migrate_until is not set: set it to the date after which old cookies are "
            "no longer read (your longest old session's lifetime from now is enough; at most "
            "a year ahead)"
        )
    elif until > settings.get("clock", time.time)() + MAX_WINDOW:
        problems.append(
            "session.migrate_until is more than a year ahead: old cookies must stop working "
            "some day; your longest old session's lifetime from now is enough"
        )
    has_file = settings.get("migrate_secret_file") is not None
    if has_file == (settings.get("migrate_secret_env") is not None):
        problems.append(
            "set exactly one of session.migrate_secret_file (a file holding the old store's "
            "secret) and session.migrate_secret_env (an environment variable holding it); "
            "the old secret is never written in the ini file"
        )
    elif source is not None:
        try:
            built = source(_source_options(settings), settings.get("clock", time.time))
        except ValueError as exc:
            problems.append(f"session.migrate_from = {source.name}: {exc}{_given(settings)}")
        else:
            name = built.cookie_name()
            if name == settings.get("cookie_name"):
                problems.append(
                    f"the old store's cookie and this one are both named {name!r}: set "
                    "session.cookie_name to a new name (the browser keeps both during the "
                    "migration)"
                )
            elif name == settings.get("cookie_previous_name"):
                problems.append(
                    f"session.cookie_previous_name is the old store's cookie name ({name!r}): "
                    "the kernel would read the old cookie as its own and refuse it, and no "
                    "session would migrate; remove cookie_previous_name during the migration"
                )
    return problems


def _given(settings: Mapping[str, Any]) -> str:
    """The settings a source was built from, for its refusal's message (the URL unshown)."""
    given = []
    for name in ("migrate_cookie_name", "migrate_table", "migrate_timeout", "migrate_url"):
        value = settings.get(name)
        if value is not None:
            given.append(f"session.{name}" + ("" if name == "migrate_url" else f" = {value!r}"))
    options = settings.get("migrate_options")
    if options:
        pairs = " ".join(f"{k}={v}" for k, v in options.items())
        given.append(f"session.migrate_options = {pairs!r}")
    return f" (check {', '.join(given)})" if given else ""


@hookimpl
def session_deploy_checks(settings: Mapping[str, Any], active: bool) -> list[Finding]:
    """``migrate.over``: the cut-off has passed, and the migration reads nothing any more."""
    until = settings.get("migrate_until")
    if not active or until is None or until > settings.get("clock", time.time)():
        return []
    from sessions_kernel.deploy import Finding

    day = datetime.fromtimestamp(until, timezone.utc).date().isoformat()
    return [
        Finding(
            "migrate.over",
            "session.migrate_until",
            f"session.migrate_until = {day} has passed: the migration is over, and old cookies "
            "are deleted unread on every request that sends one",
            "remove MigrateMixin from the model and the session.migrate_* settings, then "
            "the old store's table or keys",
        )
    ]


@hookimpl
def session_commands() -> list[Command]:
    """``psessions CONFIG migrate``: copy every live old session now (:mod:`.bulk`)."""
    from sessions_kernel.cli import Command

    from . import bulk

    return [
        Command(
            "migrate",
            "copy every live session of the old store now (the lazy path keeps old cookies "
            "working until the cut-off)",
            bulk.run,
            bulk.add_arguments,
            description=bulk.DESCRIPTION,
        )
    ]


@hookimpl
def session_fallback_token(session: Session) -> bytes | None:
    """The token of the new session the request's old cookie continues, if any (no SQL)."""
    migration = migration_of(session.factory)
    request = session.request
    bulk = request.environ.get(BULK_ENVIRON)
    if bulk is not None:  # psessions migrate: an old session by its id, not by a cookie
        session.stash[_OLD_ID] = bulk
        return migration.token_for(bulk)
    header = request.environ.get("HTTP_COOKIE", "")
    if f"{migration.cookie_name}=" not in header:
        return None  # most requests: no old cookie at all
    if session.now >= migration.until:
        # past the cut-off: an old cookie is no key; it goes
        _delete_old_cookie_later(session, migration, committed_only=False)
        return None
    old_id = migration.open(request)
    if old_id is None:
        log.info("an old %s cookie did not verify: not migrated", migration.source.name)
        return None
    session.stash[_OLD_ID] = old_id
    return migration.token_for(old_id)


@hookimpl
def session_load(session: Session) -> None:
    """The old session becomes this one, unless it already did (a copy, a concurrent visit)."""
    old_id = session.stash.get(_OLD_ID, None)
    if old_id is None:
        return
    migration = migration_of(session.factory)
    if session.row is not None:  # copied by psessions migrate, or by a concurrent visit
        session.stash[OUTCOME] = Outcome(ALREADY)
        _delete_old_cookie_later(session, migration)
        return
    source = migration.source
    dbsession = getattr(session.request, session.factory.dbsession_name)
    try:
        old = source.read(dbsession, old_id, session.now)
        if old is not None:
            check_representable(session.factory, old)
    except Unrepresentable as exc:
        log.warning("old %s session %s not migrated: %s", source.name, _short(old_id), exc)
        session.stash[OUTCOME] = Outcome(NOT_MIGRATED, "unrepresentable", str(exc))
        session.regenerate_id()  # not the derived token: nothing continues
        # the old session stays for you to look at; its cookie goes, so that this browser's
        # next requests do not read and refuse it again (and log it) until the cut-off
        _delete_old_cookie_later(session, migration)
        return
    if old is None:
        if _stored_meanwhile(session, dbsession):
            # a concurrent first visit migrated it and committed since this request's load
            raise SessionConflictError(
                "a concurrent request migrated this old session; pyramid_retry runs this one "
                "again, and it finds the new session"
            )
        log.info("old %s session %s is gone or expired: not migrated", source.name, _short(old_id))
        session.stash[OUTCOME] = Outcome(GONE)
        session.regenerate_id()
        _delete_old_cookie_later(session, migration)
        return
    try:
        carry(session, old)
    except ValueError as exc:  # a plugin could not take its part (a user id of another type)
        log.warning("old %s session %s not migrated: %s", source.name, _short(old_id), exc)
        session.stash[OUTCOME] = Outcome(NOT_MIGRATED, "refused by a plugin", str(exc))
        session.invalidate()  # what was carried so far, dropped; the old session stays
        _delete_old_cookie_later(session, migration)  # refused once, not on every request
        return
    try:
        claim = source.take(dbsession, old)
    except ClaimHeld:
        log.warning(
            "old %s session %s is claimed by a request that has not ended (a process that "
            "died?): not migrated now, a request after the claim's expiry will",
            source.name,
            _short(old_id),
        )
        # psessions migrate counts it as a conflict: another run copies it
        session.stash[OUTCOME] = Outcome(
            NOT_MIGRATED, "conflict", "claimed by a request that has not ended"
        )
        session.invalidate()  # what was carried, dropped; the old session and cookie stay
        return
    except ClaimedElsewhere:
        raise SessionConflictError(
            "a concurrent request is migrating the same old session; pyramid_retry runs "
            "this one again, and it finds the new session"
        ) from None
    mark_changed(dbsession)  # a SQL source's DELETE commits even if the source used Core SQL
    _after_transaction(session, claim)
    _delete_old_cookie_later(session, migration)
    session.stash[OUTCOME] = Outcome(COPIED)
    log.info("old %s session %s migrated", source.name, _short(old_id))


# -- carrying the old session over ------------------------------------------------------------


def check_representable(factory: SessionFactory, old: OldSession) -> None:
    """Raise :class:`Unrepresentable` if the new store cannot hold ``old``'s data and flash.

    The data serializer must write them (JSON by default: a ``datetime``,
    a ``set`` or ``bytes`` do not fit), and within ``session.max_data_size``.
    """
    serializer = factory.data_serializer
    try:
        data = serializer.dumps(old.data)
        flash = serializer.dumps(old.flash) if old.flash else b""
    except (TypeError, ValueError, OverflowError) as exc:
        raise Unrepresentable(
            f"the data serializer cannot write its data ({type(exc).__name__}: {exc})"
        ) from None
    try:
        same = _as_stored(serializer.loads(data)) == _as_stored(old.data) and (
            not old.flash or _as_stored(serializer.loads(flash)) == _as_stored(old.flash)
        )
    except (TypeError, ValueError):
        same = False
    if not same:  # JSON writes {1: "a", "1": "b"} as one key: a value would be lost
        raise Unrepresentable(
            "the data serializer does not give its data back as it was (keys of different "
            "types that it writes alike, say)"
        )
    limit = factory.config.values.get("max_data_size")
    size = len(data) + len(flash)
    if limit is not None and size > limit:
        raise Unrepresentable(
            f"its data takes {size} bytes, more than session.max_data_size ({limit})"
        )


def _as_stored(value: Any) -> Any:
    """``value`` with its tuples as lists: JSON gives tuples back as lists, a change that
    loses nothing (the comparison of what the serializer gives back ignores it)."""
    if isinstance(value, dict):
        return {key: _as_stored(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_stored(item) for item in value]
    return value


def carry(session: Session, old: OldSession) -> None:
    """Make the new ``session`` hold what ``old`` held (the data, flash, created, timeouts),
    then let other plugins take theirs (``session_migrated``: the user id, the CSRF token)."""
    for key, value in old.data.items():
        session[key] = value
    for queue, messages in old.flash.items():
        for message in messages:
            session.flash(message, queue)
    if old.created is not None:
        session.created = min(int(old.created), session.now)
    if old.settings:
        _carry_settings(session, old.settings)
    session.hook.session_migrated(session=session, old=old)
    session.changed()  # stored even if it held only a user or a token


def _carry_settings(session: Session, values: Mapping[str, Any]) -> None:
    settings = session.settings
    for name, value in values.items():
        if value is None:
            continue
        try:
            with settings as s:
                s[name] = value
        except Exception as exc:  # a setting this model cannot hold per session: skipped
            log.info("per-session %s = %r not carried over: %s", name, value, exc)


def _stored_meanwhile(session: Session, dbsession: Any) -> bool:
    """Whether the row of the new session's token exists now, committed since this request's
    load (a concurrent first visit migrated the old session).

    PostgreSQL and SQLite answer with a locking read in the request's transaction
    (PostgreSQL's sees what committed since; SQLite has no row locks). On MariaDB and
    MySQL a locking read of a key that is not there locks the gap around it until the
    request ends, which would hold up other visitors' logins (the INSERTs into that gap),
    and a plain read in the request's REPEATABLE READ snapshot would not see the row: it
    is asked on a connection of its own, which reads what committed and locks nothing.
    """
    model: Any = session.model
    query = sa.select(model.id).where(model.id == session.session_id)
    bind = dbsession.get_bind(model)
    if bind.dialect.name in ("mysql", "mariadb"):
        engine = getattr(bind, "engine", bind)
        with engine.connect() as connection:
            return connection.execute(query).first() is not None
    return dbsession.execute(query.with_for_update()).first() is not None


def _after_transaction(session: Session, claim: Claim) -> None:
    """Run the source's after-commit and after-abort steps with the request's transaction."""
    if claim.on_commit is None and claim.on_abort is None:
        return
    txn = session.request.tm.get()

    def after_commit(ok: bool) -> None:
        step = claim.on_commit if ok else claim.on_abort
        if step is not None:
            try:
                step()
            except Exception:
                log.exception("the old store's step after the commit failed")

    def after_abort() -> None:
        if claim.on_abort is not None:
            try:
                claim.on_abort()
            except Exception:
                log.exception("the old store's step after the abort failed")

    txn.addAfterCommitHook(after_commit)
    if hasattr(txn, "addAfterAbortHook"):
        txn.addAfterAbortHook(after_abort)


def _delete_old_cookie_later(
    session: Session, migration: Migration, *, committed_only: bool = True
) -> None:
    """Delete the old cookie in the response, once the request's transaction committed."""
    if session.stash.get(_DELETE_COOKIE, False):
        return
    session.stash[_DELETE_COOKIE] = True
    request = session.request
    state = {"committed": not committed_only}
    if committed_only:
        txn = request.tm.get()
        txn.addAfterCommitHook(lambda ok: state.__setitem__("committed", ok))
    attributes = dict(migration.source.cookie_attributes())

    def delete(request: Request, response: Any) -> None:
        if state["committed"]:
            response.delete_cookie(migration.cookie_name, **attributes)

    request.add_response_callback(delete)
