"""The JSON views over ``request.session`` that the test kit's applications serve.

:func:`add_test_views` adds them to a Pyramid configuration: each drives one
part of the session (read, set, flash, invalidate, regenerate the id, the
settings, a failing view) and answers the session's state, so that a test
drives an application through WebTest without views of its own.
:func:`~sessions_kernel.testing.make_app`, :func:`~sessions_kernel.testing.make_wsgi_app`
and the ``session_app`` fixture add them; import it from :mod:`sessions_kernel.testing`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPFound

__all__ = ["add_test_views"]


def _json_body(request: Any) -> Any:
    return request.json_body if request.body else {}


def add_test_views(config: Configurator) -> None:
    """Add JSON views over ``request.session`` that the kernel's tests (and yours) drive.

    :func:`~sessions_kernel.testing.make_app` and the ``session_app`` fixture add them (unless
    ``test_views=False``). Each view answers any HTTP method and renders
    JSON; a request body, where a view reads one, is a JSON object
    (``app.post_json(path, {...})``), and a missing body counts as ``{}``.
    Most views answer the session's *state* after their change::

        {"data": {...},       # dict(request.session)
         "new": true,         # request.session.new: no row stored yet
         "created": 1750000000,
         "flash": {"": ["saved"]}}   # each queue's messages, peeked, not popped

    .. list-table::
       :header-rows: 1
       :widths: 18 24 38 20

       * - path
         - body
         - what the view does
         - answer
       * - ``/none``
         -
         - does not touch the session (no SQL, no cookie)
         - ``{"ok": true}``
       * - ``/touch``
         -
         - loads the session and reads nothing
         - ``{"new": ...}``
       * - ``/read``
         -
         - reads the session
         - the state
       * - ``/set``
         - ``{"key": value, ...}``
         - ``session.update(body)``
         - the state
       * - ``/incr/{key}``
         -
         - ``session[key] = session.get(key, 0) + 1``
         - the state
       * - ``/append``
         - ``{"item": value}``
         - ``session.setdefault("items", []).append(item)`` (a change
           inside a mutable value)
         - the state
       * - ``/flash``
         - ``{"msg": ..., "queue": "", "allow_duplicate": true}``
         - ``session.flash(msg, queue, allow_duplicate)``
         - the state
       * - ``/pop_flash``
         - (query ``?queue=name``)
         - ``session.pop_flash(queue)``
         - ``{"messages": [...]}``
       * - ``/invalidate``
         - ``{"key": value, ...}`` or none
         - ``session.invalidate()``, then ``session.update(body)``
         - the state
       * - ``/regenerate``
         -
         - ``session.regenerate_id()``
         - the state
       * - ``/clear``
         -
         - ``session.clear()``
         - the state
       * - ``/fail``
         - ``{"key": value, ...}``
         - ``session.update(body)``, then raises :class:`RuntimeError`: the
           transaction is aborted, nothing is stored
         - status 500, ``{"error": "..."}`` (pass ``status=500`` to WebTest)
       * - ``/redirect``
         - ``{"key": value, ...}``
         - ``session.update(body)``, then raises ``HTTPFound`` to ``/read``:
           a raised response aborts the transaction like any exception
           (nothing stored, no cookie)
         - status 302 (pass ``status=302``)
       * - ``/settings``
         - ``{"setting": value, ...}`` or none
         - assigns each setting in ``with session.settings as s:`` (raises
           :class:`~sessions_kernel.SettingsError` through WebTest for one
           the model cannot change per session)
         - ``dict(session.settings)``: the settings in force

    Add views of your own with ``configure=`` (routes of other names).
    """

    def view(path: str, func: Callable[[Any], Any], **kw: Any) -> None:
        name = path.strip("/").replace("/", "_").replace("{", "").replace("}", "") or "root"
        config.add_route(name, path)
        config.add_view(func, route_name=name, renderer="json", **kw)

    def state(request: Any) -> dict[str, Any]:
        s = request.session
        return {
            "data": dict(s),
            "new": s.new,
            "created": s.created,
            "flash": {q: s.peek_flash(q) for q in s._flash},
        }

    def set_values(request: Any) -> Any:
        request.session.update(_json_body(request))
        return state(request)

    def incr(request: Any) -> Any:
        key = request.matchdict["key"]
        request.session[key] = request.session.get(key, 0) + 1
        return state(request)

    def append(request: Any) -> Any:
        request.session.setdefault("items", []).append(_json_body(request)["item"])
        return state(request)

    def flash(request: Any) -> Any:
        body = _json_body(request)
        request.session.flash(body["msg"], body.get("queue", ""), body.get("allow_duplicate", True))
        return state(request)

    def pop_flash(request: Any) -> Any:
        return {"messages": request.session.pop_flash(request.params.get("queue", ""))}

    def invalidate(request: Any) -> Any:
        request.session.invalidate()
        request.session.update(_json_body(request))
        return state(request)

    def regenerate(request: Any) -> Any:
        request.session.regenerate_id()
        return state(request)

    def clear(request: Any) -> Any:
        request.session.clear()
        return state(request)

    def fail(request: Any) -> Any:
        request.session.update(_json_body(request))
        raise RuntimeError("the view failed after changing the session")

    def redirect(request: Any) -> Any:
        request.session.update(_json_body(request))
        raise HTTPFound(location="/read")

    def settings(request: Any) -> Any:
        body = _json_body(request)
        if body:
            with request.session.settings as s:
                for name, value in body.items():
                    s[name] = value
        return dict(request.session.settings)

    def failed(exc: Exception, request: Any) -> Any:
        request.response.status = 500
        return {"error": str(exc)}

    view("/none", lambda request: {"ok": True})
    view("/touch", lambda request: {"new": request.session.new})
    view("/read", state)
    view("/set", set_values)
    view("/incr/{key}", incr)
    view("/append", append)
    view("/flash", flash)
    view("/pop_flash", pop_flash)
    view("/invalidate", invalidate)
    view("/regenerate", regenerate)
    view("/clear", clear)
    view("/fail", fail)
    view("/redirect", redirect)
    view("/settings", settings)
    config.add_exception_view(failed, context=RuntimeError, renderer="json")
