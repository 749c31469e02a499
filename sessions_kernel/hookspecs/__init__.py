"""Hook specifications: the contract between the kernel and its plugins.

A plugin is a module (or any object) with functions marked
``@sessions_kernel.hookimpl`` whose names are the hooks below. It is listed
in the entry-point group ``sessions_kernel.plugins`` of its distribution and
is *active* for a session factory exactly when the factory's model subclasses
one of the mixins its :func:`session_mixins` returns. Inactive plugins are
not called at all, but for :func:`session_deploy_checks` (which tells them
so). A hook implementation may accept fewer arguments than the
specification names; pluggy passes only those it asks for.

Hooks come in four groups:

* configuration (called once per plugin manager or factory, at start-up):
  :func:`session_addhooks`, :func:`session_mixins`, :func:`session_settings`,
  :func:`session_check_settings`, :func:`session_expiry_policy`,
  :func:`session_attributes`, :func:`session_merge_rules`, and
  :func:`session_includeme` when the application includes the kernel;
* the request pipeline, in this order: :func:`session_load`,
  :func:`session_validate`, then before commit :func:`session_extend`,
  :func:`session_renew`, :func:`session_persist`, and
  :func:`session_cookie_attributes` when a cookie is sent;
* the session's lifecycle, between the stages, when the id changes or the
  session ends: :func:`session_regenerated`, :func:`session_invalidated`
  (and ``session_user_changed`` of sessions-userid for the user);
* maintenance (called by tools and listings, never on the request path):
  :func:`session_expired_conditions`, :func:`session_indexes`,
  :func:`session_expires_at`, :func:`session_last_active`,
  :func:`session_details`, :func:`session_deploy_checks`.

The ``session`` argument of the pipeline hooks is the request's
:class:`sessions_kernel.Session`. What plugins use of it (the attributes are
declared on the class, and reserved: no plugin's :func:`session_attributes`
may claim one):

``session.row``
    the model instance, or ``None`` while the session has no row yet.
``session.now``
    the time of this request in whole seconds, from the factory's clock. Never
    read the time any other way.
``session.new``
    ``True`` until the session has a row in the database.
``session.settings``
    the settings in force for this session (:class:`SessionSettings`).
``session.cookie_extras``
    a dict of small byte strings the cookie carries beside the token, keyed
    by a name the plugin picks. Changing it makes the kernel send the cookie.
``session.stash``
    the plugins' state for this request (:class:`~sessions_kernel.Stash`):
    what one hook computes and a later hook of the same request needs, under
    a :class:`~sessions_kernel.StashKey` of the plugin's own. Keep nothing in
    attributes of your own on the session.
``session.dirty``
    whether the session will be written in this request so far.
``session.get_column(name)``, ``session.set_column(name, value)``
    read and assign a column of the plugin's own, also on a new session
    whose row does not exist yet: a value set there makes the kernel insert
    the row with it. ``invalidate()`` drops such values, ``regenerate_id()``
    keeps them.
``session.notify(event)``
    send an event of the plugin's own through Pyramid's registry (nothing is
    done when no subscriber listens).
``session.request``, ``session.model``
    the Pyramid request and the model class.
``session.hook``
    the factory's hook relay, to call a hook that a plugin offers
    (:func:`session_addhooks`), e.g. ``session.hook.session_user_changed(...)``.
``session.execute_logout(statement)``
    run a ``DELETE`` of session rows that must hold even if the request's
    transaction is then aborted (a logout feature of the plugin's own).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pyramid.config import Configurator
    from pyramid.registry import Registry
    from sqlalchemy import ColumnElement

    from .deploy import Finding
    from .factory import SessionFactory
    from .merge import MergeRule
    from .model import BaseMixin
    from .session import Session
    from .settings import Setting

PROJECT = "sessions_kernel"

#: Mark the specifications of hooks a plugin offers other plugins (see :func:`session_addhooks`).
hookspec = pluggy.HookspecMarker(PROJECT)
#: Mark a plugin's hook implementations: ``@sessions_kernel.hookimpl``. The kernel's own
#: :mod:`~sessions_kernel.builtin` plugin uses this marker too; there is no other.
hookimpl = pluggy.HookimplMarker(PROJECT)

#: The ``reason`` of :func:`session_invalidated` when the application called
#: :meth:`Session.invalidate() <sessions_kernel.Session.invalidate>` (a logout).
INVALIDATED = "invalidated"


# -- configuration ------------------------------------------------------------


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


# -- the request pipeline -------------------------------------------------------


@hookspec
def session_load(session: Session) -> None:
    """The session was touched for the first time in this request.

    :param session: the request's session.

    Called once, after the cookie was decrypted and the row fetched by its
    primary key (``session.row``; ``None`` for a new session), before
    :func:`session_validate`. ``session.cookie_extras`` holds what the cookie
    carried. Do not touch ``session`` data here, and issue no SQL: the read of
    an existing session is one statement. The return value is ignored.
    """


@hookspec(firstresult=True)
def session_validate(session: Session) -> str | None:
    """Decide whether a loaded row may be used; return the reason if not.

    :param session: the request's session; ``session.row`` is the stored row.

    Called after :func:`session_load`, only for a session whose row was found.
    Return a short reason (``"idle timeout"``) to reject the row: the kernel
    deletes it, notifies :class:`~sessions_kernel.events.SessionRejected` with
    the reason, and starts a new, empty session. Return ``None`` to accept.
    The first plugin to reject wins; later ones are not called. After a
    rejection :func:`session_invalidated` follows at once, with the
    rejected row and the reason; no other hook sees that row again (the new
    session gets no :func:`session_load`). Issue no SQL. Next, the view
    runs; then, before commit, :func:`session_extend`.
    """


@hookspec
def session_extend(session: Session) -> None:
    """Before commit: decide whether an otherwise unchanged session needs a write.

    :param session: the request's session; ``session.row`` is the stored row.

    Called for every session that has a row (not for a new one), after the
    view and after the kernel applied the request's changes of data, flash
    and settings to the row, before :func:`session_renew`.
    ``session.dirty`` tells whether the session will be written anyway. To
    ask for a write, assign the row's columns (e.g. a later expiry); the
    kernel writes exactly the columns that changed (``updated`` is left
    alone). Assign only what differs: any assignment is a write. The return
    value is ignored.
    """


@hookspec
def session_renew(session: Session) -> None:
    """Before commit: rotate secrets the cookie carries.

    :param session: the request's session; ``session.new`` with a row means
        the row is about to be inserted.

    Called after :func:`session_extend` for every session that has or is
    about to get a row. Change ``session.cookie_extras`` to have the kernel
    send a new cookie, and the row's columns to record what was offered.
    Next: :func:`session_persist` if the row is written. The return value is
    ignored.
    """


@hookspec
def session_persist(session: Session, row: BaseMixin) -> None:
    """Before commit: the row is about to be inserted or updated.

    :param session: the request's session.
    :param row: the model instance (``session.new`` tells an insert from an
        update).

    Set columns that every write must refresh (an idle expiry, say). Called
    after :func:`session_extend` and :func:`session_renew`, only when a write
    happens. Not called for a deleted session. The kernel then writes the
    row (merging with a concurrent write if needed) and decides the cookie
    (:func:`session_cookie_attributes`). The return value is ignored.
    """


@hookspec
def session_cookie_attributes(session: Session, attributes: dict[str, Any]) -> None:
    """Adjust the attributes of the cookie about to be set or deleted.

    :param session: the request's session.
    :param attributes: keyword arguments for WebOb's ``Response.set_cookie``
        (``max_age``, ``path``, ``domain``, ``secure``, ``httponly``,
        ``samesite``), already filled from the settings in force. Change it
        in place.

    Called before commit, after :func:`session_persist`, when the kernel has
    decided to send or delete the cookie; possibly twice in one request (the
    old cookie to delete, the new one to set), and for a rejected session
    when it is dropped. The return value is ignored; the cookie is sent only
    once the transaction committed.
    """


# -- the session's lifecycle ------------------------------------------------------


@hookspec
def session_regenerated(session: Session, old_id: str, new_id: str) -> None:
    """The session was given a new id, keeping its data: forget what the old id was granted.

    :param session: the request's session; ``session.session_id`` is already
        ``new_id``.
    :param old_id: the id the session had. For a stored session the key of
        its row; for a session without a row yet (``session.new``), the id
        it would have been stored under.
    :param new_id: the new id. The row is stored under it before commit (at
        once with ``regenerate_id(hold=True)``); a new session's row is
        inserted under it.

    Called by :meth:`Session.regenerate_id()
    <sessions_kernel.Session.regenerate_id>` after the new id was assigned
    (and, for a stored session, after
    :class:`~sessions_kernel.events.SessionRegenerated` was sent): at a
    login and at every change of privilege (sessions-userid's
    ``request.session.userid = ...`` and ``remember()``, before its
    ``session_user_changed``), by ``invalidate_user_sessions(...,
    except_current=True)``, and by the application. Also for a session that
    has no row yet: its id changes all the same. Not called by
    :meth:`~sessions_kernel.Session.invalidate` (see
    :func:`session_invalidated`), nor by a peek.

    Use it for what belongs to one id rather than to the session: a
    privilege granted for a while ("sudo mode"), an id recorded in
    ``session.stash``. Assign columns (``session.set_column``) or change
    ``session.cookie_extras``; issue no SQL, and do not call
    ``regenerate_id()`` or ``invalidate()`` from here. Called during the
    view (between :func:`session_validate` and :func:`session_extend`),
    possibly more than once in a request, or from a plugin's hook. The
    return value is ignored.
    """


@hookspec
def session_invalidated(session: Session, reason: str, old_row: Any | None) -> None:
    """The session ended: its row, if it had one, was deleted, and a new, empty one began.

    :param session: the request's session, already the new one:
        ``session.new`` is true, ``session.row`` is ``None``, it holds no
        data, no plugin columns and no cookie extras. ``session.stash`` is
        kept: drop what your plugin kept there for the ended session.
    :param reason: :data:`INVALIDATED` (``"invalidated"``) when the
        application called :meth:`Session.invalidate()
        <sessions_kernel.Session.invalidate>` (a logout: sessions-userid's
        ``forget()``, ``invalidate_user_sessions()`` of the current user);
        otherwise the reason a plugin's :func:`session_validate` rejected the
        stored row for (``"idle timeout"``, ``"renewal violation"``, the
        kernel's ``"max age"``): a logout too.
    :param old_row: the ended session's row, deleted and detached from the
        database session; its columns can be read (``old_row.id``, a user
        column), not its unloaded relationships. ``None`` when the session
        had no row yet (``invalidate()`` of a new session): nothing was
        deleted.

    Called by ``invalidate()`` during the view, after
    :class:`~sessions_kernel.events.SessionInvalidated` was sent (for a
    stored session); and at the first use of a session whose stored row a
    plugin rejected, right after :func:`session_validate` and
    :class:`~sessions_kernel.events.SessionRejected`, before the view. Not
    called for a session another request deleted (the cookie then names no
    row: :class:`~sessions_kernel.events.SessionNotFound`), nor by a peek.

    The new session runs the rest of the pipeline like any new session: it
    is stored (and gets a cookie) only if something is put in it, so
    changing nothing keeps a logout a logout. Issue no SQL, and do not call
    ``regenerate_id()`` or ``invalidate()`` from here. Next, the view runs
    (or goes on); before commit, :func:`session_renew` and
    :func:`session_persist` if the new session stores anything. The return
    value is ignored.
    """


# -- maintenance ----------------------------------------------------------------


@hookspec
def session_expired_conditions(
    model: type[BaseMixin], settings: Mapping[str, Any], now: int
) -> Sequence[ColumnElement[bool]] | None:
    """Return SQL conditions that are true for rows this plugin considers expired.

    :param model: the model class; build conditions from its columns.
    :param settings: the global settings in force.
    :param now: the current time in whole seconds.

    A row is expired when any condition of any active plugin holds; return
    ``None`` or nothing for "no rule of mine applies". Used by garbage
    collection (``psessions gc``) and by listings that leave expired rows out;
    never called per request. It must agree with :func:`session_validate`
    and :func:`session_expires_at`.
    """


@hookspec
def session_indexes(model: type[BaseMixin]) -> Sequence[str | Sequence[str]] | None:
    """Return the indexes the session table needs for this plugin's queries.

    :param model: the model class.

    Return column names (one single-column index each) or sequences of
    column names (one composite index each, in that order). The kernel names
    them ``ix_<table>_<columns>``, leaves out those the table already has
    (an index or primary key starting with those columns), and offers the
    rest to the model through ``sessions_kernel.add_indexes(Model)`` and to
    ``psessions indexes``. Called by tools, never per request.
    """


@hookspec
def session_expires_at(row: BaseMixin, settings: Mapping[str, Any]) -> int | None:
    """Return when a stored row expires under this plugin's rule, or ``None``.

    :param row: a model instance read from the database (not the request's).
    :param settings: the settings in force for that row: the global values,
        with the row's own values for runtime-configurable settings.

    The kernel takes the earliest answer of all active plugins (see
    ``SessionFactory.describe``); listings such as "your sessions" show it.
    Issue no SQL. It must agree with :func:`session_validate` and
    :func:`session_expired_conditions`: a row is expired at and after the
    time returned.
    """


@hookspec
def session_last_active(row: BaseMixin, settings: Mapping[str, Any]) -> int | None:
    """Return the last time the row's session was used, if this plugin records it.

    :param row: a model instance read from the database.
    :param settings: as for :func:`session_expires_at`.

    The kernel records ``row.updated`` only when the session's own content
    changed; a plugin that writes on read-only activity (an idle extension)
    knows a later time. The kernel shows the latest of ``row.updated`` and
    every answer. Issue no SQL.
    """


@hookspec
def session_details(row: BaseMixin, settings: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Return what a listing should show of a stored row beyond the kernel's fields.

    :param row: a model instance read from the database (not the request's).
    :param settings: as for :func:`session_expires_at`.

    Return a mapping of small, displayable values (strings, numbers,
    ``None``) read from the plugin's own columns, or ``None``. The kernel
    merges every active plugin's answer into ``SessionInfo.details`` (see
    ``SessionFactory.describe``), which "your sessions" listings pass on.
    Prefix the keys with your plugin's name: two plugins reporting one key is
    a :class:`~sessions_kernel.SessionError`. Called with
    :func:`session_expires_at` and :func:`session_last_active`, by tools and
    listings only, never per request. Issue no SQL.
    """


@hookspec
def session_deploy_checks(
    settings: Mapping[str, Any],
    model: type[BaseMixin],
    registry: Registry | None,
    active: bool,
) -> Iterable[Finding] | None:
    """Report the settings of this plugin's feature that are weak for a production deployment.

    :param settings: the global settings in force, parsed (read-only). For an
        inactive plugin its own settings are absent: its feature is off.
    :param model: the factory's model class.
    :param registry: the Pyramid application's registry (``registry.settings``
        holds every setting of the ini file's app section, the execution
        policy, the tweens); ``None`` when a factory is checked on its own.
    :param active: whether ``model`` activates this plugin. Unlike every other
        hook, this one is called for each *installed* plugin, so that a plugin
        can say what is missing when the model lacks its mixin (a feature the
        application installed but never turned on). Return nothing when
        ``active`` is false unless that is a weakness.

    Return (or yield) :class:`~sessions_kernel.deploy.Finding` objects, one per
    weakness: ``id``, the name a user silences it by, as
    ``<your plugin's name>.<what>`` (the entry-point name ``psessions
    plugins`` lists; the kernel puts it in front of an id that lacks it, so
    that two plugins' ids never collide), ``setting``, the setting to change,
    ``message``, what is weak with the value in force and what an attacker
    or a failure gets from it, and ``fix``, what to set instead. Return
    ``None`` or nothing when all is well. Report choices that are legal, and
    may suit development, but are weak in production (a timeout left off, a
    long one); a combination that is wrong everywhere belongs in
    :func:`session_check_settings`, which stops the application before this
    hook could run. A user silences a finding on purpose by its id
    (``psessions.silenced_checks`` in the ini file, or ``--ignore ID``)::

        from sessions_kernel.deploy import Finding

        @hookimpl
        def session_deploy_checks(settings, active):
            if active and settings["ttl"] is None:
                yield Finding(
                    "ttl.off", "session.ttl", "session.ttl is not set: sessions never expire",
                    "set session.ttl, in seconds",
                )

    Called by ``psessions CONFIG check`` (:mod:`sessions_kernel.deploy`) after
    the application started, once per plugin, never per request. The kernel
    reports its own findings (cookie attributes, the key, the data format,
    the transaction and retry setup, the database and the server's workers,
    and ``kernel.expiry`` when no plugin's :func:`session_expiry_policy`
    answers), then the plugins', by plugin name; an exception a plugin's
    implementation raises is reported as ``<plugin>.check_failed``. Issue no
    SQL. Modelled on Django's system checks (``check --deploy``).
    """
