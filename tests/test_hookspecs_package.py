"""The hook specifications are a package, a module per group of hooks.

The kernel registers them with ``add_hookspecs(sessions_kernel.hookspecs)``,
which sees only what the package's namespace holds, and ``docs/hooks.rst``
lists each hook by hand under its group: a specification added to a group
module must be re-exported and documented too.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

from sessions_kernel import hookspecs
from sessions_kernel.plugins import _spec_manager

HOOKS_RST = Path(__file__).resolve().parent.parent / "docs" / "hooks.rst"


def _group_specifications() -> dict[str, object]:
    """Every hook specification defined in a group module of the package, by name."""
    found = {}
    for info in pkgutil.iter_modules(hookspecs.__path__):
        module = importlib.import_module(f"{hookspecs.__name__}.{info.name}")
        for name, obj in vars(module).items():
            if (
                inspect.isfunction(obj)
                and obj.__module__ == module.__name__
                and hasattr(obj, f"{hookspecs.PROJECT}_spec")
            ):
                found[name] = obj
    return found


def test_every_specification_is_exported_and_registered():
    specifications = _group_specifications()
    assert "session_addhooks" in specifications and "session_deploy_checks" in specifications
    for name, function in specifications.items():
        assert getattr(hookspecs, name) is function, name
        assert name in hookspecs.__all__, name
    pm = _spec_manager()
    registered = {
        name for name, caller in vars(pm.hook).items() if caller.spec.namespace is hookspecs
    }
    assert registered == set(specifications)


def test_the_hook_reference_documents_each_hook_once():
    documented = re.findall(
        r"^\.\. autofunction:: sessions_kernel\.hookspecs\.(\w+)$",
        HOOKS_RST.read_text(encoding="utf-8"),
        flags=re.MULTILINE,
    )
    assert sorted(documented) == sorted(_group_specifications())
