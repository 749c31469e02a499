"""The cookie transport: the session cookies a request presented, and the ones its response sets.

:class:`CookieTransport` holds one request's cookie state. It reads the
``Cookie`` header, opens each session cookie with the factory's keys, and
chooses among duplicates (a planted cookie must neither log the user in
elsewhere nor log them out). On the way back it builds the ``Set-Cookie``
headers: the new cookie, the deletion of the old one, and keeps shared caches
away (``Vary: Cookie``, ``Cache-Control: private``).

It knows nothing of transactions (:mod:`~sessions_kernel.binding`) or of the
pipeline's stages (:mod:`~sessions_kernel.pipeline`), which tell it what to send.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pyramid.response import Response as _HeaderMaker

from . import events
from .crypto import decode_payload, encode_payload, session_id_for
from .errors import SessionError
from .storage import LINEAGE_CHARS

if TYPE_CHECKING:
    from .factory import SessionFactory

__all__ = [
    "LINEAGE_EXTRA",
    "MAX_COOKIES_TRIED",
    "UNSTORED_EXTRA",
    "CookieTransport",
    "cookie_values",
    "make_private",
    "private_response",
    "row_id",
    "vary_on_cookie",
]

#: Cookie extras the kernel owns (a plugin's extras have other names).
LINEAGE_EXTRA = "sessions_kernel.lineage"
UNSTORED_EXTRA = "sessions_kernel.unstored"
#: How many cookies of the session's name one request tries; a request that sends more
#: gets a new session, and none of them is deleted.
MAX_COOKIES_TRIED = 4

#: What :meth:`CookieTransport.choose` found: (row, token, extras, unstored extras).
Found = tuple[Any, "bytes | None", "dict[str, bytes]", "dict[str, bytes] | None"]
_NOTHING: Found = (None, None, {}, None)


def row_id(token: bytes, lineage: str | None = None) -> str:
    """The row key of a token: its SHA-256 (hex), led by the session's lineage if it has one.

    A session's first id is the plain SHA-256 of its first token. Its first
    :data:`~sessions_kernel.storage.LINEAGE_CHARS` hex digits are the session's
    *lineage*, which every later id keeps (``regenerate_id`` replaces only the
    rest, from the new token), so that a logout can find the session even when
    a concurrent request regenerated its id: by a range of the primary key.
    """
    digest = session_id_for(token)
    return digest if lineage is None else lineage + digest[LINEAGE_CHARS:]


def cookie_values(header: str, name: str) -> list[str]:
    """Every value of the cookie ``name`` in a Cookie header, in the browser's order.

    Pairs are separated by ``;`` (and by ``,``, with which some servers join two
    Cookie header lines); a value may be wrapped in one pair of double quotes.
    """
    values = []
    for part in header.replace(",", ";").split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) > 1 and value[0] == value[-1] == '"':
                value = value[1:-1]
            values.append(value)
    return values


def make_private(response: Any) -> None:
    """Keep shared caches from storing ``response`` (it sets a cookie, or shows a session).

    ``Vary: Cookie`` alone is not enough: many caches ignore it. A bare
    ``private`` or a ``no-store`` of the application's is kept; anything else
    (``public``, a ``private`` that names only some headers) becomes ``private``.
    """
    headers = response.headers
    if "Cache-Control" not in headers:
        response.headerlist.append(("Cache-Control", "private"))
        return
    cache = response.cache_control
    if cache.private == "*" or cache.no_store is True:
        return
    cache.public = False
    cache.private = True


def vary_on_cookie(response: Any) -> None:
    """Add ``Cookie`` to the response's ``Vary`` header: every response of a session's page."""
    headerlist = response.headerlist
    for name, _ in headerlist:  # a few headers: cheaper than webob's header views
        if name.lower() == "vary":
            vary = response.vary or ()
            if "Cookie" not in vary:
                response.vary = (*vary, "Cookie")
            return
    headerlist.append(("Vary", "Cookie"))


def private_response(request: Any, response: Any) -> None:
    """A response callback: the page shows a session (see ``SessionFactory.peek``)."""
    make_private(response)
    vary = response.vary or ()
    if "Cookie" not in vary:
        response.vary = (*vary, "Cookie")


class CookieTransport:
    """One request's session cookies: what the browser presented, what the response sends.

    Made at the session's first use. :attr:`presented` is every value of the
    session's cookie in the ``Cookie`` header; :meth:`choose` finds the stored
    session they name. The pipeline then queues what to send (:meth:`decide`),
    and :meth:`write` adds the headers to the response once the transaction
    committed.
    """

    __slots__ = (
        "delete",
        "factory",
        "fallback",
        "held",
        "hold",
        "outgoing",
        "presented",
        "renamed",
        "stale_key",
    )

    def __init__(self, factory: SessionFactory, header: str | None) -> None:
        self.factory = factory
        #: the browser sent its cookie under ``cookie_previous_name``
        self.renamed = False
        #: the browser sent no cookie, and a plugin named the session's token
        #: (``session_fallback_token``): the cookie is sent with the response
        self.fallback = False
        #: the values of the session's cookies in the Cookie header, in the browser's order
        self.presented: Sequence[str] = self._session_cookies(header) if header else ()
        #: a cookie was made with a key that is no longer first: send it again
        self.stale_key = False
        #: the cookies sent cannot be told apart (planted ones?), or one is older than a
        #: cookie the browser holds by now: this response sets and deletes none, but after
        #: a login (``regenerate_id``)
        self.hold = False
        #: the browser's cookie, to delete, with the attributes it was set with as far as
        #: they are known (a bad cookie, an unknown or dropped session)
        self.delete: dict[str, Any] | None = None
        #: the ``Set-Cookie`` headers to send: (``"set"`` or ``"delete"``, value, attributes)
        self.outgoing: list[tuple[str, str, dict[str, Any]]] = []
        #: what a held logout sends if the request's transaction does not commit
        self.held: list[tuple[str, str, dict[str, Any]]] = []

    @classmethod
    def without_cookies(cls, session: Any) -> CookieTransport:
        """The transport of a request that sent no Cookie header (made on first need)."""
        return cls(session._factory, None)

    # -- what the browser presented -------------------------------------------------------
    def _session_cookies(self, header: str) -> list[str]:
        """The values of the session's cookies in a Cookie header, in the browser's order.

        Those named ``cookie_name``; if there are none, those named
        ``cookie_previous_name`` (the name before a rename), read until
        the browser holds one of the new name (see :meth:`as_sent`).
        """
        factory = self.factory
        values = cookie_values(header, factory.cookie_name)
        previous = factory.previous_cookie_name
        if not values and previous is not None:
            values = cookie_values(header, previous)
            self.renamed = bool(values)
        return values

    def choose(
        self,
        request: Any,
        fetch: Callable[[str], Any],
        lineage_lives: Callable[[str], bool],
        notify: Callable[[Any], None],
    ) -> Found:
        """The stored session the request's cookies name: (row, token, extras, unstored).

        A browser may send several cookies of the session's name: one planted
        from a sibling subdomain or with a longer path is sent before the
        user's own. Every one is tried (``fetch`` reads a row by its key); a
        cookie that does not decrypt, or names no row, is passed over. The
        request fails closed, with a new empty session and without deleting
        any cookie, when the cookies open two different stored sessions (a
        planted live session must not put the user in the attacker's
        account), or when more were sent than :data:`MAX_COOKIES_TRIED` (an
        untried one may be the user's own). The browser's cookie is deleted
        only when every cookie was tried and none was good, so a planted
        cookie never logs the user out. ``unstored`` is the extras of a
        cookie-only session (nothing stored yet) when no stored one was found.
        """
        values = self.presented
        if len(values) > MAX_COOKIES_TRIED:
            self.hold = True
            notify(
                events.CookieRejected(
                    request,
                    f"{len(values)} cookies named {self.factory.cookie_name!r}, more than the "
                    f"{MAX_COOKIES_TRIED} tried: none is used, none is deleted",
                )
            )
            return _NOTHING
        found: tuple[Any, bytes, dict[str, bytes]] | None = None
        unstored = None
        bad = False
        for value in values:
            try:
                token, extras = decode_payload(self.open(value))
            except Exception as exc:
                notify(events.CookieRejected(request, str(exc)))
                bad = True
                continue
            if UNSTORED_EXTRA in extras:
                if unstored is None:
                    del extras[UNSTORED_EXTRA]
                    unstored = extras
                continue
            lineage = extras.get(LINEAGE_EXTRA)
            sid = row_id(token, lineage.decode("ascii") if lineage else None)
            if found is not None and found[0].id == sid:
                continue  # the same session twice (an old path's cookie, say)
            row = fetch(sid)
            if row is None:
                notify(events.SessionNotFound(request, sid))
                bad = True
                if lineage_lives(sid[:LINEAGE_CHARS]):
                    # An id a login (regenerate_id) replaced since this request was sent: the
                    # browser holds the new cookie by now, which this response must not replace.
                    self.hold = True
            elif found is None:
                found = (row, token, extras)
            else:  # two live sessions: which is the user's cannot be told
                return self._fail_closed(request, notify, "of two different stored sessions")
        if found is not None:
            if unstored is not None:  # a session with nothing stored beside a stored one
                what = "of a stored session and of one with nothing stored"
                return self._fail_closed(request, notify, what)
            return (*found, None)
        if self.hold:
            return _NOTHING
        if bad and unstored is None:
            self.delete = self.as_sent(self.factory.default_cookie_attributes)
        return None, None, {}, unstored

    def _fail_closed(self, request: Any, notify: Callable[[Any], None], what: str) -> Found:
        """Cookies that cannot be told apart (a planted one?): a new empty session, and a
        response that sets and deletes no cookie (either might be the user's), but after a
        login (``regenerate_id``)."""
        self.hold = True
        name = self.factory.cookie_name
        reason = f"cookies named {name!r} {what}: none is used, none is deleted"
        notify(events.CookieRejected(request, reason))
        return _NOTHING

    def open(self, value: str) -> bytes:
        """The cookie's plaintext; notes a cookie made with a key that is no longer first."""
        factory = self.factory
        previous = factory.previous_serializer
        if self.renamed and previous is not None:  # bound to its name; sent again renamed
            plaintext: bytes = previous.loads(value)
            return plaintext
        primary = factory.primary_serializer
        if primary is not None:
            try:
                plaintext = primary.loads(value)
                return plaintext
            except ValueError:
                payload: bytes = factory.serializer.loads(value)
                self.stale_key = True  # an older key made it: send it again
                return payload
        opened: bytes = factory.serializer.loads(value)
        return opened

    def as_sent(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """The attributes of the browser's cookie, with its name if it is the previous one."""
        return {**attrs, "name": self.factory.previous_cookie_name} if self.renamed else attrs

    # -- what the response sends ----------------------------------------------------------
    def encode(
        self, token: bytes, extras: dict[str, bytes], lineage: str | None, unstored: bool
    ) -> str:
        """The cookie's value: the token and the extras, with the kernel's own, encrypted."""
        extras = dict(extras)
        if lineage is not None:
            extras[LINEAGE_EXTRA] = lineage.encode("ascii")
        if unstored:
            extras[UNSTORED_EXTRA] = b""
        try:
            value: str = self.factory.serializer.dumps(encode_payload(token, extras))
        except ValueError as exc:  # extras the cookie cannot carry: stop before the commit
            raise SessionError(
                f"the session's cookie cannot be made: {exc}. Nothing was stored; keep "
                "large values in the session's row (a plugin's column), not in the cookie."
            ) from exc
        return value

    def decide(
        self,
        new: tuple[str, dict[str, Any]] | None,
        moved_from: Callable[[], dict[str, Any]] | None,
    ) -> None:
        """Queue the cookie to set (``new``: its value and attributes), or the browser's to
        delete. ``moved_from`` gives the attributes the browser's cookie was set with when
        the new one may not land where it is (settings saved in this request, a rename)."""
        old = self.delete
        if new is not None:
            value, attrs = new
            if old is None and moved_from is not None:
                old = moved_from()
            # A cookie is known by its name, path and domain: a new one set elsewhere leaves
            # the old one in the browser unless it is deleted too.
            where = (None, attrs["path"], attrs["domain"])
            if old is not None and (old.get("name"), old["path"], old["domain"]) != where:
                self.outgoing.append(("delete", "", old))
            self.outgoing.append(("set", value, attrs))
        elif old is not None:
            self.outgoing.append(("delete", "", old))

    def deletion_header(self, attrs: dict[str, Any]) -> str:
        """The Set-Cookie value that deletes the cookie set with ``attrs``.

        Same name, path and domain, or the browser keeps the cookie; same
        Secure, or it refuses the deletion of a __Host-/__Secure- cookie.
        ``attrs`` may name a cookie other than ``cookie_name`` (:meth:`as_sent`).
        """
        response = _HeaderMaker()
        attrs = {**attrs, "max_age": None}
        name = attrs.pop("name", None) or self.factory.cookie_name
        response.set_cookie(name, None, **attrs)
        header: str = response.headers["Set-Cookie"]
        return header

    def write(self, response: Any) -> None:
        """Add the queued ``Set-Cookie`` headers to ``response``."""
        sent = response.headers.getall("Set-Cookie")
        cookie_header = self.factory.cookie_header
        for action, value, attrs in self.outgoing:
            if action == "set":
                response.headerlist.append(("Set-Cookie", cookie_header(value, attrs)))
            else:
                header = self.deletion_header(attrs)
                if header not in sent:  # forget() may have returned it already
                    response.headerlist.append(("Set-Cookie", header))

    def present_to_retry(self, environ: dict[str, Any]) -> None:
        """Put the cookie this response sets in ``environ``'s Cookie header, in place of the
        session's: a retried attempt of the request (pyramid_retry reuses the environ)
        presents the cookie the browser will hold."""
        name = self.factory.cookie_name
        for action, value, _ in self.outgoing:
            if action == "set":
                header = environ.get("HTTP_COOKIE", "")
                kept = [p for p in header.split(";") if p.partition("=")[0].strip() != name]
                environ["HTTP_COOKIE"] = ";".join([*kept, f" {name}={value}"]).strip()
