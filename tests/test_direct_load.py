"""The load of a stored row: one Core SELECT, and the row exactly as ``dbsession.get`` gives it.

The kernel builds the row from the SELECT's values itself instead of running
the ORM's query (``RowStorage._get``). These tests hold it to what ``get``
would have returned: a persistent, unmodified instance in the identity map,
relationships that load lazily, a flush of what the application left pending,
and, for a model the direct load cannot serve exactly, the ORM's own ``get``.
"""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    mapped_column,
    reconstructor,
    relationship,
)
from sqlalchemy.orm import (
    Session as OrmSession,
)

from sessions_kernel import BaseMixin
from sessions_kernel.testing import make_model

SUFFIX = os.getpid()


@pytest.fixture
def orm_queries():
    """The statements the ORM's query machinery ran (``get`` and ``select(Model)``)."""
    seen: list[str] = []

    def record(state):
        if state.is_select:
            seen.append(str(state.statement))

    event.listen(OrmSession, "do_orm_execute", record)
    yield seen
    event.remove(OrmSession, "do_orm_execute", record)


def row_view(config):
    """``/row``: what the session's row looks like to the ORM, while the request runs."""

    def view(request):
        session = request.session
        row = session.row
        state = sa.inspect(row)
        dbsession = request.dbsession
        fresh = {
            column.key: getattr(row, column.key) for column in sa.inspect(type(row)).column_attrs
        }
        return {
            "persistent": state.persistent,
            "modified": state.modified,
            "in_identity_map": dbsession.get(type(row), row.id) is row,
            "dirty": [repr(obj) for obj in dbsession.dirty],
            "expired": sorted(state.expired_attributes),
            "values": {key: value for key, value in fresh.items() if key not in ("data",)},
            "data": dict(session),
        }

    config.add_route("row", "/row")
    config.add_view(view, route_name="row", renderer="json")


def test_a_read_runs_no_orm_query(session_app, orm_queries):
    app = session_app(make_model())
    app.post_json("/set", {"a": 1})
    orm_queries.clear()
    with app.count() as sql:
        assert app.get("/read").json["data"] == {"a": 1}
    assert sql.kinds() == ["SELECT"], sql.statements
    assert orm_queries == []


def test_the_row_is_what_get_would_give(session_app):
    """Persistent, clean, in the identity map, every column as stored; a write still works."""
    app = session_app(make_model(), configure=row_view)
    app.post_json("/set", {"a": 1})
    stored = app.row()
    with app.count() as sql:
        seen = app.get("/row").json
    assert sql.kinds() == ["SELECT"], sql.statements  # the identity map answered get()
    assert seen["persistent"] is True
    assert seen["modified"] is False
    assert seen["in_identity_map"] is True
    assert seen["dirty"] == []
    assert seen["expired"] == []
    assert seen["data"] == {"a": 1}
    assert seen["values"] == {
        "id": stored.id,
        "created": stored.created,
        "updated": stored.updated,
        "flash": None,
        "version": stored.version,
    }
    # the loaded row is written with its version: the versioned UPDATE matches it
    app.clock.advance(5)
    with app.count() as sql:
        app.get("/incr/a")
    assert sql.kinds() == ["SELECT", "UPDATE"], sql.statements
    assert app.get("/read").json["data"] == {"a": 2}
    assert app.row().version == stored.version + 1


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = f"direct_load_users_{SUFFIX}"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(40))


class UserSession(BaseMixin, Base):
    """A user's model: its session row refers to a user, and the relationship loads lazily."""

    __tablename__ = f"direct_load_sessions_{SUFFIX}"
    user_id: Mapped[int | None] = mapped_column(sa.ForeignKey(User.id), default=None)
    user: Mapped[User | None] = relationship()


