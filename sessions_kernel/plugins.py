"""Finding plugins and building one factory's configuration from them.

Plugins are registered, exactly like the kernel's own :mod:`builtin` module,
from the entry-point group ``sessions_kernel.plugins``. Each factory gets a
:class:`pluggy.PluginManager` of its own holding only the plugins its model
activates, so two factories in one process never see each other's plugins.

Set ``SESSIONS_KERNEL_LOAD_PLUGINS`` to a comma-separated list of entry-point
names to load only those (an empty value loads none) while debugging, and
``SESSIONS_TRACE_HOOKS=1`` to have every plugin manager the kernel builds write
each hook call to stderr (pluggy's tracer).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pluggy
import sqlalchemy as sa
from pyramid.settings import asbool
from sqlalchemy.orm import Mapper

from . import builtin, hookspecs
from .errors import ConfigurationError, SessionError
from .model import KERNEL_COLUMNS, BaseMixin
from .settings import HIDDEN, Setting

__all__ = [
    "ENTRY_POINT_GROUP",
    "LOAD_PLUGINS_ENV",
    "TRACE_HOOKS_ENV",
    "FactoryConfig",
    "PluginInfo",
    "active_manager",
    "discover",
]

ENTRY_POINT_GROUP = "sessions_kernel.plugins"
LOAD_PLUGINS_ENV = "SESSIONS_KERNEL_LOAD_PLUGINS"
TRACE_HOOKS_ENV = "SESSIONS_TRACE_HOOKS"
#: Settings whose values are never shown (traces, introspection, ``psessions plugins``)
#: besides those declared ``secret``: the cookie's serializer holds the keys.
ALWAYS_HIDDEN = frozenset({"serializer"})


@dataclass
class PluginInfo:
    """What the kernel knows of one installed plugin."""

    name: str
    plugin: object | None
    distribution: str | None = None
    version: str | None = None
    mixins: tuple[type, ...] = ()
    settings: tuple[Setting, ...] = ()
    error: str | None = None
    #: the hooks it implements, the kernel's and those other plugins offer (sorted)
    hooks: tuple[str, ...] = ()

    def activated_by(self, model: type[BaseMixin]) -> type | None:
        """The mixin through which ``model`` activates this plugin, or ``None``."""
        for mixin in reversed(self.mixins):
            if issubclass(model, mixin):
                return mixin
        return None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.distribution})" if self.distribution else self.name


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    wanted = os.environ.get(LOAD_PLUGINS_ENV)
    if wanted is not None:
        names = {name.strip() for name in wanted.split(",") if name.strip()}
        eps = [ep for ep in eps if ep.name in names]
    return sorted(eps, key=lambda ep: ep.name)


class ObservedPluginManager(pluggy.PluginManager):
    """pluggy's plugin manager, which tells listeners when a hook's implementations may change.

    That is, when a plugin is registered or unregistered (``set_blocked``
    unregisters) and when hook specifications are added. A factory's
    request hooks (:class:`~sessions_kernel.factory.RequestHooks`) listen, so
    that they decide which hooks have implementations then, not per call.
    """

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change of the registered plugins or specifications."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        try:
            return super().register(plugin, name)
        finally:
            self._changed()

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:
        try:
            return super().unregister(plugin, name)
        finally:
            self._changed()

    def add_hookspecs(self, module_or_class: Any) -> None:
        try:
            super().add_hookspecs(module_or_class)
        finally:
            self._changed()


def _spec_manager(hidden: frozenset[str] = ALWAYS_HIDDEN) -> pluggy.PluginManager:
    """A plugin manager with the kernel's hook specifications.

    ``session_addhooks`` is historic: each plugin registered later is called
    at its registration, so plugins add specifications of their own before
    ``check_pending()`` looks for implementations that have none. With
    ``SESSIONS_TRACE_HOOKS`` set, its hook calls are traced (``hidden``: the
    settings whose values the trace leaves out).
    """
    pm = ObservedPluginManager(hookspecs.PROJECT)
    if asbool(os.environ.get(TRACE_HOOKS_ENV)):
        _trace_hooks(pm, hidden)
    pm.add_hookspecs(hookspecs)
    pm.hook.session_addhooks.call_historic(kwargs={"pluginmanager": pm})
    return pm


def _write_stderr(text: str) -> None:
    sys.stderr.write(text)


#: Hooks whose answer is a secret, never traced (``session_fallback_token``: a token).
SECRET_RESULTS = frozenset({"session_fallback_token"})


def _trace_hooks(pm: pluggy.PluginManager, hidden: frozenset[str]) -> None:
    """Write each hook call of ``pm`` to stderr with pluggy's tracer, as ``enable_tracing`` does.

    Each call shows the plugins it runs (in pluggy's order) and its arguments,
    a settings mapping with its secret values hidden; then its answer, or the
    exception it raised.
    """
    pm.trace.root.setwriter(_write_stderr)
    trace = pm.trace.root.get("hook")

    def before(name: str, impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        trace.root.indent += 1
        plugins = ", ".join(impl.plugin_name for impl in reversed(impls))
        shown = {key: _redacted(value, hidden) for key, value in kwargs.items()}
        trace(name, f"({plugins or 'no plugin'})", shown)

    def after(outcome: Any, name: str, impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        if outcome.exception is None:
            result = outcome.get_result()
            if name in SECRET_RESULTS and result is not None:
                result = HIDDEN  # a session's token: the key to it
            trace("finish", name, "-->", result)
        else:
            trace("raised", name, "-->", repr(outcome.exception))
        trace.root.indent -= 1

    pm.add_hookcall_monitoring(before, after)


def _redacted(value: Any, hidden: frozenset[str]) -> Any:
    """``value``, or a copy of a settings mapping with the ``hidden`` settings' values hidden.

    An unset one (``None``) is shown as such: that it is unset gives nothing away.
    """
    # a dict only: a session is a mapping too, and reading its keys would load it
    if isinstance(value, dict) and not hidden.isdisjoint(value):
        return {
            name: HIDDEN if name in hidden and v is not None else v for name, v in value.items()
        }
    return value


def hook_names(pm: pluggy.PluginManager, plugin: object) -> tuple[str, ...]:
    """The hooks ``plugin`` implements in ``pm`` (``get_hookcallers``), sorted; none if absent."""
    return tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()))


def hidden_settings(infos: Iterable[PluginInfo]) -> frozenset[str]:
    """The settings of these plugins whose values are never shown: the secret ones."""
    return ALWAYS_HIDDEN | {s.name for info in infos for s in info.settings if s.secret}


def discover(extra: Iterable[object] = (), *, strict: bool = True) -> list[PluginInfo]:
    """Load every installed plugin (and ``extra`` plugin objects) and describe each.

    With ``strict`` (the default, used at start-up) an entry point that fails
    to import raises :class:`ConfigurationError` naming its distribution; with
    ``strict=False`` it is returned with its ``error`` set, for listings.
    """
    catalog = _spec_manager()
    infos: dict[str, PluginInfo] = {}

    def add(name: str, obj: object, dist: str | None, version: str | None) -> None:
        if name in infos:
            raise ConfigurationError(
                f"two session plugins are named {name!r} ({infos[name].label} and {dist}); "
                "uninstall one of them"
            )
        try:
            catalog.register(obj, name=name)
        except pluggy.PluginValidationError as exc:
            raise ConfigurationError(f"session plugin {name!r} ({dist}): {exc}") from exc
        except ValueError:  # the same object under another name: keep the first
            return
        infos[name] = PluginInfo(name, obj, dist, version)

    add(builtin.NAME, builtin, "sessions-kernel", _version("sessions-kernel"))
    for ep in _entry_points():
        dist = ep.dist.name if ep.dist is not None else None
        version = ep.dist.version if ep.dist is not None else None
        try:
            obj = ep.load()
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            if strict:
                raise ConfigurationError(
                    f"session plugin {ep.name!r} from distribution {dist!r} "
                    f"({ep.value}) failed to import: {message}. Fix or uninstall "
                    f"{dist or 'it'}, or set {LOAD_PLUGINS_ENV} to the plugins to load."
                ) from exc
            infos[ep.name] = PluginInfo(ep.name, None, dist, version, error=message)
            continue
        add(ep.name, obj, dist, version)
    for obj in extra:
        add(getattr(obj, "__name__", None) or type(obj).__name__, obj, None, None)

    try:
        catalog.check_pending()
    except pluggy.PluginValidationError as exc:
        info = next(i for i in infos.values() if i.plugin is exc.plugin)
        raise ConfigurationError(_unknown_hook_message(catalog, info)) from exc

    by_plugin = {id(info.plugin): info for info in infos.values() if info.plugin is not None}
    for info in by_plugin.values():
        info.hooks = hook_names(catalog, info.plugin)
    # each answers as its specification says (pluggy does not carry the types)
    for impl in catalog.hook.session_mixins.get_hookimpls():
        mixins = cast("Sequence[type] | None", impl.function())
        by_plugin[id(impl.plugin)].mixins = tuple(mixins or ())
    for impl in catalog.hook.session_settings.get_hookimpls():
        info = by_plugin[id(impl.plugin)]
        settings = cast("Sequence[Setting] | None", impl.function())
        info.settings = tuple(dataclasses.replace(s, plugin=info.name) for s in settings or ())
    return list(infos.values())


def _unknown_hook_message(pm: pluggy.PluginManager, info: PluginInfo) -> str:
    """What ``check_pending()`` found: the plugin, its hooks no specification names, the closest."""
    known = [name for name, caller in vars(pm.hook).items() if caller.has_spec()]
    unknown = [
        caller.name
        for caller in pm.get_hookcallers(info.plugin) or ()
        if not caller.has_spec()
        and any(i.plugin is info.plugin and not i.optionalhook for i in caller.get_hookimpls())
    ]
    problems = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]}?" if close else "no hook has a name close to it"
        problems.append(f"{name} ({hint})")
    return (
        f"session plugin {info.label!r} implements {', '.join(problems)}, but no installed "
        "plugin specifies such a hook. Rename the function after a hook of the reference "
        "(docs: Hook reference), or mark it @hookimpl(optionalhook=True) if it implements "
        "a hook that another plugin may offer."
    )


def active_manager(model: type[BaseMixin]) -> pluggy.PluginManager:
    """A plugin manager holding the installed plugins that ``model`` activates.

    For tools that work from the model alone (indexes); a session factory
    builds its own in :meth:`FactoryConfig.build`.
    """
    return _manager_of(_active(discover(), model))


def _active(installed: Iterable[PluginInfo], model: type[BaseMixin]) -> list[PluginInfo]:
    """The installed plugins that ``model`` activates (through one of their mixins)."""
    return [info for info in installed if info.plugin is not None and info.activated_by(model)]


def _manager_of(active: Sequence[PluginInfo]) -> pluggy.PluginManager:
    pm = _spec_manager(hidden_settings(active))
    for info in active:
        pm.register(info.plugin, name=info.name)
    return pm


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _mixin_names(mixins: Iterable[type]) -> str:
    return " or ".join(m.__name__ for m in mixins)


def _column_names(model: type[BaseMixin]) -> frozenset[str]:
    mapper: Mapper[Any] = sa.inspect(model)
    return frozenset(mapper.column_attrs.keys())


@dataclass
class FactoryConfig:
    """Everything one session factory resolved at start-up."""

    model: type[BaseMixin]
    values: dict[str, Any]
    active: list[PluginInfo]
    installed: list[PluginInfo]
    pm: pluggy.PluginManager
    settings_by_name: dict[str, Setting]
    runtime_names: tuple[str, ...] = ()
    configurable: frozenset[str] = frozenset()
    column_names: frozenset[str] = field(default_factory=frozenset)
    #: which expiry is in force, in words (logged by ``includeme``)
    expiry: str = ""

    @classmethod
    def build(cls, raw: Mapping[str, Any], extra_plugins: Iterable[object] = ()) -> FactoryConfig:
        installed = discover(extra_plugins)
        known: dict[str, Setting] = {}
        for info in installed:
            for declared in info.settings:
                if declared.name in known:
                    raise ConfigurationError(
                        f"setting {declared.name!r} is declared by two session plugins, "
                        f"{known[declared.name].plugin} and {info.label}; uninstall one of them"
                    )
                known[declared.name] = declared

        model = _resolve_model(raw.get("model_class"), known["model_class"])
        active = _active(installed, model)
        active_names = {info.name for info in active}
        owner = {s.name: info for info in installed for s in info.settings}

        values: dict[str, Any] = {}
        for name, value in raw.items():
            if name == "model_class":
                continue
            setting = known.get(name)
            if setting is None:
                raise ConfigurationError(_unknown_setting_message(name, value, known))
            try:
                parsed = setting.parse(value)
            except ValueError as exc:
                raise ConfigurationError(
                    f"session.{name} = {setting.shown(value)}: {exc}. "
                    f"({setting.doc}; default: {setting.default!r})"
                ) from None
            info = owner[name]
            if info.name not in active_names:
                if parsed != setting.default:
                    raise ConfigurationError(
                        f"session.{name} = {setting.shown(value)} is set, but "
                        f"{model.__name__} does not include {_mixin_names(info.mixins)} "
                        f"from {info.label}, so that feature is off. Add the mixin to the "
                        f"bases of {model.__name__}, or remove session.{name}."
                    )
                continue
            values[name] = parsed
        settings_by_name = {s.name: s for info in active for s in info.settings}
        for name, setting in settings_by_name.items():
            if name not in values:  # defaults given as ini text (``"json"``) are parsed too
                default = setting.default
                values[name] = setting.parse(default) if isinstance(default, str) else default
        values["model_class"] = model

        sources = [name for name in builtin.SECRET_KEY_SOURCES if values.get(name) is not None]
        if len(sources) > 1:
            raise ConfigurationError(
                f"session.{' and session.'.join(sources)} are set; the key must come "
                "from one place: keep one of them"
            )
        if sources:  # the keys read from a file or the environment are secret_key's value
            values["secret_key"] = values[sources[0]]
        if values.get("secret_key") is None and values.get("serializer") is None:
            # no key in the message: a start-up error goes to logs, and a key copied
            # from a log is no secret
            raise ConfigurationError(
                "session.secret_key is required (or a serializer of your own; to keep the "
                "key out of the ini file, session.secret_key_file names a file holding it "
                "and session.secret_key_env an environment variable). Make a key with\n"
                "    python -m sessions_kernel\nand add it to your ini file:\n"
                "    session.secret_key = <the key it printed>"
            )

        pm = _manager_of(active)
        columns = _column_names(model)
        runtime = tuple(s.name for s in settings_by_name.values() if s.runtime)
        config = cls(
            model=model,
            values=values,
            active=active,
            installed=installed,
            pm=pm,
            settings_by_name=settings_by_name,
            runtime_names=runtime,
            configurable=frozenset(n for n in runtime if n in columns),
            column_names=columns,
        )
        problems = config.check(values)
        if problems:
            raise ConfigurationError(
                "session settings do not fit together:\n  " + "\n  ".join(problems)
            )
        policies = [str(p) for p in reversed(pm.hook.session_expiry_policy(settings=values)) if p]
        max_age, config.expiry = builtin.expiry(values["max_age"], "max_age" in raw, policies)
        if max_age is not None:
            pm.register(max_age, name=f"{builtin.NAME}.max_age")
        return config

    @property
    def hook(self) -> pluggy.HookRelay:
        return self.pm.hook

    def shown_values(self) -> dict[str, Any]:
        """The settings in force, with the values of secret ones (keys, the serializer) hidden."""
        shown: dict[str, Any] = _redacted(dict(self.values), hidden_settings(self.active))
        return shown

    def check(self, values: Mapping[str, Any]) -> list[str]:
        """Run every active plugin's cross-setting rules over ``values``."""
        problems: list[str] = []
        for result in self.hook.session_check_settings(settings=values):
            problems.extend(result or ())
        return problems

    def row_settings(self, row: Any) -> dict[str, Any]:
        """The settings in force for a stored row: global values, the row's own where it has one."""
        values = {name: self.values[name] for name in self.runtime_names}
        for name in self.configurable:
            value = getattr(row, name)
            if value is not None:
                values[name] = value
        return values

    def check_plugin_column(self, name: str) -> None:
        """Raise :class:`SessionError` unless ``name`` is a plugin's column of the model
        (``session.get_column``/``set_column``): not the kernel's, not a runtime setting."""
        if name not in self.column_names or name in KERNEL_COLUMNS:
            raise SessionError(
                f"{self.model.__name__} has no plugin column {name!r}: add the mixin that "
                "declares it to the model's bases (the kernel's own columns "
                f"{', '.join(sorted(KERNEL_COLUMNS))} are not set this way)"
            )
        if name in self.configurable:
            raise SessionError(
                f"{name!r} is a runtime setting of {self.model.__name__}: change it "
                "through request.session.settings"
            )

    def not_configurable_message(self, name: str) -> str:
        if name not in self.settings_by_name:
            return f"no setting {name!r}; settings: {', '.join(self.runtime_names)}"
        if name not in self.runtime_names:
            return f"{name} is set once at start-up and cannot be read or changed per session"
        for info in self.installed:
            for mixin in info.mixins:
                if any(name in vars(k) for k in mixin.__mro__):
                    return (
                        f"{name} is not runtime-configurable with {self.model.__name__}: "
                        f"use {mixin.__name__} from {info.label} among its bases to change "
                        f"it per session"
                    )
        return (
            f"{name} is not runtime-configurable with {self.model.__name__}: no installed "
            f"plugin offers a mixin with a {name!r} column"
        )


def _resolve_model(value: Any, setting: Setting) -> type[BaseMixin]:
    if value is None:
        raise ConfigurationError(
            "session.model_class is required: the dotted name of your session model, e.g.\n"
            "    session.model_class = myapp.models.Session"
        )
    try:
        model = setting.parse(value)
    except ValueError as exc:
        raise ConfigurationError(f"session.model_class = {value!r}: {exc}") from None
    if not (isinstance(model, type) and issubclass(model, BaseMixin)):
        raise ConfigurationError(
            f"session.model_class = {value!r} is not a subclass of sessions_kernel.BaseMixin; "
            "declare it as class Session(<feature mixins>, BaseMixin, Base)"
        )
    try:
        sa.inspect(model)
    except sa.exc.NoInspectionAvailable:
        raise ConfigurationError(
            f"session.model_class = {value!r} is not a mapped SQLAlchemy class; "
            "add your declarative Base last among its bases and a __tablename__"
        ) from None
    return model


_SECRET_WORDS = ("key", "secret", "pass", "token", "salt", "credential", "private")
# what keys, tokens and hashes look like: a long run of base64 or hex characters
_KEY_LIKE = re.compile(r"[A-Za-z0-9+/=_-]{20,}")


def _may_be_secret(name: str, value: Any) -> bool:
    """Whether an unknown setting may hold a secret: by its name, or by its value."""
    if any(word in name.lower() for word in _SECRET_WORDS):
        return True
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return isinstance(value, str) and _KEY_LIKE.search(value) is not None


def _unknown_setting_message(name: str, value: Any, known: Mapping[str, Setting]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean session.{close[0]}?" if close else ""
    # a misspelt secret (session.secret_kye = ...) must not reach the logs either, nor
    # a key under a name of its own (session.aes = <a key>)
    secret = (close and known[close[0]].secret) or _may_be_secret(name, value)
    shown = HIDDEN if secret else repr(value)
    return (
        f"session.{name} = {shown}: no installed session plugin has a setting {name!r}."
        f"{hint} Known settings: {', '.join(sorted(known))}. If it belongs to a plugin, "
        "install that plugin's distribution."
    )
