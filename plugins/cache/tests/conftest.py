"""The fixture sessions-cache's test modules share."""

from __future__ import annotations

import pytest
import sessions_cache
from test_cache import STALENESS


@pytest.fixture
def apps(session_app):
    """``apps(model, settings=None, **options)``: a test app of a model with CacheMixin, with
    ``cache_max_staleness`` (SQLite and MariaDB need it); its listener stopped after the test."""
    made = []

    def build(model, settings=None, **kwargs):
        app = session_app(model, {**STALENESS, **(settings or {})}, **kwargs)
        made.append(app)
        return app

    yield build
    for app in made:
        sessions_cache.stop(app.factory)
