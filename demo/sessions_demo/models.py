"""The demo's tables: users, and sessions with every plugin of this repository.

The session model lists the runtime-configurable mixin of each feature, so
every setting can be changed for one session (the demo's "remember me" and
"my idle timeout" forms do), plus ``UseridMixin`` with its column overridden
as a foreign key to :class:`User` and ``CSRFMixin`` for the CSRF token.
"""

from __future__ import annotations

import sqlalchemy as sa
from sessions_absolute_timeout import ConfigAbsoluteMixin
from sessions_cookie_settings import ConfigCookieMixin
from sessions_csrf import CSRFMixin
from sessions_idle_timeout import ConfigIdleMixin
from sessions_renewal import ConfigRenewalMixin
from sessions_userid import UseridMixin
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from sessions_kernel import BaseMixin
from sessions_kernel.maintenance import add_indexes

__all__ = ["Base", "Session", "User"]


class Base(DeclarativeBase):
    pass


class User(Base):
    """An account: a unique name and an Argon2id password hash (never the password)."""

    __tablename__ = "demo_user"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True, nullable=False)
    password_hash: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    created: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)


class Session(
    ConfigIdleMixin,
    ConfigAbsoluteMixin,
    ConfigRenewalMixin,
    ConfigCookieMixin,
    UseridMixin,
    CSRFMixin,
    BaseMixin,
    Base,
):
    """The session table: the kernel's columns plus one group per plugin."""

    __tablename__ = "demo_session"

    # the user in the same SELECT as the session; deleting a user deletes their sessions
    userid: Mapped[int | None] = mapped_column(
        sa.Integer, sa.ForeignKey(User.id, ondelete="CASCADE"), nullable=True, index=True
    )
    user: Mapped[User | None] = relationship(lazy="joined")


# the indexes the active plugins ask for (created, absolute_expire, ...), for create_all()
add_indexes(Session)
