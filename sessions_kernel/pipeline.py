"""The pipeline: one request's session through the stages, in order.

:meth:`Pipeline.protocol` is the one place to read what the kernel does with
a session, and when (compare pytest's ``runtestprotocol``): load, validate,
then, before the request's transaction commits, extend, renew and persist.
The steps of each stage follow it in this module. The cookie they decide is
built by :mod:`~sessions_kernel.cookies`; when it runs is
:mod:`~sessions_kernel.binding`'s business; the SQL is
:class:`~sessions_kernel.storage.RowStorage`'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm.attributes import instance_state

from . import events
from .binding import NextTransaction, TransactionBinding, find_transaction
from .changes import ChangeLog
from .cookies import LINEAGE_EXTRA, CookieTransport, row_id
from .crypto import TOKEN_BYTES
from .errors import InconsistentDataError, SessionConflictError, SessionError
from .row_table import LINEAGE_CHARS
from .state import SessionState, forget_load, new_extras

if TYPE_CHECKING:
    from .factory import SessionFactory
    from .session import Session

__all__ = [
    "Pipeline",
    "fetch_dbsession",
    "first_use",
    "join",
    "no_implementation",
    "reload_in",
    "start_new",
]


def no_implementation(**kwargs: Any) -> None:
    """What a request stage is while no plugin implements its hook (``RequestHooks``)."""
    return None


def _inconsistent(row: Any, column: str, problem: str) -> InconsistentDataError:
    return InconsistentDataError(
        f"session {str(row.id)[:12]}… ({type(row).__name__}): column {column!r} {problem}. "
        "Delete the row or repair the column."
    )


def decode_row(row: Any, serializer: Any) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """A stored row's data and flash, checked: :class:`InconsistentDataError` if they are not
    what the kernel stores (a dict, queues of lists, ``created`` in seconds)."""
    try:
        data = serializer.loads(row.data)
    except Exception as exc:
        raise _inconsistent(row, "data", f"cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise _inconsistent(row, "data", f"holds {type(data).__name__}, not a dict")
    flash: Any = {}
    if row.flash is not None:
        try:
            flash = serializer.loads(row.flash)
        except Exception as exc:
            raise _inconsistent(row, "flash", f"cannot be read: {exc}") from exc
        if not (isinstance(flash, dict) and all(isinstance(v, list) for v in flash.values())):
            raise _inconsistent(row, "flash", "does not map queues to lists")
    if not isinstance(row.created, int):
        raise _inconsistent(row, "created", f"holds {row.created!r}, not seconds")
    return data, flash


class Pipeline:
    """The stages of one request's session, and the steps each takes.

    Made when the session joins the request's transaction: at its first use
    when the browser sent a session cookie, else at its first change. A peek
    (``SessionFactory.peek``) uses its load steps without starting it.
    """

    __slots__ = ("binding", "factory", "fallback", "reader", "run", "served", "session")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.factory: SessionFactory = session._factory
        #: the session's part in the request's transaction (``None`` for a peek)
        self.binding: TransactionBinding | None = session._binding
        self.run: Iterator[None] | None = None
        #: the row the load stage found was served by a plugin (``session_row_lookup``)
        self.served = False
        #: the SQLAlchemy session a read-only load reads with (:meth:`load_readonly`)
        self.reader: Any = None
        #: the token a plugin named for a request without a cookie (session_fallback_token)
        self.fallback: bytes | None = None

    @property
    def bound(self) -> TransactionBinding:
        """The transaction binding: every stage but a peek's runs in a transaction."""
        assert self.binding is not None
        return self.binding

    def start(self, *, loaded: bool = False) -> None:
        """Run the load and validate stages (only validate, if ``loaded``); then pause."""
        run = self.run = self.protocol(loaded=loaded)
        next(run)

    def load_readonly(self) -> None:
        """The load and validate stages of a session first used with no transaction begun.

        After the request's transaction committed (a response callback, a
        ``NewResponse`` subscriber) or before one began (pshell before
        ``request.tm.begin()``), the session can be read: the row is fetched
        (one SELECT, unlocked) in a SQLAlchemy session of its own, which the
        closed request's transaction cannot reach, and validated. Nothing is
        written: a row a plugin rejects is not deleted (the next request
        does), the session just starts empty. A later change joins the
        transaction ``request.tm`` has then (:func:`join`), or raises.
        """
        session = self.session
        stages = self.factory.stages
        bind = session._dbsession.get_bind(self.factory.model)
        with OrmSession(bind=bind, autoflush=False) as reader:
            self.reader = reader
            try:
                self.take(*self.choose_cookie())
            finally:
                self.reader = None
        stages.session_load(session=session)
        row = session.row
        if row is not None:
            if stages.session_validate(session=session):
                session._start_new()
            else:
                self.read_row(row)
        # a plugin's change of the cookie extras is a change: it joins first
        joining = new_extras(session)
        dict.update(joining, session.cookie_extras)
        session.cookie_extras = joining

    def resume(self) -> None:
        """Run the extend, renew and persist stages (the before-commit hook calls this)."""
        assert self.run is not None
        next(self.run, None)

    def protocol(self, *, loaded: bool = False) -> Iterator[None]:
        """The pipeline of one request's session: every stage, in its order.

        The session starts it at its first use: it runs the load and validate
        stages, then pauses at ``yield`` while the application uses the
        session. The before-commit hook of the request's transaction
        (:meth:`resume`) runs it on for the extend, renew and persist stages.
        The cookie it decides is sent by the response once the commit
        succeeded.

        A request that sent no session cookie has nothing to load or
        validate: the session starts its new session itself, and the
        pipeline starts only at the session's first change, ``loaded``.
        """
        session = self.session
        stages = self.factory.stages
        if not loaded:
            # load: the cookie decrypted and authenticated, the row fetched by its key (or
            # the token a plugin named for a request without a cookie)
            if self.fallback is None:
                self.take(*self.choose_cookie())
            else:
                self.take_fallback(self.fallback)
            stages.session_load(session=session)
        # validate: each plugin may reject a stored row; a rejected row is deleted (a row
        # loaded read-only was validated then: see load_readonly)
        if session.row is not None and not loaded:
            reason = stages.session_validate(session=session)
            if reason and self.served:  # judged on a copy: the stored row may be newer
                reason = self.validate_stored(reason)
            if reason:
                self.reject(reason)
            elif session.row is not None:
                self.read_row(session.row)

        yield  # the application uses the session; then its transaction is about to commit

        data, flash = self.settle()
        row = session.row
        unstored = False
        if row is None:
            if session.dirty:  # a new session that holds something gets its row: no extend
                row = self.new_row(data, flash)
                # renew: plugins put their first secrets in the cookie
                stages.session_renew(session=session)
                # persist: plugins' columns set, then the INSERT
                stages.session_persist(session=session, row=row)
                self.insert_row(row)
                send = True
            else:  # nothing to store: no row, at most a cookie-only session
                send = unstored = self.cookie_only()
        else:
            self.apply_changes(row, data, flash)
            # extend: plugins decide whether an otherwise unchanged session needs a write
            stages.session_extend(session=session)
            # renew: plugins rotate secrets the cookie carries
            extras = dict(session.cookie_extras)
            stages.session_renew(session=session)
            # persist: plugins' columns set, then the changed columns written (or merged)
            written = False
            if session.dirty:
                stages.session_persist(session=session, row=row)
                written = self.write_row(row, extras)
            send = self.resend_cookie(written, extras)
        # the cookie to set or delete; the response sends it once the transaction committed
        self.decide_cookie(send, unstored)
        binding = self.bound
        binding.sealed = True
        self.flush()
        row = session.row
        if row is not None and instance_state(row).session_id is not None:
            # what the commit stores; it expires the row's attributes (see keep_row)
            binding.stored = self.factory.storage.stored_values(row)

    # -- the load and validate stages ------------------------------------------------------
    def choose_cookie(self) -> Any:
        """What the request's cookies name (see :meth:`CookieTransport.choose
        <sessions_kernel.cookies.CookieTransport.choose>`)."""
        session = self.session
        return session._cookies.choose(
            session.request, self.fetch_row, self.lineage_lives, session.notify
        )

    def fetch_row(self, sid: str) -> Any:
        """The row by its primary key; locked until commit on a retried attempt or while
        contended, never for a peek (see :meth:`RowStorage.fetch
        <sessions_kernel.storage.RowStorage.fetch>`)."""
        session = self.session
        retried = bool(session.request.environ.get("retry.attempt"))
        factory = self.factory
        storage = factory.storage
        lookup = factory.stages.session_row_lookup
        reader = self.reader
        if lookup is not no_implementation and not (retried or session._peeking or reader):
            row = self.served_row(sid, lookup)
            if row is not None:
                return row
        if reader is not None:  # read-only: no lock, in a SQLAlchemy session of its own
            return storage.fetch(reader, sid, peek=True)
        return storage.fetch(session._dbsession, sid, retried=retried, peek=session._peeking)

    def served_row(self, sid: str, lookup: Any) -> Any:
        """The row a plugin serves without SQL (``session_row_lookup``), or ``None``.

        Not asked for a row this transaction changed, nor for a contended
        row, which loads locked, nor once the request's SQLAlchemy session
        began its transaction or holds the row, nor for a model only the ORM can load
        (:attr:`RowReads.servable <sessions_kernel.reads.RowReads.servable>`).
        A served row joins the request's SQLAlchemy session only if it has
        one already, or once the session needs it (:func:`fetch_dbsession`).
        """
        session = self.session
        storage = self.factory.storage
        if not storage.servable or storage.is_contended(sid):
            return None
        txn = self.bound.txn
        log = ChangeLog.find(txn, self.factory)
        if (log is not None and log.covers(sid)) or getattr(txn, "_resources", None):
            # A database session joined the transaction already (the starter's fixtures
            # share one across requests; a query of the view's; pshell): the row is read
            # in it, which may have changed it where no ChangeLog sees.
            return None
        request = session.request
        dbsession = session.__dict__.get("_dbsession") or vars(request).get(
            self.factory.dbsession_name
        )
        in_transaction = dbsession is not None and dbsession.in_transaction()
        if in_transaction or (dbsession is not None and storage.holds(dbsession, sid)):
            # The request's transaction began (the view's own query, pshell's SQL): read the
            # row in it. It may have changed the row itself (SQL, an ORM delete) where no
            # ChangeLog sees, and it holds a connection: a plugin's read on another one
            # would wait for a second connection of a pool sized to the threads.
            return None
        values = lookup(factory=self.factory, session=session, row_id=sid)
        if values is None:
            return None
        row = storage.row_from_values(sid, values, dbsession, lambda: session._dbsession)
        self.served = row is not None
        return row

    def lineage_lives(self, lineage: str) -> bool:
        """Whether a row of the session's lineage is stored (under a newer id)."""
        return self.factory.storage.lineage_lives(self.reader or self.session._dbsession, lineage)

    def take(
        self,
        row: Any,
        token: bytes | None,
        extras: dict[str, bytes],
        unstored: dict[str, bytes] | None,
    ) -> None:
        """What the cookie found becomes the session: its stored row, or a new session."""
        session = self.session
        if row is None:
            session._start_new(fresh=True)
            if unstored is not None:  # a cookie-only session: what plugins keep in the cookie
                session.cookie_extras = unstored
                session._state.loaded_extras = dict(unstored)
        else:
            assert token is not None  # a stored row was found by its token
            session.row, session.cookie_extras, session.new = row, extras, False
            lineage = extras.pop(LINEAGE_EXTRA, b"").decode("ascii") or None
            # created: the row's own (see Session.created)
            session._state = SessionState(
                created=None, token=token, lineage=lineage, loaded_extras=dict(extras)
            )

    def take_fallback(self, token: bytes) -> None:
        """The session a plugin's token names (``session_fallback_token``): its stored row,
        or a new session that will be stored under it; the cookie is sent either way."""
        session = self.session
        row = self.fetch_row(row_id(token))
        self.take(row, token if row is not None else None, {}, None)
        if row is None:
            session._state.token = token
        session._cookies.fallback = True

    def validate_stored(self, reason: str) -> str | None:
        """A plugin rejected a row a plugin served: read the stored row, and judge that.

        A served copy may be behind the stored row (another process's change
        not heard of yet: a renewal offer, an idle extension); only what the
        stored row fails is deleted. Returns the stored row's rejection, or
        ``None``; a row that is gone meanwhile starts a new session.
        ``session_load`` is not called again.
        """
        session = self.session
        copy = session.row
        sid = sa.inspect(copy).identity[0]
        session.row = None  # so that the SQLAlchemy session, made now, does not take the copy
        dbsession = session._dbsession
        if sa.inspect(copy).session is dbsession:
            dbsession.expunge(copy)
        self.served = False
        row = self.factory.storage.fetch(dbsession, sid)
        if row is None:
            session._cookies.delete = self.browser_cookie()
            session.notify(events.SessionNotFound(session.request, sid))
            session._start_new(fresh=True)
            return None
        session.row = row
        stored: str | None = self.factory.stages.session_validate(session=session)
        return stored

    def reject(self, reason: str) -> None:
        """A plugin rejected the stored row: delete it, and start a new, empty session."""
        session = self.session
        old_row = session.row
        self.drop_row()
        session.notify(events.SessionRejected(session.request, old_row.id, reason))
        session._start_new()  # its extras as loaded are empty again too
        self.factory.stages.session_invalidated(session=session, reason=reason, old_row=old_row)

    def read_row(self, row: Any) -> None:
        """The stored data and flash, checked; an inconsistent row is an error every later
        use of the session repeats (InconsistentDataError)."""
        session = self.session
        try:
            session._data, session._flash = decode_row(row, self.factory.data_serializer)
        except InconsistentDataError as exc:
            session._load_error = exc
            raise
        state = session._state
        state.orig_data, state.orig_flash = row.data, row.flash
        state.touched = False  # see Session._touched_by

    def drop_row(self) -> None:
        """DELETE the row (by its lineage if its id moved meanwhile), and make it hold."""
        session = self.session
        cookies, state = session._cookies, session._state
        cookies.delete = self.browser_cookie()
        binding = self.bound
        row = session.row
        stored_id = sa.inspect(row).identity[0]  # row.id is a new one after regenerate_id()
        binding.record(
            held=True, deleted=(stored_id,), lineage=state.lineage or stored_id[:LINEAGE_CHARS]
        )
        self.factory.storage.delete(session._dbsession, row, state.lineage, binding.logouts.append)
        state.orig_data = state.orig_flash = None

    def hold_new_id(self, old: str, new: str, token: bytes, lineage: str) -> None:
        """``regenerate_id(hold=True)``: the row's new key written now, held like a logout,
        and the response to send its cookie whatever becomes of the transaction."""
        session = self.session
        binding = self.bound

        def run(statement: Any) -> Any:
            return binding.execute_logout(statement, rekeyed=(old, new))

        self.factory.storage.rekey(session._dbsession, session.row, new, session.now, run)
        attrs = self.cookie_attributes(as_loaded=True)
        cookies = session._cookies
        value = cookies.encode(token, session.cookie_extras, lineage, False)
        cookies.held = [("set", value, attrs)]

    # -- the extend, renew and persist stages (before commit) ------------------------------
    def settle(self) -> tuple[bytes | None, bytes | None]:
        """The data and flash as they are to be stored: serialized (only if they may have
        changed) and within ``max_data_size``; unsaved settings edits dropped first."""
        session = self.session
        # Unsaved settings edits end with the request; dropping them first means every
        # hook that follows reads the settings in force through ``session.settings``.
        settings = session.__dict__.get("_settings")
        if settings is not None:
            settings.discard()
        ser = self.factory.data_serializer
        state = session._state
        # a new session that stores nothing (an anonymous visitor) serializes nothing
        touched = state.touched and (session.row is not None or session.dirty)
        try:
            data = ser.dumps(session._data) if touched else state.orig_data
            flash = ser.dumps(session._flash) if session._flash else None
        except (TypeError, ValueError) as exc:
            raise SessionError(
                f"the session holds a value {type(ser).__name__} cannot store ({exc}). "
                "Pyramid sessions hold JSON values: convert it (a datetime to an ISO "
                "string, say), or set session.data_serializer."
            ) from exc
        if data != state.orig_data or flash != state.orig_flash:
            self.factory.storage.check_size(data, flash)  # before any SQL
        return data, flash

    def new_row(self, data: bytes | None, flash: bytes | None) -> Any:
        """A new session's row, with the settings and plugin columns of this request."""
        session = self.session
        state = session._state
        row = session.row = self.factory.model(
            id=session.session_id,
            created=state.created,
            updated=session.now,
            data=data,
            flash=flash,
        )
        for name, value in (*state.settings_values.items(), *state.columns.items()):
            setattr(row, name, value)
        return row

    def insert_row(self, row: Any) -> None:
        session = self.session
        session.notify(events.SessionCreated(session.request, row.id))
        binding = self.bound
        # the row joins the identity map only for a transaction that goes on after this
        try:
            self.factory.storage.insert(session._dbsession, row, attach=binding.sharing)
        except sa.exc.IntegrityError as exc:
            if not session._cookies.fallback:
                raise
            # a concurrent request continued the same session (session_fallback_token)
            # and stored it first: run again, and this request finds its row
            raise SessionConflictError(
                "a concurrent request stored the session this request continues (the token "
                "a plugin's session_fallback_token named) first; pyramid_retry runs it again"
            ) from exc
        binding.record(written=(row.id,), values=self.factory.storage.stored_values(row))
        binding.sealed = True

    def cookie_only(self) -> bool:
        """A session with nothing to store: whether a cookie-only session is to be sent.

        A plugin may keep something in the cookie (a CSRF token for a form)
        with no row. Its first store gets a new token, so a planted
        cookie-only session fixes no id. When the extras were emptied, the
        browser's cookie is deleted.
        """
        session = self.session
        if session.cookie_extras == session._state.loaded_extras:
            return False
        if session.cookie_extras:
            return True
        cookies = session._cookies
        if cookies.delete is None:
            cookies.delete = cookies.as_sent(self.factory.default_cookie_attributes)
        return False

    def apply_changes(self, row: Any, data: bytes | None, flash: bytes | None) -> None:
        """Assign a stored row what this request changed of the data and flash.

        ``updated`` records the last change of what the kernel owns (data,
        flash, settings, id); a plugin's own write (an idle extension) sets
        only its columns.
        """
        session = self.session
        state = session._state
        changed = session._force or session._regenerated or bool(state.settings_values)
        if data != state.orig_data:
            row.data = data
            changed = True
        if flash != state.orig_flash:
            row.flash = flash
            changed = True
        if changed:
            row.updated = session.now

    def write_row(self, row: Any, extras: dict[str, bytes]) -> bool:
        """UPDATE the changed columns, merged with a concurrent write if needed.

        ``extras`` is the cookie as the browser holds it, restored if this
        request's write is dropped. Returns whether the row was written.
        """
        session = self.session
        state, cookies = session._state, session._cookies
        binding = self.bound
        log = binding.changes()
        read_id: str = sa.inspect(row).identity[0] if log is not None else ""
        outcome = self.factory.storage.update(
            session._dbsession,
            row,
            orig_data=state.orig_data,
            orig_flash=state.orig_flash,
            data=session._data,
            flash=session._flash,
            lineage=state.lineage,
        )
        # a SessionMerged subscriber's change would not be stored
        binding.sealed = True
        if log is not None and outcome.written:
            now_id: str = outcome.moved_to or row.id
            moved = (read_id, now_id) if read_id != now_id else None
            values = None if outcome.moved_to else self.factory.storage.stored_values(row)
            log.record(written=(now_id,), rekeyed=moved, values=values)
        stored_id = outcome.stored_id or ""
        if outcome.moved_to is not None:
            # A concurrent request (a login) gave the session a new id and sent the browser
            # its cookie: this request's changes were merged onto it, and its own cookie,
            # with the old id (or a new id of its own that was dropped), must not replace it.
            session._regenerated = False
            session._keep_cookie = True
        if outcome.merged is not None:
            self.read_row(row)  # what is stored now: the other request's changes too
            session.notify(events.SessionMerged(session.request, stored_id, outcome.merged))
        elif outcome.gone:
            cookies.delete = self.browser_cookie()
            session.notify(events.SessionNotFound(session.request, stored_id))
        elif not outcome.written:  # dropped: the concurrent write stands, and the cookie
            session.cookie_extras = extras
        return outcome.written

    def resend_cookie(self, written: bool, extras: dict[str, bytes]) -> bool:
        """Whether a stored session's cookie must be sent again, its row written or not.

        The browser's cookie holds the token and the plugins' extras, under
        the attributes it was set with. It is sent again only when one of
        them changed: a new id (``regenerate_id``), extras a plugin changed
        (a renewal offer), settings saved in this request (they may change
        the attributes), a cookie made with a key that is no longer the first
        (key rotation), or ``changed()``; or, when the row was written
        and the cookie has a ``Max-Age``, so that the browser's expiry slides
        with the session's activity. A write of the data (or of a plugin's
        column only, an idle extension) sends no ``Set-Cookie`` otherwise:
        the browser's cookie is the same.
        """
        session = self.session
        state, cookies = session._state, session._cookies
        if cookies.delete is not None:  # the row vanished meanwhile (see write_row)
            return extras != session.cookie_extras
        regenerated = session._regenerated
        if session._keep_cookie and not regenerated:
            return False
        if regenerated or session._force or state.settings_loaded or cookies.stale_key:
            return True
        if cookies.renamed:  # under cookie_previous_name: sent again under the current one
            return True
        if cookies.fallback:  # the browser has no cookie yet (session_fallback_token)
            return True
        if session.cookie_extras != state.loaded_extras:
            return True
        return written and session.settings._value("cookie_max_age") is not None

    def decide_cookie(self, send: bool, unstored: bool) -> None:
        """The cookie to set (``send``), or the browser's to delete, once committed."""
        session = self.session
        state, cookies = session._state, session._cookies
        if cookies.hold and not session._regenerated:
            return  # see CookieTransport.choose: the browser's cookies stay as they are
        new = None
        if send:
            token = state.current_token()
            value = cookies.encode(token, session.cookie_extras, state.lineage, unstored)
            new = value, self.cookie_attributes()
        # settings saved in this request, a rename: the new cookie may not land where it was
        moved = state.settings_loaded or cookies.renamed
        cookies.decide(new, self.browser_cookie if moved else None)

    def flush(self) -> None:
        session = self.session
        dbsession = session.__dict__.get("_dbsession")  # None: this request never needed it
        if dbsession is not None:
            self.factory.storage.flush(dbsession, session.row)

    def browser_cookie(self) -> dict[str, Any]:
        """The attributes (and name) the browser's cookie was set with: from the stored
        settings, not from edits saved in this request."""
        return self.session._cookies.as_sent(self.cookie_attributes(as_loaded=True))

    def cookie_attributes(self, as_loaded: bool = False) -> dict[str, Any]:
        """The cookie's attributes from the settings in force, after the plugins' hook.

        With ``as_loaded``, from the settings as this request found them (the row's
        stored values), ignoring changes saved in this request: the attributes the
        browser's cookie was set with.
        """
        factory = self.factory
        static = factory.static_cookie_attributes
        if static is not None:  # nothing per session or per request changes them
            return dict(static)
        value = self.session.settings._value
        attrs = {
            "max_age": value("cookie_max_age", as_loaded),
            "path": value("cookie_path", as_loaded),
            "domain": value("cookie_domain", as_loaded),
            "secure": value("cookie_secure", as_loaded),
            "httponly": value("cookie_httponly", as_loaded),
            "samesite": value("cookie_samesite", as_loaded),
        }
        factory.stages.session_cookie_attributes(session=self.session, attributes=attrs)
        return attrs


