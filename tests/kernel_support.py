"""Helpers shared by the kernel's tests (not a test module)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import webtest
from pyramid.config import Configurator
from pyramid.interfaces import ISessionFactory

from sessions_kernel import events
from sessions_kernel.crypto import encode_payload
from sessions_kernel.testing import add_dbsession, add_test_views


def table_name(suffix: str = "") -> str:
    """A table name private to this process (tests of several processes share servers)."""
    return f"sessions_{os.getpid()}{suffix}"


def factory_of(app: Any) -> Any:
    """The session factory registered in a test application."""
    return app.wsgi.registry.queryUtility(ISessionFactory)


def cookie_for(factory: Any, token: bytes, extras: Mapping[str, bytes] | None = None) -> str:
    """The cookie value ``factory`` would send for ``token``."""
    return factory.serializer.dumps(encode_payload(token, dict(extras or {})))


def set_cookies(response: Any) -> list[str]:
    return response.headers.getall("Set-Cookie")


def install_distribution(
    path: Path,
    name: str,
    entry_points: Mapping[str, str],
    modules: Mapping[str, str] | None = None,
    version: str = "1.0",
) -> None:
    """Write an installed distribution (a ``*.dist-info`` folder) with session plugins.

    ``entry_points`` maps entry-point names to module names in the group
    ``sessions_kernel.plugins``; ``modules`` maps module names to source
    written beside it. Put ``path`` on ``sys.path`` (``monkeypatch.syspath_prepend``)
    for importlib.metadata to find it.
    """
    info = path / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = ["[sessions_kernel.plugins]", *(f"{k} = {v}" for k, v in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in (modules or {}).items():
        (path / f"{module}.py").write_text(source)
        sys.modules.pop(module, None)


class EventLog(list):
    """Collects session events; ``configure`` subscribes it in a real application."""

    def configure(self, config: Configurator) -> None:
        config.add_subscriber(self.append, events.SessionEvent)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self if isinstance(e, kind)]


def make_included_app(
    engine: sa.Engine,
    settings: Mapping[str, Any],
    configure: Callable[[Configurator], None] | None = None,
    *,
    retry: bool = False,
) -> webtest.TestApp:
    """An application configured the way users do it: ini-style settings and
    ``config.include('sessions_kernel')`` (pyramid_tm, ``request.dbsession``, and
    pyramid_retry with ``retry``)."""
    with Configurator(settings=dict(settings)) as config:
        config.include("pyramid_tm")
        if retry:
            config.include("pyramid_retry")
        add_dbsession(config, engine)
        config.include("sessions_kernel")
        add_test_views(config)
        if configure is not None:
            configure(config)
        return webtest.TestApp(config.make_wsgi_app())
