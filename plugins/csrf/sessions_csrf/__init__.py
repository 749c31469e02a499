"""CSRF tokens kept in a column of the session table, for Pyramid's CSRF machinery.

Add :class:`CSRFMixin` to the session model and install the storage policy::

    from sessions_csrf import ColumnCSRFStoragePolicy
    config.set_csrf_storage_policy(ColumnCSRFStoragePolicy())

(or ``config.include("sessions_csrf")``, which does the same and checks the
model at start-up). Pyramid's :func:`pyramid.csrf.check_csrf_token`, views with
``require_csrf`` (or ``config.set_default_csrf_options(require_csrf=True)``)
and ``get_csrf_token()`` in templates then use the token stored here.

A token is created only when something asks for it. Asked for on a session
that has no row yet (a visitor's login form), it travels in the encrypted
session cookie with the time it was handed out, and no row is written, so
anonymous page views cannot fill the table. Such a cookie-only token expires
(:func:`unstored_lifetime`), and never becomes the stored session's token: the
session's first INSERT issues a fresh one, so a cookie planted in a victim's
browser fixes no token. The column holds the token encrypted (AES-SIV, with a
key the kernel derives from ``session.secret_key``; see :func:`seal`): a copy
of the table yields no token.

``regenerate_id()`` keeps the token; ``invalidate()`` drops it with the row. A
login (``remember()``) or any change of ``request.session.userid`` replaces it
(the ``session_user_changed`` hook of sessions-userid): a token handed out
before the login, in the column or in the cookie, is refused after it. A logout
that ends the session (``forget()``) leaves no token behind.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from pyramid.interfaces import PHASE3_CONFIG, ICSRFStoragePolicy, ISessionFactory
from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column
from zope.interface import implementer

from sessions_kernel import ConfigurationError, Session, SessionFactory, StashKey, hookimpl
from sessions_kernel.crypto import SecretKeys
from sessions_kernel.merge import MergeConflict, MergeRule

if TYPE_CHECKING:
    from pyramid.config import Configurator
    from pyramid.request import Request

    class _CSRFSession(Session):
        """A session whose model includes CSRFMixin: the API ``session_attributes`` adds."""

        csrf_token: str | None
        get_csrf_token: Callable[[], str]
        new_csrf_token: Callable[[], str]


__all__ = [
    "CLEAR_LENGTH",
    "KEY_BYTES",
    "KEY_LABEL",
    "SEALED_LENGTH",
    "TOKEN_BYTES",
    "UNSTORED_TOKEN_LIFETIME",
    "CSRFMixin",
    "ColumnCSRFStoragePolicy",
    "column_keys",
    "includeme",
    "open_sealed",
    "seal",
    "stored_token",
    "unstored_lifetime",
]

#: Random bytes in a token (256 bits); the token is their URL-safe base64 (43 characters).
TOKEN_BYTES = 32
COLUMN = "csrf_token"
#: The cookie extra that carries the token of a session with no row yet: the token's
#: bytes, then the time it was last handed out (8 bytes, big-endian seconds).
EXTRA = "csrf"
_STAMP_BYTES = 8
#: How long a cookie-only token is accepted after it was last handed out when no
#: timeout of the session applies (neither ``idle_timeout`` nor ``absolute_timeout``
#: is in force): one hour, in seconds.
UNSTORED_TOKEN_LIFETIME = 3600
#: Characters of a sealed value in the column (:func:`seal`): the unpadded URL-safe
#: base64 of AES-SIV's 16-byte tag and the encrypted token (48 bytes). A value of
#: :data:`CLEAR_LENGTH` characters is a token stored in clear by sessions-csrf 0.1.
SEALED_LENGTH = 64
#: Characters of a token in clear (the URL-safe base64 of :data:`TOKEN_BYTES` bytes).
CLEAR_LENGTH = 43
#: The label of the column's keys: ``session.derived_keys(KEY_LABEL, KEY_BYTES)``.
KEY_LABEL = b"sessions_csrf column"
#: Bytes of a column key: AES-SIV takes two AES keys, so 64 bytes are AES-256-SIV.
KEY_BYTES = 64
#: The associated data AES-SIV authenticates with each sealed token (no nonce: the
#: encryption is deterministic).
_ASSOCIATED_DATA = [b"sessions_csrf csrf_token column"]
_TAG_BYTES = 16
#: Bytes of the tokens other stores made, which sessions-migrate carries over
#: (:func:`session_migrated`), in hex: ``uuid4().hex`` (16, Pyramid's
#: ``SessionCSRFStoragePolicy``), ``os.urandom(20)`` (20, pyramid_beaker's sessions),
#: ``token_hex(32)`` (32, pyramid_session_redis's); or in padded URL-safe base64 (20,
#: pyramid_sqlalchemy_sessions'). The column holds one sealed under associated data of its
#: own that names its form; one shorter than 32 bytes after a letter for the form
#: (its length would otherwise be a token in clear's).
CARRIED_TOKEN_BYTES = (16, 20, 32)
#: the carried forms, by the letter in front of the sealed value, and the letters by form
_FORMS = {"h": "hex", "b": "base64"}
_LETTERS = {form: letter for letter, form in _FORMS.items()}


def _carried_data(form: str) -> list[bytes]:
    return [b"sessions_csrf csrf_token column", b"carried token", form.encode()]


class _Carried(bytes):
    """A token carried over from another store: forms hold it as that store showed it
    (``form``: ``hex``, or ``base64``, padded and URL-safe)."""

    form = "hex"

    def __new__(cls, raw: bytes, form: str = "hex") -> _Carried:
        made = super().__new__(cls, raw)
        made.form = form
        return made


#: The raw token this request made for a session without a row (see session_persist).
_MINTED = StashKey[bytes]("sessions_csrf: the token made in this request")


class CSRFMixin:
    """Model mixin: the session's CSRF token, sealed, in a ``csrf_token`` column.

    ``NULL`` until a token is first asked for. List it before ``BaseMixin``::

        class Session(CSRFMixin, BaseMixin, Base):
            __tablename__ = "session"

    With this mixin, ``request.session`` has ``csrf_token`` (the token or
    ``None``; reading it never creates one), ``get_csrf_token()`` (the token,
    created if there is none) and ``new_csrf_token()`` (a fresh token that
    replaces the old one). The column holds the token encrypted (:func:`seal`),
    never the token itself.
    """

    csrf_token: Mapped[str | None] = mapped_column(String(64), nullable=True)


# -- the column's encryption ------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str, size: int) -> bytes | None:
    """The ``size`` bytes ``text`` is the unpadded URL-safe base64 of, or ``None``."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == size and _b64(raw) == text else None


