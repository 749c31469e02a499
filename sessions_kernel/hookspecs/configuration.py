"""Configuration hooks: called once per plugin manager or factory, at start-up.

Discovery (:func:`session_addhooks`, :func:`session_mixins`,
:func:`session_settings`), building a factory (:func:`session_check_settings`,
:func:`session_expiry_policy`, :func:`session_attributes`,
:func:`session_merge_rules`) and :func:`session_includeme` when the
application includes the kernel. Part of :mod:`sessions_kernel.hookspecs`,
which re-exports every hook: import them, and refer to them, from there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspec

if TYPE_CHECKING:
    from pyramid.config import Configurator

    from ..factory import SessionFactory
    from ..merge import MergeRule
    from ..model import BaseMixin
    from ..settings import Setting


@hookspec(historic=True)
def session_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    """Add hook specifications of this plugin's own, for other plugins to implement.

    :param pluginmanager: the :class:`pluggy.PluginManager` the plugin is being
        registered with. Call ``pluginmanager.add_hookspecs(module)`` with a
        module of functions marked ``@sessions_kernel.hookspec``.

    Called as the plugin is registered, on every plugin manager the kernel
    builds (one at discovery, one per session factory), before any other
    hook; the specifications of the plugins registered so far are in place
    by the time the kernel checks that every implementation has one, so a
    misspelt hook name still fails at start-up. Call the new hooks through
    the factory's manager (``SessionFactory.hook``). A plugin that implements
    a hook of another plugin marks it ``@hookimpl(optionalhook=True)``, so
    that it works without that plugin installed or active. Modelled on
    pytest's ``pytest_addhooks``. The return value is ignored.
    """


@hookspec
def session_mixins() -> Sequence[type]:
    """Return the model mixins that activate this plugin.

    Called once per plugin when the kernel discovers plugins, before every
    other hook. The plugin is active for a factory when its model subclasses
    any class returned; list the plain mixin first and its runtime-configurable
    subclass after it (their order names them in error messages). A plugin
    that returns nothing is never active. Next: :func:`session_settings`.
    """


@hookspec
def session_settings() -> Sequence[Setting]:
    """Return the :class:`~sessions_kernel.Setting` objects this plugin owns.

    Called once per plugin at discovery, for installed plugins whether active
    or not, so that the kernel can tell "unknown setting" from "setting for a
    feature your model does not include". Names are global across plugins:
    two plugins declaring one name is a start-up error. A setting becomes
    runtime-configurable for models that have a column of its name (ship that
    column in your ``Config...Mixin``).

    Called after :func:`session_mixins`. When a factory is built, the kernel
    parses each value with its setting's ``parse``, then calls
    :func:`session_check_settings`.
    """


@hookspec
def session_check_settings(settings: Mapping[str, Any]) -> Iterable[str] | None:
    """Check rules that involve more than one setting; return the problems found.

    :param settings: every setting of every active plugin, parsed; at start-up
        the global values, at ``settings.save()`` the values one session would
        have after the save.

    Return messages (strings) that say what is wrong and how to fix it, or
    ``None``/empty when all is well. The kernel raises them as a
    :class:`~pyramid.exceptions.ConfigurationError` at start-up and as
    :class:`~sessions_kernel.SettingsError` at runtime (and nothing is
    saved). Called after each setting was parsed on its own (see
    :func:`session_settings`); at start-up :func:`session_expiry_policy`
    follows.
    """


@hookspec
def session_expiry_policy(settings: Mapping[str, Any]) -> str | None:
    """Say how this plugin expires *every* stored session, in a few words; ``None`` if it does not.

    :param settings: the global settings in force, parsed.

    Return a short description with the values in force, such as
    ``"idle_timeout 1800 s"``, only when, under these settings, every stored
    session expires by this plugin's rule (what :func:`session_validate`,
    :func:`session_expired_conditions` and :func:`session_expires_at`
    enforce), whatever per-session settings it may have. Return ``None``
    when the feature is off or leaves some sessions unexpired (a timeout
    only some sessions set for themselves).

    No session lives forever unless the application chose it: when no active
    plugin answers, the kernel's ``session.max_age`` applies (a session ends
    that long after its creation). The kernel logs the answers at start-up.
    Called once per factory, after :func:`session_check_settings`, before
    :func:`session_attributes`.
    """


@hookspec
def session_attributes() -> Mapping[str, Any]:
    """Return attributes to add to the factory's session class, by name.

    Use it to give ``request.session`` an API of the plugin's own (a
    ``property`` for a column, a method). Called once per factory; the kernel
    builds a subclass of :class:`~sessions_kernel.Session` for that factory
    only, so two factories never see each other's attributes. Prefix the
    names with your plugin's name. Two active plugins adding one name, a
    name starting with ``_``, or a name the kernel reserves
    (:data:`~sessions_kernel.session.RESERVED_ATTRIBUTES`: the attributes
    plugins rely on, such as ``row``, ``now`` and ``stash``, and the
    session's own API) is a :class:`~pyramid.exceptions.ConfigurationError`
    at start-up naming the plugin. Per-request state belongs in
    ``session.stash``, not in attributes. Called after
    :func:`session_expiry_policy`, before any request.
    """


@hookspec
def session_merge_rules(model: type[BaseMixin]) -> Mapping[str | tuple[str, ...], MergeRule] | None:
    """Say how this plugin's columns merge when two requests of one session both changed them.

    :param model: the factory's model class.

    Two requests of one browser often run at once (a page's parallel API
    calls). Each read the row; the second to write finds that the first
    changed it. The kernel then re-reads the row (locked) and applies only
    what the second request changed: a column only one of them changed
    takes that request's value. A column both changed is a conflict, and
    the request fails with :class:`~sessions_kernel.SessionConflictError`
    (pyramid_retry runs it again) unless its plugin declared a rule here.
    Declare a rule for every column that requests change as bookkeeping
    (an expiry a read extends, a counter, the last address seen), so that
    parallel reads never conflict.

    Return a mapping; each key is either

    * a column name, with a rule ``rule(base, mine, theirs) -> value``:
      ``base`` is the value this request read, ``mine`` the value it wants
      to write, ``theirs`` the value the concurrent request wrote; or
    * a tuple of column names that only make sense together (a protocol's
      state), with a rule that gets three dicts of those columns and
      returns a dict of them. It is called when both requests changed any
      column of the group.

    A rule returns the merged value, or raises
    :class:`sessions_kernel.merge.MergeConflict` when no merge is right.
    :mod:`sessions_kernel.merge` has common rules: ``latest`` (the later
    expiry wins), ``earliest``, ``keep_theirs``, ``add_both``. A rule must be
    a pure function of its arguments: it runs inside the write, holding the
    row's lock. Columns are the plugin's own; naming a kernel column, a
    column the model lacks, or a column another plugin claimed is a start-up
    error.

    On PostgreSQL at REPEATABLE READ or SERIALIZABLE the database refuses
    the second write before any rule can run. There a request that changed
    only columns whose rules are marked
    :func:`~sessions_kernel.merge.droppable` drops its write (the
    concurrent one stands, and the cookie is left as the browser has it)
    instead of failing; otherwise it fails with a retryable error.

    Called once per factory, after :func:`session_attributes`; next, when
    the application includes the kernel, :func:`session_includeme`.
    """


@hookspec
def session_includeme(config: Configurator, factory: SessionFactory) -> None:
    """Add to the Pyramid application's configuration what this plugin needs.

    :param config: the application's :class:`pyramid.config.Configurator`,
        inside ``config.include('sessions_kernel')``.
    :param factory: the :class:`~sessions_kernel.SessionFactory` just built
        (``factory.model``, the settings in force in ``factory.config.values``).

    What a Pyramid add-on does in its ``includeme``: add view predicates,
    request methods, subscribers, tweens, views. The application includes the
    kernel only; it does not include the plugin, whose mixin in the model is
    what turns it on. Called once, for active plugins only, after the factory
    was built (after :func:`session_merge_rules`) and set as the application's
    session factory, before any request. Not called for a factory built with
    :func:`~sessions_kernel.session_factory` alone: pass it to
    :func:`~sessions_kernel.register_factory` (as the test kit does).

    The directives are Pyramid's actions as usual: they take effect at
    ``config.commit()`` (at once with an autocommitting configurator), and
    since they belong to the kernel's include, the application's own
    directives override them where both set the same thing. ``config``'s
    package is the kernel's, not the plugin's: give views, templates and
    assets by absolute dotted names or asset specifications
    (``"sessions_device:templates/x.jinja2"``), or use
    ``config.with_package(__name__)``. The return value is ignored.
    Modelled on pytest's ``pytest_configure`` and datasette's
    ``register_routes``.
    """
