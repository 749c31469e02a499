"""pyramid_sqlalchemy_sessions 0.1: the predecessor's AES-GCM cookie and its table.

What the predecessor wrote, read from its source (``serializer.py``,
``session.py``, ``model.py`` of 0.1.0):

**The cookie.** ``session.secret_key`` is URL-safe base64 text of 16, 24 or 32
random bytes: that decoded text is the AES key itself (AES-128/192/256; no key
derivation). The cookie value is ``urlsafe_b64encode(nonce + tag + ciphertext)``
with a random 16-byte nonce, a 16-byte GCM tag, no associated data. The
plaintext is the session id's 16 bytes (a UUID), followed, while the renewal
timeout is on for that session, by the 16 bytes of its current renewal id.

**The table** (its name is the application's ``__tablename__``: the library has
no default). ``BaseMixin``: ``id`` (native ``UUID`` on PostgreSQL, 16 bytes
elsewhere), ``created`` (seconds since the epoch), ``data`` (SQLAlchemy's
``PickleType``: a pickled ``MutableDict``, protocol ``HIGHEST_PROTOCOL``),
``flash`` (JSON: queue name to list of messages). ``UseridMixin``: ``userid``
(an integer unless the application overrode it). ``CSRFMixin``: ``csrf_token``,
20 raw bytes; the token the pages hold is their URL-safe base64 text.
``IdleMixin``: ``idle_expire`` (last write + idle timeout). ``ConfigIdleMixin``
adds ``idle_timeout``, ``extension_delay``, ``extension_chance``,
``extension_deadline``. ``AbsoluteMixin`` adds no column (the expiry is
``created`` + the global ``absolute_timeout``); ``ConfigAbsoluteMixin`` adds
``absolute_expire``. ``RenewalMixin``: ``renewal_id``, ``renewal_next`` (UUIDs),
``renewed``, ``renewal_tried``; ``ConfigRenewalMixin`` adds ``renewal_timeout``
and ``renewal_try_every``. ``ConfigCookieMixin``: ``cookie_max_age``,
``cookie_path``, ``cookie_domain``, ``cookie_secure``, ``cookie_httponly``. In a
``Config...Mixin``'s column, ``NULL`` turns that feature off for that session.

**What it refused** (``_BaseSession._init_request_session`` and the
``_is_valid_session`` of each feature), and so do
:meth:`PredecessorSource.open_cookie` and :meth:`~PredecessorSource.read`: a
cookie that is not base64, shorter than nonce and tag, or does not
authenticate under the key; a plaintext shorter than the 16 bytes of an id; a
session whose renewal timeout is on and whose cookie has no renewal id after
the id; a renewal id that is neither the row's ``renewal_id`` nor its
``renewal_next`` (a renewal violation: the row is deleted, as the predecessor
deleted it); a session past ``idle_expire`` or past its absolute expiry
(expired strictly after the stored second: ``now > expire``; the predecessor
deleted it, here it is left to expire); a session whose idle timeout is on but
whose ``idle_expire`` is ``NULL`` (the predecessor failed the request). Also
refused, though the predecessor's lenient base64 decoder took it: a cookie
value in any other encoding than the one it wrote (the standard alphabet's
``+`` and ``/``, characters a lenient decoder skips, other unused trailing
bits), which no browser holds.

The predecessor's global settings that its rows do not record come from the
migration's settings. ``session.migrate_timeout`` is its ``absolute_timeout``
where the model had the plain ``AbsoluteMixin`` (the expiry is ``created`` plus
it; unset, no absolute expiry is checked, so set it if the old model had that
mixin; with ``ConfigAbsoluteMixin`` the rows record it and it is ignored).
``session.migrate_options`` (``name=value`` pairs) takes ``idle_timeout`` and
``renewal_timeout``, the old ``session.*`` values, for the plain ``IdleMixin``
and ``RenewalMixin``: ``none`` says the feature was off; a number, on. Unset,
an ``idle_expire`` in the row is enforced, and a renewal is taken to be on for
a row that has a renewal id; either refuses nothing the predecessor accepted
unless it had turned the feature off after writing those rows. Also
``cookie_path`` and ``cookie_domain``: where the old cookie lives, for
deleting it (``/`` and none by default).

**The ids this source gives** are ``"<id hex>"`` for a session whose cookie
carries no renewal id, and ``"<id hex>.<renewal id hex>"`` for one whose cookie
does (:meth:`~PredecessorSource.open_cookie`); :meth:`~PredecessorSource.live_ids`
gives the form the row's current cookie has. The migration derives the new
session's token from this id, so an outdated cookie (a renewal id the
predecessor had replaced) never names the session its current cookie was
migrated to, by a visit or by ``psessions migrate``. The part before the dot
is the session's key (:func:`session_key`).

**The one write of a read.** :meth:`~PredecessorSource.read` deletes the row of
a renewal violation in the request's transaction, as the predecessor did: when
a stolen cookie was renewed by the thief, the victim's outdated cookie ends
the session for both. It writes nothing else.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from zope.sqlalchemy import mark_changed

from ..source import Claim, ClaimedElsewhere, OldSession, SourceOptions, Unrepresentable
from ..unpickle import safe_loads

__all__ = ["PredecessorHandle", "PredecessorSource", "session_key"]

log = logging.getLogger("sessions_migrate.predecessor")

#: AES key sizes the predecessor accepted (its ``SECRET_SIZES``)
KEY_SIZES = (16, 24, 32)
NONCE_SIZE = 16
TAG_SIZE = 16
ID_SIZE = 16
#: the names of ``session.migrate_options`` this source reads
OPTIONS = ("idle_timeout", "renewal_timeout", "cookie_path", "cookie_domain")

# columns of each of the predecessor's runtime-configurable features -> our setting names
_IDLE_SETTINGS = ("idle_timeout", "extension_delay", "extension_chance", "extension_deadline")
_RENEWAL_SETTINGS = ("renewal_timeout", "renewal_try_every")
_COOKIE_SETTINGS = (
    "cookie_max_age",
    "cookie_path",
    "cookie_domain",
    "cookie_secure",
    "cookie_httponly",
)
_BOOLEAN_SETTINGS = ("cookie_secure", "cookie_httponly")

#: a global option that the predecessor never set: ``None`` is "off", this is "not told"
_UNSET: Any = object()


class _PickledDict(dict[Any, Any]):
    """What the predecessor's ``data`` pickles name as SQLAlchemy's ``MutableDict``.

    A plain ``dict`` that also takes the items as pickle state (``MutableDict``
    pickles its items both ways). Nothing of SQLAlchemy is imported or run.
    """

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise Unrepresentable("the pickled session data is not a dict")
        self.update(state)


_STAND_INS: Mapping[tuple[str, str], type] = {
    ("sqlalchemy.ext.mutable", "MutableDict"): _PickledDict,
}


@dataclass(frozen=True)
class PredecessorHandle:
    """``OldSession.handle``: the row's id, as :meth:`PredecessorSource.take` deletes it."""

    id: uuid.UUID