# -- how a session starts and joins -------------------------------------------------------
def first_use(session: Session) -> None:
    """The first use: the load and validate stages, then the application's turn.

    A request whose browser sent no session cookie (a visitor's first
    page, an anonymous one) reads nothing and joins the request's
    transaction only when it first has something to store (:func:`join`):
    until then it costs no transaction hooks and no persist stage.
    """
    factory = session._factory
    request = session.request
    header = request.environ.get("HTTP_COOKIE")
    # no Cookie header (a first visit): the transport is made if it is ever needed
    cookies = CookieTransport(factory, header) if header else None
    binding = None
    readonly = False
    if cookies is not None and cookies.presented:  # a stored session joins at its first use
        txn = find_transaction(request, changed=False, required=False)
        if txn is None:  # after the commit, or before a begin: read-only until a change
            readonly = True
        else:
            binding = TransactionBinding(session, txn)
    session.now = int(factory.clock())
    name = factory.dbsession_name
    if name not in vars(request) and not hasattr(type(request), name):
        # checked without creating it: request.dbsession is made on first need
        raise no_dbsession_error(factory)
    fallback = None
    if binding is None and not readonly:  # no cookie: does a plugin's token name a session?
        found = fallback_token(session)
        if found is not None:
            fallback, txn = found
            cookies = cookies if cookies is not None else CookieTransport(factory, header)
            binding = TransactionBinding(session, txn)
    if cookies is not None:  # a failed first use made none of the parts
        session._cookies = cookies
    session._loaded = True
    if binding is not None:
        session._binding = binding
        # until the load stage finds the stored session: a new one's, as a subscriber to
        # the events of choosing the cookie (CookieRejected) may read session.session_id
        session._state = SessionState(created=None)
        pipeline = session._pipeline = Pipeline(session)
        pipeline.fallback = fallback
        pipeline.start()  # load and validate
        respond_later(session)
        binding.attach()
    elif readonly:
        session._state = SessionState(created=None)
        session._readonly = True
        Pipeline(session).load_readonly()
        respond_later(session)
        # a transaction begun later (pyramid_tm's, under a tween that read the session;
        # pshell's tm.begin()) loads the session again, in it (see reload_in)
        session._next = NextTransaction(request, lambda txn: reload_in(session, txn))
    else:
        # the load stage of a request that sent no session cookie: a new, empty session,
        # nothing to decrypt, fetch or validate; the pipeline starts at its first change
        session._start_new(fresh=True)
        load = factory.stages.session_load
        if load is not no_implementation:  # most requests: nobody implements it
            load(session=session)
        respond_later(session)


