"""Server-side sessions for Pyramid, stored in your SQL database, extended by plugins."""

from __future__ import annotations

import pluggy

from .crypto import AESGCMCookieSerializer, generate_secret_key
from .errors import (
    ConfigurationError,
    InconsistentDataError,
    SessionConflictError,
    SessionError,
    SettingsError,
)
from .factory import (
    SessionFactory,
    SessionInfo,
    factory_args_from_settings,
    includeme,
    session_factory,
)
from .hookspecs import PROJECT, hookspec
from .maintenance import add_indexes
from .model import BaseMixin, BlobType
from .session import Peek, Session
from .settings import SessionSettings, Setting
from .stash import Stash, StashKey

#: Mark a plugin's hook implementations: ``@sessions_kernel.hookimpl``. Hooks a plugin
#: offers other plugins are marked ``@sessions_kernel.hookspec`` (see ``session_addhooks``).
hookimpl = pluggy.HookimplMarker(PROJECT)

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
    "session_factory",
]
