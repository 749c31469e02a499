"""pyramid_beaker with Beaker's ``ext:database`` store: its signed id cookie and its table.

What Beaker (1.14; the formats go back to 1.8) keeps, and what this adapter reads:

The cookie (``session.key``, by default ``beaker.session.id``)
    ``<signature><id>``: the session's id (``uuid4().hex`` since Beaker 1.8)
    preceded by the 40 hexadecimal digits of HMAC-SHA1 over the id, keyed
    with ``session.secret`` (Beaker's ``SignedCookie``). The cookie carries
    nothing else: ``session.encrypt_key`` / ``session.validate_key`` never touch
    the cookie of an ``ext:database`` session (they encrypt the row's data, see
    below). A Beaker without ``session.secret`` sent the bare id, unsigned; this
    adapter refuses such cookies (anyone could send any id), so it needs the
    secret.

The table (``session.table_name``, by default ``beaker_cache``)
    One row per session: ``namespace`` (the id, unique), ``accessed`` and
    ``created`` (naive local ``DateTime`` of the Beaker server; not used here)
    and ``data``, a SQLAlchemy ``PickleType``: a pickle of a dictionary whose
    key ``"session"`` holds the session. Beaker 1.12 and later store there the
    session dictionary serialized by ``session.data_serializer`` (a protocol 2
    pickle by default, or zlib-compressed JSON) and base64-encoded; Beaker 1.11
    and earlier stored the dictionary itself. With ``session.encrypt_key`` the
    base64 text is AES-encrypted data preceded by a nonce; this adapter does not
    read it (:class:`~sessions_migrate.source.Unrepresentable`).

    Both pickles are read with :func:`sessions_migrate.unpickle.safe_loads`
    only: a pickle that names any class or function outside the plain values
    is refused before anything of it is built, and Beaker's table is the only
    place a pickle is read from. Nothing of the cookie is ever unpickled.

The session dictionary
    Beaker's own keys: ``_creation_time`` and ``_accessed_time`` (``time.time()``
    floats; ``_accessed_time`` is rewritten on every request that touches the
    session), ``_domain`` and ``_path`` (the cookie's, ``None`` and ``"/"``).
    pyramid_beaker's: ``_f_<queue>`` (the flash queues, lists) and
    ``_csrft_`` (the CSRF token). Pyramid's ``SessionAuthenticationHelper``
    (and the older ``SessionAuthenticationPolicy``) keeps the logged-in user
    under ``<prefix>userid``, ``auth.userid`` by default.

Expiry is Beaker's own rule: with ``session.timeout`` set, a session whose
``now - _accessed_time`` is over the timeout is gone (Beaker starts a new one);
a session without ``_accessed_time``, or any session without a timeout, lives.

Options (``SourceOptions.options``): ``userid_key`` (``auth.userid``; the
prefix of the application's ``SessionAuthenticationHelper`` followed by
``userid``), ``cookie_path`` (``/``) and ``cookie_domain`` (none): Beaker's
``session.cookie_path`` and ``session.cookie_domain``, to delete the old cookie.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import sqlalchemy as sa
import sqlalchemy.orm

from ..source import Claim, ClaimedElsewhere, OldSession, SourceOptions, Unrepresentable
from ..unpickle import safe_loads

__all__ = ["BeakerSource"]

#: Beaker's default cookie name (``session.key``)
DEFAULT_COOKIE_NAME = "beaker.session.id"
#: ext:database's default table name (``session.table_name``)
DEFAULT_TABLE = "beaker_cache"
#: the key of the user id that Pyramid's SessionAuthenticationHelper() writes
DEFAULT_USERID_KEY = "auth.userid"
#: what SourceOptions.options may hold for this source
OPTIONS = frozenset({"userid_key", "cookie_path", "cookie_domain"})

#: hex digits of an HMAC-SHA1
_SIGNATURE_LENGTH = 40
_SIGNATURE = re.compile(r"[0-9a-f]{40}")
#: a session id: Beaker's are 32 hex digits (uuid4().hex); older ones other URL-safe text.
#: The table's column is a String(255).
_ID = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,63}")
#: Beaker's own bookkeeping in the session dictionary, never the application's data
_BEAKER_KEYS = frozenset({"_creation_time", "_accessed_time", "_domain", "_path"})
_FLASH_PREFIX = "_f_"
_CSRF_KEY = "_csrft_"
#: the most a zlib-compressed JSON session may inflate to
_MAX_JSON_BYTES = 64 * 1024 * 1024
#: rows read per query by count() and live_ids()
_BATCH = 500


class BeakerSource:
    """Sessions of pyramid_beaker kept by Beaker's ``ext:database`` store.

    ``BeakerSource(options)``: ``options.secrets`` are Beaker's
    ``session.secret`` values (newest first; at least one), ``options.table``
    its ``session.table_name`` (``schema.table`` for ``session.schema_name``),
    ``options.timeout`` its ``session.timeout`` in seconds (``None``: Beaker
    had none, and every stored session lives). The table must be in the
    database of the request's SQLAlchemy session. Raises :class:`ValueError`
    with the fix for options it cannot use.
    """

    name: ClassVar[str] = "beaker"
    default_cookie_name: ClassVar[str] = DEFAULT_COOKIE_NAME

    def __init__(self, options: SourceOptions, clock: Callable[[], float] | None = None) -> None:
        if not options.secrets:
            raise ValueError(
                "Beaker's cookie is verified with its session.secret: give the secret "
                "(a Beaker without session.secret sent unsigned ids, which are refused)"
            )
        if not all(isinstance(s, bytes) and s for s in options.secrets):
            raise ValueError("each of Beaker's secrets must be non-empty bytes")
        self._secrets = tuple(options.secrets)
        unknown = sorted(set(options.options) - OPTIONS)
        if unknown:
            raise ValueError(
                f"unknown option(s) for the beaker source: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(OPTIONS))})"
            )
        if options.timeout is not None and (
            isinstance(options.timeout, bool)
            or not isinstance(options.timeout, int)
            or options.timeout <= 0
        ):
            raise ValueError(
                f"Beaker's session.timeout must be a positive number of seconds or unset, "
                f"got {options.timeout!r}"
            )
        self._timeout = options.timeout
        self._cookie_name = options.cookie_name or DEFAULT_COOKIE_NAME
        self._userid_key = options.options.get("userid_key", DEFAULT_USERID_KEY)
        if not self._userid_key:
            raise ValueError("userid_key must be the session key of the user id (auth.userid)")
        self._cookie_path = options.options.get("cookie_path", "/") or "/"
        self._cookie_domain = options.options.get("cookie_domain") or None
        self._table, self._row_class = _table(options.table or DEFAULT_TABLE)

    def __repr__(self) -> str:
        # never the secrets
        return f"<BeakerSource table={self._table.fullname!r} timeout={self._timeout!r}>"

    # -- the cookie ---------------------------------------------------------------------

    def cookie_name(self) -> str:
        """Beaker's ``session.key``: ``beaker.session.id`` unless configured."""
        return self._cookie_name

    def cookie_attributes(self) -> Mapping[str, Any]:
        """Beaker's ``session.cookie_path`` and ``session.cookie_domain`` (options)."""
        return {"path": self._cookie_path, "domain": self._cookie_domain}

    def open_cookie(self, value: str) -> str | None:
        """The id in a cookie Beaker signed with one of the secrets, else ``None``.

        ``value`` is ``<40 lowercase hex digits of HMAC-SHA1(secret, id)><id>``,
        possibly in double quotes (Beaker strips them too). The signature is
        compared in constant time. A bare id, a signature of another secret, a
        truncated or damaged value, or an id that is not URL-safe text of at most
        255 characters gives ``None``.
        """
        value = value.strip('"')
        signature, old_id = value[:_SIGNATURE_LENGTH], value[_SIGNATURE_LENGTH:]
        if not _SIGNATURE.fullmatch(signature) or not _ID.fullmatch(old_id):
            return None
        raw = old_id.encode("ascii")
        for secret in self._secrets:
            expected = hmac.new(secret, raw, hashlib.sha1).hexdigest()
            if hmac.compare_digest(expected, signature):
                return old_id
        return None

    # -- the table ----------------------------------------------------------------------

    def read(self, dbsession: Any, old_id: str, now: int) -> OldSession | None:
        """The session of ``old_id`` from Beaker's table, decoded; writes and locks nothing.

        ``None`` when there is no row; when the row holds no session, or one of
        Beaker's own keys only (what Beaker's ``Session.delete()`` leaves:
        nothing to carry, and no new row for it); or when the session expired
        by Beaker's rule, ``now - _accessed_time > timeout``. Raises
        :class:`Unrepresentable` when the row cannot be decoded safely (a pickle
        naming anything but plain values, an encrypted row).

        The row is read without a lock: of two first visits, both read it and
        the second one's :meth:`take` finds it gone (:class:`ClaimedElsewhere`,
        and pyramid_retry's next attempt loads the session the first stored).
        """
        table = self._table
        row = dbsession.execute(sa.select(table.c.data).where(table.c.namespace == old_id)).first()
        if row is None:
            return None
        session = self._decode(old_id, row[0], now)
        if session is None or session.is_empty():
            return None
        return session

    def take(self, dbsession: Any, old: OldSession) -> Claim:
        """Delete ``old``'s row in ``dbsession``'s transaction: a rollback keeps it.

        Raises :class:`ClaimedElsewhere` when the ``DELETE`` found no row: a
        concurrent request took it first (its ``DELETE`` held the row's lock
        until its commit, and this one waited for it). Where the database
        refuses the ``DELETE`` instead (MariaDB's ``innodb_snapshot_isolation``,
        error 1020, or PostgreSQL's ``REPEATABLE READ``, on a row changed since
        this transaction's snapshot), its error goes up: the kernel marks both
        retryable, with the same outcome.

        The ``DELETE`` is an ORM statement (see :func:`_table`), so that
        zope.sqlalchemy counts the request's session as changed and commits it.
        """
        rows = self._row_class
        result = dbsession.execute(
            sa.delete(rows)
            .where(rows.namespace == old.handle)  # type: ignore[attr-defined]
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            raise ClaimedElsewhere("Beaker's row was deleted by a concurrent request")
        return Claim()

    def count(self, dbsession: Any, now: int) -> int:
        """How many of the table's sessions :meth:`live_ids` gives."""
        return sum(1 for _ in self.live_ids(dbsession, now))

    def live_ids(self, dbsession: Any, now: int) -> Iterator[str]:
        """The ids of the sessions :meth:`read` gives at ``now``, in the table's order.

        Every row is decoded (Beaker's expiry is inside its pickle), in batches
        read in full before they are given, so that taking them meanwhile is
        safe. A row that cannot be decoded safely is given too: its ``read``
        raises :class:`Unrepresentable`, which the bulk command reports.
        """
        table = self._table
        after: str | None = None
        while True:
            query = sa.select(table.c.namespace, table.c.data).order_by(table.c.namespace)
            if after is not None:
                query = query.where(table.c.namespace > after)
            rows = dbsession.execute(query.limit(_BATCH)).all()
            if not rows:
                return
            for old_id, raw in rows:
                try:
                    session = self._decode(old_id, raw, now)
                    live = session is not None and not session.is_empty()
                except Unrepresentable:
                    live = True
                if live:
                    yield old_id
            after = rows[-1][0]

    # -- decoding -----------------------------------------------------------------------

    def _decode(self, old_id: str, raw: Any, now: int) -> OldSession | None:
        """The session in a row's ``data``, ``None`` if empty or expired at ``now``."""
        if isinstance(raw, memoryview):
            raw = raw.tobytes()
        if not isinstance(raw, bytes):
            raise Unrepresentable("Beaker's data column does not hold bytes")
        container = safe_loads(raw)
        if not isinstance(container, dict):
            raise Unrepresentable("Beaker's row does not hold a dictionary")
        stored = container.get("session")
        if stored is None:
            return None  # Beaker reads this as a new, empty session
        values = _session_dictionary(stored)
        if not values:
            return None
        accessed = _seconds(values, "_accessed_time")
        created = _seconds(values, "_creation_time")
        expires_at = None
        if self._timeout is not None and accessed is not None:
            # Beaker: ``now - session_data['_accessed_time'] > self.timeout`` is timed out
            if now - accessed > self._timeout:
                return None
            # the first whole second at which that holds
            expires_at = math.floor(accessed + self._timeout) + 1
        return self._old_session(old_id, values, created, accessed, expires_at)

    def _old_session(
        self,
        old_id: str,
        values: dict[Any, Any],
        created: float | None,
        accessed: float | None,
        expires_at: int | None,
    ) -> OldSession:
        data: dict[str, Any] = {}
        flash: dict[str, list[Any]] = {}
        csrf_token = None
        userid = None
        for key, value in values.items():
            if not isinstance(key, str):
                raise Unrepresentable(
                    f"a key of the session is a {type(key).__name__}, not a string"
                )
            if key in _BEAKER_KEYS:
                continue
            if key == _CSRF_KEY:
                if value is not None and not isinstance(value, str):
                    raise Unrepresentable("the CSRF token (_csrft_) is not a string")
                csrf_token = value
            elif key == self._userid_key:
                userid = value
            elif key.startswith(_FLASH_PREFIX):
                if not isinstance(value, (list, tuple)):
                    raise Unrepresentable(f"the flash queue {key!r} is not a list")
                if value:
                    flash[key[len(_FLASH_PREFIX) :]] = list(value)
            else:
                data[key] = value
        return OldSession(
            id=old_id,
            data=data,
            created=None if created is None else math.floor(created),
            accessed=None if accessed is None else math.floor(accessed),
            userid=userid,
            csrf_token=csrf_token,
            flash=flash,
            expires_at=expires_at,
            handle=old_id,
        )


def _table(name: str) -> tuple[sa.Table, type]:
    """The columns of Beaker's table this adapter uses (``data`` read as raw bytes), and a
    class mapped to them.

    The ``DELETE`` of a claim goes through the mapped class: an ORM statement, which
    zope.sqlalchemy sees, so that a request's transaction commits it even when nothing else
    was written (SQL it does not see leaves the session "unchanged", and is rolled back).
    Only the namespace and data columns are declared; Beaker's ``id`` is never needed.
    """
    schema, _, table_name = name.rpartition(".")
    if not _TABLE.fullmatch(table_name) or (schema and not _TABLE.fullmatch(schema)):
        raise ValueError(
            f"expected Beaker's table name (session.table_name, optionally schema.table), "
            f"got {name!r}"
        )
    registry = sa.orm.registry()
    table = sa.Table(
        table_name,
        registry.metadata,
        sa.Column("namespace", sa.String(255), primary_key=True),
        sa.Column("data", sa.LargeBinary()),
        schema=schema or None,
    )
    row_class = type("BeakerRow", (), {"__doc__": "A row of Beaker's table (claims only)."})
    registry.map_imperatively(row_class, table)
    return table, row_class


def _session_dictionary(stored: Any) -> dict[Any, Any]:
    """Beaker's session dictionary from what its row keeps under ``"session"``."""
    if isinstance(stored, dict):  # Beaker 1.11 and earlier: the dictionary itself
        return stored
    if isinstance(stored, bytes):
        stored = stored.decode("ascii", "replace")
    if not isinstance(stored, str):
        raise Unrepresentable("Beaker's row holds neither a session nor its serialization")
    try:
        serialized = base64.b64decode(stored.encode("ascii", "replace"), validate=True)
    except (binascii.Error, ValueError):
        serialized = b""
    if serialized.startswith(b"\x80"):  # session.data_serializer = pickle (protocol 2)
        values = safe_loads(serialized)
    elif serialized[:1] == b"\x78":  # session.data_serializer = json: zlib, then JSON
        values = _inflate_json(serialized)
    else:
        raise Unrepresentable(
            "Beaker's session data is neither a pickle nor zlib-compressed JSON: encrypted "
            "with session.encrypt_key (not supported) or another data_serializer"
        )
    if not isinstance(values, dict):
        raise Unrepresentable("Beaker's session data is not a dictionary")
    return values


def _inflate_json(compressed: bytes) -> Any:
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(compressed, _MAX_JSON_BYTES)
    except zlib.error:
        raise Unrepresentable("Beaker's compressed JSON is damaged") from None
    if inflater.unconsumed_tail:
        raise Unrepresentable(f"Beaker's JSON session is over {_MAX_JSON_BYTES} bytes")
    try:
        return json.loads(text.decode("utf-8"))
    except ValueError:
        raise Unrepresentable("Beaker's JSON session cannot be read") from None


def _seconds(values: dict[Any, Any], key: str) -> float | None:
    value = values.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Unrepresentable(f"Beaker's {key} is not a time in seconds")
    return float(value)
