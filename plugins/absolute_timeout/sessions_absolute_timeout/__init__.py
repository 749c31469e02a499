"""OWASP absolute timeout: a session ends ``absolute_timeout`` seconds after its creation.

Activity does not matter: however busy the session, it is rejected (reason
``"absolute timeout"``), deleted and replaced by a new, empty one at and after
its expiry. The feature is active for models that include :class:`AbsoluteMixin`
or :class:`ConfigAbsoluteMixin`, and off while the timeout in force is ``None``.

The expiry of a session is:

* with :class:`AbsoluteMixin`: ``created + absolute_timeout`` (the global value,
  as configured now);
* with :class:`ConfigAbsoluteMixin`: ``absolute_expire`` when the session has a
  timeout of its own (then ``absolute_expire = created + its absolute_timeout``),
  else ``created + absolute_timeout`` (the global value, as configured now).

:func:`session_validate`, :func:`session_expired_conditions` and
:func:`session_expires_at` all follow this rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import BigInteger, Integer
from sqlalchemy.orm import Mapped, mapped_column

from sessions_kernel import Setting, hookimpl
from sessions_kernel.settings import integer, optional

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement

    from sessions_kernel import BaseMixin, Session

__all__ = [
    "MAX_ABSOLUTE_TIMEOUT",
    "REASON",
    "SETTINGS",
    "AbsoluteMixin",
    "ConfigAbsoluteMixin",
    "expiry",
]

#: The longest absolute timeout accepted: ten years, as for ``cookie_max_age``.
MAX_ABSOLUTE_TIMEOUT = 10 * 365 * 24 * 3600
#: The reason given to ``SessionRejected`` for an expired session.
REASON = "absolute timeout"


class AbsoluteMixin:
    """Absolute timeout with the global ``absolute_timeout`` only. Adds no column.

    A session expires at ``created + absolute_timeout``, computed from the value
    configured now: changing the setting between deploys moves the expiry of every
    existing session too (shortening it ends old sessions at once, as a security
    fix should). Garbage collection uses an index on ``created`` (offered by
    ``session_indexes``).
    """


class ConfigAbsoluteMixin(AbsoluteMixin):
    """Absolute timeout that one session may change at runtime.

    ``absolute_timeout``
        the session's own timeout in seconds; ``NULL`` follows the global value.
    ``absolute_expire``
        ``created + absolute_timeout`` while the session has a timeout of its own,
        ``NULL`` while it follows the global value. Kept so by the plugin on every
        write; indexed for garbage collection. Change both through
        ``request.session.settings``, never by hand.
    """

    absolute_timeout: Mapped[int | None] = mapped_column(Integer, nullable=True)
    absolute_expire: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


SETTINGS = (
    Setting(
        "absolute_timeout",
        None,
        optional(integer(1, MAX_ABSOLUTE_TIMEOUT)),
        "seconds after its creation at which a session ends, whatever its activity; "
        "None turns the absolute timeout off",
    ),
)


def expiry(row: BaseMixin, timeout: int | None) -> int | None:
    """When ``row`` expires under the absolute timeout, or ``None`` if it does not.

    :param row: a stored row of a model with :class:`AbsoluteMixin`.
    :param timeout: the ``absolute_timeout`` in force for that row (its own value
        with :class:`ConfigAbsoluteMixin`, else the global one).

    The session is expired at and after the time returned.
    """
    if isinstance(row, ConfigAbsoluteMixin) and row.absolute_expire is not None:
        return row.absolute_expire
    return row.created + timeout if timeout else None


@hookimpl
def session_mixins() -> list[type]:
    return [AbsoluteMixin, ConfigAbsoluteMixin]


@hookimpl
def session_settings() -> tuple[Setting, ...]:
    return SETTINGS


@hookimpl
def session_expiry_policy(settings: Mapping[str, Any]) -> str | None:
    """Every session expires when the global ``absolute_timeout`` is set."""
    timeout = settings.get("absolute_timeout")
    return None if timeout is None else f"absolute_timeout {timeout} s"


@hookimpl
def session_validate(session: Session) -> str | None:
    """Reject a session at and after its absolute expiry."""
    expires = expiry(session.row, session.settings["absolute_timeout"])
    if expires is not None and session.now >= expires:
        return REASON
    return None


@hookimpl
def session_persist(session: Session, row: BaseMixin) -> None:
    """Keep ``absolute_expire`` equal to ``created`` + the session's own timeout (or NULL).

    Runs on every write, so a per-session change saved in this request is stored
    with its new expiry in the same UPDATE (or INSERT for a new session).
    """
    if isinstance(row, ConfigAbsoluteMixin):
        timeout = row.absolute_timeout
        expires = None if timeout is None else row.created + timeout
        if row.absolute_expire != expires:
            row.absolute_expire = expires


@hookimpl
def session_expired_conditions(
    model: type[BaseMixin], settings: Mapping[str, Any], now: int
) -> list[ColumnElement[bool]]:
    """Rows past their absolute expiry (``expiry(row) <= now``), in index-friendly form."""
    timeout = settings.get("absolute_timeout")
    conditions: list[ColumnElement[bool]] = []
    if issubclass(model, ConfigAbsoluteMixin):
        conditions.append(model.absolute_expire <= now)
        if timeout:
            conditions.append(
                sa.and_(model.absolute_expire.is_(None), model.created <= now - timeout)
            )
    elif timeout:
        conditions.append(model.created <= now - timeout)
    return conditions


@hookimpl
def session_indexes(model: type[BaseMixin]) -> list[str]:
    """``created`` (global timeout), and ``absolute_expire`` for per-session timeouts."""
    if issubclass(model, ConfigAbsoluteMixin):
        return ["absolute_expire", "created"]
    return ["created"]


@hookimpl
def session_expires_at(row: BaseMixin, settings: Mapping[str, Any]) -> int | None:
    return expiry(row, settings.get("absolute_timeout"))


# -- deploy checks (``psessions CONFIG check``) --------------------------------------------

if TYPE_CHECKING:
    from sessions_kernel.deploy import Finding

#: An ``absolute_timeout`` above this is reported as long: the kernel's own default bound.
LONG_ABSOLUTE_TIMEOUT = 30 * 24 * 3600


@hookimpl
def session_deploy_checks(settings: Mapping[str, Any], active: bool) -> list[Finding]:
    """``absolute_timeout.off``: no absolute timeout (the mixin missing, or no timeout);
    ``absolute_timeout.long``: one over :data:`LONG_ABSOLUTE_TIMEOUT`."""
    from sessions_kernel.deploy import Finding, duration

    exposure = (
        "a session kept in use, by its owner or with a stolen cookie, ends only by another "
        "rule (session.max_age where it applies: psessions CONFIG plugins prints the expiry "
        "in force)"
    )
    if not active:
        return [
            Finding(
                "absolute_timeout.off",
                "the session model",
                "sessions-absolute-timeout is installed but the model lacks AbsoluteMixin: "
                + exposure,
                "add AbsoluteMixin (or ConfigAbsoluteMixin) to the model's bases and set "
                "session.absolute_timeout (OWASP: a few hours to a day, e.g. 28800)",
            )
        ]
    timeout = settings["absolute_timeout"]
    if timeout is None:
        return [
            Finding(
                "absolute_timeout.off",
                "session.absolute_timeout",
                f"session.absolute_timeout is not set: {exposure}",
                "set session.absolute_timeout, e.g. 28800 (8 hours)",
            )
        ]
    if timeout > LONG_ABSOLUTE_TIMEOUT:
        return [
            Finding(
                "absolute_timeout.long",
                "session.absolute_timeout",
                f"session.absolute_timeout = {timeout} ({duration(timeout)}): a stolen cookie "
                "kept in use works that long",
                "lower session.absolute_timeout to hours or days (OWASP: a few hours to a day)",
            )
        ]
    return []
