"""Session factories: by hand with :func:`session_factory`, or from ini settings."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn, cast

import pluggy
from pyramid.csrf import LegacySessionCSRFStoragePolicy
from pyramid.events import ApplicationCreated, NewResponse
from pyramid.interfaces import (
    PHASE3_CONFIG,
    ICSRFStoragePolicy,
    IDefaultCSRFOptions,
    IExecutionPolicy,
    ISessionFactory,
)
from webob.cookies import make_cookie
from zope.interface import implementedBy

from .changes import watch_orm_writes
from .crypto import AESGCMCookieSerializer, SecretKeys, derive_keys
from .deprecation import warn_once
from .errors import ConfigurationError, MissingSessionMethodError, SessionError
from .merge import MergeRule
from .model import KERNEL_COLUMNS, model_table
from .peek import Peek, peek
from .pipeline import no_implementation as _no_implementation
from .plugins import FactoryConfig, ObservedPluginManager, PluginInfo
from .serializers import PickleSerializer
from .session import PLUGIN_ATTRIBUTES, RESERVED_ATTRIBUTES, Session
from .storage import RowStorage

if TYPE_CHECKING:
    from pyramid.config import Configurator
    from pyramid.request import Request

    from .changes import RowChanges

__all__ = [
    "SessionFactory",
    "SessionInfo",
    "factory_args_from_settings",
    "includeme",
    "register_factory",
    "session_factory",
]

SETTINGS_PREFIX = "session."
#: The category of the factory's introspectable (see :func:`register_factory`).
INTROSPECTION_CATEGORY = "sessions_kernel"
#: The kernel's settings that make the cookie's attributes.
COOKIE_SETTINGS = frozenset(
    {
        "cookie_max_age",
        "cookie_path",
        "cookie_domain",
        "cookie_secure",
        "cookie_httponly",
        "cookie_samesite",
    }
)
log = logging.getLogger("sessions_kernel")


@dataclass(frozen=True)
class SessionInfo:
    """A stored session as listings show it; see :meth:`SessionFactory.describe`.

    The times are given twice: as whole seconds since the epoch (``created``,
    ``last_active``, ``expires``), as stored and compared, and as timezone-aware
    UTC :class:`~datetime.datetime` values for display (``created_at``,
    ``last_active_at``, ``expires_at``), ``None`` where the seconds are.
    """

    #: the row key (SHA-256 of the cookie's token): safe to show and log
    session_id: str
    #: when the session was created, in seconds since the epoch
    created: int
    #: the latest activity any part of the system recorded, in seconds since the epoch
    last_active: int
    #: when the session expires, in seconds since the epoch, or ``None`` if no active
    #: feature expires it
    expires: int | None
    #: what the active plugins report of the row (``session_details``), read-only
    details: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    @property
    def created_at(self) -> datetime:
        """``created`` as a timezone-aware UTC datetime."""
        return _utc(self.created)

    @property
    def last_active_at(self) -> datetime:
        """``last_active`` as a timezone-aware UTC datetime."""
        return _utc(self.last_active)

    @property
    def expires_at(self) -> datetime | None:
        """``expires`` as a timezone-aware UTC datetime; ``None`` if the session never expires."""
        return None if self.expires is None else _utc(self.expires)


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


#: The hooks the request path calls through :class:`RequestHooks`.
REQUEST_STAGES = (
    "session_load",
    "session_validate",
    "session_extend",
    "session_renew",
    "session_persist",
    "session_cookie_attributes",
    "session_regenerated",
    "session_invalidated",
    "session_row_lookup",
    "session_rows_changed",
    "session_fallback_token",
)


class RequestHooks:
    """The factory's hook relay as the request path calls it: ``factory.stages.session_load(...)``.

    Each attribute is pluggy's own :class:`~pluggy.HookCaller` of that hook
    (so hook call monitoring, tracing, blocked plugins and ``HookCallError``
    apply), except while no plugin implements the hook: then it is a no-op
    and pluggy's dispatch is skipped. Which it is is decided when the
    factory is built, and again whenever the factory's plugin manager
    registers or unregisters a plugin (blocking one included) or adds hook
    specifications, so a plugin registered later takes part (or a blocked
    one stops) from the next call on, and a request reads a plain attribute.
    """

    __slots__ = ("_hook", *REQUEST_STAGES)

    session_load: Callable[..., Any]
    session_validate: Callable[..., Any]
    session_extend: Callable[..., Any]
    session_renew: Callable[..., Any]
    session_persist: Callable[..., Any]
    session_cookie_attributes: Callable[..., Any]
    session_regenerated: Callable[..., Any]
    session_invalidated: Callable[..., Any]
    session_row_lookup: Callable[..., Any]
    session_rows_changed: Callable[..., Any]
    session_fallback_token: Callable[..., Any]

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._hook = pm.hook
        self.refresh()
        if isinstance(pm, ObservedPluginManager):
            pm.on_change(self.refresh)

    def refresh(self) -> None:
        """Decide again, for each stage, between pluggy's caller and the no-op."""
        for name in REQUEST_STAGES:
            caller = getattr(self._hook, name)
            setattr(self, name, caller if caller.get_hookimpls() else _no_implementation)


