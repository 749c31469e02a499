"""UserSessionSecurityPolicy and the user-session queries in a real Pyramid application.

The session model overrides ``userid`` with a UUID referencing a users table
and a ``lazy='joined'`` relationship, as the README recommends.
"""

from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy as sa
from pyramid.authorization import ALL_PERMISSIONS, DENY_ALL, Allow, Authenticated, Everyone
from pyramid.interfaces import ISecurityPolicy, ISessionFactory
from pyramid.security import forget, remember
from sessions_userid import (
    UseridMixin,
    UserSessionSecurityPolicy,
    invalidate_user_sessions,
    user_sessions,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from sessions_kernel import BaseMixin, hookimpl
from sessions_kernel.builtin import DEFAULT_MAX_AGE
from sessions_kernel.events import SessionInvalidated
from sessions_kernel.testing import make_model

ALICE = uuid.UUID("00000000-0000-4000-8000-00000000a11c")
BOB = uuid.UUID("00000000-0000-4000-8000-000000000b0b")
CAROL = uuid.UUID("00000000-0000-4000-8000-0000000ca201")  # disabled: the callback refuses her


class ExpiresMixin:
    """The column of a small timeout plugin defined by these tests."""

    expires_at: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)


class ExpiryTestPlugin:
    """Expires rows at ``expires_at``; consistent across validate, SQL and describe()."""

    @hookimpl
    def session_mixins(self):
        return [ExpiresMixin]

    @hookimpl
    def session_validate(self, session):
        expires_at = session.row.expires_at
        if expires_at is not None and expires_at <= session.now:
            return "test expiry"
        return None

    @hookimpl
    def session_expired_conditions(self, model, settings, now):
        return [model.expires_at <= now]

    @hookimpl
    def session_expires_at(self, row, settings):
        return row.expires_at


def make_models(*mixins):
    pid = os.getpid()

    class Base(DeclarativeBase):
        pass

    class User(Base):
        __tablename__ = f"users_{pid}"
        id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(40))
        active: Mapped[bool] = mapped_column(default=True)

    class Session(*mixins, UseridMixin, BaseMixin, Base):
        __tablename__ = f"sessions_{pid}"
        userid: Mapped[uuid.UUID | None] = mapped_column(
            sa.Uuid, sa.ForeignKey(User.id, ondelete="CASCADE"), index=True
        )
        user: Mapped[User | None] = relationship(lazy="joined")

    return User, Session


class Document:
    """An ACL context: signed-in users read, Alice edits, nobody else does anything."""

    __acl__ = [(Allow, ALICE, ALL_PERMISSIONS), (Allow, Authenticated, "read"), DENY_ALL]

    def __init__(self, request):
        self.request = request


def configure_for(User):
    def load_user(userid, request):
        user = request.dbsession.get(User, userid)
        return user if user is not None and user.active else None

    def configure(config):
        config.set_security_policy(UserSessionSecurityPolicy(callback=load_user))
        invalidated = config.registry.settings.setdefault("test.invalidated", [])
        config.add_subscriber(
            lambda event: invalidated.append(event.session_id), SessionInvalidated
        )

        def view(name, func, **kw):
            config.add_route(name, f"/{name}", factory=kw.pop("factory", None))
            config.add_view(func, route_name=name, renderer="json", **kw)

        def whoami(request):
            user = request.identity
            return {
                "name": user.name if user is not None else None,
                "userid": str(request.authenticated_userid or "") or None,
                "session_userid": str(request.session.userid or "") or None,
                "data": dict(request.session),
                "can_edit": bool(request.has_permission("edit", Document(request))),
            }

        def login(request):
            user = request.json_body["user"]
            try:
                headers = remember(request, uuid.UUID(user) if request.params.get("uuid") else user)
            except TypeError as exc:
                return {"error": str(exc)}
            return {"headers": headers, **whoami(request)}

        def logout(request):
            return {"headers": forget(request), **whoami(request)}

        def sessions(request):
            return [
                {
                    "short_id": s.short_id,
                    "session_id": s.session_id,
                    "created": s.created,
                    "last_active": s.last_active,
                    "expires": s.expires,
                    "current": s.current,
                }
                for s in user_sessions(request, request.authenticated_userid)
            ]

        def logout_others(request):
            return {
                "deleted": invalidate_user_sessions(
                    request, request.authenticated_userid, except_current=True
                )
            }

        def logout_everywhere(request):
            return {"deleted": invalidate_user_sessions(request, request.authenticated_userid)}

        def principals(request):
            policy = request.registry.queryUtility(ISecurityPolicy)
            return [str(p) for p in policy.effective_principals(request)]

        def edit(request):
            return {"edited": True}

        view("whoami", whoami)
        view("login", login)
        view("logout", logout)
        view("sessions", sessions)
        view("logout_others", logout_others)
        view("logout_everywhere", logout_everywhere)
        view("principals", principals)
        view("read_doc", whoami, factory=Document, permission="read")
        view("edit_doc", edit, factory=Document, permission="edit")

    return configure


