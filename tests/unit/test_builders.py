"""What an Environment implies: the exact child objects."""

from __future__ import annotations

from typing import Any

import pytest

from blacktop.api.environment import EnvironmentSpec
from blacktop.builders import environment as builders
from blacktop.builders import naming, rbac

pytestmark = pytest.mark.unit

ENV: dict[str, Any] = {
    "apiVersion": "platform.blacktop.dev/v1alpha1",
    "kind": "Environment",
    "metadata": {"name": "payments-dev", "uid": "uid-1", "creationTimestamp": "2026-11-22T10:00:00Z"},
}


def spec(**extra: Any) -> EnvironmentSpec:
    return EnvironmentSpec.model_validate({"team": "payments", "tier": "dev", **extra})


def children(**extra: Any) -> builders.EnvironmentChildren:
    return builders.build_children(ENV, spec(**extra), team_group="team-payments", monitoring_namespace="monitoring")


def test_every_child_is_owned_and_labelled() -> None:
    result = children()
    assert [c["kind"] for c in result.present] == [
        "Namespace",
        "ResourceQuota",
        "LimitRange",
        "RoleBinding",
        "NetworkPolicy",
    ]
    for child in result.present:
        meta = child["metadata"]
        assert meta["ownerReferences"] == [
            {
                "apiVersion": ENV["apiVersion"],
                "kind": "Environment",
                "name": "payments-dev",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"][naming.LABEL_ENVIRONMENT] == "payments-dev"
        assert meta["labels"][naming.LABEL_TEAM] == "payments"
        assert meta["labels"][naming.LABEL_TIER] == "dev"
        if child["kind"] != "Namespace":
            assert meta["namespace"] == "payments-dev"


def test_quota_caps_requests_and_limits() -> None:
    quota = builders.build_resource_quota(ENV, spec(quota={"cpu": "2", "memory": "3Gi", "pods": 7, "storage": "5Gi"}))
    assert quota["spec"]["hard"] == {
        "requests.cpu": "2",
        "limits.cpu": "2",
        "requests.memory": "3Gi",
        "limits.memory": "3Gi",
        "pods": "7",
        "requests.storage": "5Gi",
    }


def test_namespace_enforces_pod_security_baseline() -> None:
    ns = builders.build_namespace(ENV, spec())
    assert ns["metadata"]["labels"][builders.POD_SECURITY_ENFORCE] == "baseline"


def test_network_policy_allows_namespace_monitoring_and_extras_once() -> None:
    policy = builders.build_network_policy(
        ENV, spec(networkPolicy={"allowFromNamespaces": ["ci", "monitoring"]}), "monitoring"
    )
    sources = policy["spec"]["ingress"][0]["from"]
    assert sources[0] == {"podSelector": {}}
    allowed = [s["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for s in sources[1:]]
    assert allowed == ["monitoring", "ci"]


def test_open_environment_has_no_network_policy_and_removes_it() -> None:
    result = children(networkPolicy={"isolation": "Open"})
    assert "NetworkPolicy" not in [c["kind"] for c in result.present]
    assert [(r.kind, r.name) for r in result.absent] == [("NetworkPolicy", naming.NETWORK_POLICY)]


def test_role_binding_subjects_are_team_group_and_owners_without_duplicates() -> None:
    binding = builders.build_role_binding(
        ENV,
        spec(owners=[{"kind": "User", "name": "olivia"}, {"kind": "Group", "name": "team-payments"}]),
        "team-payments",
    )
    assert [(s["kind"], s["name"]) for s in binding["subjects"]] == [("Group", "team-payments"), ("User", "olivia")]
    assert binding["roleRef"]["name"] == naming.EDITOR_CLUSTER_ROLE


def test_editor_role_aggregates_service_requests() -> None:
    editor = rbac.editor_cluster_role()
    selectors = [s["matchLabels"] for s in editor["aggregationRule"]["clusterRoleSelectors"]]
    sr_role = rbac.service_requests_cluster_role()
    assert any(all(sr_role["metadata"]["labels"].get(k) == v for k, v in sel.items()) for sel in selectors)
    assert "create" in sr_role["rules"][0]["verbs"]
    for role in rbac.cluster_rbac():
        for rule in role.get("rules", []):
            assert "*" not in rule["verbs"]
            assert "*" not in rule["resources"]
