"""The columns every session table has."""

from __future__ import annotations

from sqlalchemy import BigInteger, LargeBinary, String
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, mapped_column

__all__ = ["BaseMixin", "BlobType"]

#: Binary column type for serialized data: MEDIUMBLOB (16 MiB) on MySQL/MariaDB,
#: where a plain BLOB stops at 64 KiB.
BlobType = LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")


class BaseMixin:
    """Mixin for the session model; list it last before your declarative ``Base``::

        class Session(ConfigIdleMixin, BaseMixin, Base):
            __tablename__ = "session"

    ``id`` is the SHA-256 (hex) of the cookie's token, never the token itself.
    ``created`` and ``updated`` are seconds since the epoch from the factory's
    clock: ``updated`` is when the data, the flash queues, the per-session
    settings or the id last changed (a plugin's own write, such as an idle
    extension, leaves it alone). ``data`` and ``flash`` hold the serialized
    session dict and flash queues. Override any column in your class if you
    need to.
    """

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated: Mapped[int] = mapped_column(BigInteger, nullable=False)
    data: Mapped[bytes] = mapped_column(BlobType, nullable=False)
    flash: Mapped[bytes | None] = mapped_column(BlobType, nullable=True)
