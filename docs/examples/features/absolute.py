"""Absolute timeout: a session ends 12 hours after its creation, however active."""

from sessions_absolute_timeout import AbsoluteMixin
from sqlalchemy.orm import DeclarativeBase

from sessions_kernel import BaseMixin


class Base(DeclarativeBase):
    pass


class Session(AbsoluteMixin, BaseMixin, Base):
    __tablename__ = "session"


def includeme(config):
    pass  # nothing to call: the plugin works from the setting alone
