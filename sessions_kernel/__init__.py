"""Server-side sessions for Pyramid, stored in your SQL database, extended by plugins."""

from __future__ import annotations

import importlib.metadata
from typing import Any

from . import factory, outage
from .changes import RowChanges
from .crypto import AESGCMCookieSerializer, generate_secret_key
from .deprecation import SessionsDeprecationWarning
from .errors import (
    ConfigurationError,
    InconsistentDataError,
    SessionConflictError,
    SessionError,
    SessionTooLargeError,
    SettingsError,
)
from .factory import (
    SessionFactory,
    SessionInfo,
    factory_args_from_settings,
    register_factory,
    session_factory,
)
from .hookspecs import hookimpl, hookspec
from .maintenance import add_ddl, add_indexes
from .model import BaseMixin, BlobType
from .peek import Peek
from .session import Session
from .settings import SessionSettings, Setting
from .stash import Stash, StashKey

try:
    #: The installed distribution's version (``pyproject.toml`` is the one place it is
    #: written); ``psessions new-plugin`` requires ``sessions-kernel>=`` its major.minor.
    __version__ = importlib.metadata.version("sessions-kernel")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a checkout on sys.path
    __version__ = "0+unknown"


def includeme(config: Any) -> None:
    """``config.include("sessions_kernel")``: the session factory, and clean outages.

    Sets the session factory from the ``session.*`` settings
    (``sessions_kernel.factory.includeme``: the installed plugins found, those the
    model activates kept, every setting validated, the factory registered with
    :func:`register_factory`), then includes :mod:`sessions_kernel.outage`: a
    database restart or a lost connection is run again by pyramid_retry where
    that is safe, and answered 503 with ``Retry-After`` otherwise. The setting
    ``sessions_kernel.outage_tween = false`` leaves the latter out.
    """
    factory.includeme(config)
    outage.include_by_default(config)


__all__ = [
    "AESGCMCookieSerializer",
    "BaseMixin",
    "BlobType",
    "ConfigurationError",
    "InconsistentDataError",
    "Peek",
    "RowChanges",
    "Session",
    "SessionConflictError",
    "SessionError",
    "SessionFactory",
    "SessionInfo",
    "SessionSettings",
    "SessionTooLargeError",
    "SessionsDeprecationWarning",
    "Setting",
    "SettingsError",
    "Stash",
    "StashKey",
    "add_ddl",
    "add_indexes",
    "factory_args_from_settings",
    "generate_secret_key",
    "hookimpl",
    "hookspec",
    "includeme",
    "register_factory",
    "session_factory",
]
