"""Requests of one session run side by side, each paused where a test says: the race kit.

Two page loads of one browser often run at once, and the session must merge
what both changed (``session_merge_rules``). A test of that needs the exact
interleaving, not luck: "A loads the session, B runs to its commit, then A
commits". :class:`Race` starts each request in a thread of its own and stops
it at two points:

``"loaded"``
    the session was loaded (its row read, its plugins' load and validate
    stages run); the view has not run yet.
``"commit"``
    the view returned and the request's transaction is about to commit:
    nothing of the session is written yet (its persist stage runs next).

::

    from sessions_kernel.testing import Race

    with Race(app) as race:
        a = race.start("/set", json={"a": 1})   # A read the session; paused
        b = race.start("/set", json={"b": 2})   # B too
        b.finish()                              # B runs to the end: committed
        a.finish()                              # A commits after B: a merge
    assert a.response.status_int == 200

Imported as :class:`sessions_kernel.testing.Race` (the ``testing`` extra).
"""

from __future__ import annotations

import copy
import threading
from typing import TYPE_CHECKING, Any, Literal

from pyramid.events import NewRequest

if TYPE_CHECKING:
    import webtest

__all__ = ["RACE_ENVIRON_KEY", "Race", "Racer"]

#: The WSGI environ key that marks a request of a race (its :class:`Racer`).
RACE_ENVIRON_KEY = "sessions_kernel.racer"
#: Where a racer's request can be: paused at a point, or done.
Stage = Literal["started", "loaded", "commit", "done"]
_ORDER = {"started": 0, "loaded": 1, "commit": 2, "done": 3}
# set on a registry once its NewRequest subscriber is registered
_REGISTERED = "_sessions_kernel_race_points"


def _pause_points(event: NewRequest) -> None:
    """Pause a race's request after its load and before its commit (first attempt only).

    A NewRequest subscriber: pyramid_tm's transaction has begun. The
    before-commit pause is registered before the session joins the
    transaction, so it runs before the session's persist stage.
    """
    request = event.request
    racer: Racer | None = request.environ.get(RACE_ENVIRON_KEY)
    if racer is None:
        return
    racer.attempts += 1
    if racer.attempts > 1:  # a retried attempt runs straight through
        return
    request.tm.get().addBeforeCommitHook(racer._pause, ("commit", request))
    "" in request.session  # noqa: B015  (the load: the row read, load and validate run)
    racer._pause("loaded", request)


class Racer:
    """One request of a :class:`Race`, running in a thread of its own.

    Made by :meth:`Race.start`, paused at ``"loaded"``. Move it on with
    :meth:`to_commit` and :meth:`finish`. A request retried by pyramid_retry
    (it lost a conflict) runs its later attempts straight through, unpaused:
    they read the session as it then is.
    """

    #: the name shown in messages (``"A"``, ``"B"``, ... in start order, unless given)
    name: str
    #: where the request is: ``"loaded"``, ``"commit"`` or ``"done"``
    stage: Stage
    #: the browser the request runs in: a copy of the race's, cookies included
    browser: webtest.TestApp
    #: the response, once done (``None`` if an exception reached WebTest: see :attr:`error`)
    response: Any
    #: an exception no exception view rendered, raised through WebTest
    error: BaseException | None
    #: how many attempts pyramid_retry ran (1 when it was not retried)
    attempts: int

    def __init__(self, race: Race, name: str, browser: webtest.TestApp) -> None:
        self.name = name
        self.browser = browser
        self.stage = "started"
        self.response = None
        self.error = None
        self.attempts = 0
        self._race = race
        self._target: Stage = "loaded"
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Racer {self.name} {self.stage}>"

    # -- the request's side ---------------------------------------------------------------
    def _pause(self, point: Stage, request: Any) -> None:
        with self._changed:
            self.stage = point
            self._changed.notify_all()
            released = self._changed.wait_for(
                lambda: _ORDER[self._target] > _ORDER[point], self._race.timeout
            )
        if not released:
            # The request fails; whatever it holds must not outlive it. An exception view
            # that renders the error keeps pyramid_tm from aborting, so roll back here:
            # a connection left in its transaction would keep its locks (a DELETE's, say).
            dbsession = getattr(request, self._race.dbsession_name, None)
            if dbsession is not None:
                dbsession.rollback()
            raise RuntimeError(
                f"racer {self.name} was left paused at {point!r} for {self._race.timeout} s"
            )

    def _run(self, call: Any) -> None:
        try:
            self.response = call()
        except BaseException as exc:  # an error no exception view rendered reaches WebTest
            self.error = exc
        finally:
            with self._changed:
                self.stage = "done"
                self._changed.notify_all()

    # -- the test's side ------------------------------------------------------------------
    def _advance(self, target: Stage) -> Racer:
        timeout = self._race.timeout
        with self._changed:
            if _ORDER[target] > _ORDER[self._target]:
                self._target = target
                self._changed.notify_all()
            reached = self._changed.wait_for(lambda: _ORDER[self.stage] >= _ORDER[target], timeout)
        if not reached:
            paused = [
                r.name
                for r in self._race.racers
                if r is not self and (r.stage != "done" or (r._thread and r._thread.is_alive()))
            ]
            raise AssertionError(
                f"racer {self.name} did not reach {target!r} within {timeout} s (it is at "
                f"{self.stage!r}). It is probably waiting for a lock that a paused request "
                f"({', '.join(paused) or 'none'}) holds: a row loaded locked (a retried "
                "attempt, or a contended session: set lock_contended_for to 0) or, on "
                "SQLite, the database's write lock. Finish that request first."
            )
        return self

    def to_commit(self) -> Racer:
        """Run the view; pause just before the transaction commits. Returns the racer.

        A request whose view raised (or that an exception view answered) has
        no commit to pause at: it is ``"done"`` when this returns.
        """
        return self._advance("commit")

    def finish(self) -> Any:
        """Run the request to its end (its commit, its retries) and return its response.

        Returns ``None`` when an exception reached WebTest (:attr:`error`).
        """
        self._advance("done")
        assert self._thread is not None
        self._thread.join(self._race.timeout)
        if self._race.share_cookies and self.response is not None:
            self._race._take_cookies(self)
        return self.response