def session_key(old_id: str) -> str:
    """The session's own key (its id's hex) in an id this source gave."""
    return old_id.partition(".")[0]


def _parse_id(old_id: str) -> tuple[uuid.UUID, bytes | None] | None:
    """(session id, renewal id or None) of an id this source gave, or None."""
    key, dot, renewal = old_id.partition(".")
    if len(key) != 2 * ID_SIZE or len(renewal) != (2 * ID_SIZE if dot else 0):
        return None
    try:
        sid = uuid.UUID(bytes=bytes.fromhex(key))
        rid = bytes.fromhex(renewal) if renewal else None
    except ValueError:
        return None
    return sid, rid


def _option(options: Mapping[str, str], name: str) -> Any:
    """A global timeout option: an int, None ("none": off), or _UNSET."""
    if name not in options:
        return _UNSET
    text = options[name].strip()
    if text.lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(
            f"{name}={text} is not a number of seconds or none: give the predecessor's "
            f"session.{name} as its ini file had it"
        ) from None
    if value <= 0:
        raise ValueError(f"{name}={text} is not above 0 (or none)")
    return value


def _keys(secrets: Sequence[bytes]) -> list[AESGCM]:
    if not secrets:
        raise ValueError(
            "pyramid_sqlalchemy_sessions needs its secret key: set session.migrate_secret_file "
            "or session.migrate_secret_env to where the old session.secret_key is"
        )
    keys = []
    for number, secret in enumerate(secrets, 1):
        try:
            raw = base64.urlsafe_b64decode(secret.strip())
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) not in KEY_SIZES:
            # never show the secret, not even a part of it
            raise ValueError(
                f"old secret number {number} is not a pyramid_sqlalchemy_sessions key: give the "
                "old session.secret_key exactly as its ini file had it (URL-safe base64 of 16, "
                "24 or 32 bytes)"
            )
        keys.append(AESGCM(raw))
    return keys