def add_users(app, User):
    with sa.orm.Session(app.engine) as db:
        db.add_all(
            [
                User(id=ALICE, name="alice"),
                User(id=BOB, name="bob"),
                User(id=CAROL, name="carol", active=False),
            ]
        )
        db.commit()


@pytest.fixture
def app(session_app):
    User, Session = make_models()
    app = session_app(Session, configure=configure_for(User))
    add_users(app, User)
    return app


@pytest.fixture
def expiry_app(session_app):
    User, Session = make_models(ExpiresMixin)
    app = session_app(Session, configure=configure_for(User), plugins=[ExpiryTestPlugin()])
    add_users(app, User)
    return app


ANONYMOUS = {"name": None, "userid": None, "session_userid": None, "can_edit": False}


def who(browser):
    body = browser.get("/whoami").json
    body.pop("data")
    return body


# -- log in, identity, log out -------------------------------------------------------------


def test_log_in_see_identity_log_out(app):
    assert who(app) == ANONYMOUS
    response = app.post_json("/login?uuid=1", {"user": str(BOB)})
    assert response.json["headers"] == []
    assert response.json["name"] == "bob"
    assert who(app) == {
        "name": "bob",
        "userid": str(BOB),
        "session_userid": str(BOB),
        "can_edit": False,
    }
    session_id = app.row().id
    with app.count() as sql:
        response = app.post_json("/logout", {})
    assert sql.kinds() == ["SELECT", "DELETE"], sql.statements
    # forget() returns the header that deletes the cookie, as cookie-based policies do
    [[name, header]] = response.json["headers"]
    assert name == "Set-Cookie" and header.startswith("session=; Max-Age=0")
    assert response.json["name"] is None
    assert response.headers.getall("Set-Cookie") == [header]
    assert app.rows() == []
    assert app.wsgi.registry.settings["test.invalidated"] == [session_id]
    assert who(app) == ANONYMOUS


def test_login_regenerates_the_session_id_and_keeps_the_data(app):
    app.post_json("/set", {"cart": ["book"]})
    anonymous_cookie, anonymous_id = app.cookies["session"], app.row().id
    app.post_json("/login?uuid=1", {"user": str(ALICE)})
    assert app.row().id != anonymous_id
    assert app.get("/whoami").json["data"] == {"cart": ["book"]}
    # whoever planted or stole the pre-login cookie does not get the logged-in session
    other = app.new_browser()
    other.set_cookie("session", anonymous_cookie)
    assert who(other) == ANONYMOUS


def test_logging_in_again_as_the_same_user_still_regenerates(app):
    app.post_json("/login?uuid=1", {"user": str(ALICE)})
    first = app.row().id
    app.post_json("/login?uuid=1", {"user": str(ALICE)})
    assert app.row().id != first
    assert who(app)["name"] == "alice"


def test_switching_user_regenerates_and_changes_identity(app):
    app.post_json("/login?uuid=1", {"user": str(ALICE)})
    first = app.row().id
    assert app.post_json("/login?uuid=1", {"user": str(BOB)}).json["name"] == "bob"
    row = app.row()
    assert (row.id != first, row.userid) == (True, BOB)


def test_callback_refusal_means_not_authenticated(app):
    app.post_json("/login?uuid=1", {"user": str(CAROL)})
    assert who(app) == {**ANONYMOUS, "session_userid": str(CAROL)}
    assert app.get("/read_doc", status=403)


def test_userid_of_the_wrong_type_is_refused_with_the_fix(app):
    error = app.post_json("/login", {"user": str(ALICE)}).json["error"]
    assert f"uuid.UUID('{ALICE}')" in error
    assert app.rows() == []


def test_remember_none_is_refused(app):
    policy = app.wsgi.registry.queryUtility(ISecurityPolicy)
    with pytest.raises(ValueError, match="forget"):
        policy.remember(object(), None)


def test_policy_callback_must_be_callable():
    with pytest.raises(TypeError, match=r"callback\(userid, request\)"):
        UserSessionSecurityPolicy(callback="myapp.load_user")


# -- statements ---------------------------------------------------------------------------


def test_logged_in_read_with_the_joined_user_is_one_statement(app):
    app.post_json("/login?uuid=1", {"user": str(ALICE)})
    app.clock.advance(5)
    with app.count() as sql:
        body = who(app)
    assert body["name"] == "alice" and body["can_edit"] is True
    assert sql.kinds() == ["SELECT"], sql.statements
    assert "JOIN" in sql.statements[0].upper()


