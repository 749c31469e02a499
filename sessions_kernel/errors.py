"""Exceptions raised by the kernel and its plugins."""

from __future__ import annotations

from pyramid.exceptions import ConfigurationError
from transaction.interfaces import TransientError

__all__ = [
    "ConfigurationError",
    "InconsistentDataError",
    "MissingSessionMethodError",
    "SessionConflictError",
    "SessionError",
    "SessionTooLargeError",
    "SettingsError",
]


class SessionError(RuntimeError):
    """A session was used in a way the kernel cannot honour."""


class MissingSessionMethodError(SessionError, AttributeError):
    """A method other code expects of ``request.session`` comes from a plugin none provides.

    Pyramid's default CSRF storage policy calls ``request.session.get_csrf_token()``
    and ``new_csrf_token()``; the kernel's session has them only when an active
    plugin adds them. Raised on access to such a name, with the message naming
    the fix. An :class:`AttributeError`, so ``hasattr()`` stays false.
    """


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


class SessionConflictError(SessionError, TransientError):  # type: ignore[misc]  # untyped base
    """This request and a concurrent one changed the same part of one session.

    Raised before commit when the kernel could not merge: both requests set
    the same key of the data (or the same flash queue, or the same plugin
    column) to different values. It is a :class:`transaction.interfaces.TransientError`,
    so with ``pyramid_retry`` the request runs again on the newer session
    (``retry.attempts`` in your settings); without it the request fails with
    this error instead of dropping one of the two writes.
    """


class SessionTooLargeError(SessionError):
    """A write would store more data than ``session.max_data_size`` allows; nothing was stored.

    Raised before commit, so the request's transaction does not commit. The
    limit holds on what would be stored: this request's data, or, when a
    concurrent request of the session wrote first, both requests' data
    merged (the concurrent write then stands). A session stored over the
    limit (before it was lowered) stays readable, and takes any write that
    brings it under. The message gives the size, the limit and the fix.
    """