def fallback_token(session: Session) -> tuple[bytes, Any] | None:
    """The token a plugin names for a request that sent no session cookie, if any, and the
    transaction of ``request.tm`` the session then joins.

    Asked only while ``request.tm`` has a transaction begun (a session
    continued from elsewhere is stored by it); see
    :func:`~sessions_kernel.hookspecs.session_fallback_token`.
    """
    hook = session._factory.stages.session_fallback_token
    if hook is no_implementation:  # most applications: nobody implements it
        return None
    txn = find_transaction(session.request, changed=False, required=False)
    if txn is None:
        return None
    token = hook(session=session)
    if token is None:
        return None
    if not isinstance(token, bytes) or len(token) != TOKEN_BYTES:
        got = f"{len(token)} bytes" if isinstance(token, bytes) else type(token).__name__
        raise SessionError(
            f"a plugin's session_fallback_token returned {got}: a token is {TOKEN_BYTES} "
            "bytes (derive it with a key of session.derived_keys), or None"
        )
    return token, txn


def respond_later(session: Session) -> None:
    """Register ``Session._respond``, once a request (a reload does not register it again).

    Pyramid runs response callbacks before ``NewResponse`` subscribers: for a
    session first used in one, the kernel's own last subscriber calls it
    (see :func:`~sessions_kernel.factory.respond_late`).
    """
    if not session._responding:
        session._responding = True
        session.request.add_response_callback(session._respond)