class SessionFactory:
    """A Pyramid session factory: ``factory(request)`` returns the request's session.

    Build one with :func:`session_factory`. ``config`` holds what was resolved
    at start-up: the model, the active plugins and the settings in force.
    """

    def __init__(self, config: FactoryConfig) -> None:
        self.config = config
        values = config.values
        self.model = config.model
        self.hook = config.hook
        #: the per-request hooks: pluggy's callers, no-ops while no plugin implements them
        self.stages = RequestHooks(config.pm)
        self.clock = values["clock"]
        self.cookie_name = values["cookie_name"]
        self.dbsession_name = values["dbsession_name"]
        self.data_serializer = values["data_serializer"]
        self.max_data_size = values["max_data_size"]
        if isinstance(self.data_serializer, PickleSerializer):
            log.warning(
                "session.data_serializer = pickle: whoever can write to the table %s (a SQL "
                "injection anywhere in the application, another application's database "
                "user, a restored backup) can run code in this application when a session "
                "is read; keep json unless you trust every writer",
                model_table(config.model).name,
            )
        self.serializer = values["serializer"] or AESGCMCookieSerializer(
            values["secret_key"],
            cookie_name=self.cookie_name,
            accept_unbound_until=values["accept_unbound_cookies_until"],
            clock=self.clock,
        )
        #: the cookie's name before a rename (``cookie_previous_name``): still read
        self.previous_cookie_name: str | None = values["cookie_previous_name"]
        #: the serializer of cookies of that name (each built-in cookie is bound to its name)
        self.previous_serializer = (
            values["serializer"]
            or AESGCMCookieSerializer(
                values["secret_key"],
                cookie_name=self.previous_cookie_name,
                accept_unbound_until=values["accept_unbound_cookies_until"],
                clock=self.clock,
            )
            if self.previous_cookie_name is not None
            else None
        )
        #: the serializer with the first key only, when there are several: a cookie it
        #: cannot read but the serializer can was made with an older key, and is sent
        #: again made with the first (so that old keys can be retired)
        self.primary_serializer = _primary_serializer(self.serializer)
        # derived_keys(), per (label, length)
        self._derived: dict[tuple[bytes, int], SecretKeys] = {}
        self.default_cookie_attributes = {
            "max_age": values["cookie_max_age"],
            "path": values["cookie_path"],
            "domain": values["cookie_domain"],
            "secure": values["cookie_secure"],
            "httponly": values["cookie_httponly"],
            "samesite": values["cookie_samesite"],
        }
        self._cookie_settings_configurable = bool(config.configurable & COOKIE_SETTINGS)
        # Set-Cookie values after the cookie's value, per set of attributes (see cookie_header)
        self._cookie_suffixes: dict[tuple[Any, ...], str] = {}
        self.session_class = _session_class(config)
        #: column -> (its group, the rule): how plugins' columns merge (``session_merge_rules``)
        self.merge_rules = _merge_rules(config)
        #: the SQL of the rows: fetch, insert, update and merge, delete (:mod:`.storage`)
        self.storage = RowStorage(
            self.model,
            self.data_serializer,
            self.merge_rules,
            clock=self.clock,
            lock_contended_for=values["lock_contended_for"],
            max_data_size=values["max_data_size"],
            setting_columns=config.configurable,
        )
        #: columns whose write may give way to a concurrent one (``merge.droppable``)
        self.droppable_columns = self.storage.droppable_columns
        if self.observed:  # the application's own ORM writes of the rows are told too
            watch_orm_writes(self)

    def __call__(self, request: Request) -> Session:
        return self.session_class(request, self)

    @property
    def observed(self) -> bool:
        """Whether a plugin listens to committed changes (``session_rows_changed``) or
        serves rows (``session_row_lookup``): the kernel records what each transaction
        changes only then."""
        stages = self.stages
        return not (
            stages.session_rows_changed is _no_implementation
            and stages.session_row_lookup is _no_implementation
        )

    def announce(self, changes: RowChanges) -> None:
        """Tell the plugins that ``changes`` are committed (``session_rows_changed``)."""
        self.stages.session_rows_changed(factory=self, changes=changes)

    @property
    def static_cookie_attributes(self) -> Mapping[str, Any] | None:
        """The cookie's attributes when nothing per session can change them, else ``None``.

        That is, with no runtime-configurable cookie setting and no
        ``session_cookie_attributes`` implementation (a plugin registered
        later may bring one): the settings' attributes, made once instead of
        read from the settings on every response.
        """
        if self._cookie_settings_configurable or self.stages.session_cookie_attributes is not (
            _no_implementation
        ):
            return None
        return self.default_cookie_attributes

    def cookie_header(self, value: str, attributes: Mapping[str, Any]) -> str:
        """The ``Set-Cookie`` value that sets the cookie: what ``response.set_cookie`` makes.

        Without ``max_age`` (whose ``expires`` is the time of the response)
        everything after the value depends only on the attributes, so it is
        made once per set of attributes and kept (a few sets at most: the
        attributes come from settings).
        """
        if attributes["max_age"] is not None:
            return make_cookie(self.cookie_name, value, **attributes)
        key = tuple(attributes.items())
        suffix = self._cookie_suffixes.get(key)
        if suffix is None:
            header = make_cookie(self.cookie_name, "v", **attributes)
            suffix = header[len(self.cookie_name) + 2 :]  # after "name=v"
            if len(self._cookie_suffixes) < 64:
                self._cookie_suffixes[key] = suffix
        return f"{self.cookie_name}={value}{suffix}"

    def peek(self, request: Request) -> Peek:
        """Look at the request's session without using it: validated, never extended.

        For a status poll, an admin view, a debug toolbar: loading
        ``request.session`` is the visitor's activity (the idle timeout is
        extended, renewal may offer a new id), a peek is not. It decrypts the
        cookie, reads the row (one SELECT, in the request's database
        session), and runs the plugins' ``session_load`` and
        ``session_validate`` hooks, so an expired session or a stale cookie
        that renewal would reject is reported as such, with its data
        withheld. It sends the events a real request would send for what it
        finds (``CookieRejected``, ``SessionNotFound``, ``SessionRejected``,
        a plugin's own such as ``RenewalViolation``), each with ``event.peek``
        true, and acts on none: it writes nothing, deletes nothing, sends no
        cookie, and leaves ``request.session`` as it was. Returns a
        :class:`~sessions_kernel.Peek`.
        """
        return peek(self.session_class(request, self))

    def derived_keys(self, label: bytes, length: int = 32) -> SecretKeys:
        """Keys for a plugin's own cryptography, derived from ``session.secret_key``.

        One per key of ``secret_key``, in its order (the first is current;
        the others open what older keys made, so rotating the secret key
        rotates these too), each ``length`` bytes of HKDF-SHA256 with
        ``label`` (name your use: ``b"sessions_csrf column"``), never the
        cookie's key itself. Computed once per label and length. Raises
        :class:`~sessions_kernel.ConfigurationError` when ``secret_key`` is
        not set (the cookie has a serializer of its own). The keys never show
        in a ``repr``.
        """
        cache_key = (label, length)
        keys = self._derived.get(cache_key)
        if keys is None:
            secret = self.config.values.get("secret_key")
            if not secret:
                raise ConfigurationError(
                    f"a session plugin needs keys derived from session.secret_key "
                    f"({label.decode('ascii', 'replace')}), which is not set (the cookie has a "
                    "serializer of your own): set session.secret_key as well (python -m "
                    "sessions_kernel prints one)"
                )
            keys = self._derived[cache_key] = derive_keys(secret, label, length)
        return keys

    def describe(self, row: Any) -> SessionInfo:
        """What a listing shows of a stored row ("your sessions", a debug toolbar).

        Issues no SQL: ``row`` was read by the caller. The expiry is the
        earliest the active plugins report (``session_expires_at``), ``None``
        when no feature expires the session; ``details`` merges what they
        report through ``session_details``.

        Raises :class:`~sessions_kernel.SessionError` when two plugins report
        the same detail.
        """
        settings = self.config.row_settings(row)
        expiries = [t for t in self.hook.session_expires_at(row=row, settings=settings) if t]
        active = [t for t in self.hook.session_last_active(row=row, settings=settings) if t]
        details: dict[str, Any] = {}
        for answer in self.hook.session_details(row=row, settings=settings):
            for key, value in (answer or {}).items():
                if key in details:
                    raise SessionError(
                        f"two session plugins report the detail {key!r} of a session; "
                        "each plugin must prefix its detail names with its own name"
                    )
                details[key] = value
        return SessionInfo(
            session_id=row.id,
            created=row.created,
            last_active=max([row.updated, *active]),
            expires=min(expiries) if expiries else None,
            details=MappingProxyType(details),
        )

    def __repr__(self) -> str:
        plugins = ", ".join(info.name for info in self.config.active)
        return f"<SessionFactory {self.model.__name__} [{plugins}]>"


