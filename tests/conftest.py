"""Fixtures of the kernel's tests: the example plugin installed through an entry point."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from concurrency_support import MERGING_LEVELS, level_id, make_engine
from kernel_support import EventLog, install_distribution


@pytest.fixture
def example_plugin(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Install ``plugin_example`` as the entry point ``example`` of a temporary
    distribution ``sessions-example-plugin``, for this test only."""
    import plugin_example

    install_distribution(
        tmp_path / "site", "sessions-example-plugin", {"example": "plugin_example"}
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    plugin_example.CALLS.clear()
    return plugin_example


@pytest.fixture
def log() -> EventLog:
    """Every session event a test application sends (``log.configure(config)``)."""
    return EventLog()


@pytest.fixture(params=MERGING_LEVELS, ids=level_id)
def merging_engine(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    """An engine on each database and isolation level where a lost write is merged."""
    engine = make_engine(*request.param, tmp_path)
    yield engine
    engine.dispose()
