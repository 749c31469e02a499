"""Renewal timeout: the id in the cookie changes every 15 minutes; a stale copy ends the session."""

import logging

from sessions_renewal import ConfigRenewalMixin, RenewalViolation
from sqlalchemy.orm import DeclarativeBase

from sessions_kernel import BaseMixin

log = logging.getLogger(__name__)


class Base(DeclarativeBase):
    pass


class Session(ConfigRenewalMixin, BaseMixin, Base):
    __tablename__ = "session"


def on_theft(event: RenewalViolation) -> None:
    log.warning("copied session cookie: session %s (%s)", event.session_id[:12], event.detail)


def includeme(config):
    config.add_subscriber(on_theft, RenewalViolation)
