"""The source for pyramid_session_redis (1.7 and 1.8): its signed cookie, its Redis key.

What pyramid_session_redis stores, read from its code (1.8.1):

* **The cookie** holds the session id, signed by WebOb's ``SignedSerializer``
  with the salt ``"pyramid_session_redis."``, HMAC-SHA512 and a serializer that
  writes the id as its UTF-8 bytes: the value is
  ``urlsafe_b64encode(HMAC-SHA512(salt + secret, id) + id)`` without the ``=``
  padding. The secret is ``redis.sessions.secret``; WebOb encodes ``salt +
  secret`` as Latin-1, or as UTF-8 when Latin-1 cannot hold it. Nothing in the
  cookie expires: its age is the Redis key's business.
* **The id** is ``secrets.token_urlsafe(48)`` (64 URL-safe characters), after
  ``redis.sessions.prefix`` when one is set. The id, prefix included, *is* the
  Redis key: there is no other key layout.
* **The value** of the key is ``serialize(payload)`` (``pickle.dumps`` unless the
  application set ``redis.sessions.serialize``/``deserialize``), where
  ``payload`` is ``{"m": the session's dict, "c": created, "v": 1, "t": timeout,
  "x": expires}``: ``t`` only with a timeout, ``x`` (seconds since the epoch)
  only with ``python_expires`` (the default). The key's Redis TTL is the timeout
  when ``set_redis_ttl`` (the default).
* **Expiry**: a session is gone when its key is (the Redis TTL), ended when
  ``now > x``, and refused when ``v`` is missing or below 1 (a legacy payload).
* **Pyramid's keys** in the session's dict: the CSRF token in ``_csrft_``
  (``session.get_csrf_token()``, and Pyramid's CSRF storage policies), flash
  queues in ``_f_<queue>`` (a list each), and the user id of Pyramid's
  ``SessionAuthenticationHelper`` / ``SessionAuthenticationPolicy`` in
  ``auth.userid``.

The options (``session.migrate_options``, as ``name=value``):

``prefix``
    ``redis.sessions.prefix`` of the old application (default: none).
``serializer``
    ``pickle`` (the default, read with :func:`sessions_migrate.unpickle.safe_loads`)
    or ``json`` (the application set ``serialize``/``deserialize`` to JSON's).
``userid_key``
    the session key of the user id (default ``auth.userid``).
``csrf_key``
    the session key of the CSRF token (default ``_csrft_``).
``id_pattern``
    a regular expression the id, after the prefix, matches (default
    ``[A-Za-z0-9_-]{64}``: the id generator's); for a custom ``id_generator``.
``claim_seconds``
    how long a request's claim on an old session lasts if it never ends (default 60).
``claim_wait``
    how long a request that finds the old session claimed by a concurrent one waits
    for that claim's end before it runs again (default 10 seconds; 0: not at all).
``cookie_path``, ``cookie_domain``
    ``redis.sessions.cookie_path`` and ``cookie_domain``, to delete the old cookie.

``SourceOptions.url`` is the Redis URL (``redis.sessions.redis_url``),
``SourceOptions.timeout`` the old ``redis.sessions.timeout`` (default 1200): a
session whose own timeout differs from it (``adjust_session_timeout``) carries
its timeout as the ``idle_timeout`` setting.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ..source import Claim, ClaimedElsewhere, ClaimHeld, OldSession, SourceOptions, Unrepresentable
from ..unpickle import safe_loads

if TYPE_CHECKING:
    import redis as redis_package

__all__ = ["RedisSource"]

log = logging.getLogger(__name__)

#: WebOb's ``SignedSerializer`` salt as pyramid_session_redis sets it
SALT = b"pyramid_session_redis."
_DIGEST = hashlib.sha512
_DIGEST_SIZE = _DIGEST().digest_size
#: the longest cookie read: a 4 KiB cookie is the most a browser keeps
_MAX_COOKIE = 4096
_COOKIE_CHARS = re.compile(r"[A-Za-z0-9_-]+")
#: after the prefix, the key of a claim on an old session (``<prefix>migrating:<rest of id>``)
CLAIM_INFIX = "migrating:"
#: How long a request that finds the old session claimed waits for the claim's end (the
#: other request's commit or abort), in seconds, before it runs again (pyramid_retry):
#: the SQL sources wait the same way, on the row's lock.
CLAIM_WAIT = 10.0
_CLAIM_POLL = 0.02
#: pyramid_session_redis's default ``timeout``
DEFAULT_TIMEOUT = 1200
_OPTIONS = frozenset(
    {
        "prefix",
        "serializer",
        "userid_key",
        "csrf_key",
        "id_pattern",
        "claim_seconds",
        "claim_wait",
        "cookie_path",
        "cookie_domain",
    }
)
_INSTALL = "pip install sessions-migrate[redis]"

#: delete the claim ``KEYS[1]`` only if it still holds this request's token ``ARGV[1]``
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


def _signing_key(secret: bytes) -> bytes:
    """The HMAC key WebOb builds from pyramid_session_redis's salt and ``secret``.

    The secret was a string in the old application's settings; WebOb encodes
    ``salt + secret`` as Latin-1, or UTF-8 when Latin-1 cannot hold it. The
    file or variable holds it as UTF-8 (bytes that are not UTF-8 are used as
    they are).
    """
    try:
        text = secret.decode("utf-8")
    except UnicodeDecodeError:
        return SALT + secret
    try:
        return SALT + text.encode("latin-1")
    except UnicodeEncodeError:
        return SALT + text.encode("utf-8")


class RedisSource:
    """pyramid_session_redis's sessions: its signed cookie, its Redis keys.

    Built once per session factory; the Redis client is made here (it connects
    on first use). Raises :class:`ValueError` for a missing URL, an unknown or
    invalid option, or a missing ``redis`` package. A Redis that cannot be
    reached makes :meth:`claim` raise :class:`redis.RedisError`: an outage is
    not an expired session.
    """

    name: ClassVar[str] = "pyramid_session_redis"
    default_cookie_name: ClassVar[str] = "session"

    def __init__(self, options: SourceOptions, clock: Callable[[], float]) -> None:
        unknown = sorted(set(options.options) - _OPTIONS)
        if unknown:
            raise ValueError(
                f"pyramid_session_redis's source has no option {', '.join(unknown)}; "
                f"it knows {', '.join(sorted(_OPTIONS))}"
            )
        if not options.url:
            raise ValueError(
                "pyramid_session_redis's sessions are in Redis: set session.migrate_url to "
                "its URL (redis.sessions.redis_url), e.g. redis://localhost:6379/0"
            )
        if not options.secrets:
            raise ValueError(
                "pyramid_session_redis's cookie is signed with redis.sessions.secret: "
                "give it in session.migrate_secret_file or session.migrate_secret_env"
            )
        opts = options.options
        self._prefix = opts.get("prefix", "")
        serializer = opts.get("serializer", "pickle")
        if serializer not in ("pickle", "json"):
            raise ValueError(
                f"serializer={serializer!r}: pyramid_session_redis's source reads 'pickle' "
                "(its default) or 'json'"
            )
        self._loads: Callable[[bytes], Any] = safe_loads if serializer == "pickle" else _json
        self._userid_key = opts.get("userid_key", "auth.userid")
        self._csrf_key = opts.get("csrf_key", "_csrft_")
        pattern = opts.get("id_pattern", r"[A-Za-z0-9_-]{64}")
        try:
            self._id_pattern = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"id_pattern={pattern!r} is not a regular expression: {exc}") from None
        try:
            self._claim_seconds = int(opts.get("claim_seconds", "60"))
        except ValueError:
            self._claim_seconds = 0
        if not 1 <= self._claim_seconds <= 3600:
            raise ValueError(
                f"claim_seconds={opts.get('claim_seconds')!r}: expected whole seconds, 1 to 3600"
            )
        self._cookie_name = options.cookie_name or self.default_cookie_name
        self._cookie_path = opts.get("cookie_path", "/")
        self._cookie_domain = opts.get("cookie_domain") or None
        self._timeout = options.timeout if options.timeout is not None else DEFAULT_TIMEOUT
        self._keys = tuple(_signing_key(s) for s in options.secrets)
        self._clock = clock
        try:
            import redis
        except ImportError:
            raise ValueError(
                "pyramid_session_redis's source needs the redis package: " + _INSTALL
            ) from None
        self._redis: redis_package.Redis = redis.Redis.from_url(options.url)
        self._release = self._redis.register_script(_RELEASE)
        try:
            self._claim_wait = float(opts.get("claim_wait", str(CLAIM_WAIT)))
        except ValueError:
            self._claim_wait = -1.0
        if not 0 <= self._claim_wait <= 60:
            raise ValueError(f"claim_wait={opts.get('claim_wait')!r}: expected seconds, 0 to 60")

    def __repr__(self) -> str:
        # neither the secrets nor the URL (it may hold a password)
        return f"<RedisSource prefix={self._prefix!r}>"

    # -- the cookie ------------------------------------------------------------------------

    def cookie_name(self) -> str:
        """``redis.sessions.cookie_name``: ``session.migrate_cookie_name``, else ``session``."""
        return self._cookie_name

    def cookie_attributes(self) -> Mapping[str, Any]:
        """The old cookie's ``path`` and ``domain`` (options ``cookie_path``, ``cookie_domain``)."""
        return {"path": self._cookie_path, "domain": self._cookie_domain}

    def open_cookie(self, value: str) -> str | None:
        """The session id the signed cookie ``value`` carries, or ``None``.

        ``value`` must be URL-safe base64 without padding (what WebOb writes) of
        a 64-byte HMAC-SHA512 and the id; the HMAC must match one of the
        secrets (compared in constant time, every secret tried); the id must be
        UTF-8, start with the prefix and match ``id_pattern`` after it. No I/O.
        """
        if not value or len(value) > _MAX_COOKIE or not _COOKIE_CHARS.fullmatch(value):
            return None
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError):
            return None
        signature, payload = raw[:_DIGEST_SIZE], raw[_DIGEST_SIZE:]
        if not payload:
            return None
        valid = False
        for key in self._keys:
            expected = hmac.new(key, payload, _DIGEST).digest()
            valid |= hmac.compare_digest(expected, signature)
        if not valid:
            return None
        try:
            old_id = payload.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return old_id if self._is_id(old_id) else None

    def _is_id(self, old_id: str) -> bool:
        return old_id.startswith(self._prefix) and bool(
            self._id_pattern.fullmatch(old_id[len(self._prefix) :])
        )

    def _claim_key(self, old_id: str) -> str:
        return self._prefix + CLAIM_INFIX + old_id[len(self._prefix) :]

    # -- the store -------------------------------------------------------------------------

    def read(self, dbsession: Any, old_id: str, now: int) -> OldSession | None:
        """The old session ``old_id``, decoded; ``None`` when it is gone or ended.

        The key is read with its TTL in one ``MULTI``: ``None`` when it is gone
        (its Redis TTL passed), ended by its ``x`` (``now > x``) or a legacy
        payload; :class:`Unrepresentable` when it cannot be decoded safely.
        ``dbsession`` is unused: Redis is outside the transaction.
        """
        if not self._is_id(old_id):
            return None
        return self._read(old_id, now)

    def take(self, dbsession: Any, old: OldSession) -> Claim:
        """Take ``old``: exactly one concurrent caller gets it.

        A claim is the key ``<prefix>migrating:<id after the prefix>``, set with
        ``SET NX EX claim_seconds`` to a random token; a caller that finds it
        set (after waiting up to ``claim_wait`` seconds for the claim's
        end), or finds the old key gone once it holds the claim (a concurrent
        migration committed meanwhile), raises :class:`ClaimedElsewhere`. The
        returned :class:`Claim`'s ``on_commit`` deletes the old key and
        releases the claim; its ``on_abort`` releases the claim, so that a
        retried attempt claims again. Both log a Redis error and never raise.
        """
        old_id = old.id
        claim_key = self._claim_key(old_id)
        token = secrets.token_hex(16)
        if not self._redis.set(claim_key, token, nx=True, ex=self._claim_seconds):
            # a concurrent first visit is migrating it: wait for its end, as a SQL source
            # waits on the row's lock, so that this request's next attempt finds its row
            deadline = time.monotonic() + self._claim_wait
            while self._redis.exists(claim_key):
                if time.monotonic() >= deadline:
                    # a request that never ended (its process died): not this browser's
                    # problem now; the claim expires within claim_seconds
                    raise ClaimHeld(old_id)
                time.sleep(_CLAIM_POLL)
            raise ClaimedElsewhere(old_id)
        try:
            present = self._redis.exists(old_id)
        except BaseException:
            self._release_claim(claim_key, token)
            raise
        if not present:
            self._release_claim(claim_key, token)
            raise ClaimedElsewhere(old_id)

        def on_commit() -> None:
            try:
                self._redis.delete(old_id)
            except Exception as exc:
                log.warning(
                    "pyramid_session_redis: a migrated session's old key was not deleted "
                    "(%s); it ends with its Redis TTL",
                    type(exc).__name__,
                )
            self._release_claim(claim_key, token)

        def on_abort() -> None:
            self._release_claim(claim_key, token)

        return Claim(on_commit=on_commit, on_abort=on_abort)

    def _release_claim(self, claim_key: str, token: str) -> None:
        try:
            self._release(keys=[claim_key], args=[token])
        except Exception as exc:
            log.warning(
                "pyramid_session_redis: a claim on an old session was not released (%s); "
                "it ends in %d seconds",
                type(exc).__name__,
                self._claim_seconds,
            )

    def _read(self, old_id: str, now: int) -> OldSession | None:
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(old_id)
            pipe.pttl(old_id)
            raw, pttl = pipe.execute(raise_on_error=False)
        if isinstance(raw, Exception):
            raise Unrepresentable(f"the old session's key is not a string ({raw})")
        if raw is None:
            return None
        payload = self._loads(raw)
        if not isinstance(payload, dict) or not isinstance(payload.get("m"), dict):
            raise Unrepresentable("the old session's value is not pyramid_session_redis's payload")
        version: Any = payload.get("v")
        created: Any = payload.get("c")
        timeout: Any = payload.get("t")
        expires: Any = payload.get("x")
        if not all(_is_int(v) for v in (version, created)) or not all(
            v is None or _is_int(v) for v in (timeout, expires)
        ):
            raise Unrepresentable("the old session's value is not pyramid_session_redis's payload")
        if version < 1:
            return None  # pyramid_session_redis refuses a legacy payload
        if expires and now > expires:
            return None  # ended by python_expires
        data = dict(payload["m"])
        userid = data.pop(self._userid_key, None)
        csrf_token = data.pop(self._csrf_key, None)
        if csrf_token is not None and not isinstance(csrf_token, str):
            raise Unrepresentable("the old session's CSRF token is not a string")
        flash: dict[str, list[Any]] = {}
        for key in [k for k in data if isinstance(k, str) and k.startswith("_f_")]:
            messages = data.pop(key)
            if not isinstance(messages, (list, tuple)):
                raise Unrepresentable("a flash queue of the old session is not a list")
            flash[key[3:]] = list(messages)
        if expires:
            expires_at: int | None = expires
        elif isinstance(pttl, int) and pttl > 0:
            expires_at = now + math.ceil(pttl / 1000)
        else:
            expires_at = None
        settings = {"idle_timeout": timeout} if timeout and timeout != self._timeout else {}
        return OldSession(
            id=old_id,
            data=data,
            created=created,
            accessed=expires - timeout if expires and timeout else None,
            userid=userid,
            csrf_token=csrf_token,
            flash=flash,
            settings=settings,
            expires_at=expires_at,
            handle=old_id,
        )

    def _keys_iter(self) -> Iterator[str]:
        pattern = _glob_escape(self._prefix) + "*"
        claims = self._prefix + CLAIM_INFIX
        for key in self._redis.scan_iter(match=pattern, count=1000, _type="string"):
            try:
                text = key.decode("utf-8") if isinstance(key, bytes) else str(key)
            except UnicodeDecodeError:
                continue
            if not text.startswith(claims) and self._is_id(text):
                yield text

    def count(self, dbsession: Any, now: int) -> int:
        """How many keys :meth:`live_ids` gives (``SCAN``; ``dbsession`` unused).

        Keys whose ``x`` has passed but whose Redis TTL has not (only without
        ``set_redis_ttl``) are counted; :meth:`claim` refuses them.
        """
        return sum(1 for _ in self._keys_iter())

    def live_ids(self, dbsession: Any, now: int) -> Iterator[str]:
        """The ids of the old sessions: string keys under the prefix, matching ``id_pattern``.

        ``SCAN``, never ``KEYS``: Redis serves other clients meanwhile, and a key
        added or removed during the scan may or may not be given. Claims are
        not given. ``dbsession`` is unused.
        """
        return self._keys_iter()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        raise Unrepresentable(
            f"the old session's JSON cannot be read: {type(exc).__name__}"
        ) from None


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis ``MATCH`` pattern."""
    return re.sub(r"([\\*?\[\]^])", r"\\\1", text)
