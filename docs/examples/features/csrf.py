"""CSRF tokens in a column of the session table, through Pyramid's own CSRF API."""

from pyramid.csrf import get_csrf_token
from pyramid.view import view_config
from sessions_csrf import CSRFMixin
from sqlalchemy.orm import DeclarativeBase

from sessions_kernel import BaseMixin


class Base(DeclarativeBase):
    pass


class Session(CSRFMixin, BaseMixin, Base):
    __tablename__ = "session"


@view_config(route_name="form", request_method="GET", renderer="json")
def form(request):
    # a template would call get_csrf_token() in a hidden field named csrf_token
    return {"csrf_token": get_csrf_token(request)}


@view_config(route_name="form", request_method="POST", renderer="json")
def post(request):
    return {"posted": True}  # reached only with the right token


def includeme(config):
    config.include("sessions_csrf")  # the storage policy, and a check of the model
    config.set_default_csrf_options(require_csrf=True)
    config.add_route("form", "/form")
    config.scan(__name__)
