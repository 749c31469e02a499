"""``psessions CONFIG check``: the settings a production deployment should not have.

Like Django's ``check --deploy``: :func:`run_checks` looks at a started
application (its session factory, its Pyramid registry, its database URL and
the ini file's ``[server:...]`` section) and returns a :class:`Report` of
:class:`Finding` objects, each with an id, the setting, what is weak and the
fix. The kernel's own checks (ids ``kernel.*``) are in :mod:`.deploy_checks`,
with :class:`Finding` and :class:`Deployment` (import them from here); a plugin
reports on its feature through the hook
:func:`~sessions_kernel.hookspecs.session_deploy_checks` (ids
``<plugin name>.*``), which is called for every installed plugin, active or
not, so that a feature installed but left out of the model can say so. This
module runs them all and asks the plugins (:func:`plugin_findings`).

A finding is silenced on purpose, by id, with ``psessions.silenced_checks``
in the application's settings (white space or commas between ids) or
``psessions CONFIG check --ignore ID``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from pyramid.settings import aslist

from .deploy_checks import Deployment, Finding, duration, kernel_findings, server_concurrency
from .plugins import PluginInfo, _manager_of

if TYPE_CHECKING:
    import pluggy

    from .factory import SessionFactory

__all__ = [
    "SILENCE_SETTING",
    "Deployment",
    "Finding",
    "Report",
    "duration",
    "kernel_findings",
    "plugin_findings",
    "run_checks",
    "server_concurrency",
]

#: The application setting (in the ini file's app section) listing the ids of findings
#: that are silenced on purpose, separated by white space or commas.
SILENCE_SETTING = "psessions.silenced_checks"
#: The kernel's findings' ids start with this.
KERNEL = "kernel"


@dataclass
class Report:
    """The outcome of :func:`run_checks`: what is weak, and what was silenced on purpose."""

    findings: list[Finding] = field(default_factory=list)
    silenced: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def run_checks(
    factory: SessionFactory, deployment: Deployment | None = None, ignore: Iterable[str] = ()
) -> Report:
    """Run the kernel's checks and every installed plugin's; silence the ids asked for.

    :param factory: the application's session factory.
    :param deployment: the application around it (:class:`Deployment`).
    :param ignore: ids to silence, besides those in the application's
        ``psessions.silenced_checks`` setting.
    """
    deployment = deployment or Deployment()
    silenced = set(ignore)
    if deployment.registry is not None:
        silenced.update(_ids(deployment.registry.settings.get(SILENCE_SETTING)))
    report = Report()
    for finding in [*kernel_findings(factory, deployment), *plugin_findings(factory, deployment)]:
        (report.silenced if finding.id in silenced else report.findings).append(finding)
    return report


def _ids(value: Any) -> list[str]:
    if not value:
        return []
    return [i for item in aslist(value) for i in item.split(",") if i]


# -- the plugins' checks ---------------------------------------------------------------


def plugin_findings(factory: SessionFactory, deployment: Deployment | None = None) -> list[Finding]:
    """Ask every installed plugin (:func:`~sessions_kernel.hookspecs.session_deploy_checks`).

    Active plugins are asked through the factory's plugin manager, the
    others through one of their own, with ``active=False``. Findings come
    by plugin name; an implementation that raises gives ``<name>.check_failed``.
    """
    config = factory.config
    registry = deployment.registry if deployment is not None else None
    kwargs = {
        "settings": MappingProxyType(config.values),
        "model": config.model,
        "registry": registry,
    }
    active = {info.name for info in config.active}
    inactive = [i for i in config.installed if i.plugin is not None and i.name not in active]
    by_name = {info.name: info for info in config.installed}
    answers: list[tuple[str, list[Finding]]] = []
    for pm, is_active in ((config.pm, True), (_manager_of(inactive), False)):
        for impl in _impls(pm):
            info = by_name.get(impl.plugin_name)
            name = info.name if info is not None else impl.plugin_name
            given = {**kwargs, "active": is_active}
            answers.append((name, _call(impl, name, info, given)))
    return [finding for _, found in sorted(answers, key=lambda a: a[0]) for finding in found]


def _impls(pm: pluggy.PluginManager) -> list[Any]:
    return list(pm.hook.session_deploy_checks.get_hookimpls())


def _call(
    impl: Any, name: str, info: PluginInfo | None, kwargs: Mapping[str, Any]
) -> list[Finding]:
    label = info.label if info is not None else name
    try:
        result = impl.function(*(kwargs[arg] for arg in impl.argnames))
        found = list(cast("Iterable[Any]", result or ()))
    except Exception as exc:
        return [_failed(name, label, f"raised {type(exc).__name__}: {exc}")]
    checked = []
    for finding in found:
        if not isinstance(finding, Finding):
            return [_failed(name, label, f"returned {finding!r}, which is not a Finding")]
        if not finding.id.startswith(f"{name}."):
            finding = dataclasses.replace(finding, id=f"{name}.{finding.id}")
        checked.append(finding)
    return checked


def _failed(name: str, label: str, what: str) -> Finding:
    return Finding(
        f"{name}.check_failed",
        "",
        f"the deploy check of session plugin {label} {what}",
        f"update or fix {label}; its other checks did not run",
    )
