"""Session factories: by hand with :func:`session_factory`, or from ini settings."""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from pyramid.interfaces import PHASE3_CONFIG, IExecutionPolicy
from webob.cookies import make_cookie

from .crypto import AESGCMCookieSerializer
from .errors import ConfigurationError, SessionError
from .merge import MergeRule
from .model import KERNEL_COLUMNS
from .plugins import FactoryConfig
from .serializers import PickleSerializer
from .session import Peek, Session

if TYPE_CHECKING:
    from pyramid.config import Configurator
    from pyramid.request import Request

__all__ = [
    "SessionFactory",
    "SessionInfo",
    "factory_args_from_settings",
    "includeme",
    "session_factory",
]

SETTINGS_PREFIX = "session."

#: How many contended rows a factory remembers at most (see SessionFactory.mark_contended).
MAX_CONTENDED = 4096
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
    """A stored session as listings show it; see :meth:`SessionFactory.describe`."""

    #: the row key (SHA-256 of the cookie's token): safe to show and log
    session_id: str
    #: seconds since the epoch
    created: int
    #: the latest activity any part of the system recorded
    last_active: int
    #: when the session expires, or ``None`` if no active feature expires it
    expires: int | None
    #: what the active plugins report of the row (``session_details``), read-only
    details: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)


def _no_implementation(**kwargs: Any) -> None:
    return None


def _direct_caller(caller: Any) -> Any:
    """A plain function calling the hook's implementations as pluggy would, minus its dispatch.

    The set of plugins is fixed when the factory is built, so the order and
    the arguments each implementation asks for can be resolved once. pluggy
    calls the implementations last-registered first, passing each only the
    arguments it names, and for a ``firstresult`` hook stops at the first
    answer that is not ``None``; so does this. A hook with a wrapper
    implementation keeps pluggy's own caller.
    """
    impls = caller.get_hookimpls()
    if not impls:
        return _no_implementation
    if any(impl.hookwrapper or impl.wrapper for impl in impls):
        return caller
    calls = tuple((impl.function, impl.argnames) for impl in reversed(impls))
    if caller.spec is not None and caller.spec.opts.get("firstresult"):

        def first_result(**kwargs: Any) -> Any:
            for function, names in calls:
                result = function(*[kwargs[name] for name in names])
                if result is not None:
                    return result
            return None

        return first_result

    def all_results(**kwargs: Any) -> list[Any]:
        results = []
        for function, names in calls:
            result = function(*[kwargs[name] for name in names])
            if result is not None:
                results.append(result)
        return results

    return all_results


