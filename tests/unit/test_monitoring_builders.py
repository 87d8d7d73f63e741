"""Monitoring builders: a request's PrometheusRule and dashboard ConfigMap, an environment's PodMonitor."""

from __future__ import annotations

import json

import pytest

from blacktop.api.goldenpath import Monitoring
from blacktop.builders import monitoring

pytestmark = pytest.mark.unit

REQUEST = {
    "apiVersion": "platform.blacktop.dev/v1alpha1",
    "kind": "ServiceRequest",
    "metadata": {"name": "orders-db", "namespace": "payments-dev", "uid": "u-1"},
}
DECLARED = Monitoring.model_validate(
    {
        "rules": [
            {
                "alert": "DatabaseDown",
                "expr": 'up{namespace="{{namespace}}", service_request="{{ name }}"} == 0',
                "for": "5m",
                "severity": "critical",
                "summary": "{{name}} in {{namespace}} is down",
                "description": "No scrape of {{name}} succeeded for 5 minutes.",
            },
            {"alert": "Slow", "expr": "vector(1)", "summary": "slow"},
        ],
        "dashboard": json.dumps({"title": "{{namespace}}/{{name}}", "panels": []}),
    }
)


def test_placeholders_are_replaced() -> None:
    assert monitoring.substitute("{{namespace}}/{{ name }}/{{other}}", "ns", "n") == "ns/n/{{other}}"


def test_request_monitoring_objects() -> None:
    objects = monitoring.request_monitoring(REQUEST, "postgres-database", DECLARED)
    assert objects.absent == [("PodMonitor", "orders-db-pods")]
    rule, dashboard = objects.present
    assert rule["kind"] == "PrometheusRule"
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "payments-dev"
    assert rule["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    down, slow = rule["spec"]["groups"][0]["rules"]
    assert down["expr"] == 'up{namespace="payments-dev", service_request="orders-db"} == 0'
    assert down["for"] == "5m"
    assert down["labels"]["severity"] == "critical"
    assert down["annotations"] == {
        "summary": "orders-db in payments-dev is down",
        "description": "No scrape of orders-db succeeded for 5 minutes.",
    }
    assert "for" not in slow
    assert slow["labels"]["severity"] == "warning"
    assert dashboard["kind"] == "ConfigMap"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    (content,) = dashboard["data"].values()
    assert json.loads(content)["title"] == "payments-dev/orders-db"


def test_undeclared_monitoring_is_absent() -> None:
    objects = monitoring.request_monitoring(REQUEST, "tiny", None)
    assert objects.present == []
    assert objects.absent == [
        ("PrometheusRule", "orders-db-alerts"),
        ("ConfigMap", "orders-db-dashboard"),
        ("PodMonitor", "orders-db-pods"),
    ]
    only_rules = monitoring.request_monitoring(
        REQUEST, "tiny", Monitoring.model_validate({"rules": DECLARED.model_dump(by_alias=True)["rules"]})
    )
    assert [o["kind"] for o in only_rules.present] == ["PrometheusRule"]
    assert only_rules.absent == [("ConfigMap", "orders-db-dashboard"), ("PodMonitor", "orders-db-pods")]


def test_a_request_pod_monitor_scrapes_the_pods_its_module_labels() -> None:
    declared = Monitoring.model_validate({"podMonitor": {"port": "http"}})
    (monitor,) = monitoring.request_monitoring(REQUEST, "web-service", declared).present
    assert monitor["kind"] == "PodMonitor"
    assert monitor["metadata"]["name"] == "orders-db-pods"
    assert monitor["metadata"]["namespace"] == "payments-dev"
    assert monitor["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert monitor["spec"]["selector"] == {"matchLabels": {"platform.blacktop.dev/service-request": "orders-db"}}
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]


def test_environment_pod_monitor() -> None:
    env = {
        "apiVersion": "platform.blacktop.dev/v1alpha1",
        "kind": "Environment",
        "metadata": {"name": "payments-dev", "uid": "e-1"},
        "spec": {"team": "payments", "tier": "dev"},
    }
    monitor = monitoring.build_pod_monitor(env)
    assert monitor["kind"] == "PodMonitor"
    assert monitor["metadata"]["namespace"] == "payments-dev"
    assert monitor["metadata"]["ownerReferences"][0]["uid"] == "e-1"
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics"}]