def test_login_costs(app):
    with app.count() as sql:
        app.post_json("/login?uuid=1", {"user": str(ALICE)})
    # a new session: the INSERT, and the callback's SELECT of the user for the response
    assert sorted(sql.kinds()) == ["INSERT", "SELECT"], sql.statements
    app.post_json("/logout", {})
    app.post_json("/set", {"a": 1})
    with app.count() as sql:
        app.post_json("/login?uuid=1", {"user": str(ALICE)})
    # the session (with its joined, empty user); one UPDATE of id and userid, flushed
    # early by the callback's SELECT of the user
    assert sql.kinds() == ["SELECT", "UPDATE", "SELECT"], sql.statements
    with app.count() as sql:
        app.post_json("/login?uuid=1", {"user": str(BOB)})
    # over Alice's session: the same, and her data cleared in an UPDATE at commit (the
    # kernel serializes the data then, after the callback's flush)
    assert sql.kinds() == ["SELECT", "UPDATE", "SELECT", "UPDATE"], sql.statements
    assert app.get("/whoami").json["data"] == {}


# -- permits() -------------------------------------------------------------------------------


def test_permits_uses_the_context_acl(app):
    assert app.get("/read_doc", status=403)
    assert app.get("/edit_doc", status=403)
    app.post_json("/login?uuid=1", {"user": str(BOB)})
    assert app.get("/read_doc").json["name"] == "bob"
    assert app.get("/edit_doc", status=403)
    app.post_json("/login?uuid=1", {"user": str(ALICE)})
    assert app.get("/edit_doc").json == {"edited": True}


def test_effective_principals(app):
    assert app.get("/principals").json == [Everyone]
    app.post_json("/login?uuid=1", {"user": str(ALICE)})
    assert app.get("/principals").json == [Everyone, Authenticated, str(ALICE)]
    app.post_json("/login?uuid=1", {"user": str(CAROL)})  # refused by the callback
    assert app.get("/principals").json == [Everyone]


# -- several browsers: listing and logging out elsewhere ---------------------------------


def test_log_out_everywhere_else(app):
    phone, laptop = app.new_browser(), app.new_browser()
    phone.post_json("/login?uuid=1", {"user": str(ALICE)})
    phone_id = app.row().id
    app.clock.advance(10)
    laptop.post_json("/login?uuid=1", {"user": str(ALICE)})
    app.clock.advance(10)
    bobs = app.new_browser()
    bobs.post_json("/login?uuid=1", {"user": str(BOB)})

    listed = laptop.get("/sessions").json
    assert [s["current"] for s in listed] == [True, False]
    assert listed[1]["session_id"] == phone_id and listed[1]["short_id"] == phone_id[:8]
    # no timeout plugin: the kernel's session.max_age, counted from the creation
    assert listed[1]["expires"] == listed[1]["created"] + DEFAULT_MAX_AGE

    with app.count() as sql:
        assert laptop.post_json("/logout_others", {}).json == {"deleted": 1}
    # the laptop's session, its new id (a copy of its cookie stops working), one DELETE
    assert sql.kinds() == ["SELECT", "UPDATE", "DELETE"], sql.statements
    assert app.wsgi.registry.settings["test.invalidated"] == [phone_id]
    assert who(phone) == ANONYMOUS
    assert who(laptop)["name"] == "alice"
    assert who(bobs)["name"] == "bob"
    assert [s["current"] for s in laptop.get("/sessions").json] == [True]


def test_log_out_everywhere_includes_the_current_session(app):
    phone = app.new_browser()
    phone.post_json("/login?uuid=1", {"user": str(ALICE)})
    app.post_json("/login?uuid=1", {"user": str(ALICE)})
    response = app.post_json("/logout_everywhere", {})
    assert response.json == {"deleted": 2}
    assert response.headers["Set-Cookie"].startswith("session=; Max-Age=0")
    assert len(app.wsgi.registry.settings["test.invalidated"]) == 2
    assert who(app) == ANONYMOUS and who(phone) == ANONYMOUS
    assert app.rows() == []


def test_listing_excludes_expired_rows(expiry_app):
    app = expiry_app
    browsers = [app.new_browser() for _ in range(3)]
    for browser in browsers:
        browser.post_json("/login?uuid=1", {"user": str(ALICE)})
        app.clock.advance(1)
    now = int(app.clock())
    with sa.orm.Session(app.engine) as db:
        rows = sorted(db.scalars(sa.select(app.model)), key=lambda r: r.created)
        rows[1].expires_at = now  # expired at this very second
        rows[2].expires_at = now + 100
        db.commit()
        ids = [r.id for r in rows]

    with app.count() as sql:
        listed = browsers[0].get("/sessions").json
    assert sql.kinds() == ["SELECT", "SELECT"], sql.statements
    assert [(s["session_id"], s["expires"], s["current"]) for s in listed] == [
        (ids[2], now + 100, False),
        (ids[0], rows[0].created + DEFAULT_MAX_AGE, True),  # the kernel's max age
    ]
    # the kernel agrees: the expired one is refused when its browser comes back
    assert who(browsers[1]) == ANONYMOUS


