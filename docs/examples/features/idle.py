"""Idle timeout: a session ends after 30 minutes without a request."""

from pyramid.view import view_config
from sessions_idle_timeout import ConfigIdleMixin
from sqlalchemy.orm import DeclarativeBase

from sessions_kernel import BaseMixin


class Base(DeclarativeBase):
    pass


class Session(ConfigIdleMixin, BaseMixin, Base):
    __tablename__ = "session"


@view_config(route_name="keep_me_signed_in", request_method="POST", renderer="json")
def keep_me_signed_in(request):
    # this session only: eight hours without activity instead of the global 30 minutes
    with request.session.settings as s:
        s.idle_timeout = 8 * 3600
    return {"idle_timeout": request.session.settings.idle_timeout}


def includeme(config):
    config.add_route("keep_me_signed_in", "/keep-me-signed-in")
    config.scan(__name__)
