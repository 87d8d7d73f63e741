"""Monitoring for what Blacktop provisions, against the REAL prometheus-operator CRDs (pinned Go module).

The session cluster is shared, so the test of "CRDs absent" makes sure they are absent itself (it
deletes them if an earlier test installed them) and the test of "CRDs present" installs them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from blacktop.api.goldenpath import Monitoring
from blacktop.builders import monitoring
from helpers import (
    MONITORING_CRDS,
    Kubectl,
    OperatorProcess,
    apply_json,
    apply_ready,
    condition,
    get,
    install_monitoring_crds,
    make_environment,
    service_request,
    tiny_golden_path,
    unique,
    wait_for,
)

pytestmark = pytest.mark.integration

MONITORING = {
    "rules": [
        {
            "alert": "TinyServiceDown",
            "expr": 'up{namespace="{{namespace}}", service="{{name}}"} == 0',
            "for": "5m",
            "severity": "critical",
            "summary": "{{name}} in {{namespace}} is down",
        }
    ],
    "dashboard": json.dumps({"title": "tiny {{namespace}}/{{name}}", "panels": []}),
}

# What `kubectl get` says about a kind whose CRD is not installed (the "CRDs absent" test removes them).
NO_CRD = "the server doesn't have a resource type"


def remove_crds(kubectl: Kubectl) -> None:
    names = [f"{name}.monitoring.coreos.com" for name in MONITORING_CRDS]
    kubectl("delete", "crd", *names, "--ignore-not-found", "--wait=true", "--timeout=60s")


@pytest.fixture(scope="module")
def golden_path(kubectl: Kubectl, operator: OperatorProcess) -> Iterator[str]:
    """The example `tiny` golden path, renamed, declaring alert rules and a dashboard."""
    body = tiny_golden_path(unique("tiny-monitored"))
    body["spec"]["monitoring"] = MONITORING
    name = apply_ready(kubectl, body)
    yield name
    kubectl("delete", "goldenpath", name, "--ignore-not-found", "--wait=false")


def make_request(kubectl: Kubectl, namespace: str, golden_path: str) -> str:
    name = unique("svc")
    apply_json(kubectl, service_request(name, namespace, golden_path))
    kubectl("wait", "--for=condition=Ready", f"servicerequest/{name}", "-n", namespace, "--timeout=180s")
    return name


def test_without_the_crds_monitoring_is_unavailable_and_nothing_fails(kubectl: Kubectl, golden_path: str) -> None:
    remove_crds(kubectl)
    env = make_environment(kubectl, unique("mon-env"), "observers")
    try:
        env_monitoring = wait_for(
            lambda: condition(get(kubectl, "environment", env), "MonitoringConfigured"),
            timeout=30,
            what="the environment's MonitoringConfigured condition",
        )
        assert env_monitoring["status"] == "False"
        assert env_monitoring["reason"] == "MonitoringUnavailable"
        assert "podmonitors.monitoring.coreos.com" in env_monitoring["message"]

        name = make_request(kubectl, env, golden_path)  # Ready regardless
        sr = get(kubectl, "servicerequest", name, "-n", env)
        cond = condition(sr, "MonitoringConfigured")
        assert cond is not None
        assert cond["status"] == "False"
        assert cond["reason"] == "MonitoringUnavailable"
        assert "prometheusrules.monitoring.coreos.com" in cond["message"]
        ready = condition(sr, "Ready")
        assert ready is not None
        assert ready["status"] == "True"
        # The dashboard needs no CRD: it is delivered anyway.
        dashboard = get(kubectl, "configmap", f"{name}-dashboard", "-n", env)
        assert dashboard is not None
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
        kubectl("delete", "servicerequest", name, "-n", env, "--timeout=180s")
    finally:
        kubectl("delete", "environment", env, "--ignore-not-found", "--wait=true", "--timeout=180s")


def test_monitoring_objects_follow_their_request(kubectl: Kubectl, golden_path: str, tmp_path: Path) -> None:
    install_monitoring_crds(kubectl)
    env = make_environment(kubectl, unique("mon-env"), "observers")
    try:
        # The environment converges on its next reconcile (the tests' resync is 10 s).
        monitor = wait_for(
            lambda: get(kubectl, "podmonitor", monitoring.POD_MONITOR, "-n", env, missing=[NO_CRD]),
            timeout=60,
            what="the environment's PodMonitor",
        )
        assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics"}]
        env_monitoring = wait_for(
            lambda: (
                (c := condition(get(kubectl, "environment", env), "MonitoringConfigured"))
                and c["status"] == "True"
                and c
            ),
            timeout=30,
            what="MonitoringConfigured=True on the environment",
        )
        assert env_monitoring["reason"] == "MonitoringConfigured"

        name = make_request(kubectl, env, golden_path)
        sr = get(kubectl, "servicerequest", name, "-n", env)
        assert sr is not None
        cond = condition(sr, "MonitoringConfigured")
        assert cond is not None
        assert (cond["status"], cond["reason"]) == ("True", "MonitoringConfigured")

        rule = get(kubectl, "prometheusrule", f"{name}-alerts", "-n", env, missing=[NO_CRD])
        assert rule is not None
        (alert,) = rule["spec"]["groups"][0]["rules"]
        assert alert["expr"] == f'up{{namespace="{env}", service="{name}"}} == 0'
        assert alert["annotations"]["summary"] == f"{name} in {env} is down"
        assert rule["metadata"]["ownerReferences"][0]["uid"] == sr["metadata"]["uid"]
        # Nothing we sent was pruned by the real CRD's schema: the stored spec is exactly ours.
        expected = monitoring.build_prometheus_rule(sr, golden_path, Monitoring.model_validate(MONITORING))
        assert rule["spec"] == expected["spec"]
        dashboard = get(kubectl, "configmap", f"{name}-dashboard", "-n", env)
        assert dashboard is not None
        (content,) = dashboard["data"].values()
        assert json.loads(content)["title"] == f"tiny {env}/{name}"

        # And the builders' objects pass the real CRDs' validation with unknown fields refused.
        for obj in (expected, monitoring.build_pod_monitor(get(kubectl, "environment", env) or {})):
            path = tmp_path / f"{obj['kind']}.json"
            path.write_text(json.dumps(obj))
            kubectl(
                "apply", "--server-side", "--force-conflicts", "--dry-run=server", "--validate=strict", "-f", str(path)
            )

        kubectl("delete", "servicerequest", name, "-n", env, "--timeout=180s")
        wait_for(
            lambda: (
                get(kubectl, "prometheusrule", f"{name}-alerts", "-n", env, missing=[NO_CRD]) is None
                and get(kubectl, "configmap", f"{name}-dashboard", "-n", env) is None
            ),
            timeout=60,
            what="the request's PrometheusRule and dashboard to go away with it",
        )
    finally:
        kubectl("delete", "environment", env, "--ignore-not-found", "--wait=true", "--timeout=180s")
