"""Deprecations: what still works the old way, and says once what to do instead.

Every deprecation of ``sessions_kernel`` (and of the plugins in its
repository) is a :class:`SessionsDeprecationWarning`, emitted once per
process for each pattern and name, with the replacement named in the
message. The policy (what is public, how long a deprecated thing stays) is
``docs/compatibility.rst``. To make them errors in a test suite::

    pytest -W error::sessions_kernel.SessionsDeprecationWarning

or, in ``pyproject.toml``::

    [tool.pytest.ini_options]
    filterwarnings = ["error::sessions_kernel.SessionsDeprecationWarning"]
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Hashable
from typing import Any

__all__ = ["SessionsDeprecationWarning", "declared_names", "instance_state_warning", "warn_once"]


class SessionsDeprecationWarning(DeprecationWarning):
    """A use of ``sessions_kernel`` that still works, and will not in a later minor release.

    The message names the replacement and the release that deprecated the
    use. A subclass of :class:`DeprecationWarning`: Python shows it in test
    runs and in ``__main__`` and hides it elsewhere unless ``-W`` or
    ``PYTHONWARNINGS`` asks for it.
    """


# what was already told in this process: (pattern, detail) pairs
_warned: set[Hashable] = set()
_lock = threading.Lock()


def warn_once(key: Hashable, message: str, *, stacklevel: int = 2) -> bool:
    """Emit ``message`` as a :class:`SessionsDeprecationWarning` unless ``key`` was told already.

    ``key`` names the pattern and what it was found on (a pattern of one
    plugin is told again for another). Returns whether it warned.
    ``stacklevel`` counts from the caller of this function, as
    :func:`warnings.warn` counts from its own caller.
    """
    with _lock:
        if key in _warned:
            return False
        _warned.add(key)
    warnings.warn(message, SessionsDeprecationWarning, stacklevel=stacklevel + 1)
    return True


def declared_names(cls: type) -> frozenset[str]:
    """The instance attributes ``cls`` (a session class) declares: its own API, the
    attributes plugins rely on, what ``session_attributes`` added, and the kernel's
    private ones. Computed once per class."""
    names = cls.__dict__.get("_declared_names")
    if names is None:
        names = frozenset(dir(cls))
        for klass in cls.__mro__:
            names |= frozenset(getattr(klass, "__annotations__", {}))
        names |= {"_factory", "request"}  # set by __init__
        type.__setattr__(cls, "_declared_names", names)
    return names


def instance_state_warning(session: Any, name: str) -> None:
    """Warn once for ``name``, an attribute set on ``session`` that its class does not declare.

    0.1 let plugins keep per-request state as attributes of
    ``request.session``; since 0.2 that state goes in ``session.stash``
    under a :class:`~sessions_kernel.StashKey` of the plugin's own, where it
    cannot collide with another plugin's attribute or a name the kernel
    takes in a later release. Called by ``Session.__setattr__`` for a name
    :func:`declared_names` lacks: the kernel's and the plugins' declared
    attributes never come here.
    """
    warn_once(
        ("instance state", name),
        f"request.session.{name} was set, an attribute the session does not declare. "
        "Since sessions-kernel 0.2 a plugin keeps state of one request in "
        f"session.stash under a StashKey of its own (session.stash[KEY] = value, with "
        f"KEY = sessions_kernel.StashKey('yourplugin: {name}')), and an application "
        "keeps values in the session's data (request.session[key]) or on the request. "
        "An attribute may collide with another plugin's or with a name the kernel takes "
        "in a later release; setting one may be refused from 0.3 on "
        "(see docs/compatibility.rst).",
        stacklevel=3,
    )
