"""Per-session cookie attributes: the kernel's cookie settings, changeable for one session.

The six settings (``cookie_max_age``, ``cookie_path``, ``cookie_domain``,
``cookie_secure``, ``cookie_httponly``, ``cookie_samesite``) are the kernel's own
(see :mod:`sessions_kernel.builtin`): their defaults, validation and cross-setting
rules (``__Host-``/``__Secure-`` prefixes, ``SameSite=None`` needs ``Secure``) live
there. By the kernel's rule a setting is runtime-configurable for a model that has a
column of its name; :class:`ConfigCookieMixin` adds those columns, so nothing else is
needed here: the kernel reads the session's values when it sends the cookie, re-sends
the cookie in the response of a request that changed them, and deletes the cookie
with the path and domain it was set with.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from sessions_kernel import hookimpl
from sessions_kernel.builtin import MAX_COOKIE_DOMAIN, MAX_COOKIE_PATH

__all__ = ["ConfigCookieMixin"]


class ConfigCookieMixin:
    """Cookie attributes stored per session; ``NULL`` in a column means the global value.

    Column types hold every value the settings accept: ``cookie_max_age`` up to ten
    years in seconds (Integer), ``cookie_path`` up to 1024 characters and
    ``cookie_domain`` up to 253 (the kernel refuses longer values), ``cookie_samesite``
    one of ``Strict``/``Lax``/``None``, the two flags Boolean. If you override a
    column, keep it able to hold those values.
    """

    cookie_max_age: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cookie_path: Mapped[str | None] = mapped_column(String(MAX_COOKIE_PATH), nullable=True)
    cookie_domain: Mapped[str | None] = mapped_column(String(MAX_COOKIE_DOMAIN), nullable=True)
    cookie_secure: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    cookie_httponly: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    cookie_samesite: Mapped[str | None] = mapped_column(String(6), nullable=True)


@hookimpl
def session_mixins() -> list[type]:
    return [ConfigCookieMixin]