def column_keys(factory: SessionFactory) -> SecretKeys:
    """The keys of the ``csrf_token`` column under ``factory``'s ``session.secret_key``.

    ``factory.derived_keys(KEY_LABEL, KEY_BYTES)``: one AES-256-SIV key per
    secret key, in the same order (the first seals, all open), each derived
    with HKDF-SHA256 and this plugin's label, so the column's key is never the
    cookie's. The kernel computes them once per factory.
    """
    return factory.derived_keys(KEY_LABEL, KEY_BYTES)


def _keys(session: Session) -> SecretKeys:
    return session.derived_keys(KEY_LABEL, KEY_BYTES)


def seal(key: bytes, token: bytes) -> str:
    """The column's value for the raw ``token`` (:data:`TOKEN_BYTES` bytes), sealed with ``key``.

    AES-SIV (RFC 5297, ``cryptography``'s ``AESSIV``) with a
    :data:`KEY_BYTES`-byte key: deterministic authenticated encryption. The
    value is the unpadded URL-safe base64 of the 16-byte tag and the
    encrypted token (:data:`SEALED_LENGTH` characters, what the
    ``String(64)`` column holds). Without ``key`` it tells nothing of the
    token; with it, :func:`open_sealed` gives the token back and knows which
    key sealed it. The same token under the same key always seals to the
    same value, so two concurrent requests that seal one token write one
    value (see :func:`same_token`).
    """
    if len(token) != TOKEN_BYTES:
        raise ValueError(f"a CSRF token is {TOKEN_BYTES} bytes, not {len(token)}")
    return _b64(AESSIV(key).encrypt(token, _ASSOCIATED_DATA))