def reload_in(session: Session, txn: Any) -> None:
    """A transaction began after the session was loaded read-only: use it from now on.

    ``request.tm.begin()`` (pyramid_tm's tween, under a tween that read the
    session; pshell after reading it) drops what the read-only load found;
    the next use loads the session again in that transaction, as a first
    use there would (one more ``SELECT``, locked on a retried attempt; a row
    a plugin rejects is deleted), and the transaction's commit stores it.
    If nothing uses it again, the transaction's before-commit hook does that
    first use, so the extend, renew and persist stages run all the same (an
    idle timeout slides). A value handed out by the read-only load and
    changed in place before ``begin()`` would be lost: that commit raises
    :class:`SessionError` instead.
    """
    lost = changed_in_place(session)
    forget_load(session)
    txn.addBeforeCommitHook(use_before_commit, (session, lost))


def use_before_commit(session: Session, lost: bool) -> None:
    """The before-commit hook of a transaction begun after a read-only load (:func:`reload_in`)."""
    if lost:
        raise SessionError(
            "request.session was changed in place (request.session[key].append(...), say) "
            "while request.tm had no transaction, before request.tm.begin(): nothing could "
            "store that change. Change the session inside the transaction: in a tween, add "
            "the tween under pyramid_tm's (over=EXCVIEW, under='pyramid_tm.tm_tween_factory'); "
            "in pshell, call request.tm.begin() first (the starter's pshell setup does)."
        )
    if not session._loaded:  # nothing used it since begin(): its first use now
        session._load()


