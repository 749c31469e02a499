"""A stand-in for ``pyramid_sqlalchemy_sessions.config.settings`` (see ``__init__.py``).

``request.session.settings``: the global value of a setting, or the session's
own column for the features of a ``Config...Mixin``; editable for a new session
only, saved with ``save()``. Python 3.6 code.
"""

from collections.abc import MutableMapping

from ..exceptions import SettingsError
from ..util import int_now
from . import RUNTIME_SETTINGS


class SessionSetting:
    """A setting kept in the session's own column."""

    def __init__(self, name):
        self.name = name

    def __get__(self, settings, owner=None):
        return settings._dirty.get(self.name, getattr(settings.session._session, self.name))

    def __set__(self, settings, value):
        if settings._locked:
            raise SettingsError("Put settings in editable mode to change it.")
        settings._dirty[self.name] = value


class FixedSetting(SessionSetting):
    """A setting of the factory, the same for every session."""

    def __get__(self, settings, owner=None):
        return getattr(settings.session, "_" + self.name)

    def __set__(self, settings, value):
        raise SettingsError("The setting is not configurable at runtime.")


class IdleTimeoutSetting(SessionSetting):
    """A session's own idle timeout: its expiry moves with it."""

    def __set__(self, settings, value):
        super().__set__(settings, value)
        settings._dirty["idle_expire"] = None if value is None else int_now() + value


class SessionSettings(MutableMapping):
    def __init__(self, session):
        self.session = session
        self._dirty = {}
        self._locked = True

    def __enter__(self):
        self.edit()
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        if not exc_value:
            self.save()

    def edit(self):
        if not self.session.new:
            raise SettingsError("Settings can be changed only for a new session.")
        self._locked = False

    def save(self):
        for name, value in self._dirty.items():
            setattr(self.session._session, name, value)
        self._dirty.clear()
        self._locked = True

    def discard(self):
        self._dirty.clear()
        self._locked = True

    def __getitem__(self, key):
        if key not in RUNTIME_SETTINGS:
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key, value):
        if key not in RUNTIME_SETTINGS:
            raise KeyError(key)
        setattr(self, key, value)

    def __delitem__(self, key):
        raise NotImplementedError("Mapping size is fixed.")

    def __iter__(self):
        return iter(RUNTIME_SETTINGS)

    def __len__(self):
        return len(RUNTIME_SETTINGS)


def _fixed(*names):
    return {name: FixedSetting(name) for name in names}


def _own(*names):
    return {name: SessionSetting(name) for name in names}


_BaseSettings = type("_BaseSettings", (), _fixed(*RUNTIME_SETTINGS))
_ConfigCookieSettings = type(
    "_ConfigCookieSettings",
    (),
    _own("cookie_max_age", "cookie_path", "cookie_domain", "cookie_secure", "cookie_httponly"),
)
_ConfigIdleSettings = type(
    "_ConfigIdleSettings",
    (),
    dict(
        _own("extension_delay", "extension_chance", "extension_deadline"),
        idle_timeout=IdleTimeoutSetting("idle_timeout"),
    ),
)
_ConfigAbsoluteSettings = type("_ConfigAbsoluteSettings", (), _own("absolute_timeout"))
_ConfigRenewalSettings = type(
    "_ConfigRenewalSettings", (), _own("renewal_timeout", "renewal_try_every")
)