def _primary_serializer(serializer: Any) -> Any:
    ciphers = getattr(serializer, "_ciphers", None)
    if not isinstance(serializer, AESGCMCookieSerializer) or not ciphers or len(ciphers) < 2:
        return None
    primary = copy.copy(serializer)
    primary._ciphers = ciphers[:1]
    return primary


def _session_class(config: FactoryConfig) -> type[Session]:
    namespace: dict[str, Any] = {}
    owners: dict[str, str] = {}
    for impl in config.pm.hook.session_attributes.get_hookimpls():
        # what the hook's specification says it answers (pluggy does not carry the types)
        attributes = cast("Mapping[str, Any] | None", impl.function())
        for name, value in (attributes or {}).items():
            problem = _claim_problem(name, owners)
            if problem is not None:
                plugin = impl.plugin_name
                raise ConfigurationError(
                    f"session plugin {plugin!r} adds request.session.{name} (its "
                    f"session_attributes hook), but {problem}. Rename the plugin's attribute, "
                    f"prefixed with the plugin's name (e.g. {_suggested(plugin, name)!r}), "
                    "and its uses."
                )
            owners[name] = impl.plugin_name
            namespace[name] = value
    for name in LEGACY_CSRF_METHODS:
        if name not in namespace:
            namespace[name] = _Missing(name, config)
    # request.session of the model Session is a Session, of UserSession a UserSession, of
    # Device a DeviceSession (its repr and tracebacks show it)
    name = config.model.__name__
    return type(name if name.endswith("Session") else f"{name}Session", (Session,), namespace)


