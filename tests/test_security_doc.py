"""docs/security.rst names a test for every defence: each one it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_the_security_page_names_exists():
    text = (ROOT / "docs" / "security.rst").read_text()
    named, missing, last = 0, [], None
    # ``tests/test_x.py``, ``tests/test_x.py::test_y`` and ``::test_z`` (in the last file named)
    for match in re.finditer(r"``((?:[\w/]+\.py)?)(?:::(\w+))?``", text):
        path, name = match.group(1), match.group(2)
        if path:
            last = path
            if not (ROOT / path).exists():
                missing.append(path)
        if name:
            named += 1
            source = (ROOT / (path or last)).read_text()
            if not re.search(rf"^def {name}\(", source, re.M):
                missing.append(f"{path or last}::{name}")
    assert named > 30  # the pattern finds them
    assert missing == []
