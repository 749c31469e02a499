"""Per-request state of plugins: ``session.stash[key]`` with typed keys (after pytest's Stash).

A plugin that computes something in one hook and needs it in a later one of
the same request (a classification made at validate and used at renew, the
id a session had when it was loaded) keeps it in the request's
:attr:`Session.stash <sessions_kernel.Session.stash>`, under a key of its
own made once at module level::

    from sessions_kernel import StashKey

    CLASSIFIED = StashKey[str]("my_plugin: what the cookie presented")

    @hookimpl
    def session_validate(session):
        session.stash[CLASSIFIED] = kind = classify(session)
        ...

    @hookimpl
    def session_renew(session):
        kind = session.stash.get(CLASSIFIED, None)

Keys are compared by identity, not by name: two plugins cannot collide,
whatever they name their keys, and a type checker knows the type of each
value. Nothing in the stash is stored: it lives as long as the request's
session object. Set attributes of your own on the session instead and they
may collide with another plugin's or with the kernel's, and are no part of
any contract.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast

__all__ = ["Stash", "StashKey"]

T = TypeVar("T")
D = TypeVar("D")


class StashKey(Generic[T]):
    """A key of a :class:`Stash`; ``T`` is the type of its value.

    Make one per value, at module level: ``KEY = StashKey[int]("my_plugin: count")``.
    The name only shows in ``repr()``: keys are equal only to themselves.
    """

    __slots__ = ("name",)

    def __init__(self, name: str = "") -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<StashKey {self.name or hex(id(self))}>"


class Stash:
    """A mapping from :class:`StashKey` objects to values of their types.

    Supports ``stash[key] = value``, ``stash[key]`` (:class:`KeyError` if
    unset), ``del stash[key]``, ``key in stash``, ``len(stash)``,
    :meth:`get`, :meth:`setdefault` and :meth:`pop`.
    """

    __slots__ = ("_storage",)

    def __init__(self) -> None:
        self._storage: dict[StashKey[Any], object] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._storage[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        return cast(T, self._storage[key])

    def get(self, key: StashKey[T], default: D) -> T | D:
        """The value of ``key``, or ``default`` if it is unset."""
        try:
            return self[key]
        except KeyError:
            return default

    def setdefault(self, key: StashKey[T], default: T) -> T:
        """The value of ``key``; set to ``default`` first if it is unset."""
        try:
            return self[key]
        except KeyError:
            self[key] = default
            return default

    def pop(self, key: StashKey[T], default: D) -> T | D:
        """Remove ``key`` and return its value, or ``default`` if it is unset."""
        return cast("T | D", self._storage.pop(key, default))

    def __delitem__(self, key: StashKey[T]) -> None:
        del self._storage[key]

    def __contains__(self, key: StashKey[Any]) -> bool:
        return key in self._storage

    def __len__(self) -> int:
        return len(self._storage)

    def __repr__(self) -> str:
        return f"<Stash {list(self._storage)!r}>"
