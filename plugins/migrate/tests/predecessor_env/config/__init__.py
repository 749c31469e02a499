"""A stand-in for ``pyramid_sqlalchemy_sessions.config``, which its 0.1.0 wheel lacks.

Written for sessions-migrate's tests, not copied: the wheel that PyPI serves as
pyramid_sqlalchemy_sessions 0.1.0 leaves out its ``config`` subpackage (its
``setup.py`` lists only the top package), so ``import pyramid_sqlalchemy_sessions``
fails as published. ``tests/predecessor.py`` installs this folder in its place,
in the throwaway Pyramid 1 environment only. It gives what the real modules
import from it: the defaults of the configuration guide, the secret key turned
into the library's own ``AESGCMBytestore``, the detection of the model's mixins
and the settings object (``config/settings.py``). Everything that makes cookies
and rows (``session.py``, ``serializer.py``, ``model.py``) is the library's own
code from the wheel. Validation of setting values is left out: the tests pass
valid ones. Python 3.6 code.
"""

import base64
import os

from ..exceptions import ConfigurationError
from ..model import (
    AbsoluteMixin,
    BaseMixin,
    ConfigAbsoluteMixin,
    ConfigCookieMixin,
    ConfigIdleMixin,
    ConfigRenewalMixin,
    CSRFMixin,
    IdleMixin,
    RenewalMixin,
    UseridMixin,
)
from ..serializer import AESGCMBytestore

# the "Configuration settings reference" of the library's guide
DEFAULTS = {
    "dbsession_name": "dbsession",
    "cookie_name": "session",
    "cookie_max_age": None,
    "cookie_path": "/",
    "cookie_domain": None,
    "cookie_secure": False,
    "cookie_httponly": True,
    "idle_timeout": None,
    "absolute_timeout": None,
    "renewal_timeout": None,
    "renewal_try_every": 5,
    "extension_delay": None,
    "extension_chance": 100,
    "extension_deadline": 1,
}

RUNTIME_SETTINGS = tuple(name for name in DEFAULTS if name not in ("dbsession_name", "cookie_name"))

_INTEGERS = (
    "cookie_max_age",
    "idle_timeout",
    "absolute_timeout",
    "renewal_timeout",
    "renewal_try_every",
    "extension_delay",
    "extension_chance",
    "extension_deadline",
)


def get_config_defaults():
    return dict(DEFAULTS)


def generate_secret_key(size=32):
    return base64.urlsafe_b64encode(os.urandom(size)).decode("ascii")


def factory_args_from_settings(settings, maybe_dotted, prefix="session."):
    args = {name: settings.get(prefix + name, default) for name, default in DEFAULTS.items()}
    for name in ("secret_key", "model_class"):
        if prefix + name not in settings:
            raise ConfigurationError(f"Required setting is missing: {name}")
    secret = base64.urlsafe_b64decode(settings[prefix + "secret_key"].encode("ascii"))
    args["serializer"] = AESGCMBytestore(secret=secret)
    args["model_class"] = maybe_dotted(settings[prefix + "model_class"])
    return args


def _integer(value):
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return None
    return int(value)


def _process_factory_args(args):
    """The factory's settings with the features the model's mixins turn on."""
    s = args
    for name in _INTEGERS:
        s[name] = _integer(s[name])
    for name in ("cookie_secure", "cookie_httponly"):
        if isinstance(s[name], str):
            s[name] = s[name].lower() in ("true", "yes", "on", "1")
    cls = s["model_class"]
    if not issubclass(cls, BaseMixin):
        raise ConfigurationError("Model should inherit from BaseMixin for the session to work.")
    s["enable_userid"] = issubclass(cls, UseridMixin)
    s["enable_csrf"] = issubclass(cls, CSRFMixin)
    s["enable_configcookie"] = issubclass(cls, ConfigCookieMixin)
    # None: the feature is off; False: on with the global setting; True: per session
    for mixin, config_mixin, flag, timeout in (
        (RenewalMixin, ConfigRenewalMixin, "config_renewal", "renewal_timeout"),
        (IdleMixin, ConfigIdleMixin, "config_idle", "idle_timeout"),
        (AbsoluteMixin, ConfigAbsoluteMixin, "config_absolute", "absolute_timeout"),
    ):
        if issubclass(cls, mixin):
            s[flag] = issubclass(cls, config_mixin)
        elif s[timeout] is not None:
            raise ConfigurationError(f"{timeout} is set but the model lacks {mixin.__name__}")
        else:
            s[flag] = None
    # the model's hybrid properties read the global timeouts from the plain mixins
    IdleMixin.idle_timeout = s["idle_timeout"]
    AbsoluteMixin.absolute_timeout = s["absolute_timeout"]
    return s
