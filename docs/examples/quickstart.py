"""The getting-started guide's application, in one module so that a test runs it.

In a project made from Pyramid's SQLAlchemy starter these pieces live in
``models/meta.py``, ``models/session.py``, ``models/__init__.py``,
``views/default.py`` and ``__init__.py``; the docs show each piece where it goes.
"""

from __future__ import annotations

import sqlalchemy as sa
import zope.sqlalchemy
from pyramid.config import Configurator
from pyramid.view import view_config
from sqlalchemy.orm import DeclarativeBase, sessionmaker

from sessions_kernel import BaseMixin


# models/meta.py (from the starter)
class Base(DeclarativeBase):
    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "pk": "pk_%(table_name)s",
        }
    )


# models/session.py
class Session(BaseMixin, Base):
    __tablename__ = "session"


# models/__init__.py (from the starter, shortened)
def includeme(config: Configurator) -> None:
    settings = config.get_settings()
    settings["tm.manager_hook"] = "pyramid_tm.explicit_manager"
    config.include("pyramid_tm")
    config.include("pyramid_retry")
    engine = sa.engine_from_config(settings, "sqlalchemy.")
    maker = sessionmaker(bind=engine)
    config.registry["dbsession_factory"] = maker

    def dbsession(request):
        db = maker(info={"request": request})
        zope.sqlalchemy.register(db, transaction_manager=request.tm)
        return db

    config.add_request_method(dbsession, reify=True)


# views/default.py
@view_config(route_name="visits", renderer="json")
def visits(request):
    session = request.session
    session["visits"] = session.get("visits", 0) + 1
    return {"visits": session["visits"], "new": session.new}


# __init__.py
def main(global_config, **settings):
    with Configurator(settings=settings) as config:
        config.include(includeme)  # in the starter: config.include(".models")
        config.include("sessions_kernel")
        config.add_route("visits", "/")
        config.scan(__name__)
    return config.make_wsgi_app()