class Stages:
    """The per-request hooks of one factory, as the session calls them.

    The set of plugins is fixed when the factory is built, so each stage is
    resolved once: a no-op when no active plugin implements it, else a direct
    call of the implementations in pluggy's order (see :func:`_direct_caller`).
    On a request's path that saves pluggy's dispatch on every hook call.
    """

    __slots__ = (
        "session_cookie_attributes",
        "session_extend",
        "session_load",
        "session_persist",
        "session_renew",
        "session_validate",
    )

    def __init__(self, hook: Any) -> None:
        for name in self.__slots__:
            setattr(self, name, _direct_caller(getattr(hook, name)))


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
        #: the per-request hooks, no-ops where no plugin implements them
        self.stages = Stages(config.hook)
        self.clock = values["clock"]
        self.cookie_name = values["cookie_name"]
        self.dbsession_name = values["dbsession_name"]
        self.data_serializer = values["data_serializer"]
        self.max_data_size = values["max_data_size"]
        self.lock_contended_for = values["lock_contended_for"]
        # row id -> until when its requests load it locked (see mark_contended)
        self._contended: dict[str, float] = {}
        self._contended_lock = threading.Lock()
        if isinstance(self.data_serializer, PickleSerializer):
            log.warning(
                "session.data_serializer = pickle: whoever can write to the table %s (a SQL "
                "injection anywhere in the application, another application's database "
                "user, a restored backup) can run code in this application when a session "
                "is read; keep json unless you trust every writer",
                config.model.__table__.name,
            )
        self.serializer = values["serializer"] or AESGCMCookieSerializer(
            values["secret_key"],
            cookie_name=self.cookie_name,
            accept_unbound_until=values["accept_unbound_cookies_until"],
            clock=self.clock,
        )
        #: the serializer with the first key only, when there are several: a cookie it
        #: cannot read but the serializer can was made with an older key, and is sent
        #: again made with the first (so that old keys can be retired)
        self.primary_serializer = _primary_serializer(self.serializer)
        self.default_cookie_attributes = {
            "max_age": values["cookie_max_age"],
            "path": values["cookie_path"],
            "domain": values["cookie_domain"],
            "secure": values["cookie_secure"],
            "httponly": values["cookie_httponly"],
            "samesite": values["cookie_samesite"],
        }
        #: the cookie's attributes when nothing per session can change them (no
        #: runtime-configurable cookie setting, no ``session_cookie_attributes``
        #: implementation): resolved here once instead of on every response
        self.static_cookie_attributes = (
            self.default_cookie_attributes
            if not (config.configurable & COOKIE_SETTINGS)
            and self.stages.session_cookie_attributes is _no_implementation
            else None
        )
        # Set-Cookie values after the cookie's value, per set of attributes (see cookie_header)
        self._cookie_suffixes: dict[tuple[Any, ...], str] = {}
        # the kernel's UPDATE statements, per tuple of changed columns (versioned_update)
        self._updates: dict[tuple[str, ...], Any] = {}
        self.session_class = _session_class(config)
        # What the kernel's own UPDATE and DELETE statements need, resolved once.
        mapper = sa.inspect(self.model)
        if mapper.version_id_col is None:
            raise ConfigurationError(
                f"{self.model.__name__} declares __mapper_args__ without the version column "
                "the kernel uses to notice concurrent writes; include "
                '"version_id_col": cls.__table__.c.version in it'
            )
        self.table = mapper.local_table
        self.pk_column = mapper.primary_key[0]
        self.version_column = mapper.version_id_col
        self.columns = {prop.key: prop.columns[0] for prop in mapper.column_attrs}
        self.pk_key = mapper.get_property_by_column(self.pk_column).key
        self.version_key = mapper.get_property_by_column(self.version_column).key
        self.column_keys = tuple(k for k in self.columns if k != self.version_key)
        # what a new row's own INSERT needs: attribute key -> the column's key in the table
        self.insert_keys = {key: column.key for key, column in self.columns.items()}
        self.version_column_key = self.version_column.key
        #: columns a new row's INSERT leaves NULL when not given (no default of any kind)
        self.null_on_insert = tuple(
            key
            for key, column in self.columns.items()
            if column.default is None and column.server_default is None and key != self.pk_key
        )
        #: column -> (its group, the rule): how plugins' columns merge (``session_merge_rules``)
        self.merge_rules = _merge_rules(config, self.columns)
        #: columns whose write may give way to a concurrent one (``merge.droppable``)
        self.droppable_columns = frozenset(
            name for name, (_, rule) in self.merge_rules.items() if getattr(rule, "droppable", 0)
        )

    def mark_contended(self, row_id: str) -> None:
        """Have every request of this process load the row locked for a while.

        Called when a request lost to a concurrent one and has to run again.
        For ``lock_contended_for`` seconds, the row's loads take its lock
        (``SELECT … FOR UPDATE``), so its writers queue instead of each
        running, losing and running again: under contention that is fewer
        attempts, and more requests per second. The memory is this
        process's own, and bounded: the oldest rows are forgotten first.
        """
        if not self.lock_contended_for:
            return
        with self._contended_lock:
            contended = self._contended
            contended.pop(row_id, None)
            contended[row_id] = self.clock() + self.lock_contended_for
            while len(contended) > MAX_CONTENDED:
                del contended[next(iter(contended))]

    def is_contended(self, row_id: str) -> bool:
        """Whether the row is to load locked (:meth:`mark_contended`)."""
        until = self._contended.get(row_id)
        if until is None:
            return False
        if until > self.clock():
            return True
        with self._contended_lock:
            if self._contended.get(row_id) == until:
                del self._contended[row_id]
        return False

    def __call__(self, request: Request) -> Session:
        return self.session_class(request, self)

    def versioned_update(
        self, stored_id: str, version: int, values: Mapping[str, Any]
    ) -> tuple[Any, dict[str, Any]]:
        """The kernel's UPDATE of a row read at ``version``, and its parameters.

        ``UPDATE … SET <values>, version = version + 1 WHERE id = … AND version = …``;
        one statement per set of columns, built once with bound parameters and
        kept, instead of a new statement on every write.
        """
        keys = tuple(values)
        statement = self._updates.get(keys)
        if statement is None:
            bind = sa.bindparam
            changes = {self.columns[key]: bind(f"_sk_v{i}") for i, key in enumerate(keys)}
            statement = (
                sa.update(self.table)
                .where(self.pk_column == bind("_sk_id"), self.version_column == bind("_sk_ver"))
                .values(changes)
                .values({self.version_column: bind("_sk_next")})
            )
            if len(self._updates) < 256:
                self._updates[keys] = statement
        params = {f"_sk_v{i}": value for i, value in enumerate(values.values())}
        params.update(_sk_id=stored_id, _sk_ver=version, _sk_next=version + 1)
        return statement, params

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
        withheld. It writes nothing, sends no cookie and no event, and leaves
        ``request.session`` as it was. Returns a :class:`~sessions_kernel.Peek`.
        """
        return self.session_class(request, self)._peek()

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
        for name, value in (impl.function() or {}).items():
            if name in owners or hasattr(Session, name) or name.startswith("_"):
                taken = owners.get(name, "the kernel")
                raise ConfigurationError(
                    f"session plugin {impl.plugin_name!r} adds request.session.{name}, "
                    f"which {taken} already provides (or is private); rename it"
                )
            owners[name] = impl.plugin_name
            namespace[name] = value
    if not namespace:
        return Session
    return type(f"{config.model.__name__}Session", (Session,), namespace)


def _merge_rules(
    config: FactoryConfig, columns: Mapping[str, Any]
) -> dict[str, tuple[tuple[str, ...], MergeRule]]:
    rules: dict[str, tuple[tuple[str, ...], MergeRule]] = {}
    owners: dict[str, str] = {}
    for impl in config.pm.hook.session_merge_rules.get_hookimpls():
        arguments = {"model": config.model}
        answer = impl.function(*[arguments[name] for name in impl.argnames]) or {}
        for key, rule in answer.items():
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


def includeme(config: Configurator) -> None:
    """``config.include('sessions_kernel')``: set the session factory from ``session.*``.

    Discovers the installed plugins, keeps those the model activates,
    validates every setting and registers the factory. Logs which expiry is
    in force (logger ``sessions_kernel``, INFO). The factory is also
    stored in ``registry['sessions_kernel.factory']`` for tools.
    """
    factory = session_factory(**factory_args_from_settings(config.get_settings()))
    log.info("%s", factory.config.expiry)
    config.set_session_factory(factory)
    config.registry["sessions_kernel.factory"] = factory
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