#: What Pyramid's default CSRF storage policy (``LegacySessionCSRFStoragePolicy``) calls
#: on ``request.session``; a plugin adds them through ``session_attributes``.
LEGACY_CSRF_METHODS = ("get_csrf_token", "new_csrf_token")


def providers(config: FactoryConfig, name: str) -> list[PluginInfo]:
    """The installed plugins whose ``session_attributes`` hook adds ``request.session.<name>``."""
    found = []
    for info in config.installed:
        implementation = getattr(info.plugin, "session_attributes", None)
        if implementation is None or not callable(implementation):
            continue
        try:
            attributes = implementation()
        except Exception:  # a broken plugin is reported where it is used, not here
            continue
        if isinstance(attributes, Mapping) and name in attributes:
            found.append(info)
    return found


def missing_csrf_message(config: FactoryConfig, name: str = "get_csrf_token") -> str:
    """Why ``request.session.<name>()`` does not exist, and the two ways to fix it."""
    model = config.model.__name__
    offered = [info for info in providers(config, name) if info.plugin is not None]
    if offered:
        choices = " or ".join(
            f"{mixin.__name__} of {info.label}" for info in offered for mixin in info.mixins[:1]
        )
        plugin_fix = f"add {choices} to the bases of {model}"
    else:
        plugin_fix = (
            "install a session plugin that adds get_csrf_token() and new_csrf_token() "
            f"to request.session (see the docs, 'CSRF') and add its mixin to the bases of {model}"
        )
    return (
        f"request.session.{name}() is not there: Pyramid's default CSRF storage policy "
        "(LegacySessionCSRFStoragePolicy) calls it, and no active session plugin of "
        f"{model} provides it. Either {plugin_fix}, or configure another CSRF storage "
        "policy, e.g. config.set_csrf_storage_policy(pyramid.csrf.CookieCSRFStoragePolicy())"
    )