def _text(token: bytes) -> str:
    """A raw token as forms carry it: the URL-safe base64 of ours, a carried one's own form."""
    if not isinstance(token, _Carried):
        return _b64(token)
    if token.form == "hex":
        return token.hex()
    return base64.urlsafe_b64encode(token).decode("ascii")


def _seal_any(key: bytes, token: bytes) -> str:
    """:func:`seal` for a token of ours; a carried one (:class:`_Carried`) is sealed under
    associated data that names its form: a 32-byte hex one alone (the length of a sealed
    token of ours, whose associated data differs), a shorter one after its form's letter."""
    if not isinstance(token, _Carried):
        return seal(key, token)
    if len(token) not in CARRIED_TOKEN_BYTES or (
        (len(token) == TOKEN_BYTES) and (token.form != "hex")
    ):
        raise ValueError(f"a carried CSRF token of {len(token)} bytes in {token.form} is not kept")
    value = _b64(AESSIV(key).encrypt(bytes(token), _carried_data(token.form)))
    if len(token) == TOKEN_BYTES:
        return value
    return _LETTERS[token.form] + value


def _open_carried(keys: Iterable[bytes], value: str) -> tuple[bytes, int] | None:
    """The carried token a value of :func:`_seal_any` holds, and the index of its key."""
    blob = None
    form = "hex"
    if len(value) == SEALED_LENGTH:
        blob = _unb64(value, _TAG_BYTES + TOKEN_BYTES)
    elif value[:1] in _FORMS:
        form = _FORMS[value[0]]
        for size in CARRIED_TOKEN_BYTES[:-1]:
            blob = _unb64(value[1:], _TAG_BYTES + size)
            if blob is not None:
                break
    opened = None if blob is None else _decrypt(keys, blob, _carried_data(form))
    return None if opened is None else (_Carried(opened[0], form), opened[1])


def open_sealed(keys: Iterable[bytes], value: str) -> tuple[bytes, int] | None:
    """The raw token a value of :func:`seal` holds and the index of the key that sealed it.

    ``None`` when ``value`` is not a sealed value, or none of ``keys``
    sealed it (a key since removed from ``session.secret_key``, a damaged
    value): AES-SIV's tag authenticates it.
    """
    blob = _unb64(value, _TAG_BYTES + TOKEN_BYTES)
    return None if blob is None else _decrypt(keys, blob, _ASSOCIATED_DATA)


def _decrypt(keys: Iterable[bytes], blob: bytes, data: list[bytes]) -> tuple[bytes, int] | None:
    """What the first of ``keys`` that sealed ``blob`` under ``data`` opens, and its index."""
    for index, key in enumerate(keys):
        try:
            return AESSIV(key).decrypt(blob, data), index
        except InvalidTag:
            continue
    return None


def _opened(keys: Iterable[bytes], value: str | None) -> tuple[bytes | None, bool]:
    """The raw token a column's value stands for, and whether to seal the value again.

    The format is told by the length: :data:`SEALED_LENGTH` characters are a
    sealed value, :data:`CLEAR_LENGTH` a token in clear (sessions-csrf 0.1).
    A value sealed with an older key, or a token in clear, stands for its
    token and is to be sealed again with the first key (the token stays the
    same). A value no key opens, or of neither form, stands for no token.
    """
    if value is None:
        return None, False
    if len(value) == SEALED_LENGTH:
        keys = list(keys)
        opened = open_sealed(keys, value) or _open_carried(keys, value)
        return (None, False) if opened is None else (opened[0], opened[1] != 0)
    if value[:1] in _FORMS and len(value) != CLEAR_LENGTH:  # carried over
        opened = _open_carried(keys, value)
        return (None, False) if opened is None else (opened[0], opened[1] != 0)
    token = _unb64(value, TOKEN_BYTES)  # None: not a token this plugin ever stored
    return token, token is not None


@functools.cache
def _siv_problem() -> str | None:
    """Why AES-SIV cannot seal the column here (``cryptography`` built without it), if so."""
    try:
        AESSIV(bytes(KEY_BYTES))
    except UnsupportedAlgorithm as exc:
        return (
            f"sessions_csrf seals the CSRF tokens it stores with AES-SIV, which this build of "
            f"the cryptography package does not support ({exc}). Install cryptography's own "
            "wheels (pip install --force-reinstall cryptography), built with OpenSSL 3."
        )
    return None


