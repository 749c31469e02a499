"""``session_details``: plugins add what a listing shows of a row to ``SessionInfo.details``."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from kernel_support import factory_of
from sqlalchemy.orm import Mapped, mapped_column

from sessions_kernel import SessionError, hookimpl
from sessions_kernel.testing import make_model


class LabelMixin:
    label: Mapped[str | None] = mapped_column(sa.String(20), nullable=True)


class LabelPlugin:
    def __init__(self, key: str = "label_text") -> None:
        self.key = key

    @hookimpl
    def session_mixins(self):
        return [LabelMixin]

    @hookimpl
    def session_persist(self, session, row):
        row.label = "from persist"

    @hookimpl
    def session_details(self, row, settings):
        return {self.key: row.label}


class QuietPlugin:
    """Active, implements the hook, reports nothing."""

    @hookimpl
    def session_mixins(self):
        return [LabelMixin]

    @hookimpl
    def session_details(self, row):
        return None


def test_details_merge_every_plugins_answer_without_sql(session_app):
    app = session_app(make_model(LabelMixin), plugins=[LabelPlugin(), QuietPlugin()])
    app.post_json("/set", {"a": 1})
    row = app.row()
    with app.count() as sql:
        info = factory_of(app).describe(row)
    assert sql.count == 0
    assert dict(info.details) == {"label_text": "from persist"}
    with pytest.raises(TypeError):
        info.details["other"] = 1  # read-only
    hash(info)  # still hashable: details are left out of the hash


def test_without_implementations_details_are_empty(session_app):
    app = session_app(make_model())
    app.post_json("/set", {"a": 1})
    assert dict(factory_of(app).describe(app.row()).details) == {}


class OtherLabelPlugin(LabelPlugin):
    """A second plugin that picked the same detail name."""


def test_two_plugins_reporting_one_key_is_an_error(session_app):
    app = session_app(make_model(LabelMixin), plugins=[LabelPlugin(), OtherLabelPlugin()])
    app.post_json("/set", {"a": 1})
    with pytest.raises(SessionError, match=r"'label_text'.*prefix its detail names"):
        factory_of(app).describe(app.row())
