"""Exceptions raised by the kernel and its plugins."""

from __future__ import annotations

from pyramid.exceptions import ConfigurationError

__all__ = [
    "ConfigurationError",
    "InconsistentDataError",
    "SessionError",
    "SettingsError",
]


class SessionError(RuntimeError):
    """A session was used in a way the kernel cannot honour."""


class SettingsError(ValueError):
    """A runtime change of ``request.session.settings`` was refused.

    Raised for a setting that is not runtime-configurable with the model in
    use (the message names the mixin that would make it so), for a value that
    fails its validator, and for values that break a cross-setting rule.
    """


class InconsistentDataError(RuntimeError):
    """A stored session row holds values the kernel cannot make sense of.

    The message names the session (a prefix of the row's hashed key, never the
    cookie's token) and the column at fault.
    """