_NO_KEY = (
    "sessions_csrf seals the CSRF tokens it stores with a key derived from "
    "session.secret_key, which is not set (the cookie has a serializer of your own). "
    "Set session.secret_key as well (python -m sessions_kernel prints one); your "
    "serializer still makes the cookie."
)


def stored_token(factory: SessionFactory, value: str | None) -> str | None:
    """The token a ``csrf_token`` column's ``value`` stands for under ``factory``'s keys.

    For tests and tools (``stored_token(app.factory, row.csrf_token)``):
    ``None`` for ``NULL`` and for a value none of the factory's keys opens.
    """
    token = _opened(column_keys(factory), value)[0]
    return None if token is None else _text(token)


# -- tokens of sessions without a row (cookie-only) ------------------------------------------


def unstored_lifetime(session: Session) -> int:
    """Seconds a cookie-only token is accepted after it was last handed out.

    The session's ``idle_timeout`` or ``absolute_timeout`` (the shorter of
    those in force, read through ``session.settings``): a cookie-only token
    lives no longer than a stored session that nobody uses. Without either,
    :data:`UNSTORED_TOKEN_LIFETIME`.
    """
    settings = session.settings
    bounds = [t for t in (settings.get("idle_timeout"), settings.get("absolute_timeout")) if t]
    return min(bounds) if bounds else UNSTORED_TOKEN_LIFETIME


def _carried(session: Session) -> tuple[bytes, int] | None:
    """The raw token the cookie of a session without a row carries and its time, if any.

    An extra that holds a token without its time (as cookies of an earlier,
    unreleased build carried it) is not one: nothing tells its age.
    """
    value = session.cookie_extras.get(EXTRA)
    if value is None or len(value) != TOKEN_BYTES + _STAMP_BYTES:
        return None
    return value[:TOKEN_BYTES], int.from_bytes(value[TOKEN_BYTES:], "big")


def _live(session: Session, stamp: int) -> bool:
    """Whether a cookie-only token handed out at ``stamp`` is still accepted."""
    return abs(session.now - stamp) < unstored_lifetime(session)


def _carry(session: Session, token: bytes) -> None:
    session.cookie_extras[EXTRA] = token + session.now.to_bytes(_STAMP_BYTES, "big")


# -- request.session's API (added to the factory's session class only) ------------------


def _in_column(session: Session) -> bool:
    """Whether the session's token is the column's: it has a row, or a value is about to be
    inserted with it (a token carried over by sessions-migrate in this very request)."""
    return session.row is not None or session.get_column(COLUMN) is not None


def _csrf_token(session: Session) -> str | None:
    """The session's CSRF token, or ``None`` if it has none (or an expired one); never
    creates one."""
    if _in_column(session):
        token = _opened(_keys(session), session.get_column(COLUMN))[0]
        return None if token is None else _text(token)
    carried = _carried(session)
    if carried is None or not _live(session, carried[1]):
        return None
    return _b64(carried[0])


def _new_csrf_token(session: Session) -> str:
    """A new random token (256 bits from :mod:`secrets`), replacing any old one.

    A session with a row stores it, sealed, in the ``csrf_token`` column (an
    UPDATE of that column at the end of the request). A session without one
    (a visitor who stored nothing yet, rendering a login form) carries it in
    the encrypted session cookie instead, with the time, and writes no row.
    Forms rendered with the old token stop passing the check.
    """
    token = secrets.token_bytes(TOKEN_BYTES)
    if not _in_column(session):
        _carry(session, token)
        session.stash[_MINTED] = token
    else:
        session.set_column(COLUMN, seal(_keys(session)[0], token))
    return _b64(token)


