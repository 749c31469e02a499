"""The request pipeline's hooks, one per stage, in the order the kernel calls them.

At the first use of ``request.session`` :func:`session_load` and
:func:`session_validate`; before commit :func:`session_extend`,
:func:`session_renew`, :func:`session_persist`, and
:func:`session_cookie_attributes` when a cookie is sent. Part of
:mod:`sessions_kernel.hookspecs`, which re-exports every hook: import them,
and refer to them, from there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import hookspec

if TYPE_CHECKING:
    from ..model import BaseMixin
    from ..session import Session


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

    A session first used with no transaction begun (after pyramid_tm
    committed: a response callback, a ``NewResponse`` subscriber; pshell
    before ``request.tm.begin()``) is loaded read-only: this hook and
    :func:`session_load` run as usual, but a rejection deletes nothing, sends
    no ``SessionRejected`` and calls no :func:`session_invalidated` (the session is just
    empty; the next request acts on it). When ``request.tm`` then begins a
    transaction (pyramid_tm's, under a tween that read the session; pshell's
    ``request.tm.begin()``), that load is dropped and the session is loaded
    again in the transaction: :func:`session_load` and this hook run a second
    time in the request, on the row as it is then, and a rejection acts as
    usual. Keep what the two hooks keep in ``session.stash`` recomputable.
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
