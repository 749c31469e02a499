"""``sessions-views``: a plugin that configures Pyramid for the application (session_includeme).

The application installs it, lists :class:`ViewsMixin` among its model's
bases and includes ``sessions_kernel`` as usual; it never includes this
module. The plugin then gives it

* the view predicate ``session_has="cart"``: the view is used only when the
  session holds that key;
* the request method ``request.peek_session()``: the request's session as
  :meth:`SessionFactory.peek <sessions_kernel.SessionFactory.peek>` sees it,
  without using it (a status poll that must not count as activity).

Its distribution declares the entry point
``views = "sessions_views"`` in the group ``sessions_kernel.plugins``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sessions_kernel import Peek, SessionFactory, hookimpl

if TYPE_CHECKING:
    from pyramid.config import Configurator
    from pyramid.request import Request


class ViewsMixin:
    """Activates the plugin; adds no column."""


class SessionHas:
    """View predicate ``session_has=<key>``: true when the session holds that key."""

    def __init__(self, key: str, config: Configurator) -> None:
        self.key = key

    def text(self) -> str:
        return f"session_has = {self.key!r}"

    phash = text

    def __call__(self, context: Any, request: Request) -> bool:
        return self.key in request.session


@hookimpl
def session_mixins() -> list[type]:
    return [ViewsMixin]


@hookimpl
def session_includeme(config: Configurator, factory: SessionFactory) -> None:
    config.add_view_predicate("session_has", SessionHas)

    def peek_session(request: Request) -> Peek:
        return factory.peek(request)

    config.add_request_method(peek_session)
