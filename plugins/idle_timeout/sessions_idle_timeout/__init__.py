"""Idle timeout for sessions_kernel (OWASP): a session expires after a time without activity.

Add :class:`IdleMixin` (global settings only) or :class:`ConfigIdleMixin`
(settings changeable per session at runtime) to the bases of the session
model, and set ``session.idle_timeout``. Left at ``None`` the feature is off,
mixin or not.

The row stores ``idle_expire``: the second at which the session expires
(it is expired *at* and after that second). Every write of the session sets
it to ``now + idle_timeout``. A read-only request extends it by writing that
one column, subject to three settings that trade exactness for writes:

``extension_delay``
    no extension sooner than this many seconds after the last one;
``extension_chance``
    once past the delay, a read extends with this chance, in percent;
``extension_deadline``
    at or past this many seconds since the last extension, a read always
    extends, whatever the chance.

The time of the last extension is not stored: it is ``idle_expire -
idle_timeout``. So a changed ``idle_timeout`` applies to a stored session at
its next write or extension; a shorter one is applied by its next request
(the stored expiry is pulled in), a longer one by its next extension.

Chance draws come from :data:`random_source`; see there to make them
repeatable in tests.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from sqlalchemy import BigInteger, Integer, SmallInteger
from sqlalchemy.orm import Mapped, mapped_column

from sessions_kernel import Session, Setting, hookimpl
from sessions_kernel.merge import MergeRule, latest
from sessions_kernel.settings import integer, optional

__all__ = [
    "SETTINGS",
    "ConfigIdleMixin",
    "IdleMixin",
    "expiry",
    "extension_due",
    "random_source",
]

#: The largest duration any setting of this plugin accepts: 10 years, in seconds.
MAX_SECONDS = 10 * 365 * 24 * 3600

#: Where ``extension_chance`` draws come from: any object whose ``random()``
#: returns a float in [0, 1). By default a :class:`random.Random` seeded from
#: the operating system. The draw decides only whether a read-only request
#: writes a later expiry (load shedding, not a secret), so a predictable
#: generator costs no security. Tests make draws repeatable with
#: ``sessions_idle_timeout.random_source.seed(7)`` or replace the object
#: (``monkeypatch.setattr(sessions_idle_timeout, "random_source", ...)``);
#: the hooks look it up on every draw.
random_source: _RandomSource = random.Random()


class IdleMixin:
    """Model mixin that activates the idle timeout, with global settings only.

    ``idle_expire``: seconds since the epoch at which the session expires by
    inactivity (expired at and after it); ``NULL`` while the feature is off.
    It is indexed: expired sessions are found by ``idle_expire <= now``.
    """

    idle_expire: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)


class ConfigIdleMixin(IdleMixin):
    """:class:`IdleMixin` whose settings can also be changed per session at runtime.

    Adds one nullable column per setting (``idle_timeout``,
    ``extension_delay``, ``extension_chance``, ``extension_deadline``);
    ``NULL`` means "the global value". Change them through
    ``request.session.settings``; a new ``idle_timeout`` sets the session's
    expiry in the same response.
    """

    idle_timeout: Mapped[int | None] = mapped_column(Integer, nullable=True)
    extension_delay: Mapped[int | None] = mapped_column(Integer, nullable=True)
    extension_chance: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)
    extension_deadline: Mapped[int | None] = mapped_column(Integer, nullable=True)


if TYPE_CHECKING:
    from sessions_kernel import BaseMixin

    class _RandomSource(Protocol):
        def random(self) -> float: ...

    class _IdleRow(Protocol):
        """A stored row of a model with :class:`IdleMixin` (and ``BaseMixin``)."""

        idle_expire: int | None
        updated: int

    class _IdleModel(IdleMixin, BaseMixin):
        """A model that activates this plugin: the kernel calls its hooks for no other."""


def _seconds(value: Any) -> int:
    """a whole number of seconds from 1 to 315360000 (10 years)"""
    try:
        return integer(1, MAX_SECONDS)(value)
    except ValueError as exc:
        raise ValueError(f"{exc} (seconds; at most 10 years)") from None


def _percent(value: Any) -> int:
    """a whole number of percent from 1 to 100"""
    return integer(1, 100)(value)


SETTINGS = (
    Setting(
        "idle_timeout",
        None,
        optional(_seconds),
        "seconds without activity after which a session expires; None turns the feature off",
    ),
    Setting(
        "extension_delay",
        None,
        optional(_seconds),
        "a read-only request extends the idle expiry no sooner than this many seconds "
        "after the last extension; None: any read may extend",
    ),
    Setting(
        "extension_chance",
        100,
        _percent,
        "percent chance that a read-only request past extension_delay extends the idle expiry",
    ),
    Setting(
        "extension_deadline",
        1,
        _seconds,
        "seconds since the last extension at and after which a read-only request always "
        "extends the idle expiry, whatever extension_chance",
    ),
)


def extension_due(
    idle_expire: int | None,
    now: int,
    *,
    idle_timeout: int,
    extension_delay: int | None,
    extension_chance: int,
    extension_deadline: int,
) -> bool:
    """Whether a read-only request at ``now`` extends a session whose expiry is ``idle_expire``.

    The last extension happened at ``idle_expire - idle_timeout``; ``since``
    is the time elapsed from it. In order:

    * no stored expiry (the feature was off when the row was last written):
      extend;
    * a stored expiry later than ``now + idle_timeout`` (the timeout was
      shortened since, or the clock went back): extend, which pulls it in;
    * ``since < extension_delay``: do not extend;
    * ``extension_chance == 100`` or ``since >= extension_deadline``: extend;
    * otherwise extend with a probability of ``extension_chance`` percent,
      drawn from :data:`random_source`.
    """
    if idle_expire is None or idle_expire > now + idle_timeout:
        return True
    since = now - (idle_expire - idle_timeout)
    if extension_delay is not None and since < extension_delay:
        return False
    if extension_chance >= 100 or since >= extension_deadline:
        return True
    return random_source.random() * 100 < extension_chance


# -- configuration hooks ---------------------------------------------------------------


@hookimpl
def session_mixins() -> list[type]:
    return [IdleMixin, ConfigIdleMixin]


@hookimpl
def session_settings() -> tuple[Setting, ...]:
    return SETTINGS


@hookimpl
def session_check_settings(settings: Mapping[str, Any]) -> list[str]:
    """The rules between settings, at start-up and at every runtime ``settings.save()``."""
    problems = []
    timeout = settings.get("idle_timeout")
    delay = settings.get("extension_delay")
    chance = settings.get("extension_chance", 100)
    deadline = settings.get("extension_deadline", 1)
    absolute = settings.get("absolute_timeout")
    if timeout is not None and delay is not None and delay >= timeout:
        problems.append(
            f"extension_delay ({delay}) must be less than idle_timeout ({timeout}): a session "
            "used only for reading would expire before it may be extended. Lower "
            "extension_delay or raise idle_timeout."
        )
    if chance < 100:
        if timeout is not None and deadline >= timeout:
            problems.append(
                f"extension_deadline ({deadline}) must be less than idle_timeout ({timeout}) "
                f"when extension_chance ({chance}) is below 100: otherwise a session in use "
                "may expire because no draw extended it. Lower extension_deadline, raise "
                "idle_timeout, or set extension_chance = 100."
            )
        if delay is not None and deadline <= delay:
            problems.append(
                f"extension_deadline ({deadline}) must be greater than extension_delay "
                f"({delay}) when extension_chance ({chance}) is below 100: otherwise every "
                "read past the delay is also past the deadline and the chance never applies. "
                "Raise extension_deadline, lower extension_delay, or set extension_chance = 100."
            )
    if absolute is not None and timeout is not None and absolute <= timeout:
        problems.append(
            f"absolute_timeout ({absolute}) must be greater than idle_timeout ({timeout}): "
            "otherwise every session ends by the absolute timeout before it could be idle "
            "that long. Lower idle_timeout or raise absolute_timeout."
        )
    return problems


@hookimpl
def session_expiry_policy(settings: Mapping[str, Any]) -> str | None:
    """Every session expires when the global ``idle_timeout`` is set (a session's own value
    replaces it, but cannot turn it off); while it is ``None`` only sessions with a
    timeout of their own expire."""
    timeout = settings.get("idle_timeout")
    return None if timeout is None else f"idle_timeout {timeout} s"


@hookimpl
def session_merge_rules() -> dict[str, MergeRule]:
    """Two requests extended the expiry at once (parallel reads): the later expiry wins."""
    return {"idle_expire": latest}


# -- the request pipeline ----------------------------------------------------------------


def expiry(row: _IdleRow, idle_timeout: int | None) -> int | None:
    """When ``row`` expires by inactivity under ``idle_timeout`` (the one in force), or ``None``.

    The stored ``idle_expire``; for a row last written while the feature was
    off (``idle_expire`` is ``NULL``), ``updated + idle_timeout``: its last
    recorded activity, so that a session left over from before the feature
    was turned on is not kept alive forever by its first read. ``None`` while
    the feature is off. The row is expired at and after the time returned.
    """
    if idle_timeout is None:
        return None
    if row.idle_expire is None:
        return int(row.updated) + idle_timeout
    return row.idle_expire


@hookimpl
def session_validate(session: Session) -> str | None:
    """Reject a row at and after its idle expiry (:func:`expiry`) while the feature is on."""
    expire = expiry(session.row, session.settings["idle_timeout"])
    if expire is not None and expire <= session.now:
        return "idle timeout"
    return None


@hookimpl
def session_extend(session: Session) -> None:
    """A read-only request: assign a later ``idle_expire`` when :func:`extension_due` says so.

    Nothing to do when the session is written anyway (:func:`session_persist`
    sets the expiry) or when the feature is off for this session.
    """
    if session.dirty:
        return
    settings = session.settings
    timeout = settings["idle_timeout"]
    if timeout is None:
        return
    row = session.row
    now = session.now
    if extension_due(
        row.idle_expire,
        now,
        idle_timeout=timeout,
        extension_delay=settings["extension_delay"],
        extension_chance=settings["extension_chance"],
        extension_deadline=settings["extension_deadline"],
    ):
        # Equal to the stored value within the same second: SQLAlchemy then writes nothing.
        row.idle_expire = now + timeout


@hookimpl
def session_persist(session: Session, row: _IdleRow) -> None:
    """Every write: ``idle_expire = now + idle_timeout`` (``None`` while the feature is off)."""
    timeout = session.settings["idle_timeout"]
    row.idle_expire = None if timeout is None else session.now + timeout


# -- maintenance ---------------------------------------------------------------------------


@hookimpl
def session_expired_conditions(
    model: type[_IdleModel], settings: Mapping[str, Any], now: int
) -> list[sa.ColumnElement[bool]] | None:
    """``idle_expire <= now`` (see :func:`expiry`); while the global timeout is off, only for
    rows with their own."""
    expired = model.idle_expire <= now
    timeout = settings.get("idle_timeout")
    if timeout is not None:
        # a row written while the feature was off (NULL) expires idle_timeout after `updated`;
        # a row with a timeout of its own always has an idle_expire (written with it)
        never_extended = sa.and_(model.idle_expire.is_(None), model.updated <= now - timeout)
        return [expired, never_extended]
    if "idle_timeout" in sa.inspect(model).column_attrs:
        # ConfigIdleMixin's column, or one of the model's own: typed on neither class
        own_timeout = model.idle_timeout  # type: ignore[attr-defined]
        return [sa.and_(expired, own_timeout.is_not(None))]
    return None


@hookimpl
def session_indexes(model: type) -> list[str]:
    return ["idle_expire"]


@hookimpl
def session_expires_at(row: _IdleRow, settings: Mapping[str, Any]) -> int | None:
    """:func:`expiry` under the settings in force for the row."""
    return expiry(row, settings.get("idle_timeout"))


@hookimpl
def session_last_active(row: _IdleRow, settings: Mapping[str, Any]) -> int | None:
    """The last write or extension: ``idle_expire - idle_timeout``.

    Exact while ``idle_timeout`` is the one in force when the row was last
    written or extended.
    """
    timeout: int | None = settings.get("idle_timeout")
    if timeout is None or row.idle_expire is None:
        return None
    return row.idle_expire - timeout


# -- deploy checks (``psessions CONFIG check``) --------------------------------------------

if TYPE_CHECKING:
    from sessions_kernel.deploy import Finding

#: An ``idle_timeout`` above this is reported as long (OWASP: minutes to hours).
LONG_IDLE_TIMEOUT = 24 * 3600


@hookimpl
def session_deploy_checks(settings: Mapping[str, Any], active: bool) -> list[Finding]:
    """``idle_timeout.off``: no idle expiry (the mixin missing, or no timeout);
    ``idle_timeout.long``: one over :data:`LONG_IDLE_TIMEOUT`."""
    from sessions_kernel.deploy import Finding, duration

    exposure = (
        "a session never expires for lack of activity, so a cookie left in a browser, or "
        "copied from one, keeps working as long as the session lives"
    )
    if not active:
        return [
            Finding(
                "idle_timeout.off",
                "the session model",
                f"sessions-idle-timeout is installed but the model lacks IdleMixin: {exposure}",
                "add IdleMixin (or ConfigIdleMixin) to the model's bases and set "
                "session.idle_timeout (OWASP: 15 to 30 minutes for most applications)",
            )
        ]
    timeout = settings["idle_timeout"]
    if timeout is None:
        return [
            Finding(
                "idle_timeout.off",
                "session.idle_timeout",
                f"session.idle_timeout is not set: {exposure}",
                "set session.idle_timeout, e.g. 1800 (30 minutes)",
            )
        ]
    if timeout > LONG_IDLE_TIMEOUT:
        return [
            Finding(
                "idle_timeout.long",
                "session.idle_timeout",
                f"session.idle_timeout = {timeout} ({duration(timeout)}): an unattended "
                "session stays usable that long",
                "lower session.idle_timeout to minutes or hours (OWASP: 15 to 30 minutes for "
                "most applications); keep longer sessions for the visitors who ask, per session",
            )
        ]
    return []