def _as_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, uuid.UUID):
        return value.bytes
    return bytes(value)


def _as_uuid(value: Any) -> uuid.UUID | None:
    if value is None or isinstance(value, uuid.UUID):
        return value
    raw = bytes(value)
    if len(raw) == ID_SIZE:
        return uuid.UUID(bytes=raw)
    return uuid.UUID(raw.decode("ascii"))


def _is_binary(column: sa.Column[Any]) -> bool:
    try:
        return column.type.python_type is bytes
    except NotImplementedError:
        return False


class _Table:
    """The predecessor's table as this database has it: reflected once per engine."""

    def __init__(self, table: sa.Table) -> None:
        self.table = table
        self.names = frozenset(table.c.keys())
        if "id" not in self.names or "created" not in self.names:
            raise ValueError(
                f"table {table.name!r} has no id and created columns: it is not a "
                "pyramid_sqlalchemy_sessions table (check session.migrate_table)"
            )
        self.binary_id = _is_binary(table.c.id)

    def bind_id(self, sid: uuid.UUID) -> Any:
        """The id as this table's ``id`` column compares it."""
        return sid.bytes if self.binary_id else sid

    def has(self, name: str) -> bool:
        return name in self.names


class PredecessorSource:
    """The adapter of pyramid_sqlalchemy_sessions 0.1 (see the module's docstring)."""

    name: ClassVar[str] = "pyramid_sqlalchemy_sessions"
    default_cookie_name: ClassVar[str] = "session"

    def __init__(self, options: SourceOptions, clock: Callable[[], float] | None = None) -> None:
        """Check ``options``; raise :class:`ValueError` with the fix for a wrong one.

        ``clock`` (the factory's) is not used: every time this source judges
        comes from its caller (``now``).
        """
        unknown = sorted(set(options.options) - set(OPTIONS))
        if unknown:
            raise ValueError(
                f"session.migrate_options: {unknown[0]} means nothing to this source (its "
                f"options: {', '.join(OPTIONS)}; its absolute timeout is session.migrate_timeout)"
            )
        if options.url is not None:
            raise ValueError(
                "pyramid_sqlalchemy_sessions keeps its sessions in the application's database: "
                "remove session.migrate_url"
            )
        if not options.table:
            raise ValueError(
                "pyramid_sqlalchemy_sessions has no default table: set session.migrate_table to "
                "the __tablename__ of its model"
            )
        self._keys = _keys(options.secrets)
        self._table_name = options.table
        self._cookie_name = options.cookie_name or self.default_cookie_name
        self._cookie_path = options.options.get("cookie_path", "/")
        self._cookie_domain = options.options.get("cookie_domain") or None
        # the global settings of the plain mixins: a number, None ("none": off) or _UNSET
        self._absolute_timeout: Any = options.timeout if options.timeout else _UNSET
        self._idle_timeout = _option(options.options, "idle_timeout")
        self._renewal_timeout = _option(options.options, "renewal_timeout")
        self._tables: weakref.WeakKeyDictionary[sa.Engine, _Table] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"<PredecessorSource table={self._table_name!r} cookie={self._cookie_name!r}>"

    # -- the cookie ----------------------------------------------------------------------
    def cookie_name(self) -> str:
        """The old cookie's name: ``session.migrate_cookie_name``, else ``session``."""
        return self._cookie_name

    def cookie_attributes(self) -> Mapping[str, Any]:
        """``path`` and ``domain`` of the old cookie: options ``cookie_path``, ``cookie_domain``."""
        return {"path": self._cookie_path, "domain": self._cookie_domain}

    def open_cookie(self, value: str) -> str | None:
        """``"<id hex>"`` or ``"<id hex>.<renewal id hex>"`` for an authentic cookie, else ``None``.

        No I/O and no unpickling: base64, then AES-GCM with each old key in turn.
        Only the encoding the predecessor wrote is read (URL-safe alphabet, padded,
        unused bits clear): a value its lenient decoder also took (``+``, ``/``,
        skipped characters, other trailing bits) is no cookie it ever sent.
        """
        try:
            raw = base64.urlsafe_b64decode(value.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            return None
        if base64.urlsafe_b64encode(raw) != value.encode("ascii"):
            return None
        if len(raw) < NONCE_SIZE + TAG_SIZE:
            return None
        nonce, tag, ciphertext = raw[:NONCE_SIZE], raw[NONCE_SIZE : NONCE_SIZE + TAG_SIZE], raw[32:]
        for key in self._keys:
            try:
                plain = key.decrypt(nonce, ciphertext + tag, None)
            except InvalidTag:
                continue
            if len(plain) < ID_SIZE:
                return None
            sid, renewal = plain[:ID_SIZE].hex(), plain[ID_SIZE : 2 * ID_SIZE]
            # a renewal part shorter than an id is none: the predecessor could not read it
            return f"{sid}.{renewal.hex()}" if len(renewal) == ID_SIZE else sid
        return None

    # -- the table -----------------------------------------------------------------------
    def _table(self, dbsession: Any) -> _Table:
        connection = dbsession.connection()
        engine = connection.engine
        found = self._tables.get(engine)
        if found is None:
            schema, _, name = self._table_name.rpartition(".")
            try:
                reflected = sa.Table(
                    name, sa.MetaData(), autoload_with=connection, schema=schema or None
                )
            except sa.exc.NoSuchTableError:
                raise ValueError(
                    f"no table {self._table_name!r} in the database: set session.migrate_table "
                    "to the __tablename__ of the pyramid_sqlalchemy_sessions model"
                ) from None
            found = self._tables[engine] = _Table(reflected)
        return found

    def _live(self, t: _Table, now: int) -> list[Any]:
        """WHERE clauses that hold for the rows the predecessor would still serve at ``now``.

        Only what a row alone tells: a renewal id needs the cookie.
        """
        c = t.table.c
        where: list[Any] = []
        if t.has("idle_expire"):
            live_idle = sa.and_(c.idle_expire.is_not(None), c.idle_expire >= now)
            if t.has("idle_timeout"):
                where.append(sa.or_(c.idle_timeout.is_(None), live_idle))
            elif self._idle_timeout is _UNSET:
                where.append(sa.or_(c.idle_expire.is_(None), c.idle_expire >= now))
            elif self._idle_timeout is not None:
                where.append(live_idle)
        if t.has("absolute_expire"):
            where.append(sa.or_(c.absolute_expire.is_(None), c.absolute_expire >= now))
        elif self._absolute_timeout not in (None, _UNSET):
            where.append(c.created >= now - self._absolute_timeout)
        return where

    def count(self, dbsession: Any, now: int) -> int:
        """How many rows the predecessor would still serve at ``now``."""
        t = self._table(dbsession)
        query = sa.select(sa.func.count()).select_from(t.table).where(*self._live(t, now))
        return int(dbsession.execute(query).scalar_one())

    def live_ids(self, dbsession: Any, now: int, batch: int = 1000) -> Iterator[str]:
        """The id of each row the predecessor would still serve at ``now``.

        In the form its current cookie opens to, so that a first visit after
        ``psessions migrate`` finds the copy: with the row's renewal id where its
        renewal timeout is on (or may be: the plain ``RenewalMixin`` without the
        ``renewal_timeout`` option), the next one during a renewal (the browser
        was sent a cookie with it; a browser that never received that response
        starts over). Read ``batch`` rows at a time, in id
        order, each batch fully fetched before any is yielded: the caller may take
        (delete) them on the same connection meanwhile, which an open streaming
        cursor would not allow on MariaDB.
        """
        t = self._table(dbsession)
        c = t.table.c
        names = ("id", "renewal_id", "renewal_next", "renewal_timeout")
        columns = [c[name] for name in names if t.has(name)]
        live = self._live(t, now)
        last: Any = None
        while True:
            query = sa.select(*columns).where(*live).order_by(c.id).limit(batch)
            if last is not None:
                query = query.where(c.id > last)
            rows = dbsession.execute(query).mappings().all()
            for row in rows:
                sid = _as_uuid(row["id"])
                assert sid is not None
                renewal = _as_bytes(row.get("renewal_next")) or _as_bytes(row.get("renewal_id"))
                if renewal is not None and self._renewal_on(t, row) is not False:
                    yield f"{sid.hex}.{renewal.hex()}"
                else:
                    yield sid.hex
            if len(rows) < batch:
                return
            last = rows[-1]["id"]

    # -- reading and taking ----------------------------------------------------------------
    def read(self, dbsession: Any, old_id: str, now: int) -> OldSession | None:
        """The old session ``old_id`` if the predecessor would serve it at ``now``, decoded.

        ``None`` when its row is gone or the predecessor would refuse it (see the
        module's docstring); a renewal violation also deletes the row, as the
        predecessor did, and is the only write. :class:`Unrepresentable` when its
        data is not plain values.
        """
        parsed = _parse_id(old_id)
        if parsed is None:
            return None
        sid, cookie_renewal = parsed
        try:
            t = self._table(dbsession)
        except ValueError as exc:
            log.error("cannot migrate old sessions: %s", exc)
            return None
        key = t.bind_id(sid)
        row = dbsession.execute(sa.select(t.table).where(t.table.c.id == key)).mappings().first()
        if row is None:
            return None
        refused = self._refusal(t, row, cookie_renewal, now)
        if refused is not None:
            reason, violation = refused
            log.info("old session %s... not migrated: %s", sid.hex[:8], reason)
            if violation:
                self._delete(dbsession, t, key)
            return None
        return self._decode(t, row, sid)

    def take(self, dbsession: Any, old: OldSession) -> Claim:
        """Delete ``old``'s row in ``dbsession``'s transaction (a rollback keeps it).

        Raises :class:`ClaimedElsewhere` when the ``DELETE`` counts no row: a
        concurrent request took it first (its transaction committed, or this
        one waited for its row lock until it did).
        """
        handle = old.handle
        if not isinstance(handle, PredecessorHandle):
            raise TypeError(f"not an old session of this source: {old.id[:8]}...")
        t = self._table(dbsession)
        if not self._delete(dbsession, t, t.bind_id(handle.id)):
            raise ClaimedElsewhere(f"old session {old.id[:8]}... was taken by another request")
        return Claim()

    def _delete(self, dbsession: Any, t: _Table, key: Any) -> bool:
        result = dbsession.execute(sa.delete(t.table).where(t.table.c.id == key))
        mark_changed(dbsession)  # a Core DELETE: zope.sqlalchemy would roll it back otherwise
        return bool(result.rowcount == 1)

    def _renewal_on(self, t: _Table, row: Mapping[str, Any]) -> bool | None:
        """Whether the row's renewal timeout is on; None: not known (plain mixin, no option)."""
        if not t.has("renewal_id"):
            return False
        if t.has("renewal_timeout"):
            return row["renewal_timeout"] is not None
        if self._renewal_timeout is _UNSET:
            return None
        return self._renewal_timeout is not None

    def _refusal(
        self, t: _Table, row: Mapping[str, Any], cookie_renewal: bytes | None, now: int
    ) -> tuple[str, bool] | None:
        """(why the predecessor refused the row, whether as a renewal violation), or None."""
        # renewal first, as the predecessor checked it whatever else was wrong
        on = self._renewal_on(t, row)
        if cookie_renewal is None:
            if on:
                return "its cookie has no renewal id but the renewal timeout is on", False
        elif on is not False:
            accepted = {_as_bytes(row["renewal_id"]), _as_bytes(row.get("renewal_next"))}
            if cookie_renewal not in accepted - {None}:
                return "renewal violation (an outdated or stolen cookie)", True
        if t.has("idle_expire"):
            if t.has("idle_timeout"):
                idle_on = row["idle_timeout"] is not None
            elif self._idle_timeout is _UNSET:
                idle_on = row["idle_expire"] is not None
            else:
                idle_on = self._idle_timeout is not None
            if idle_on:
                if row["idle_expire"] is None:
                    return "its idle timeout is on but it has no idle_expire", False
                if now > row["idle_expire"]:
                    return "idle timeout", False
        absolute = self._absolute_expire(t, row)
        if absolute is not None and now > absolute:
            return "absolute timeout", False
        return None

    def _absolute_expire(self, t: _Table, row: Mapping[str, Any]) -> int | None:
        if t.has("absolute_expire"):
            value = row["absolute_expire"]
            return None if value is None else int(value)
        if self._absolute_timeout in (None, _UNSET):
            return None
        return int(row["created"]) + int(self._absolute_timeout)

    def _decode(self, t: _Table, row: Mapping[str, Any], sid: uuid.UUID) -> OldSession:
        raw = row.get("data")
        data: Any = {} if raw is None else safe_loads(bytes(raw), stand_ins=_STAND_INS)
        if not isinstance(data, dict):
            raise Unrepresentable("the pickled session data is not a dict")
        flash = row.get("flash")
        if isinstance(flash, (str, bytes)):
            try:
                flash = json.loads(flash)
            except ValueError:
                raise Unrepresentable("the flash column does not hold JSON") from None
        if flash is not None and not isinstance(flash, dict):
            raise Unrepresentable("the flash column does not hold a JSON object")
        csrf = _as_bytes(row.get("csrf_token"))
        created = int(row["created"])
        settings = self._settings(t, row, created)
        accessed = None
        expires = []
        idle_expire = row.get("idle_expire")
        if idle_expire is not None:
            expires.append(int(idle_expire))
            timeout = row["idle_timeout"] if t.has("idle_timeout") else self._idle_timeout
            if isinstance(timeout, int):
                accessed = int(idle_expire) - timeout
        absolute = self._absolute_expire(t, row)
        if absolute is not None:
            expires.append(absolute)
        return OldSession(
            id=sid.hex,
            data=dict(data),
            created=created,
            accessed=accessed,
            userid=row.get("userid"),
            csrf_token=None if csrf is None else base64.urlsafe_b64encode(csrf).decode("ascii"),
            flash={str(queue): list(messages) for queue, messages in (flash or {}).items()},
            settings=settings,
            # the predecessor served a session through its expiry's second, ours end at it
            expires_at=min(expires) + 1 if expires else None,
            handle=PredecessorHandle(sid),
        )

    def _settings(self, t: _Table, row: Mapping[str, Any], created: int) -> dict[str, Any]:
        """The per-session values of the ``Config...Mixin`` columns, under our setting names.

        A ``NULL`` (the feature off for that one session) is left out: our ``NULL``
        means the global value, and no per-session value turns a feature off.
        """
        settings: dict[str, Any] = {}
        names: list[str] = []
        if t.has("idle_timeout"):
            names += _IDLE_SETTINGS
        if t.has("renewal_timeout"):
            names += _RENEWAL_SETTINGS
        if t.has("cookie_path"):
            names += _COOKIE_SETTINGS
        for name in names:
            value = row.get(name)
            if value is not None:
                settings[name] = bool(value) if name in _BOOLEAN_SETTINGS else value
        if t.has("absolute_expire") and row["absolute_expire"] is not None:
            settings["absolute_timeout"] = int(row["absolute_expire"]) - created
        return settings
