"""Wiring monitoring for what Blacktop provisions: apply the monitoring builders' objects, say how it went.

Called from the ServiceRequest and Environment reconcilers with their StatusTracker. Monitoring is
an extra, never a reason to fail: when the prometheus-operator CRDs are missing (or an apply is
refused) the owner gets ``MonitoringConfigured=False`` with reason ``MonitoringUnavailable`` and an
actionable message, and its Ready condition is left alone. Dashboards are plain ConfigMaps, so they
are delivered even without prometheus-operator.
"""

from __future__ import annotations

import logging
from typing import Any

from blacktop.api.conditions import ConditionType, Reason, get_condition
from blacktop.api.goldenpath import GoldenPathSpec
from blacktop.builders import monitoring as builders
from blacktop.controllers.context import Context
from blacktop.controllers.tracker import StatusTracker
from blacktop.kube.errors import KubeApiError
from blacktop.kube.resources import resource_for

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
_Ref = tuple[str, str, str, str]  # apiVersion, kind, namespace, name
CRDS = resource_for("apiextensions.k8s.io/v1", "CustomResourceDefinition")
_CRD_OF_KIND = {
    "PrometheusRule": "prometheusrules.monitoring.coreos.com",
    "PodMonitor": "podmonitors.monitoring.coreos.com",
}
_INSTALL_HINT = "install prometheus-operator (its monitoring.coreos.com CRDs) to get them; nothing else is affected"


async def _missing_crds(ctx: Context, kinds: set[str]) -> list[str]:
    """The CRDs of the prometheus-operator ``kinds`` that the cluster lacks."""
    needed = sorted({_CRD_OF_KIND[kind] for kind in kinds if kind in _CRD_OF_KIND})
    return [name for name in needed if await ctx.client.get(CRDS, name) is None]


async def _converge(ctx: Context, present: list[JSON], absent: list[_Ref], what: str) -> tuple[bool, str]:
    """Apply ``present``, delete ``absent``; (ok, message for the condition when not ok)."""
    wanted = {o["kind"] for o in present}
    missing = await _missing_crds(ctx, wanted | {ref[1] for ref in absent})
    # Only a CRD that something wanted needs makes monitoring unavailable; one merely cleaned up does not.
    unavailable = [name for name in missing if name in {_CRD_OF_KIND.get(kind) for kind in wanted}]
    # Deliver what does not need a missing CRD (the dashboard ConfigMap) all the same.
    present = [o for o in present if _CRD_OF_KIND.get(o["kind"]) not in missing]
    try:
        for obj in present:
            await ctx.client.apply(obj)
        for api_version, kind, namespace, name in absent:
            if _CRD_OF_KIND.get(kind) not in missing:
                await ctx.client.delete(resource_for(api_version, kind), name, namespace)
    except KubeApiError as exc:
        logger.warning("monitoring of %s: %s", what, exc)
        return False, f"could not configure monitoring of {what}: {exc.message}"
    if unavailable:
        return (
            False,
            f"CRDs {', '.join(unavailable)} are not installed, so {what} has no alerts or scraping; {_INSTALL_HINT}",
        )
    return True, ""


def _record(tracker: StatusTracker[Any], ok: bool, message: str) -> None:
    reason = Reason.MONITORING_CONFIGURED if ok else Reason.MONITORING_UNAVAILABLE
    tracker.set(ConditionType.MONITORING_CONFIGURED, ok, reason, message)


async def configure_request(
    ctx: Context, request: JSON, golden_path: str, spec: GoldenPathSpec, tracker: StatusTracker[Any]
) -> None:
    """Converge a request's PrometheusRule and dashboard with its golden path's ``monitoring``."""
    objects = builders.request_monitoring(request, golden_path, spec.monitoring)
    namespace = request["metadata"]["namespace"]
    absent = [
        ("v1" if kind == "ConfigMap" else builders.MONITORING_API, kind, namespace, name)
        for kind, name in objects.absent
    ]
    if not objects.present:
        if get_condition(tracker.status.conditions, ConditionType.MONITORING_CONFIGURED) is not None:
            # It had monitoring (its golden path dropped it): remove what was made. Never had any:
            # nothing to remove, and no API call spent on it.
            await _converge(ctx, [], absent, f"service request {request['metadata']['name']}")
        tracker.clear(ConditionType.MONITORING_CONFIGURED)  # nothing declared, nothing to report
        return
    ok, message = await _converge(ctx, objects.present, absent, f"service request {request['metadata']['name']}")
    if ok:
        made = ", ".join(f"{o['kind']} {o['metadata']['name']}" for o in objects.present)
        message = f"monitoring from golden path {golden_path}: {made}"
    _record(tracker, ok, message)


async def configure_environment(ctx: Context, env: JSON, tracker: StatusTracker[Any]) -> None:
    """Converge the environment's PodMonitor (scrapes pods with a container port named ``metrics``)."""
    monitor = builders.build_pod_monitor(env)
    ok, message = await _converge(ctx, [monitor], [], f"environment {env['metadata']['name']}")
    if ok:
        message = (
            f"PodMonitor {builders.POD_MONITOR} scrapes /metrics of pods with a container port named "
            f"{builders.METRICS_PORT_NAME!r}"
        )
    _record(tracker, ok, message)