def changed_in_place(session: Session) -> bool:
    """Whether a value a read-only load handed out was changed in place (the data only:
    every change of the flash messages goes through a method, which joins or raises)."""
    values = session.__dict__
    state = values.get("_state")
    data = values.get("_data")
    if state is None or data is None or not state.touched:
        return False
    if values.get("row") is None:
        return bool(data)
    try:
        return bool(session._factory.data_serializer.dumps(data) != state.orig_data)
    except (TypeError, ValueError):  # a value it cannot store: changed, surely
        return True


def join(session: Session) -> None:
    """Join the request's transaction, at the first change of a session that had no cookie.

    Raises :class:`SessionError` if ``request.tm`` has no transaction
    begun (pshell without ``request.tm.begin()``): nothing could store
    the change; and once the session was written for this request. A
    session loaded read-only is loaded again in the transaction begun since
    (an implicit transaction manager's ``get()`` tells no synchronizer:
    see :func:`reload_in`).
    """
    if not session._loaded:
        session._load()
    elif session._readonly:
        txn = find_transaction(session.request, changed=True, required=False)
        if txn is not None:
            reload_in(session, txn)
            session._load()
    binding = session._binding
    if binding is not None:
        binding.check_open()
        return
    binding = session._binding = TransactionBinding(
        session, find_transaction(session.request, changed=True)
    )
    pipeline = session._pipeline = Pipeline(session)
    pipeline.start(loaded=True)
    binding.attach()


def start_new(session: Session, *, fresh: bool = False) -> None:
    """A new, empty session: at load (``fresh``), or after a logout or a rejection."""
    session.row = None
    session.new = True
    session._state = SessionState(created=session.now)
    if not fresh:
        session.__dict__.pop("cookie_extras", None)  # made empty on first use
    session._data, session._flash = {}, {}


def fetch_dbsession(session: Session) -> Any:
    """``request.<dbsession_name>``, fetched on first need: a request without a session
    cookie never needs it unless it stores something, so an anonymous request does not
    create (and register with the transaction) a SQLAlchemy session for nothing."""
    factory = session._factory
    try:
        dbsession = getattr(session.request, factory.dbsession_name)
    except AttributeError:
        raise no_dbsession_error(factory) from None
    row = session.__dict__.get("row")
    if row is not None and not session.new:  # a stored row, perhaps served without SQL
        factory.storage.attach(dbsession, row)
    return dbsession


def no_dbsession_error(factory: SessionFactory) -> SessionError:
    return SessionError(
        f"request.{factory.dbsession_name} does not exist: the session needs the "
        "SQLAlchemy session joined to the request's transaction there (see the "
        "Pyramid SQLAlchemy starter), or set session.dbsession_name"
    )
