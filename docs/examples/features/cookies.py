"""Cookie settings per session: "remember me" keeps the cookie for 30 days."""

from pyramid.view import view_config
from sessions_cookie_settings import ConfigCookieMixin
from sqlalchemy.orm import DeclarativeBase

from sessions_kernel import BaseMixin


class Base(DeclarativeBase):
    pass


class Session(ConfigCookieMixin, BaseMixin, Base):
    __tablename__ = "session"


@view_config(route_name="remember_me", request_method="POST", renderer="json")
def remember_me(request):
    request.session["remembered"] = True
    with request.session.settings as s:
        s.cookie_max_age = 30 * 24 * 3600  # the cookie is sent again, in this response
    return {}


def includeme(config):
    config.add_route("remember_me", "/remember-me")
    config.scan(__name__)
