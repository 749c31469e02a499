"""A small expiring plugin used by the maintenance tests (not shipped).

Rows expire ``ttl`` seconds after their last write, globally or per session
(``ConfigTTLMixin``). It exercises every maintenance hook the way the timeout
plugins do, without depending on them.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from sessions_kernel import Setting, hookimpl
from sessions_kernel.settings import integer, optional


class TTLMixin:
    ttl_expire: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)


class ConfigTTLMixin(TTLMixin):
    ttl: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)


@hookimpl
def session_mixins() -> list[type]:
    return [TTLMixin, ConfigTTLMixin]


@hookimpl
def session_settings() -> list[Setting]:
    return [Setting("ttl", None, optional(integer(1)), "seconds a session lives after a write")]


@hookimpl
def session_expiry_policy(settings: Any) -> str | None:
    ttl = settings.get("ttl")
    return None if ttl is None else f"ttl {ttl} s"


@hookimpl
def session_persist(session: Any, row: Any) -> None:
    ttl = session.settings["ttl"]
    row.ttl_expire = None if ttl is None else session.now + ttl


@hookimpl
def session_validate(session: Any) -> str | None:
    expire = session.row.ttl_expire
    return "ttl" if expire is not None and expire <= session.now else None


@hookimpl
def session_expired_conditions(model: type, now: int) -> list[Any]:
    return [model.ttl_expire <= now]


@hookimpl
def session_indexes() -> list[Any]:
    return ["ttl_expire", ("created", "ttl_expire")]


@hookimpl
def session_expires_at(row: Any) -> int | None:
    return row.ttl_expire
