"""The kernel's own settings, declared through the same hooks as any plugin's."""

from __future__ import annotations

import os
import string
import time
from collections.abc import Mapping
from typing import Any

from . import serializers
from .crypto import UNBOUND_EXTRA, SecretKeys, parse_secret_keys
from .hookspecs import hookimpl
from .model import BaseMixin
from .settings import (
    Setting,
    boolean,
    choice,
    dotted,
    integer,
    looks_like_key,
    moment,
    optional,
    text,
)

NAME = "sessions_kernel"


def _secret_keys(value: Any) -> SecretKeys:
    """one or more 256-bit keys in URL-safe base64, separated by white space"""
    return parse_secret_keys(value)


#: How far ahead ``accept_unbound_cookies_until`` may be: the window ends.
MAX_UNBOUND_WINDOW = 366 * 24 * 3600


def _secret_key_file(value: Any) -> SecretKeys:
    """the path of a file holding the key(s), as container secrets are mounted"""
    if looks_like_key(value):
        raise ValueError(
            "expected the path of a file holding the key, got what looks like a key: "
            "write the key into a file and give its path here (or use session.secret_key)"
        )
    path = os.path.expanduser(text(value))
    try:
        with open(path, encoding="ascii") as f:
            content = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(
            f"cannot read the key file {path!r}: {reason}. Write a key into it "
            "(python -m sessions_kernel > FILE), readable by the application's user only"
        ) from None
    if not content.strip():
        raise ValueError(f"the key file {path!r} is empty: write a key into it")
    try:
        return parse_secret_keys(content)
    except ValueError as exc:
        raise ValueError(f"the key file {path!r} holds no valid key: {_first_line(exc)}") from None


def _secret_key_env(value: Any) -> SecretKeys:
    """the name of an environment variable holding the key(s)"""
    if looks_like_key(value):
        raise ValueError(
            "expected the name of an environment variable, got what looks like a key: "
            "export the key in a variable (e.g. SESSIONS_SECRET_KEY) and give its name here"
        )
    name = text(value)
    if not name or "=" in name:
        raise ValueError(f"expected the name of an environment variable, got {value!r}")
    content = os.environ.get(name)
    if content is None or not content.strip():
        raise ValueError(
            f"the environment variable {name} is {'empty' if content is not None else 'not set'}: "
            "export it in the environment the application starts in (a systemd "
            "EnvironmentFile=, the container's environment), not on the pserve command line, "
            "where process listings show it"
        )
    try:
        return parse_secret_keys(content)
    except ValueError as exc:
        raise ValueError(
            f"the environment variable {name} holds no valid key: {_first_line(exc)}"
        ) from None


def _first_line(exc: Exception) -> str:
    return str(exc).split("\n", 1)[0].rstrip(". ") + " (python -m sessions_kernel prints a new key)"


#: The settings that can give the cookie's keys; at most one of them may be set.
SECRET_KEY_SOURCES = ("secret_key", "secret_key_file", "secret_key_env")


def _data_serializer(value: Any) -> Any:
    """json, pickle, or the dotted name of an object with dumps() and loads()"""
    if isinstance(value, str) and value.strip().lower() in serializers.BUILTIN:
        return serializers.BUILTIN[value.strip().lower()]()
    obj = dotted(value)
    if isinstance(obj, type):
        obj = obj()
    if not (callable(getattr(obj, "dumps", None)) and callable(getattr(obj, "loads", None))):
        raise ValueError(
            f"expected json, pickle, or an object with dumps() and loads(), got {obj!r}"
        )
    return obj


def _cookie_serializer(value: Any) -> Any:
    """an object with dumps(bytes) -> str and loads(str) -> bytes, or its dotted name"""
    obj = dotted(value)
    if obj is None:
        return None
    if not (callable(getattr(obj, "dumps", None)) and callable(getattr(obj, "loads", None))):
        raise ValueError(f"expected an object with dumps() and loads(), got {obj!r}")
    return obj


def _callable(value: Any) -> Any:
    """a callable, or its dotted name"""
    obj = dotted(value)
    if not callable(obj):
        raise ValueError(f"expected a callable or its dotted name, got {value!r}")
    return obj


#: Browsers ignore a Path or Domain attribute longer than this (RFC 6265bis, 5.6).
MAX_COOKIE_PATH = 1024
#: The longest DNS name.
MAX_COOKIE_DOMAIN = 253
_DOMAIN_CHARS = frozenset(string.ascii_letters + string.digits + "-.")


def _cookie_path(value: Any) -> str:
    """a URL path starting with / (printable ASCII without ';', at most 1024 characters)"""
    path = text(value)
    if not path.startswith("/"):
        raise ValueError(f"expected a path starting with '/', got {value!r}")
    if len(path) > MAX_COOKIE_PATH:
        raise ValueError(f"expected at most {MAX_COOKIE_PATH} characters, got {len(path)}")
    if not all(" " < c < "\x7f" and c != ";" for c in path):
        raise ValueError(
            f"expected printable ASCII without spaces or ';' (percent-encode others), got {value!r}"
        )
    return path


