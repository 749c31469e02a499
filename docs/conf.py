"""Sphinx configuration; `make docs` builds with warnings as errors."""

from importlib.metadata import version as _version

project = "sessions_kernel"
author = "The sessions_kernel authors"
copyright = "2026, " + author
release = _version("sessions-kernel")
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": False}
nitpicky = False
intersphinx_mapping = {}
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
# The hook specifications are documented from their docstrings; their forward
# references (Session, Setting) are shown as written.
suppress_warnings = ["ref.python"]