class Race:
    """Run requests of one session side by side, each paused where the test says.

    :param app: a :class:`~sessions_kernel.testing.SessionTestApp` or
        :class:`~sessions_kernel.testing.ApplicationTestApp` (any object with
        ``wsgi``, the Pyramid router, and ``new_browser()``).
    :param browser: whose cookies each request presents (a copy of them, taken
        when the request starts); the application's default browser unless given.
    :param timeout: seconds any wait may take before the race fails with a
        message saying where each request stands.

    :param share_cookies: as one browser's parallel requests: each request
        presents ``browser``'s cookies as they are when it starts, and the
        cookies a response sets or deletes go to ``browser`` when the
        request is finished (in the order the test finishes them). By
        default they go only to the request's own copy of ``browser``
        (:attr:`Racer.browser`), as for requests of several browsers that
        hold one cookie.

    Use it as a context manager: leaving the block finishes every request
    still paused (in start order), so that none keeps a database connection.
    A request left paused longer than ``timeout`` fails, rolling its
    database session back.

    A paused request holds no lock on the common path (a plain ``SELECT``),
    so another can run to its commit meanwhile. One that loaded the row
    locked (a retried attempt, or a session that lost a conflict within
    ``lock_contended_for`` seconds) makes the others wait: tests of
    interleavings set ``lock_contended_for`` to 0.
    """

    def __init__(
        self,
        app: Any,
        browser: webtest.TestApp | None = None,
        *,
        timeout: float = 30.0,
        share_cookies: bool = False,
    ) -> None:
        self.app = app
        self.browser = browser if browser is not None else app.browser
        self.timeout = timeout
        self.share_cookies = share_cookies
        factory = getattr(app, "factory", None)
        self.dbsession_name = getattr(factory, "dbsession_name", "dbsession")
        #: every request started, in start order
        self.racers: list[Racer] = []
        registry = app.wsgi.registry
        if not getattr(registry, _REGISTERED, False):
            registry.registerHandler(_pause_points, (NewRequest,))
            setattr(registry, _REGISTERED, True)

    def start(
        self,
        path: str,
        *,
        method: str | None = None,
        json: Any = None,
        name: str | None = None,
        browser: webtest.TestApp | None = None,
        **kwargs: Any,
    ) -> Racer:
        """Start a request; return its :class:`Racer` once it loaded the session.

        ``method`` is ``GET``, or ``POST`` when ``json`` (a body, sent as
        ``application/json``) is given; ``kwargs`` go to WebTest
        (``params``, ``headers``, ``extra_environ``, ...). Errors come back
        as responses (``expect_errors``), unless ``status`` says otherwise.
        Every request loads the session (in a ``NewRequest`` subscriber) before
        Pyramid looks up its view, a 404 too; one that a tween answers
        before that returns ``"done"``. ``browser`` presents another
        browser's cookies (a copy of them) than the race's.
        """
        copied = self.app.new_browser()
        for cookie in (browser if browser is not None else self.browser).cookiejar:
            copied.cookiejar.set_cookie(copy.copy(cookie))
        browser = copied
        racer = Racer(self, name or chr(ord("A") + len(self.racers)), browser)
        method = (method or ("POST" if json is not None else "GET")).lower()
        kwargs.setdefault("expect_errors", "status" not in kwargs)
        kwargs["extra_environ"] = {**kwargs.get("extra_environ", {}), RACE_ENVIRON_KEY: racer}
        if json is not None:
            send = getattr(browser, f"{method}_json")

            def call() -> Any:
                return send(path, json, **kwargs)
        else:
            send = getattr(browser, method)

            def call() -> Any:
                return send(path, **kwargs)

        self.racers.append(racer)
        racer._thread = threading.Thread(
            target=racer._run, args=(call,), name=f"racer-{racer.name}", daemon=True
        )
        racer._thread.start()
        return racer._advance("loaded")

    def _take_cookies(self, racer: Racer) -> None:
        """The cookies a finished request's response set or deleted, into the race's browser."""
        names = {
            header.split("=", 1)[0].strip()
            for header in racer.response.headers.getall("Set-Cookie")
        }
        jar = self.browser.cookiejar
        for cookie in [c for c in jar if c.name in names]:
            jar.clear(cookie.domain, cookie.path, cookie.name)
        for cookie in racer.browser.cookiejar:
            if cookie.name in names:
                jar.set_cookie(copy.copy(cookie))

    def finish(self) -> None:
        """Finish every request still running, in start order."""
        for racer in self.racers:
            if racer.stage != "done" or (racer._thread and racer._thread.is_alive()):
                racer.finish()

    def __enter__(self) -> Race:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.finish()
            return
        # the test failed: release everything without waiting for answers
        for racer in self.racers:
            with racer._changed:
                racer._target = "done"
                racer._changed.notify_all()
        for racer in self.racers:
            if racer._thread is not None:
                racer._thread.join(self.timeout)
