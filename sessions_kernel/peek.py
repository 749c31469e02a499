"""A peek at the request's session (``SessionFactory.peek``): validated, never used."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from . import events
from .cookies import CookieTransport, private_response
from .pipeline import Pipeline

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Peek", "peek"]


@dataclass(frozen=True)
class Peek:
    """What :meth:`SessionFactory.peek <sessions_kernel.SessionFactory.peek>` found."""

    #: the stored row, only when every active plugin accepted it
    row: Any = None
    #: a read-only copy of the session's data; empty unless the session is valid
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: what listings show of the row (``SessionFactory.describe``), when valid
    info: Any = None
    #: why there is no valid session: ``"no session cookie"``, ``"no stored session"``,
    #: ``"nothing stored yet"``, or the reason a plugin rejected it (``"idle timeout"``)
    reason: str | None = None
    #: whether a stored session was found but a plugin rejected it (``reason`` says why);
    #: the next real use of the session deletes it
    rejected: bool = False

    @property
    def valid(self) -> bool:
        """Whether the request's cookie names a stored session the plugins accept."""
        return self.row is not None


def peek(session: Session) -> Peek:
    """Load ``session`` (a new one, not ``request.session``) as far as validate, and report.

    It joins no transaction: nothing is written, deleted or sent.
    """
    factory = session._factory
    request = session.request
    session.now = int(factory.clock())
    session._loaded = True
    session._peeking = True  # its events say so (event.peek): not the visitor's activity
    cookies = session._cookies = CookieTransport(factory, request.environ.get("HTTP_COOKIE"))
    if not cookies.presented:
        return Peek(reason="no session cookie")
    pipeline = Pipeline(session)
    row, token, extras, unstored = pipeline.choose_cookie()
    if row is None:
        return Peek(reason="nothing stored yet" if unstored is not None else "no stored session")
    # what the page shows of the session is the visitor's own: no shared cache stores it
    request.add_response_callback(private_response)
    pipeline.take(row, token, extras, None)
    factory.stages.session_load(session=session)
    reason = factory.stages.session_validate(session=session)
    if reason:  # reported as a real request would, and left for it to act on
        session.notify(events.SessionRejected(request, row.id, reason))
        return Peek(reason=reason, rejected=True)
    pipeline.read_row(row)
    data = factory.data_serializer.loads(row.data)  # a copy of its own
    return Peek(row=row, data=MappingProxyType(data), info=factory.describe(row))
