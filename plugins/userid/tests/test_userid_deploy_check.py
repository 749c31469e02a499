"""``psessions check``: a userid column without a foreign key to the users is a finding."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sessions_userid import UseridMixin, session_deploy_checks
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sessions_kernel import BaseMixin
from sessions_kernel.testing import make_model


def test_a_userid_without_a_foreign_key_is_reported():
    (finding,) = session_deploy_checks(make_model(UseridMixin), active=True)
    assert finding.id == "userid.foreign_key" and "ForeignKey" in finding.fix
    assert session_deploy_checks(make_model(), active=False) == []


def test_a_userid_with_a_foreign_key_passes():
    class Base(DeclarativeBase):
        pass

    class User(Base):
        __tablename__ = "users"
        id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)

    class Session(UseridMixin, BaseMixin, Base):
        __tablename__ = "session"
        userid: Mapped[uuid.UUID | None] = mapped_column(
            sa.Uuid, sa.ForeignKey(User.id, ondelete="CASCADE"), index=True
        )

    assert session_deploy_checks(Session, active=True) == []
