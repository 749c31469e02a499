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
# Types of documented parameters beside their text, return types unless None; the
# signature shows the rest (no "Parameters: x (Any)" lists without text)
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"members": True, "show-inheritance": False}
nitpicky = False
intersphinx_mapping = {}
exclude_patterns = ["_build"]
# Furo: system fonts and its own bundled CSS and JS only, so the built pages load
# nothing from the network. No public repository is named anywhere in the project,
# so no "edit this page" link; viewcode's [source] links show the modules' code.
html_theme = "furo"
html_title = f"{project} {release}"
html_short_title = project
html_static_path = ["_static"]
# _static/sessions.css: a wider content column for the 100-column examples, tables
html_css_files = ["sessions.css"]
html_copy_source = False
html_show_sourcelink = False
html_theme_options = {
    "navigation_with_keys": True,
    "top_of_page_buttons": [],
}
# The hook specifications are documented from their docstrings; their forward
# references (Session, Setting) are shown as written.
suppress_warnings = ["ref.python"]


def setup(app):  # type: ignore[no-untyped-def]
    """``.. autofixture::``: a pytest fixture, shown by name with its docstring.

    autodoc's ``autofunction`` would show the fixture function's own arguments
    (the fixtures it depends on), which is not how a test uses it.
    """
    from sphinx.ext.autodoc import FunctionDocumenter

    class FixtureDocumenter(FunctionDocumenter):
        objtype = "fixture"
        directivetype = "data"
        priority = -1  # only where a page asks for it

        @classmethod
        def can_document_member(cls, member, membername, isattr, parent):  # type: ignore[no-untyped-def]
            return False

        def format_signature(self, **kwargs):  # type: ignore[no-untyped-def]
            return ""

        def add_directive_header(self, sig):  # type: ignore[no-untyped-def]
            super().add_directive_header(sig)
            self.add_line("   :annotation: (pytest fixture)", self.get_sourcename())

    app.setup_extension("sphinx.ext.autodoc")
    app.add_autodocumenter(FixtureDocumenter)