class _Missing:
    """A method of ``request.session`` that no active plugin provides: reading it raises.

    On the session and on its class alike, so that ``hasattr()`` says ``False``
    where a plugin would have said ``True``.
    """

    def __init__(self, name: str, config: FactoryConfig) -> None:
        self.name = name
        self.config = config

    def __get__(self, instance: object, owner: type | None = None) -> NoReturn:
        raise MissingSessionMethodError(missing_csrf_message(self.config, self.name))


def _claim_problem(name: str, owners: Mapping[str, str]) -> str | None:
    """Why a plugin may not add ``request.session.<name>``, or ``None`` if it may."""
    if name in owners:
        return f"session plugin {owners[name]!r} already adds it"
    if name.startswith("_"):
        return "names starting with '_' are the kernel's private ones"
    if name in PLUGIN_ATTRIBUTES:
        declared = ", ".join(PLUGIN_ATTRIBUTES)
        return (
            f"the kernel reserves {name!r}: it is one of the attributes plugins rely on "
            f"({declared}), and replacing it breaks every session"
        )
    if name in RESERVED_ATTRIBUTES:
        return f"the kernel reserves {name!r}: it is part of the session's own API"
    return None


def _suggested(plugin: str, name: str) -> str:
    prefix = "".join(c if c.isalnum() else "_" for c in plugin.rsplit(".", 1)[-1]).strip("_")
    return f"{prefix}_{name.lstrip('_')}" if prefix else f"plugin_{name.lstrip('_')}"


def _merge_rules(config: FactoryConfig) -> dict[str, tuple[tuple[str, ...], MergeRule]]:
    columns = config.column_names
    rules: dict[str, tuple[tuple[str, ...], MergeRule]] = {}
    owners: dict[str, str] = {}
    for impl in config.pm.hook.session_merge_rules.get_hookimpls():
        arguments = {"model": config.model}
        answer = cast(
            "Mapping[str | tuple[str, ...], MergeRule] | None",
            impl.function(*[arguments[name] for name in impl.argnames]),
        )
        for key, rule in (answer or {}).items():
            group = (key,) if isinstance(key, str) else tuple(key)
            where = f"session plugin {impl.plugin_name!r} declares a merge rule for {key!r}"
            if not group or not callable(rule):
                raise ConfigurationError(
                    f"{where}: expected a column name (or a tuple of them) mapped to a "
                    f"callable rule(base, mine, theirs), got {rule!r}"
                )
            for name in group:
                if name not in columns or name in KERNEL_COLUMNS:
                    raise ConfigurationError(
                        f"{where}, but {name!r} is not a plugin column of "
                        f"{config.model.__name__} (its plugin columns: "
                        f"{', '.join(sorted(set(columns) - KERNEL_COLUMNS)) or 'none'})"
                    )
                if name in owners:
                    raise ConfigurationError(
                        f"{where}, but {owners[name]!r} already declared one for {name!r}; "
                        "a column merges by one rule"
                    )
                owners[name] = impl.plugin_name
                rules[name] = (group, rule)
    return rules


