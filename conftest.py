"""Checks over the whole test run (every test directory): no log line shows the kit's key.

Every test application uses the testing kit's key unless it makes its own, so a
log record that holds it, in any form (its text, its raw bytes as Python, hex
or base64 would print them), is the kernel or a plugin logging key material.
``tests/test_key_material.py`` checks everything else the kernel emits.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator

import pytest


def _forms(key: str) -> list[str]:
    raw = base64.urlsafe_b64decode(key)
    return [key.rstrip("="), repr(raw)[2:-1], raw.hex(), base64.b64encode(raw).decode()[:40]]


class _KeyScan(logging.Handler):
    """A handler on the root logger that notes every record showing one of ``forms``."""

    def __init__(self, forms: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.forms = forms
        self.leaks: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a record that cannot be formatted is not ours to judge
            return
        if any(form in text for form in self.forms):
            self.leaks.append(text[:300])


@pytest.fixture(scope="session", autouse=True)
def no_log_line_shows_the_kits_key() -> Iterator[None]:
    from sessions_kernel.testing import TEST_SECRET_KEY

    scan = _KeyScan(_forms(str(TEST_SECRET_KEY)))
    root = logging.getLogger()
    root.addHandler(scan)
    try:
        yield
    finally:
        root.removeHandler(scan)
    assert not scan.leaks, f"log records show the kit's key: {scan.leaks[:3]}"
