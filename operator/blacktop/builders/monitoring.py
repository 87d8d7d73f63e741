"""Monitoring objects for what Blacktop provisions: prometheus-operator kinds and a dashboard ConfigMap. Pure.

- For a ServiceRequest whose golden path declares ``monitoring``: a PrometheusRule with the golden
  path's alert rules and a ConfigMap holding its Grafana dashboard (label ``grafana_dashboard: "1"``,
  what the Grafana sidecar looks for), both in the request's namespace and owned by the request, so
  they go away with it. ``{{namespace}}`` and ``{{name}}`` in expressions, annotations and the
  dashboard are replaced by the request's namespace and name. With ``monitoring.podMonitor``, also a
  PodMonitor ``<request>-pods`` scraping the named port of the pods the request's module runs (the
  module labels them ``platform.blacktop.dev/service-request: <request>``).
- For an Environment: one PodMonitor, ``blacktop-workloads``, in its namespace. It scrapes every pod
  of the namespace that exposes a container port named ``metrics`` (path ``/metrics``): the team
  opts in by naming a port, without writing a Service just to be scraped, and the environment's
  NetworkPolicy already admits the monitoring namespace. A PodMonitor rather than a ServiceMonitor
  because environments hold arbitrary workloads, many of which (jobs, workers) have no Service.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from blacktop.api.goldenpath import AlertRule, Monitoring, PodMetrics
from blacktop.builders import naming

JSON = dict[str, Any]

MONITORING_API = "monitoring.coreos.com/v1"
MONITORING_GROUP = "monitoring.coreos.com"
# The CRDs whose absence means "no prometheus-operator here": MonitoringUnavailable.
REQUIRED_CRDS = ("prometheusrules.monitoring.coreos.com", "podmonitors.monitoring.coreos.com")
DASHBOARD_LABEL = "grafana_dashboard"
POD_MONITOR = "blacktop-workloads"
METRICS_PORT_NAME = "metrics"

_PLACEHOLDER = re.compile(r"\{\{\s*(namespace|name)\s*\}\}")


@dataclass(frozen=True)
class MonitoringObjects:
    """What must exist for one owner, and the (kind, name) of what must not."""

    present: list[JSON]
    absent: list[tuple[str, str]]


def substitute(text: str, namespace: str, name: str) -> str:
    """Replace ``{{namespace}}`` and ``{{name}}`` (spaces inside the braces allowed)."""
    values = {"namespace": namespace, "name": name}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def rule_name(request: JSON) -> str:
    """Name of a request's PrometheusRule."""
    return f"{request['metadata']['name']}-alerts"


def dashboard_name(request: JSON) -> str:
    """Name of a request's dashboard ConfigMap."""
    return f"{request['metadata']['name']}-dashboard"


def pod_monitor_name(request: JSON) -> str:
    """Name of a request's PodMonitor."""
    return f"{request['metadata']['name']}-pods"


def build_request_pod_monitor(request: JSON, golden_path: str, pods: PodMetrics) -> JSON:
    """The PodMonitor of the pods one request runs (selected by the request's label)."""
    return {
        "apiVersion": MONITORING_API,
        "kind": "PodMonitor",
        "metadata": naming.request_child_metadata(request, golden_path, pod_monitor_name(request)),
        "spec": {
            "selector": {"matchLabels": {naming.LABEL_SERVICE_REQUEST: request["metadata"]["name"]}},
            "podMetricsEndpoints": [{"port": pods.port, "path": pods.path, "interval": pods.interval}],
        },
    }


def _alert(rule: AlertRule, namespace: str, name: str, golden_path: str) -> JSON:
    annotations = {"summary": substitute(rule.summary, namespace, name)}
    if rule.description:
        annotations["description"] = substitute(rule.description, namespace, name)
    alert: JSON = {
        "alert": rule.alert,
        "expr": substitute(rule.expr, namespace, name),
        "labels": {
            "severity": rule.severity,
            "namespace": namespace,
            "service_request": name,
            "golden_path": golden_path,
        },
        "annotations": annotations,
    }
    if rule.for_:
        alert["for"] = rule.for_
    return alert


def build_prometheus_rule(request: JSON, golden_path: str, monitoring: Monitoring) -> JSON:
    """The PrometheusRule with the golden path's alerts for this request."""
    namespace, name = request["metadata"]["namespace"], request["metadata"]["name"]
    return {
        "apiVersion": MONITORING_API,
        "kind": "PrometheusRule",
        "metadata": naming.request_child_metadata(request, golden_path, rule_name(request)),
        "spec": {
            "groups": [
                {
                    "name": f"blacktop.{namespace}.{name}",
                    "rules": [_alert(rule, namespace, name, golden_path) for rule in monitoring.rules],
                }
            ]
        },
    }


def build_dashboard(request: JSON, golden_path: str, dashboard: str) -> JSON:
    """The ConfigMap the Grafana sidecar imports as a dashboard."""
    namespace, name = request["metadata"]["namespace"], request["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": naming.request_child_metadata(
            request, golden_path, dashboard_name(request), {DASHBOARD_LABEL: "1"}
        ),
        "data": {f"{namespace}-{name}.json": substitute(dashboard, namespace, name)},
    }


def request_monitoring(request: JSON, golden_path: str, monitoring: Monitoring | None) -> MonitoringObjects:
    """A request's monitoring objects; those its golden path no longer declares are ``absent``."""
    present: list[JSON] = []
    absent: list[tuple[str, str]] = []
    if monitoring is not None and monitoring.rules:
        present.append(build_prometheus_rule(request, golden_path, monitoring))
    else:
        absent.append(("PrometheusRule", rule_name(request)))
    if monitoring is not None and monitoring.dashboard:
        present.append(build_dashboard(request, golden_path, monitoring.dashboard))
    else:
        absent.append(("ConfigMap", dashboard_name(request)))
    if monitoring is not None and monitoring.pod_monitor:
        present.append(build_request_pod_monitor(request, golden_path, monitoring.pod_monitor))
    else:
        absent.append(("PodMonitor", pod_monitor_name(request)))
    return MonitoringObjects(present, absent)


def build_pod_monitor(env: JSON) -> JSON:
    """The environment's PodMonitor: every pod with a container port named ``metrics``."""
    name = env["metadata"]["name"]
    spec = env.get("spec") or {}
    return {
        "apiVersion": MONITORING_API,
        "kind": "PodMonitor",
        "metadata": {
            "name": POD_MONITOR,
            "namespace": name,  # an environment's namespace carries its name
            "labels": {
                naming.MANAGED_BY: naming.MANAGER,
                naming.LABEL_ENVIRONMENT: name,
                naming.LABEL_TEAM: str(spec.get("team", "")),
                naming.LABEL_TIER: str(spec.get("tier", "")),
            },
            "ownerReferences": [naming.owner_reference(env)],
        },
        "spec": {
            "selector": {},
            "podMetricsEndpoints": [{"port": METRICS_PORT_NAME, "path": "/metrics"}],
        },
    }