def session_factory(plugins: Iterable[object] = (), **settings: Any) -> SessionFactory:
    """Build a session factory from settings given as Python values or ini strings.

    ``model_class`` and ``secret_key`` (or ``serializer``) are required; every
    other setting of the kernel and of the active plugins is optional. Extra
    plugin objects (modules with hook implementations) can be passed in
    ``plugins``; installed plugins are found through their entry points.

    Raises :class:`~pyramid.exceptions.ConfigurationError` naming the setting,
    its value and the fix for anything it cannot accept.
    """
    return SessionFactory(FactoryConfig.build(settings, plugins))


def factory_args_from_settings(
    settings: Mapping[str, Any], prefix: str = SETTINGS_PREFIX
) -> dict[str, Any]:
    """Pick the ``session.*`` entries of an application's settings, prefix removed."""
    return {key[len(prefix) :]: value for key, value in settings.items() if key.startswith(prefix)}


#: Where 0.1 kept the factory in the registry (deprecated: see :class:`_LegacyFactoryKey`).
LEGACY_REGISTRY_KEY = "sessions_kernel.factory"


class _LegacyFactoryKey:
    """``registry["sessions_kernel.factory"]``, as 0.1 documented it: the factory, which
    warns once (:class:`~sessions_kernel.SessionsDeprecationWarning`) when used, naming
    ``registry.queryUtility(ISessionFactory)``. Attributes and calls go to the factory,
    and ``isinstance(key, SessionFactory)`` is true (what sessions-userid's queries check)."""

    __slots__ = ("_factory",)

    def __init__(self, factory: SessionFactory) -> None:
        object.__setattr__(self, "_factory", factory)

    def _told(self) -> SessionFactory:
        warn_once(
            ("registry key", LEGACY_REGISTRY_KEY),
            'registry["sessions_kernel.factory"] is deprecated since sessions-kernel 0.2 and '
            "goes in 0.3: use registry.queryUtility(pyramid.interfaces.ISessionFactory), "
            "the same factory",
            stacklevel=3,
        )
        return cast("SessionFactory", object.__getattribute__(self, "_factory"))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._told(), name)

    # isinstance(key, SessionFactory) holds, as it did in 0.1, where the key held the factory
    # itself: sessions-userid's queries take "a SessionFactory with dbsession=", and 0.1's
    # README passed this key. What they then read of it warns (__getattr__).
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return SessionFactory

    def __call__(self, request: Any) -> Any:
        return self._told()(request)

    def __repr__(self) -> str:
        return f"<deprecated registry key for {object.__getattribute__(self, '_factory')!r}>"


