"""The tutorial's application: a project from Pyramid's SQLAlchemy starter with sessions."""

from pyramid.config import Configurator

from .resources import Root


def main(global_config, **settings):
    """This function returns a Pyramid WSGI application."""
    with Configurator(settings=settings, root_factory=Root) as config:
        config.include(".models")  # pyramid_tm, pyramid_retry, request.dbsession
        config.include("sessions_kernel")  # request.session, from the session.* settings
        config.include(".security")
        config.include(".routes")
        config.scan(".views")
    return config.make_wsgi_app()
