"""The user id: a UUID with a foreign key, the user loaded with the session, a security policy."""

import uuid

import sqlalchemy as sa
from pyramid.security import forget, remember
from pyramid.view import view_config
from sessions_userid import UseridMixin, UserSessionSecurityPolicy, user_sessions
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from sessions_kernel import BaseMixin


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(sa.String(100))
    active: Mapped[bool] = mapped_column(default=True)


class Session(UseridMixin, BaseMixin, Base):
    __tablename__ = "session"

    # the plugin's column is an indexed Integer; redeclare it to match your users
    # (keep it nullable, and say index=True again: it is not inherited)
    userid: Mapped[uuid.UUID | None] = mapped_column(
        sa.Uuid, sa.ForeignKey(User.id, ondelete="CASCADE"), index=True
    )
    # the plugin declares no relationship: add one; lazy="joined" reads the user
    # in the session's own SELECT
    user: Mapped[User | None] = relationship(lazy="joined")


def load_user(userid, request):
    # no SQL when the user came with the session: get() finds it in the identity map
    user = request.dbsession.get(User, userid)
    return user if user is not None and user.active else None


@view_config(route_name="login", request_method="POST", renderer="json")
def login(request):
    user = request.dbsession.scalars(
        sa.select(User).where(User.name == request.json_body["name"])
    ).one()  # check the password here
    remember(request, user.id)  # a new session id: the session fixation defence
    return {"name": user.name}


@view_config(route_name="logout", request_method="POST", renderer="json")
def logout(request):
    forget(request)  # deletes the session row and the cookie
    return {}


@view_config(route_name="your_sessions", renderer="json")
def your_sessions(request):
    return [
        {"id": s.short_id, "last_active": s.last_active, "current": s.current}
        for s in user_sessions(request, request.authenticated_userid)
    ]


def includeme(config):
    config.set_security_policy(UserSessionSecurityPolicy(callback=load_user))
    config.add_route("login", "/login")
    config.add_route("logout", "/logout")
    config.add_route("your_sessions", "/your-sessions")
    config.scan(__name__)
