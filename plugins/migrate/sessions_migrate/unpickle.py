"""Reading an old store's pickles without running anyone's code.

Beaker's ``ext:database`` store, pyramid_session_redis (by default) and
pyramid_sqlalchemy_sessions keep session data as pickles. Loading a pickle
can run any code a pickle names, so this module never loads one with
:func:`pickle.loads`. :func:`safe_loads` reads a pickle with an unpickler that
builds only plain values: ``None``, booleans, numbers, strings, bytes, lists,
tuples, dicts, sets and frozensets, and the few standard types below. A pickle
that names any other class or function (a class of the application, ``os.system``,
``builtins.eval``) is refused with :class:`~sessions_migrate.source.Unrepresentable`
before anything of it is built: that one old session is not migrated.

And a pickle is read only where the old store kept it on the server (its table,
its Redis key), never from a cookie: a cookie comes from the browser.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from typing import Any

from .source import Unrepresentable

__all__ = ["ALLOWED", "safe_loads"]

#: The only globals a pickle may name: ``(module, name)`` pairs. Containers and
#: plain values need none (the pickle protocol has opcodes of their own).
ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("builtins", "complex"),
        # the names protocols 0 to 2 use (Python 2's): ``find_class`` sees them first
        ("__builtin__", "set"),
        ("__builtin__", "frozenset"),
        ("__builtin__", "bytearray"),
        ("__builtin__", "complex"),
        # the base copyreg's reconstructor builds on (``object.__new__(cls)``, with
        # ``cls`` an allowed class); calling object() itself makes an inert object
        ("builtins", "object"),
        ("__builtin__", "object"),
        ("datetime", "datetime"),
        ("datetime", "date"),
        ("datetime", "time"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
        ("decimal", "Decimal"),
        ("uuid", "UUID"),
        # how protocols 0 to 2 pickle bytes: _codecs.encode(text, "latin1")
        ("_codecs", "encode"),
        # copyreg's reconstructor for the types above in protocols 0 and 1
        ("copy_reg", "_reconstructor"),
        ("copyreg", "_reconstructor"),
    }
)


class _Restricted(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, stand_ins: Mapping[tuple[str, str], type]) -> None:
        super().__init__(file)
        self._stand_ins = stand_ins

    def find_class(self, module: str, name: str) -> Any:
        stand_in = self._stand_ins.get((module, name))
        if stand_in is not None:
            return stand_in
        if (module, name) not in ALLOWED:
            raise Unrepresentable(
                f"the pickled data names {module}.{name}, which is not a plain value "
                "(only containers, numbers, strings, bytes, dates and times, Decimal and "
                "UUID are read)"
            )
        return super().find_class(module, name)


def safe_loads(raw: bytes, *, stand_ins: Mapping[tuple[str, str], type] | None = None) -> Any:
    """The value pickled in ``raw``, if it is made of plain values only.

    Raises :class:`~sessions_migrate.source.Unrepresentable` for a pickle that
    names any global outside :data:`ALLOWED`, and for damaged or truncated bytes.
    ``copyreg._reconstructor`` is allowed only to rebuild an allowed type: the
    class it is given is looked up through :data:`ALLOWED` like any other.

    ``stand_ins`` maps a ``(module, name)`` that an old store itself writes into
    every pickle to a class of the caller's that is built in its place: the
    predecessor's data column pickles SQLAlchemy's ``MutableDict``, which its
    source reads as a plain ``dict`` subclass of its own. A stand-in must be a
    container with no behaviour beyond holding values (building it runs only its
    ``__new__`` and ``__setstate__``); the names it replaces are never imported.
    """
    try:
        return _Restricted(io.BytesIO(raw), stand_ins or {}).load()
    except Unrepresentable:
        raise
    except Exception as exc:  # any damage: pickle reports it with many exception types
        raise Unrepresentable(f"the pickled data cannot be read: {type(exc).__name__}") from None
