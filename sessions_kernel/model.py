"""The columns every session table has."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, cast

from sqlalchemy import BigInteger, Integer, LargeBinary, String
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

if TYPE_CHECKING:
    from sqlalchemy import FromClause, MetaData, Table

__all__ = ["KERNEL_COLUMNS", "BaseMixin", "BlobType"]

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
    session dict and flash queues. ``version`` counts the row's writes: every
    UPDATE checks and increments it, which is how the kernel notices that a
    concurrent request wrote the row first (and merges instead of overwriting).
    Override any column in your class if you need to; if you declare
    ``__mapper_args__``, keep ``"version_id_col": cls.__table__.c.version``
    in it.
    """

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated: Mapped[int] = mapped_column(BigInteger, nullable=False)
    data: Mapped[bytes] = mapped_column(BlobType, nullable=False)
    flash: Mapped[bytes | None] = mapped_column(BlobType, nullable=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")

    if TYPE_CHECKING:
        # What the declarative base that every session model also subclasses gives it
        # (the kernel checks that the model is mapped), declared as SQLAlchemy's
        # DeclarativeBase declares it; for type checkers only.
        __table__: ClassVar[FromClause]
        metadata: ClassVar[MetaData]

        def __init__(self, **kw: Any) -> None: ...

    @declared_attr.directive
    def __mapper_args__(cls) -> dict[str, Any]:
        return {"version_id_col": cls.__table__.c.version}


#: The columns of :class:`BaseMixin`: only the kernel writes them.
KERNEL_COLUMNS = frozenset(name for name in vars(BaseMixin) if not name.startswith("_"))


def model_table(model: type[BaseMixin]) -> Table:
    """``model.__table__``, the :class:`~sqlalchemy.Table` its declarative base made.

    SQLAlchemy types ``__table__`` as any ``FromClause`` (a class may be mapped
    to a join or a subquery); a session model is mapped to its table.
    """
    return cast("Table", model.__table__)
