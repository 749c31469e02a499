"""Which device uses a session: the client's IP address and User-Agent.

Add :class:`DeviceMixin` (or :class:`ConfigDeviceMixin`) to the session
model. The plugin records the device that signed in (when the session was
created, and at every sign-in: the ``session_user_changed`` hook of
sessions-userid) and the device of the latest request, and shows both in
"your sessions" listings. With
``session.device_reject_user_agent_change = true`` a session whose requests
come with another User-Agent than the last one is rejected: a change of
browser in the middle of a session is an anomaly OWASP suggests treating as a
possible hijack.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from sessions_kernel import Session, Setting, hookimpl
from sessions_kernel.merge import MergeRule, keep_theirs
from sessions_kernel.settings import boolean

__all__ = ["REASON", "SETTINGS", "ConfigDeviceMixin", "DeviceMixin", "client_device"]

#: The longest textual IP address (IPv6 with an embedded IPv4 address).
MAX_IP = 45
#: User-Agent headers are cut to this many characters before they are stored.
MAX_USER_AGENT = 512
#: The reason ``session_validate`` gives (``SessionRejected.reason``).
REASON = "user agent changed"


class DeviceMixin:
    """Four nullable columns: the device at sign-in and the device of the latest request."""

    device_login_ip: Mapped[str | None] = mapped_column(sa.String(MAX_IP), nullable=True)
    device_login_user_agent: Mapped[str | None] = mapped_column(
        sa.String(MAX_USER_AGENT), nullable=True
    )
    device_last_ip: Mapped[str | None] = mapped_column(sa.String(MAX_IP), nullable=True)
    device_last_user_agent: Mapped[str | None] = mapped_column(
        sa.String(MAX_USER_AGENT), nullable=True
    )


class ConfigDeviceMixin(DeviceMixin):
    """:class:`DeviceMixin` whose setting can also change per session (``NULL`` = global)."""

    device_reject_user_agent_change: Mapped[bool | None] = mapped_column(sa.Boolean, nullable=True)


SETTINGS = (
    Setting(
        "device_reject_user_agent_change",
        False,
        boolean,
        "reject a session whose User-Agent differs from its last request's",
    ),
)


def client_device(request: Any) -> tuple[str | None, str | None]:
    """The request's ``(ip, user_agent)``, cut to the columns' sizes.

    The IP address is ``REMOTE_ADDR``, never a header a client can forge:
    behind a proxy, have the WSGI server set it from the proxy's header
    (waitress: ``trusted_proxy`` and ``trusted_proxy_headers``).
    """
    ip = request.remote_addr
    agent = request.user_agent
    return (ip[:MAX_IP] if ip else None, agent[:MAX_USER_AGENT] if agent else None)


@hookimpl
def session_mixins() -> list[type]:
    return [DeviceMixin, ConfigDeviceMixin]


@hookimpl
def session_settings() -> tuple[Setting, ...]:
    return SETTINGS


@hookimpl
def session_validate(session: Session) -> str | None:
    if not session.settings.device_reject_user_agent_change:
        return None
    stored = session.row.device_last_user_agent
    if stored is None:  # written before the plugin was installed: nothing to compare
        return None
    _, agent = client_device(session.request)
    return REASON if agent != stored else None


@hookimpl
def session_extend(session: Session) -> None:
    # Assign only what differs: an unchanged device costs no write.
    row = session.row
    ip, agent = client_device(session.request)
    if row.device_last_ip != ip:
        row.device_last_ip = ip
    if row.device_last_user_agent != agent:
        row.device_last_user_agent = agent


@hookimpl
def session_persist(session: Session, row: Any) -> None:
    if session.new:  # the INSERT: this device started the session
        ip, agent = client_device(session.request)
        row.device_login_ip = row.device_last_ip = ip
        row.device_login_user_agent = row.device_last_user_agent = agent


@hookimpl(optionalhook=True)
def session_user_changed(session: Session, new: Any) -> None:
    """A user signed in (sessions-userid's hook): this device is the one that signed in.

    Called at ``remember()`` and whenever ``request.session.userid`` is set
    to a user, during the view, so a flush the view makes afterwards changes
    nothing. ``set_column`` works on a session without a row too: the
    columns then ride in its INSERT. Optional: the plugin also works where
    sessions-userid is not installed or the model lacks its mixin.
    """
    if new is None:  # a logout: nobody signed in
        return
    ip, agent = client_device(session.request)
    session.set_column("device_login_ip", ip)
    session.set_column("device_login_user_agent", agent)


@hookimpl
def session_merge_rules() -> Mapping[Any, MergeRule]:
    # Two parallel requests from one browser: either's device is the last one seen.
    return {("device_last_ip", "device_last_user_agent"): keep_theirs}


@hookimpl
def session_details(row: Any) -> Mapping[str, Any]:
    return {
        "device_login_ip": row.device_login_ip,
        "device_login_user_agent": row.device_login_user_agent,
        "device_last_ip": row.device_last_ip,
        "device_last_user_agent": row.device_last_user_agent,
    }
