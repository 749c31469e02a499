"""Server-side sessions for Pyramid, stored in your SQL database, extended by plugins."""

from __future__ import annotations

from .crypto import AESGCMCookieSerializer, generate_secret_key
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
    includeme,
    register_factory,
    session_factory,
)
from .hookspecs import hookimpl, hookspec
from .maintenance import add_indexes
from .model import BaseMixin, BlobType
from .session import Peek, Session
from .settings import SessionSettings, Setting
from .stash import Stash, StashKey

__all__ = [
    "AESGCMCookieSerializer",
    "BaseMixin",
    "BlobType",
    "ConfigurationError",
    "InconsistentDataError",
    "Peek",
    "Session",
    "SessionConflictError",
    "SessionError",
    "SessionFactory",
    "SessionInfo",
    "SessionSettings",
    "SessionTooLargeError",
    "Setting",
    "SettingsError",
    "Stash",
    "StashKey",
    "add_indexes",
    "factory_args_from_settings",
    "generate_secret_key",
    "hookimpl",
    "hookspec",
    "includeme",
    "register_factory",
    "session_factory",
]