def test_a_relationship_of_the_row_loads_lazily(session_app, orm_queries):
    def configure(config):
        def sign_in(request):
            dbsession = request.dbsession
            user = dbsession.get(User, 7) or User(id=7, name="ada")
            dbsession.add(user)
            request.session.set_column("user_id", 7)
            return {}

        def whoami(request):
            user = request.session.row.user
            return {"name": user.name if user else None}

        config.add_route("sign_in", "/sign-in")
        config.add_view(sign_in, route_name="sign_in", renderer="json")
        config.add_route("whoami", "/whoami")
        config.add_view(whoami, route_name="whoami", renderer="json")

    app = session_app(UserSession, configure=configure)
    app.post_json("/set", {"a": 1})
    app.get("/sign-in")
    orm_queries.clear()
    with app.count() as sql:
        assert app.get("/whoami").json == {"name": "ada"}
    # the row's own SELECT, then the user's, which the lazy loader ran through the ORM
    assert sql.kinds() == ["SELECT", "SELECT"], sql.statements
    assert len(orm_queries) == 1 and User.__tablename__ in orm_queries[0]


def test_what_the_application_left_pending_is_flushed_first(session_app):
    """As ``get`` autoflushes before its SELECT: a user added before the session's first use."""

    def configure(config):
        def add_then_read(request):
            user = User(id=8, name="grace")
            request.dbsession.add(user)
            data = dict(request.session)
            return {"flushed": sa.inspect(user).persistent, "data": data}

        config.add_route("add_then_read", "/add-then-read")
        config.add_view(add_then_read, route_name="add_then_read", renderer="json")

    app = session_app(UserSession, configure=configure)
    app.post_json("/set", {"a": 1})
    with app.count() as sql:
        assert app.get("/add-then-read").json == {"flushed": True, "data": {"a": 1}}
    assert sql.kinds() == ["INSERT", "SELECT"], sql.statements


class Reconstructed:
    """A mixin whose ``@reconstructor`` the ORM calls on every instance it loads."""

    @reconstructor
    def _loaded(self):
        self.loaded_by_orm = True


class Deferred:
    """A mixin with a deferred column: loaded on first access, by the ORM."""

    note: Mapped[str | None] = mapped_column(sa.String(20), default="noted", deferred=True)


class EagerBase(DeclarativeBase):
    pass


class Owner(EagerBase):
    __tablename__ = f"direct_load_owners_{SUFFIX}"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)


class EagerSession(BaseMixin, EagerBase):
    """A model whose relationship is loaded with the row (``lazy="joined"``)."""

    __tablename__ = f"direct_load_eager_{SUFFIX}"
    owner_id: Mapped[int | None] = mapped_column(sa.ForeignKey(Owner.id), default=None)
    owner: Mapped[Owner | None] = relationship(lazy="joined")


@pytest.mark.parametrize("kind", ["reconstructor", "deferred", "joined"])
def test_a_model_the_direct_load_cannot_serve_loads_through_get(session_app, orm_queries, kind):
    """A load event, a deferred column or an eager relationship: the ORM's ``get`` loads it."""

    def configure(config):
        def inspect_row(request):
            row = request.session.row
            return {
                "loaded_by_orm": getattr(row, "loaded_by_orm", False),
                "note": getattr(row, "note", None),
                "data": dict(request.session),
            }

        config.add_route("inspect_row", "/inspect-row")
        config.add_view(inspect_row, route_name="inspect_row", renderer="json")

    if kind == "reconstructor":
        model = make_model(Reconstructed)
    elif kind == "deferred":
        model = make_model(Deferred)
    else:
        model = EagerSession
    app = session_app(model, configure=configure)
    app.post_json("/set", {"a": 1})
    orm_queries.clear()
    seen = app.get("/inspect-row").json
    assert seen["data"] == {"a": 1}
    assert orm_queries, "the row was not loaded by the ORM's get"
    if kind == "reconstructor":
        assert seen["loaded_by_orm"] is True
    if kind == "deferred":
        assert seen["note"] == "noted"
    if kind == "joined":
        assert "JOIN" in orm_queries[0].upper()


def test_a_loaded_as_persistent_listener_sees_the_row(session_app):
    """The ORM's loading sends ``loaded_as_persistent``: with a listener, ``get`` loads the row."""
    model = make_model()
    loaded = []

    def record(session, instance):
        if isinstance(instance, model):
            loaded.append(instance.id)

    app = session_app(model)
    app.post_json("/set", {"a": 1})
    event.listen(OrmSession, "loaded_as_persistent", record)
    try:
        assert app.get("/read").json["data"] == {"a": 1}
    finally:
        event.remove(OrmSession, "loaded_as_persistent", record)
    assert loaded == [app.row().id]
