"""Cluster-wide RBAC that Blacktop installs once: the roles environments bind their teams to.

`blacktop-environment-editor` is an *aggregated* ClusterRole: it collects every role labelled for it
plus everything aggregated into the built-in `edit` role, so a team member can run workloads and
create ServiceRequests in their namespace, and the platform team can widen it by labelling a role.
"""

from __future__ import annotations

from typing import Any

from blacktop.api.kinds import GROUP
from blacktop.builders import naming

JSON = dict[str, Any]

SERVICE_REQUESTS_ROLE = "blacktop-environment-editor-servicerequests"
CATALOG_READER_ROLE = "blacktop-catalog-reader"
_LABELS = {naming.MANAGED_BY: naming.MANAGER}


def editor_cluster_role() -> JSON:
    """The aggregated role bound in every environment's namespace."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": naming.EDITOR_CLUSTER_ROLE, "labels": dict(_LABELS)},
        "aggregationRule": {
            "clusterRoleSelectors": [
                {"matchLabels": {naming.LABEL_AGGREGATE_TO_EDITOR: "true"}},
                {"matchLabels": {"rbac.authorization.k8s.io/aggregate-to-edit": "true"}},
            ]
        },
        # The aggregation controller (kube-controller-manager) fills the rules in.
        "rules": [],
    }


def service_requests_cluster_role() -> JSON:
    """Create and manage ServiceRequests; also aggregated into the built-in edit and admin roles."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": SERVICE_REQUESTS_ROLE,
            "labels": {
                **_LABELS,
                naming.LABEL_AGGREGATE_TO_EDITOR: "true",
                "rbac.authorization.k8s.io/aggregate-to-edit": "true",
                "rbac.authorization.k8s.io/aggregate-to-admin": "true",
            },
        },
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": ["servicerequests"],
                "verbs": ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"],
            },
            {"apiGroups": [GROUP], "resources": ["servicerequests/status"], "verbs": ["get"]},
        ],
    }


def catalog_reader_cluster_role() -> JSON:
    """Read the catalog, the guardrails and the environments: what every developer may see."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": CATALOG_READER_ROLE, "labels": dict(_LABELS)},
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": ["goldenpaths", "goldenpathrevisions", "guardrailpolicies", "environments"],
                "verbs": ["get", "list", "watch"],
            }
        ],
    }


def catalog_reader_binding() -> JSON:
    """Every authenticated user can browse the catalog (`kubectl get goldenpaths`)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": CATALOG_READER_ROLE, "labels": dict(_LABELS)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CATALOG_READER_ROLE},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}],
    }


def cluster_rbac() -> list[JSON]:
    """All cluster-wide RBAC objects, in apply order."""
    return [
        service_requests_cluster_role(),
        editor_cluster_role(),
        catalog_reader_cluster_role(),
        catalog_reader_binding(),
    ]