def test_queries_with_the_factory_outside_a_request(app):
    for _ in range(2):
        app.new_browser().post_json("/login?uuid=1", {"user": str(ALICE)})
    app.new_browser().post_json("/login?uuid=1", {"user": str(BOB)})
    factory = app.wsgi.registry.queryUtility(ISessionFactory)
    with sa.orm.Session(app.engine) as db:
        listed = user_sessions(factory, ALICE, dbsession=db)
        assert len(listed) == 2 and not any(s.current for s in listed)
        with pytest.raises(TypeError, match="pass the request"):
            invalidate_user_sessions(factory, ALICE, dbsession=db, except_current=True)
        assert invalidate_user_sessions(factory, ALICE, dbsession=db) == 2
        db.commit()
    assert [r.userid for r in app.rows()] == [BOB]
    with pytest.raises(TypeError, match="dbsession="):
        user_sessions(factory, ALICE)


def test_listing_gives_utc_datetimes_beside_the_seconds(app):
    from datetime import datetime, timezone

    for _ in range(2):
        app.new_browser().post_json("/login?uuid=1", {"user": str(ALICE)})
        app.clock.advance(7)
    factory = app.wsgi.registry.queryUtility(ISessionFactory)
    with sa.orm.Session(app.engine) as db:
        listed = user_sessions(factory, ALICE, dbsession=db)
    assert len(listed) == 2
    for s in listed:
        for seconds, moment in [
            (s.created, s.created_at),
            (s.last_active, s.last_active_at),
            (s.expires, s.expires_at),
        ]:
            assert isinstance(seconds, int) and moment.tzinfo is timezone.utc
            assert moment == datetime.fromtimestamp(seconds, tz=timezone.utc)
            assert moment.timestamp() == seconds
    # most recently active first, in both forms
    assert listed[0].last_active_at > listed[1].last_active_at
    assert listed[0].last_active - listed[1].last_active == 7


def test_listing_of_sessions_that_never_expire_has_no_expires_at(session_app):
    User, Session = make_models()
    app = session_app(Session, {"max_age": "none"}, configure=configure_for(User))
    add_users(app, User)
    app.post_json("/login?uuid=1", {"user": str(ALICE)})
    factory = app.wsgi.registry.queryUtility(ISessionFactory)
    with sa.orm.Session(app.engine) as db:
        [listed] = user_sessions(factory, ALICE, dbsession=db)
    assert listed.expires is None and listed.expires_at is None
    assert listed.created_at.timestamp() == listed.created


def test_queries_refuse_a_none_userid(app):
    app.post_json("/set", {"anonymous": True})
    factory = app.wsgi.registry.queryUtility(ISessionFactory)
    with sa.orm.Session(app.engine) as db:
        for query in (user_sessions, invalidate_user_sessions):
            with pytest.raises(ValueError, match="user id is required"):
                query(factory, None, dbsession=db)
    assert len(app.rows()) == 1


def test_queries_and_policy_need_the_mixin(session_app):
    def configure(config):
        config.set_security_policy(UserSessionSecurityPolicy())

        def whoami(request):
            try:
                return {"identity": request.identity}
            except TypeError as exc:
                return {"error": str(exc)}

        config.add_route("whoami", "/whoami")
        config.add_view(whoami, route_name="whoami", renderer="json")

    # pyramid_tm would ask for authenticated_userid before the view (and fail there)
    app = session_app(make_model(), {"tm.annotate_user": "false"}, configure=configure)
    assert "include sessions_userid.UseridMixin" in app.get("/whoami").json["error"]
    factory = app.wsgi.registry.queryUtility(ISessionFactory)
    with sa.orm.Session(app.engine) as db, pytest.raises(TypeError, match="UseridMixin"):
        user_sessions(factory, 1, dbsession=db)


@pytest.mark.parametrize(("annotate", "statements"), [("true", ["SELECT"]), ("false", [])])
def test_pyramid_tm_annotate_user_loads_the_session_on_every_request(
    session_app, annotate, statements
):
    User, Session = make_models()
    app = session_app(Session, {"tm.annotate_user": annotate}, configure=configure_for(User))
    add_users(app, User)
    app.post_json("/login?uuid=1", {"user": str(ALICE)})
    with app.count() as sql:
        app.get("/none")  # a view that never touches the session
    assert sql.kinds() == statements, sql.statements
