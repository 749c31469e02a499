"""Hook specifications: the contract between the kernel and its plugins.

A plugin is a module (or any object) with functions marked
``@sessions_kernel.hookimpl`` whose names are the hooks below. It is listed
in the entry-point group ``sessions_kernel.plugins`` of its distribution and
is *active* for a session factory exactly when the factory's model subclasses
one of the mixins its :func:`session_mixins` returns. Inactive plugins are
not called at all, but for :func:`session_deploy_checks` (which tells them
so) and :func:`session_commands` (``psessions`` builds its command line
before it reads any configuration). A hook implementation may accept fewer
arguments than the specification names; pluggy passes only those it asks
for.

Hooks come in five groups:

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
* the stored rows, on the request path and after commits:
  :func:`session_fallback_token` (a session a request without a cookie
  continues), :func:`session_row_lookup` (a row served without SQL) and
  :func:`session_rows_changed` (what committed);
* maintenance (called by tools and listings, never on the request path):
  :func:`session_expired_conditions`, :func:`session_indexes`, :func:`session_ddl`,
  :func:`session_expires_at`, :func:`session_last_active`,
  :func:`session_details`, :func:`session_deploy_checks`,
  :func:`session_commands`.

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

import pluggy

PROJECT = "sessions_kernel"

#: Mark the specifications of hooks a plugin offers other plugins (see :func:`session_addhooks`).
hookspec: pluggy.HookspecMarker = pluggy.HookspecMarker(PROJECT)
#: Mark a plugin's hook implementations: ``@sessions_kernel.hookimpl``. The kernel's own
#: :mod:`~sessions_kernel.builtin` plugin uses this marker too; there is no other.
hookimpl: pluggy.HookimplMarker = pluggy.HookimplMarker(PROJECT)

#: The ``reason`` of :func:`session_invalidated` when the application called
#: :meth:`Session.invalidate() <sessions_kernel.Session.invalidate>` (a logout).
INVALIDATED = "invalidated"

# The specifications, a module per group (the groups above), all of them re-exported here:
# ``add_hookspecs(sessions_kernel.hookspecs)`` registers what this namespace holds. They
# come after the markers, which they import.
from .configuration import (  # noqa: E402
    session_addhooks,
    session_attributes,
    session_check_settings,
    session_expiry_policy,
    session_includeme,
    session_merge_rules,
    session_mixins,
    session_settings,
)
from .lifecycle import (  # noqa: E402
    session_invalidated,
    session_regenerated,
)
from .maintenance import (  # noqa: E402
    session_commands,
    session_ddl,
    session_deploy_checks,
    session_details,
    session_expired_conditions,
    session_expires_at,
    session_indexes,
    session_last_active,
)
from .rows import (  # noqa: E402
    session_fallback_token,
    session_row_lookup,
    session_rows_changed,
)
from .stages import (  # noqa: E402
    session_cookie_attributes,
    session_extend,
    session_load,
    session_persist,
    session_renew,
    session_validate,
)

__all__ = [
    "INVALIDATED",
    "PROJECT",
    "hookimpl",
    "hookspec",
    "session_addhooks",
    "session_attributes",
    "session_check_settings",
    "session_commands",
    "session_cookie_attributes",
    "session_ddl",
    "session_deploy_checks",
    "session_details",
    "session_expired_conditions",
    "session_expires_at",
    "session_expiry_policy",
    "session_extend",
    "session_fallback_token",
    "session_includeme",
    "session_indexes",
    "session_invalidated",
    "session_last_active",
    "session_load",
    "session_merge_rules",
    "session_mixins",
    "session_persist",
    "session_regenerated",
    "session_renew",
    "session_row_lookup",
    "session_rows_changed",
    "session_settings",
    "session_validate",
]