def _cookie_domain(value: Any) -> str:
    """a host or domain name (letters, digits, '-' and '.', at most 253 characters)"""
    domain = text(value)
    bare = domain[1:] if domain.startswith(".") else domain  # a leading dot is allowed, ignored
    if (
        not bare
        or len(domain) > MAX_COOKIE_DOMAIN
        or not set(bare) <= _DOMAIN_CHARS
        or any(not label for label in bare.split("."))
    ):
        raise ValueError(
            f"expected a domain name such as example.com (letters, digits, '-' and '.', "
            f"at most {MAX_COOKIE_DOMAIN} characters; IDNA-encode others), got {value!r}"
        )
    return domain


_samesite_choice = choice("Strict", "Lax", "None")


def _cookie_samesite(value: Any) -> str | None:
    """Strict, Lax or None (the attribute value); empty or Python None to omit the attribute"""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _samesite_choice(value)


#: ``session.max_age`` by default: 30 days.
DEFAULT_MAX_AGE = 30 * 24 * 3600
#: The longest ``session.max_age``: ten years, as for ``cookie_max_age``.
MAX_MAX_AGE = 10 * 365 * 24 * 3600
#: The reason ``SessionRejected`` gives for a session past ``session.max_age``.
MAX_AGE_REASON = "max age"


def _max_age(value: Any) -> int:
    """seconds from 1 to 315360000 (10 years)"""
    return integer(1, MAX_MAX_AGE)(value)


def _cookie_name(value: Any) -> str:
    """a cookie name (letters, digits and !#$%&'*+-.^_`|~)"""
    name = text(value)
    allowed = set("!#$%&'*+-.^_`|~")
    if not name or not all(c.isascii() and (c.isalnum() or c in allowed) for c in name):
        raise ValueError(f"expected a cookie name (RFC 6265 token), got {value!r}")
    return name


SETTINGS = (
    Setting(
        "secret_key",
        None,
        optional(_secret_keys),
        "keys of the cookie's encryption; the first encrypts, all decrypt",
        runtime=False,
        secret=True,
    ),
    Setting(
        "accept_unbound_cookies_until",
        None,
        optional(moment),
        "until when cookies of sessions-kernel 0.1, not bound to the cookie name, are still "
        "read (and sent again, bound); at most a year ahead",
        runtime=False,
    ),
    Setting(
        "secret_key_file",
        None,
        optional(_secret_key_file),
        "a file holding secret_key's value (a container secret), instead of secret_key",
        runtime=False,
        secret=True,
        reference=True,
    ),
    Setting(
        "secret_key_env",
        None,
        optional(_secret_key_env),
        "an environment variable holding secret_key's value, instead of secret_key",
        runtime=False,
        secret=True,
        reference=True,
    ),
    Setting(
        "model_class",
        None,
        optional(dotted),
        "the session model (dotted name or class)",
        runtime=False,
    ),
    Setting(
        "serializer",
        None,
        _cookie_serializer,
        "the cookie's serializer; by default AES-GCM built from secret_key",
        runtime=False,
    ),
    Setting(
        "data_serializer",
        "json",
        _data_serializer,
        "format of the data and flash columns: json, pickle or a dotted name",
        runtime=False,
    ),
    Setting(
        "max_data_size",
        1024 * 1024,
        optional(integer(1024, 1024**3)),
        "bytes the serialized data and flash messages of one session may take; a write "
        "over it raises SessionError and stores nothing; none for no limit",
        runtime=False,
    ),
    Setting(
        "lock_contended_for",
        30,
        integer(0, 3600),
        "seconds for which a session whose request had to run again loads locked "
        "(SELECT … FOR UPDATE) on every request this process serves, so its concurrent "
        "writers queue instead of running twice; 0: only a retried attempt loads locked",
        runtime=False,
    ),
    Setting(
        "dbsession_name",
        "dbsession",
        text,
        "name of the request attribute holding the SQLAlchemy session",
        runtime=False,
    ),
    Setting(
        "clock",
        time.time,
        _callable,
        "callable returning the time in seconds; every read of the time uses it",
        runtime=False,
    ),
    Setting(
        "max_age",
        DEFAULT_MAX_AGE,
        optional(_max_age),
        "seconds after its creation at which a stored session ends, unless an active plugin "
        "expires every session (a value set explicitly always applies); none: sessions "
        "never expire",
        runtime=False,
    ),
    Setting("cookie_name", "session", _cookie_name, "name of the session cookie", runtime=False),
    Setting(
        "cookie_previous_name",
        None,
        optional(_cookie_name),
        "the cookie's name before cookie_name was changed (to adopt a __Host- prefix, say): "
        "a cookie of that name is still read and replaced by one of the current name; "
        "remove it once your longest session has passed",
        runtime=False,
    ),
    Setting(
        "cookie_max_age",
        None,
        optional(integer(0, 10 * 365 * 24 * 3600)),
        "seconds the browser keeps the cookie; None for a browser-session cookie",
    ),
    Setting("cookie_path", "/", _cookie_path, "Path attribute of the cookie"),
    Setting("cookie_domain", None, optional(_cookie_domain), "Domain attribute of the cookie"),
    Setting("cookie_secure", False, boolean, "send the cookie over HTTPS only"),
    Setting("cookie_httponly", True, boolean, "hide the cookie from scripts"),
    Setting(
        "cookie_samesite",
        "Lax",
        _cookie_samesite,
        "SameSite attribute of the cookie: Strict, Lax or None; empty to omit it",
    ),
)