def register_factory(config: Configurator, factory: SessionFactory) -> None:
    """Make ``factory`` the application's session factory, as ``includeme`` does with its own.

    What ``config.set_session_factory(factory)`` does (the same action:
    ``ISessionFactory``, conflicting and overridden alike), plus an
    introspectable of category ``sessions_kernel`` (discriminator
    ``"factory"``) that Pyramid's introspection and the debug toolbar show:
    the factory, its model, the active plugins with their versions, the
    settings in force (secret values hidden) and the expiry in force. Then
    the active plugins add their configuration (``session_includeme``). For a
    factory built by hand with :func:`session_factory`, in place of
    ``config.set_session_factory(factory)``.
    """
    model = factory.model
    pyramids = config.introspectable(
        "session factory", None, config.object_description(factory), "session factory"
    )
    pyramids["factory"] = factory
    details = config.introspectable(
        INTROSPECTION_CATEGORY,
        "factory",
        f"session factory of {model.__module__}.{model.__qualname__}",
        "sessions_kernel factory",
    )
    details["factory"] = factory
    details["model"] = model
    details["plugins"] = [
        f"{info.name} ({info.distribution} {info.version})" if info.distribution else info.name
        for info in factory.config.active
    ]
    details["settings"] = factory.config.shown_values()
    details["expiry"] = factory.config.expiry
    details.relate("session factory", None)
    registry = config.registry

    def register() -> None:
        registry.registerUtility(factory, ISessionFactory)
        registry[LEGACY_REGISTRY_KEY] = _LegacyFactoryKey(factory)

    config.action(ISessionFactory, register, introspectables=(pyramids, details))
    factory.hook.session_includeme(config=config, factory=factory)

    def check_csrf_policy() -> None:
        # once the configuration is final: the storage policy, the views, the CSRF options
        if registry.queryUtility(ISessionFactory) is not factory:
            return  # another session factory replaced this one
        policy = registry.queryUtility(ICSRFStoragePolicy)
        if not isinstance(policy, LegacySessionCSRFStoragePolicy):
            return
        session_class = factory.session_class
        if not any(isinstance(vars(session_class).get(n), _Missing) for n in LEGACY_CSRF_METHODS):
            return
        message = missing_csrf_message(factory.config)
        if _requires_csrf(registry):
            raise ConfigurationError(
                f"{message}. CSRF checks are required (require_csrf), so every unsafe "
                "request would fail."
            )
        log.warning("%s. Until then, any CSRF token use fails.", message)

    def respond_last() -> None:
        # once the configuration is final: the application's NewResponse subscribers are
        # registered by then, and a subscriber of the same event class registered later is
        # called later (zope.interface calls them in the order registered)
        if registry.queryUtility(ISessionFactory) is not factory:
            return  # another session factory replaced this one
        if not registry.adapters.subscriptions([implementedBy(NewResponse)], None):
            return  # nobody can first use the session there: Pyramid skips notify()
        registry.registerHandler(respond_late, (NewResponse,))

    def application_created(event: ApplicationCreated) -> None:
        # make_wsgi_app(): every action has run, those after a config.commit() or under
        # autocommit included (an action of the first commit would not see them)
        check_csrf_policy()
        respond_last()

    config.add_subscriber(application_created, ApplicationCreated)


def respond_late(event: Any) -> None:
    """The kernel's last ``NewResponse`` subscriber: the response of a session first used
    in another ``NewResponse`` subscriber.

    Pyramid runs response callbacks before it notifies ``NewResponse``: the
    response callback a session registers at its first use
    (``Session._respond``, which keeps a response showing a stored session
    from shared caches: ``Cache-Control: private``, ``Vary: Cookie``) would
    never run for a session first used in a subscriber. This calls it then.
    A request whose session was not used costs a dict lookup.
    """
    request = event.request
    session = vars(request).get("session")  # Request.session is reified: set once used
    if isinstance(session, Session) and session._responding and not session._responded:
        session._respond(request, event.response)


def _requires_csrf(registry: Any) -> bool:
    """Whether Pyramid checks CSRF tokens by default or for some view (``require_csrf``)."""
    options = registry.queryUtility(IDefaultCSRFOptions)
    if options is not None and options.require_csrf:
        return True
    views = registry.introspector.get_category("views", [])
    return any(entry["introspectable"].get("require_csrf") for entry in views)


def includeme(config: Configurator) -> None:
    """``config.include('sessions_kernel')``: set the session factory from ``session.*``.

    Discovers the installed plugins, keeps those the model activates,
    validates every setting and registers the factory
    (:func:`register_factory`: the active plugins add their configuration).
    Logs which expiry is in force (logger ``sessions_kernel``, INFO). Tools
    find the factory as Pyramid's ``ISessionFactory`` utility, and its
    details in the introspector (category ``sessions_kernel``).
    """
    factory = session_factory(**factory_args_from_settings(config.get_settings()))
    log.info("%s", factory.config.expiry)
    register_factory(config, factory)
    registry = config.registry

    def check_retry() -> None:
        policy = registry.queryUtility(IExecutionPolicy)
        if not getattr(policy, "__module__", "").startswith("pyramid_retry"):
            log.warning(
                "pyramid_retry is not included: a request that changes the same session key "
                "as a concurrent request of that session fails with SessionConflictError "
                "instead of running again. Add config.include('pyramid_retry') to your main() "
                "(retry.attempts defaults to 3, which is enough)."
            )

    # after pyramid_retry's own action has set its execution policy (default order)
    config.action(None, check_retry, order=PHASE3_CONFIG + 1)