def _get_csrf_token(session: Session) -> str:
    """The session's token, or a new one (see ``new_csrf_token``) if it has none.

    A cookie-only token is handed out again with the time of this request
    once a tenth of its lifetime has passed (the cookie is sent again, no
    SQL), so that a form stays good for at least nine tenths of
    :func:`unstored_lifetime` after the page that rendered it. If the session
    is about to be stored in this request (it holds data), a cookie-only token
    the cookie brought is replaced now, since the INSERT would replace it.
    """
    if _in_column(session):
        return _csrf_token(session) or _new_csrf_token(session)
    carried = _carried(session)
    if carried is None:
        return _new_csrf_token(session)
    token, stamp = carried
    if not _live(session, stamp):
        return _new_csrf_token(session)
    if session.dirty and session.stash.get(_MINTED, None) != token:
        return _new_csrf_token(session)
    if session.now - stamp >= max(1, unstored_lifetime(session) // 10):
        _carry(session, token)
    return _b64(token)


def _ready(session_class: type) -> bool:
    """Whether sessions of this class carry this plugin's API (the model activated it)."""
    return getattr(session_class, "new_csrf_token", None) is _new_csrf_token


def _not_ready_message(model: Any) -> str:
    name = getattr(model, "__name__", repr(model))
    return (
        f"ColumnCSRFStoragePolicy keeps CSRF tokens in the csrf_token column of the session "
        f"table, but the session model {name} does not include sessions_csrf.CSRFMixin (or "
        f"SESSIONS_KERNEL_LOAD_PLUGINS leaves out the 'csrf' plugin). Add CSRFMixin to the "
        f"bases of {name} and a nullable csrf_token column to its table, or install "
        "pyramid.csrf.SessionCSRFStoragePolicy instead."
    )


def _not_kernel_message(what: object) -> str:
    return (
        f"ColumnCSRFStoragePolicy keeps CSRF tokens in the session table, but the session "
        f"factory is not a sessions_kernel one ({type(what).__name__}). "
        "Use config.include('sessions_kernel') with a model that includes "
        "sessions_csrf.CSRFMixin, or install pyramid.csrf.SessionCSRFStoragePolicy instead."
    )


# -- the storage policy -------------------------------------------------------------------


@implementer(ICSRFStoragePolicy)
class ColumnCSRFStoragePolicy:
    """Pyramid's ``ICSRFStoragePolicy`` over the ``csrf_token`` column of the session.

    Install it with ``config.set_csrf_storage_policy(ColumnCSRFStoragePolicy())``.
    Unlike Pyramid's session policy, :meth:`check_csrf_token` never creates a
    token: a check on a session without one fails and stores nothing, so
    forged requests cannot fill the session table.

    Every method raises :class:`~pyramid.exceptions.ConfigurationError` when
    the request's session does not come from a ``sessions_kernel`` factory
    whose model includes :class:`CSRFMixin`.
    """

    def new_csrf_token(self, request: Request) -> str:
        """Store a new token in the request's session and return it."""
        return self._session(request).new_csrf_token()

    def get_csrf_token(self, request: Request) -> str:
        """The session's token, created (and stored with the session) if it has none.

        See ``request.session.get_csrf_token()``.
        """
        return self._session(request).get_csrf_token()

    def check_csrf_token(self, request: Request, supplied_token: str | bytes | None) -> bool:
        """Whether ``supplied_token`` is the session's token, compared in constant time.

        The token is the one the ``csrf_token`` column holds sealed, or, for a
        session without a row, the cookie's while it has not expired. ``False``
        when the session has no token or nothing was supplied; the sealed value
        of the column itself is no token. Reads the session (one SELECT when it
        has a cookie) and writes nothing.
        """
        expected = self._session(request).csrf_token
        if isinstance(supplied_token, str):
            # surrogatepass: any str encodes; the token itself is ASCII
            supplied = supplied_token.encode("utf-8", "surrogatepass")
        elif isinstance(supplied_token, bytes):
            supplied = supplied_token
        else:
            return False
        if not expected or not supplied:
            return False
        return hmac.compare_digest(expected.encode("utf-8"), supplied)

    @staticmethod
    def _session(request: Request) -> _CSRFSession:
        try:
            session = request.session
        except AttributeError as exc:
            raise ConfigurationError(
                f"ColumnCSRFStoragePolicy keeps CSRF tokens in the session, but the request "
                f"has none ({exc}). Add config.include('sessions_kernel') with a model that "
                "includes sessions_csrf.CSRFMixin."
            ) from None
        if not isinstance(session, Session):
            raise ConfigurationError(_not_kernel_message(session))
        if not _ready(type(session)):
            factory = request.registry.queryUtility(ISessionFactory)
            raise ConfigurationError(_not_ready_message(getattr(factory, "model", None)))
        return cast("_CSRFSession", session)  # _ready: its class has the plugin's API

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def includeme(config: Configurator) -> None:
    """``config.include("sessions_csrf")``: install :class:`ColumnCSRFStoragePolicy`.

    Does what ``config.set_csrf_storage_policy(ColumnCSRFStoragePolicy())``
    does, and at ``config.commit()`` checks that the session factory is a
    ``sessions_kernel`` one whose model includes :class:`CSRFMixin`, raising
    :class:`~pyramid.exceptions.ConfigurationError` otherwise, instead of
    failing at the first request that uses a token.
    """
    policy = ColumnCSRFStoragePolicy()
    config.set_csrf_storage_policy(policy)
    registry = config.registry

    def check() -> None:
        if registry.queryUtility(ICSRFStoragePolicy) is not policy:
            return  # another policy was installed after this one: not ours to check
        factory = registry.queryUtility(ISessionFactory)
        if factory is None:
            raise ConfigurationError(
                "sessions_csrf keeps CSRF tokens in the session, but no session factory is "
                "set: add config.include('sessions_kernel') with a model that includes "
                "sessions_csrf.CSRFMixin"
            )
        if not isinstance(factory, SessionFactory):
            raise ConfigurationError(_not_kernel_message(factory))
        if not _ready(factory.session_class):
            raise ConfigurationError(_not_ready_message(factory.model))

    # after the session factory and the policy are registered (both at PHASE3_CONFIG)
    config.action(None, check, order=PHASE3_CONFIG + 1)


# -- hooks ----------------------------------------------------------------------------------


@hookimpl
def session_mixins() -> Sequence[type]:
    return [CSRFMixin]


@hookimpl(optionalhook=True)
def session_user_changed(session: Session, new: Any) -> None:
    """A login, a change of user or a logout (sessions-userid): issue a new token.

    A token the visitor (or someone who watched them) held before the change
    of privilege passes no check after it. A logout that ended the session
    (``forget()``, an expiry) left a new, empty session: it holds no token to
    replace, and none is made, so that the logout stores nothing and sets no
    cookie. Optional: this plugin works without sessions-userid.
    """
    if new is None and session.new and _csrf_token(session) is None:
        return
    _new_csrf_token(session)


@hookimpl
def session_attributes() -> Mapping[str, Any]:
    return {
        "csrf_token": property(_csrf_token, doc=_csrf_token.__doc__),
        "get_csrf_token": _get_csrf_token,
        "new_csrf_token": _new_csrf_token,
    }


@hookimpl
def session_check_settings(settings: Mapping[str, Any]) -> list[str]:
    """The column's keys come from ``session.secret_key``: it must be set, at start-up
    (the kernel's own error would come at the first request that uses a token). And
    the installed ``cryptography`` must support AES-SIV."""
    problems = [] if settings.get("secret_key") else [_NO_KEY]
    siv = _siv_problem()
    return [*problems, siv] if siv else problems


@hookimpl
def session_merge_rules() -> Mapping[str, MergeRule]:
    return {COLUMN: same_token}


def same_token(base: Any, mine: Any, theirs: Any) -> Any:
    """Merge rule of ``csrf_token``: two requests that wrote one value agree, else conflict.

    Two requests that sealed one token again (an upgrade, see
    :func:`session_extend`) wrote the same value (:func:`seal` is
    deterministic). Two that each made a new token conflict: the request runs
    again (pyramid_retry) and finds the other's token.
    """
    if mine == theirs:
        return theirs
    raise MergeConflict("both requests replaced the CSRF token")


@hookimpl
def session_extend(session: Session) -> None:
    """A token stored in clear (sessions-csrf 0.1) or sealed with an older key is sealed again.

    With the first key, keeping the token: open forms keep working, no user is
    logged out, and from the session's next request on the column tells
    nothing of the token. One UPDATE of ``csrf_token``, once per session.
    """
    value = session.get_column(COLUMN)
    if value is None:
        return
    keys = _keys(session)
    if len(keys) == 1 and len(value) == SEALED_LENGTH:
        return  # sealed with the only key, or by none: nothing to seal again
    token, stale = _opened(keys, value)
    if token is not None and stale:
        session.set_column(COLUMN, _seal_any(keys[0], token))


def _foreign_token(text: str) -> _Carried | None:
    """The token another store showed as ``text``, if it is one of the carried forms."""
    try:
        raw = bytes.fromhex(text)
        if raw.hex() == text and len(raw) in CARRIED_TOKEN_BYTES:
            return _Carried(raw, "hex")
    except ValueError:
        pass
    try:
        raw = base64.urlsafe_b64decode(text.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None
    canonical = base64.urlsafe_b64encode(raw).decode("ascii") == text
    if canonical and len(raw) in CARRIED_TOKEN_BYTES[:-1]:
        return _Carried(raw, "base64")
    return None


@hookimpl(optionalhook=True)
def session_migrated(session: Session, old: Any) -> None:
    """sessions-migrate: the old session's CSRF token stays the session's token.

    Forms the old application rendered keep passing the check. A token of
    ours and the tokens of other stores (:data:`CARRIED_TOKEN_BYTES`: hex,
    or padded URL-safe base64, shown as before) are carried, sealed in the
    column like any token; a token of another
    form is not (the session gets a new one when a form asks). The next
    ``new_csrf_token()``, or a login, replaces it with a token of ours.
    """
    text = old.csrf_token
    if not isinstance(text, str) or not text:
        return
    token = _unb64(text, TOKEN_BYTES) or _foreign_token(text)
    if token is None:
        return
    session.set_column(COLUMN, _seal_any(_keys(session)[0], token))


@hookimpl
def session_persist(session: Session, row: Any) -> None:
    """The first INSERT: the session's token is a fresh one, never the cookie's.

    A cookie-only token the browser brought (one an attacker may have planted,
    and knows) is dropped; the row gets a new token instead, so that forms
    rendered with the cookie-only token are refused from now on (the request
    that inserts was checked against it before). A token made in this very
    request (a login, a form rendered after the session changed) is the one
    its response shows: it is kept.
    """
    if not session.new or EXTRA not in session.cookie_extras:
        return
    carried = _carried(session)
    session.cookie_extras.pop(EXTRA)
    if row.csrf_token is not None:
        return
    if carried is not None and carried[0] == session.stash.get(_MINTED, None):
        token = carried[0]
    else:
        token = secrets.token_bytes(TOKEN_BYTES)
    row.csrf_token = seal(_keys(session)[0], token)


# -- deploy checks (``psessions CONFIG check``) --------------------------------------------

if TYPE_CHECKING:
    from sessions_kernel.deploy import Finding


@hookimpl
def session_deploy_checks(registry: Any, active: bool) -> list[Finding]:
    """``csrf.policy``: Pyramid's CSRF storage policy is not this plugin's;
    ``csrf.require``: views check tokens only where each asks (``require_csrf`` off)."""
    from pyramid.interfaces import IDefaultCSRFOptions

    from sessions_kernel.deploy import Finding

    if not active or registry is None:
        return []
    found = []
    policy = registry.queryUtility(ICSRFStoragePolicy)
    if not isinstance(policy, ColumnCSRFStoragePolicy):
        found.append(
            Finding(
                "csrf.policy",
                "config.include('sessions_csrf')",
                f"the model includes CSRFMixin, but Pyramid's CSRF storage policy is "
                f"{type(policy).__name__}: the tokens are not the ones this plugin keeps in "
                "the session's row",
                "add config.include('sessions_csrf') to main()",
            )
        )
    options = registry.queryUtility(IDefaultCSRFOptions)
    if options is None or not options.require_csrf:
        found.append(
            Finding(
                "csrf.require",
                "config.set_default_csrf_options",
                "views check CSRF tokens only where each asks (Pyramid's require_csrf is off "
                "by default): a view that forgets accepts forged requests",
                "config.set_default_csrf_options(require_csrf=True) in main(); exempt a view "
                "with require_csrf=False",
            )
        )
    return found
