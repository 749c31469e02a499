"""Fixtures of the kernel's tests: the example plugin installed through an entry point."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
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
