"""Settings: the schema plugins declare, parsing of ini values, runtime settings.

Every setting, the kernel's own included, is declared by a plugin through the
``session_settings`` hook as a :class:`Setting`. A setting is
*runtime-configurable* for a model exactly when the model has a mapped column
of the setting's name: the column holds the per-session value, and ``NULL``
there means "the global value". A plugin makes its settings configurable by
shipping a mixin that adds those columns; nothing else is needed.
"""

from __future__ import annotations

import difflib
import importlib
import itertools
import pkgutil
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any

from pyramid.path import DottedNameResolver
from pyramid.settings import asbool

from .errors import SettingsError

_MISSING = object()

if TYPE_CHECKING:
    from .session import Session

__all__ = [
    "SessionSettings",
    "Setting",
    "boolean",
    "choice",
    "dotted",
    "integer",
    "moment",
    "optional",
    "text",
]

_NONE_WORDS = frozenset({"", "none", "null"})
#: What error messages, listings and traces show in place of a secret setting's value.
HIDDEN = "<hidden>"


@dataclass(frozen=True)
class Setting:
    """One setting a plugin owns.

    :param name: the name after the ``session.`` prefix, e.g. ``idle_timeout``.
    :param default: the value when the application sets nothing.
    :param parse: turns an ini string or a Python value into the value, or
        raises :class:`ValueError` whose message says what is accepted.
    :param doc: one line for listings and error messages.
    :param runtime: whether ``request.session.settings`` shows it at all
        (secrets and factory-only settings say ``False``).
    :param secret: never show the value in error messages (keys, passwords).
    :param reference: with ``secret``, the value as written is only where the
        secret is (an environment variable's name, a file's path): error
        messages show it, and only what ``parse`` returns (the secret read from
        there) stays hidden, in traces and listings too.
    """

    name: str
    default: Any
    parse: Callable[[Any], Any]
    doc: str = ""
    runtime: bool = True
    plugin: str = field(default="", compare=False)
    secret: bool = False
    reference: bool = False

    def shown(self, value: Any) -> str:
        """``value`` as written, as error messages show it: its repr, or a placeholder.

        The placeholder stands in for a secret's value; the value of a
        ``reference`` (the name of the variable or file holding the secret) is shown.
        """
        if self.secret and (not self.reference or looks_like_key(value)):
            return HIDDEN
        return repr(value)


# a run of base64 (or hex) long enough for a key; names and paths are runs of words
_KEY_RUN = re.compile(r"[A-Za-z0-9+/_=-]{32,}")
_SEPARATORS = re.compile(r"[+/_=-]")
_HEX = re.compile(r"[0-9a-fA-F]+")


def _class(char: str) -> int:
    return 0 if char.islower() else 1 if char.isupper() else 2


def looks_like_key(value: Any) -> bool:
    """Whether ``value`` (given where a name or a path was expected) may be a key itself.

    A run of 32 or more base64 characters is a key when it is in mixed case
    with digits; when it is hex with letters and digits (``secrets.token_hex``);
    or when, its separators left out, its letters and digits change between
    lower case, upper case and digit at nearly every other character, or never
    stay in one of them for more than 8 characters, with capitals side by side
    and lone lower-case letters, as random text does (a key of ``python -m
    sessions_kernel`` changes about 27 times in 43) and words do not
    (``SESSIONS_SECRET_KEY_2026``, ``/srv/app/keys/session-key``,
    ``/opt/MyApp/Config/Keys/Session``).
    """
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return not isinstance(value, (int, float, bool, type(None)))
    for run in _KEY_RUN.findall(value):
        if (
            any(c.islower() for c in run)
            and any(c.isupper() for c in run)
            and any(c.isdigit() for c in run)
        ):
            return True
        if _HEX.fullmatch(run) and not run.isdigit() and not run.isalpha():
            return True
        chars = _SEPARATORS.sub("", run)
        if len(chars) < 24:
            continue
        classes = [_class(c) for c in chars]
        runs = [(kind, len(list(same))) for kind, same in itertools.groupby(classes)]
        changes = len(runs) - 1
        # words in Title Case are one capital and then lower case: random text has
        # capitals side by side and lone lower-case letters
        irregular = sum(1 for kind, n in runs if (kind == 1 and n > 1) or (kind == 0 and n == 1))
        steady = max(n for _, n in runs) <= 8
        if irregular >= 3 and (changes >= 0.45 * len(chars) or steady):
            return True
    return False


def optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Accept ``None`` (or ``none``/``null``/empty in an ini file) besides what ``parse`` takes."""

    def parse_optional(value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            return None
        return parse(value)

    parse_optional.__doc__ = f"None, or {parse.__doc__}"
    return parse_optional


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[Any], int]:
    """Whole numbers between ``minimum`` and ``maximum`` (inclusive)."""
    bounds = (
        f" from {minimum} to {maximum}"
        if minimum is not None and maximum is not None
        else f" of at least {minimum}"
        if minimum is not None
        else ""
    )

    def parse_int(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"expected a whole number{bounds}, got {value!r}")
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ValueError(f"expected a whole number{bounds}, got {value!r}") from None
        if not isinstance(value, int):
            raise ValueError(f"expected a whole number{bounds}, got {value!r}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ValueError(f"expected a whole number{bounds}, got {value}")
        return value

    parse_int.__doc__ = f"a whole number{bounds}"
    return parse_int


def boolean(value: Any) -> bool:
    """true/false (also yes/no, on/off, 1/0)"""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {
        "true",
        "false",
        "yes",
        "no",
        "on",
        "off",
        "1",
        "0",
        "y",
        "n",
        "t",
        "f",
    }:
        parsed: bool = asbool(value)  # pyramid ships no types
        return parsed
    raise ValueError(f"expected true or false, got {value!r}")


def text(value: Any) -> str:
    """a string"""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value.strip()


def choice(*options: str, case_insensitive: bool = True) -> Callable[[Any], str]:
    """One of a fixed set of words."""

    def parse_choice(value: Any) -> str:
        if isinstance(value, str):
            for option in options:
                if value.strip() == option or (
                    case_insensitive and value.strip().lower() == option.lower()
                ):
                    return option
        raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")

    parse_choice.__doc__ = "one of " + ", ".join(options)
    return parse_choice


def moment(value: Any) -> int:
    """a date (midnight UTC) or date-time in ISO 8601 (UTC unless it says otherwise)"""
    if isinstance(value, str):
        stripped = value.strip()
        try:
            value = datetime.fromisoformat(stripped.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"expected a date such as 2026-03-31 or a date-time such as "
                f"2026-03-31T12:00:00+00:00, got {value!r}"
            ) from None
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        raise ValueError(f"expected a date or a date-time, got {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp())


def dotted(value: Any) -> Any:
    """a Python object or its dotted name (package.module.name)"""
    if isinstance(value, str):
        try:
            return DottedNameResolver().resolve(value.strip())
        except (ImportError, ValueError) as exc:
            raise ValueError(f"cannot import {value!r}: {_why_not(value.strip(), exc)}") from None
    return value


def _why_not(name: str, error: Exception) -> str:
    """What part of the dotted ``name`` exists, what is missing, and the close names."""
    parts = name.replace(":", ".").split(".")
    if not all(part.isidentifier() for part in parts):
        return str(error)
    obj: Any = None
    found = 0
    for i in range(1, len(parts) + 1):  # the longest prefix that is a module
        module = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                break
            return f"importing the module {module!r} failed: {exc}"  # it imports a missing one
        except Exception as exc:
            return f"importing the module {module!r} failed: {type(exc).__name__}: {exc}"
        found = i
    if not found:
        return f"there is no module named {parts[0]!r} (is its distribution installed?)"
    obj = importlib.import_module(".".join(parts[:found]))
    for i in range(found, len(parts)):
        attr = parts[i]
        if not hasattr(obj, attr):
            names = [n for n in dir(obj) if not n.startswith("_")]
            if hasattr(obj, "__path__"):  # a package: its modules count too
                names += [m.name for m in pkgutil.iter_modules(obj.__path__)]
            close = difflib.get_close_matches(attr, names, n=3, cutoff=0.6)
            kind = "module" if hasattr(obj, "__file__") else "object"
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            return f"the {kind} {'.'.join(parts[:i])!r} exists but has no {attr!r}.{hint}"
        obj = getattr(obj, attr)
    return str(error)


class SessionSettings(Mapping[str, Any]):
    """``request.session.settings``: the settings in force for one session.

    Read them as attributes or as a dict. Settings that are
    runtime-configurable for the model can be changed::

        settings = request.session.settings
        settings.edit()
        settings.cookie_max_age = 30 * 24 * 3600
        settings.save()          # validates, then applies to this session

        with request.session.settings as s:   # edit() ... save(), or discard() on error
            s["idle_timeout"] = 3600

    Saved values are written with the session in this request and take effect
    in its response. Unsaved edits are dropped at the end of the request.
    """

    __slots__ = ("_edits", "_session")

    def __init__(self, session: Session) -> None:
        object.__setattr__(self, "_session", session)
        object.__setattr__(self, "_edits", None)

    # -- reading ---------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        config = self._session._factory.config
        if name not in config.configurable:
            # the same for every session: nothing per session or per request can change it
            if name not in config.runtime_names:
                raise KeyError(name)
            return config.values[name]
        edits = self._edits
        if edits is not None and name in edits:
            return edits[name]
        return self._value(name)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"no runtime setting {name!r}; available: {', '.join(self)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._session._factory.config.runtime_names)

    def __len__(self) -> int:
        return len(self._session._factory.config.runtime_names)

    def __repr__(self) -> str:
        return f"<SessionSettings {dict(self.items())!r}>"

    def is_configurable(self, name: str) -> bool:
        """Whether ``name`` can be changed for this session (the model has its column)."""
        return name in self._session._factory.config.configurable

    # -- editing ---------------------------------------------------------
    def edit(self) -> SessionSettings:
        """Start editing. Assignments are kept aside until :meth:`save`."""
        if self._edits is None:
            object.__setattr__(self, "_edits", {})
        return self

    def __setitem__(self, name: str, value: Any) -> None:
        config = self._session._factory.config
        if name not in config.configurable:
            raise SettingsError(config.not_configurable_message(name))
        if self._edits is None:
            raise SettingsError(
                f"settings are read-only until you call request.session.settings.edit() "
                f"(or use 'with request.session.settings as s:'); {name} was not changed"
            )
        self._edits[name] = value

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def discard(self) -> None:
        """Drop unsaved edits and leave editing mode."""
        object.__setattr__(self, "_edits", None)

    def save(self) -> None:
        """Validate the edits with the same rules as at start-up, then apply them.

        Raises :class:`SettingsError` (and keeps the edits, still editing) if a
        value fails its validator or the values together break a cross-setting
        rule of any active plugin.
        """
        if self._edits is None:
            raise SettingsError("nothing to save: call settings.edit() first")
        config = self._session._factory.config
        parsed = {}
        for name, value in self._edits.items():
            try:
                parsed[name] = config.settings_by_name[name].parse(value)
            except ValueError as exc:
                raise SettingsError(f"{name} = {value!r}: {exc}") from None
        # Cross-setting rules see every setting, start-up-only ones (cookie_name) included,
        # exactly as at start-up: the global values, this session's own, then the edits.
        effective = dict(config.values)
        effective.update((name, self._value(name)) for name in config.runtime_names)
        effective.update(parsed)
        problems = config.check(effective)
        if problems:
            raise SettingsError("; ".join(problems))
        self._apply(parsed)
        object.__setattr__(self, "_edits", None)

    def _apply(self, values: dict[str, Any]) -> None:
        """Saved values: in force for this session from now on, and written with it."""
        session = self._session
        session._join()
        state = session._state
        state.settings_values.update(values)
        row = session.row
        if row is not None:
            for name, value in values.items():
                state.settings_loaded.setdefault(name, getattr(row, name))
                setattr(row, name, value)

    def _value(self, name: str, as_loaded: bool = False) -> Any:
        """The value in force: saved in this request, else the row's own, else the global.

        ``as_loaded`` ignores what was saved in this request (the stored value).
        """
        session = self._session
        state = session._state  # loads the session first
        if not as_loaded:
            value = state.settings_values.get(name, _MISSING)
            if value is not _MISSING:
                return value
        config = session._factory.config
        row = session.row
        if row is not None and name in config.configurable:
            value = state.settings_loaded.get(name, _MISSING) if as_loaded else _MISSING
            if value is _MISSING:
                value = getattr(row, name)
            if value is not None:
                return value
        return config.values[name]

    def __enter__(self) -> SessionSettings:
        return self.edit()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.save()
        else:
            self.discard()
