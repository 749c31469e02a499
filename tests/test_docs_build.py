"""`make docs`: the Sphinx build has no warning, and what it renders reads as intended."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build of docs/ as `make docs` runs it (warnings are errors), into a tmp dir."""
    out = tmp_path_factory.mktemp("html")
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    result = subprocess.run(
        [*command, "-d", str(out / ".doctrees"), str(ROOT / "docs"), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    # -W: a Sphinx warning fails the build (Python's own warnings, such as a library's
    # DeprecationWarning on import, are not Sphinx's and do not)
    assert result.returncode == 0, result.stderr
    assert "WARNING:" not in result.stderr, result.stderr
    return out


def test_every_page_is_built_with_furo(built: Path) -> None:
    pages = {p.stem for p in (ROOT / "docs").glob("*.rst")}
    assert pages <= {p.stem for p in built.glob("*.html")}
    for page in pages:
        assert "furo" in (built / f"{page}.html").read_text(), page


def test_pages_load_nothing_from_the_network(built: Path) -> None:
    for page in built.glob("*.html"):
        html = page.read_text()
        for tag in re.findall(r"<(?:link|script|img)\b[^>]*>", html):
            assert not re.search(r'(?:src|href)="(?:https?:)?//', tag), (page.name, tag)


def test_hook_order_table_keeps_each_row_whole(built: Path) -> None:
    """A row whose first cell spans two lines is one row, not two halves."""
    html = (built / "hooks.html").read_text()
    table = html.split("The order in which the kernel calls them", 1)[1].split("</table>", 1)[0]
    first_cells = [
        " ".join(re.sub(r"<[^>]+>", "", cell).split())
        for cell in re.findall(r"<tr[^>]*>\s*<t[dh][^>]*>(.*?)</t[dh]>", table, re.S)
    ]
    assert "the application includes the kernel" in first_cells
    assert "first use of request.session" in first_cells
    assert "includes the kernel" not in first_cells and "request.session" not in first_cells


def test_toctree_puts_getting_started_first_and_the_reference_last(built: Path) -> None:
    html = (built / "index.html").read_text()
    sidebar = html.split('class="sidebar-tree"', 1)[1].split("</div>", 1)[0]
    order = re.findall(r'href="([\w-]+)\.html"', sidebar)
    assert order[0] == "getting-started"
    assert order[-2:] == ["hooks", "api"]