@hookimpl
def session_mixins() -> list[type]:
    return [BaseMixin]


@hookimpl
def session_settings() -> tuple[Setting, ...]:
    return SETTINGS


@hookimpl
def session_renew(session: Any) -> None:
    # A cookie of the unbound format read during accept_unbound_cookies_until carries
    # this extra (see crypto.AESGCMCookieSerializer.loads); removing it changes the
    # cookie's extras, so the kernel sends the cookie again, in the bound format.
    session.cookie_extras.pop(UNBOUND_EXTRA, None)


@hookimpl
def session_check_settings(settings: Mapping[str, Any]) -> list[str]:
    problems = []
    until = settings.get("accept_unbound_cookies_until")
    if until is not None:
        if settings.get("serializer") is not None:
            problems.append(
                "accept_unbound_cookies_until applies to the built-in cookie serializer only; "
                "remove it, or remove serializer"
            )
        elif until > settings.get("clock", time.time)() + MAX_UNBOUND_WINDOW:
            problems.append(
                "accept_unbound_cookies_until is more than a year ahead; the window is for "
                "the cookies issued before the upgrade to be sent again, bound: your longest "
                "session lifetime is enough (every visit in the window renews a cookie)"
            )
    name = settings.get("cookie_name") or ""
    if settings.get("cookie_previous_name") == name:
        problems.append(
            f"cookie_previous_name is cookie_name ({name!r}): set it to the name your "
            "cookie had before you changed cookie_name, or remove it"
        )
    secure = settings.get("cookie_secure")
    if name.startswith("__Host-"):
        if not secure or settings.get("cookie_path") != "/" or settings.get("cookie_domain"):
            problems.append(
                f"cookie_name {name!r} uses the __Host- prefix, which browsers accept only "
                "with cookie_secure = true, cookie_path = / and no cookie_domain; "
                f"got cookie_secure = {secure}, cookie_path = {settings.get('cookie_path')!r}, "
                f"cookie_domain = {settings.get('cookie_domain')!r}"
            )
    elif name.startswith("__Secure-") and not secure:
        problems.append(
            f"cookie_name {name!r} uses the __Secure- prefix, which browsers accept only "
            "with cookie_secure = true"
        )
    if settings.get("cookie_samesite") == "None" and not secure:
        problems.append(
            "cookie_samesite = None needs cookie_secure = true (browsers drop SameSite=None "
            "cookies that are not Secure); set cookie_secure = true or choose Lax or Strict"
        )
    return problems


# -- session.max_age: no stored session lives forever unless the application says so -------


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 24 * 3600)
    if days and not rest:
        return f"{days} day{'s' if days > 1 else ''}"
    return f"{seconds} s"


class MaxAge:
    """The kernel's expiry: a stored session ends ``seconds`` after its creation.

    Registered in a factory's plugin manager only while it is in force (see
    :func:`expiry`), so a factory whose plugins expire every session pays
    nothing for it on any request. The three hooks agree: a row is expired at
    and after ``created + seconds``.
    """

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds

    @hookimpl
    def session_validate(self, session: Any) -> str | None:
        if session.now >= session.row.created + self.seconds:
            return MAX_AGE_REASON
        return None

    @hookimpl
    def session_expired_conditions(self, model: type, now: int) -> list[Any]:
        return [model.created <= now - self.seconds]  # type: ignore[attr-defined]

    @hookimpl
    def session_expires_at(self, row: Any) -> int:
        return int(row.created) + self.seconds

    def __repr__(self) -> str:
        return f"<MaxAge {self.seconds} s>"


def expiry(max_age: int | None, explicit: bool, policies: list[str]) -> tuple[MaxAge | None, str]:
    """Which expiry a factory enforces: the kernel's :class:`MaxAge` if any, and a description.

    :param max_age: ``session.max_age`` as parsed (``None``: never).
    :param explicit: whether the application set ``session.max_age``.
    :param policies: what the active plugins answered to ``session_expiry_policy``:
        each one expires every session.

    ``max_age`` applies when no plugin expires every session, and always when it
    was set explicitly. The description is what ``includeme`` logs at start-up.
    """
    rules = ", ".join(policies)
    if max_age is None:
        if rules:
            return None, f"sessions expire by {rules} (session.max_age = none)"
        return None, (
            "stored sessions never expire: session.max_age = none and no active plugin "
            "expires every session"
        )
    kernel = f"{_duration(max_age)} after their creation (session.max_age = {max_age})"
    if not rules:
        return MaxAge(max_age), (
            f"sessions expire {kernel}; no active plugin expires every session"
        )
    if explicit:
        return MaxAge(max_age), f"sessions expire by {rules}, and at the latest {kernel}"
    return None, f"sessions expire by {rules}"
