"""Cluster-wide RBAC that Blacktop installs once: the roles environments bind their teams (and the
operator) to, and the role developers need to self-serve Environments.

`blacktop-environment-editor` is an *aggregated* ClusterRole: it collects every role labelled for it
plus everything aggregated into the built-in `edit` role, so a team member can run workloads and
create ServiceRequests and Feedback in their namespace, and the platform team can widen it by
labelling a role. Feedback is never aggregated into `view`: other teams, and anyone with read-only
access to a namespace, cannot read a team's comments. `blacktop-feedback-reader` is for the
platform team to bind (every team's ratings and comments); nothing binds it by default.

`blacktop-environment-developer` lets every authenticated user create, change and delete
Environments: RBAC cannot tell teams apart (Environments are cluster-scoped), so the team boundary
is the admission webhook's (a user may only act on an Environment of a team whose group they are
in), and this role makes sure it is the only boundary, not an accident of who was granted what.

`blacktop-operator-environment` is what the operator does inside an environment's namespace
(connection Secrets, quota, limits, network policy, dashboards, alert rules, the PodMonitor). The
operator binds it to itself in each namespace it creates, so it needs none of these rights
cluster-wide: it cannot read or write Secrets or ConfigMaps of namespaces that are not
environments.
"""

from __future__ import annotations

from typing import Any

from blacktop.api.kinds import GROUP
from blacktop.builders import naming

JSON = dict[str, Any]

SERVICE_REQUESTS_ROLE = "blacktop-environment-editor-servicerequests"
FEEDBACK_ROLE = "blacktop-environment-editor-feedback"
FEEDBACK_READER_ROLE = "blacktop-feedback-reader"
CATALOG_READER_ROLE = "blacktop-catalog-reader"
REQUEST_APPROVER_ROLE = "blacktop-request-approver"
DEVELOPER_ROLE = "blacktop-environment-developer"
_LABELS = {naming.MANAGED_BY: naming.MANAGER}


def _cluster_role(name: str, rules: list[JSON]) -> JSON:
    """A ClusterRole of Blacktop's with these rules."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": dict(_LABELS)},
        "rules": rules,
    }


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


def _editor_role(name: str, plural: str) -> JSON:
    """Create and manage one namespaced kind; aggregated into the editor role and the built-in edit and admin."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": name,
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
                "resources": [plural],
                "verbs": ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"],
            },
            {"apiGroups": [GROUP], "resources": [f"{plural}/status"], "verbs": ["get"]},
        ],
    }


def service_requests_cluster_role() -> JSON:
    """Create and manage ServiceRequests."""
    return _editor_role(SERVICE_REQUESTS_ROLE, "servicerequests")


def feedback_cluster_role() -> JSON:
    """Rate golden paths and the platform (Feedback) in the team's namespace, and read the team's ratings."""
    return _editor_role(FEEDBACK_ROLE, "feedbacks")


def feedback_reader_cluster_role() -> JSON:
    """Every team's Feedback, comments included: for the platform team to bind to itself."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": FEEDBACK_READER_ROLE, "labels": dict(_LABELS)},
        "rules": [{"apiGroups": [GROUP], "resources": ["feedbacks"], "verbs": ["get", "list", "watch"]}],
    }


def catalog_reader_cluster_role() -> JSON:
    """Read the catalog, the guardrails, the environments and the scorecard: what every developer may see."""
    return _cluster_role(
        CATALOG_READER_ROLE,
        [
            {
                "apiGroups": [GROUP],
                "resources": [
                    "goldenpaths",
                    "goldenpathrevisions",
                    "guardrailpolicies",
                    "environments",
                    "platformscorecards",
                ],
                "verbs": ["get", "list", "watch"],
            }
        ],
    )


def _authenticated_binding(role: str) -> JSON:
    """ClusterRole ``role`` bound to every authenticated user (same name as the role)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": role, "labels": dict(_LABELS)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}],
    }


def request_approver_cluster_role() -> JSON:
    """For approvers outside a team (e.g. its leads): read requests and annotate them with an approval.

    Not bound by Blacktop: the platform team binds it to the groups its policies name as approvers
    (a ClusterRoleBinding, or a RoleBinding per namespace). `patch` also reaches the spec, which the
    admission webhook keeps for the team: only the approval annotation is theirs to set.
    """
    return _cluster_role(
        REQUEST_APPROVER_ROLE,
        [
            {"apiGroups": [GROUP], "resources": ["servicerequests"], "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": [GROUP], "resources": ["servicerequests/status"], "verbs": ["get"]},
        ],
    )


def catalog_reader_binding() -> JSON:
    """Every authenticated user can browse the catalog (`kubectl get goldenpaths`)."""
    return _authenticated_binding(CATALOG_READER_ROLE)


def developer_cluster_role() -> JSON:
    """Self-serve Environments; the webhook's team boundary decides which ones."""
    return _cluster_role(
        DEVELOPER_ROLE,
        [
            {
                "apiGroups": [GROUP],
                "resources": ["environments"],
                "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
            },
            {"apiGroups": [GROUP], "resources": ["environments/status"], "verbs": ["get"]},
        ],
    )


def developer_binding() -> JSON:
    """Every authenticated user may self-serve Environments of their own teams."""
    return _authenticated_binding(DEVELOPER_ROLE)


def operator_environment_cluster_role() -> JSON:
    """What the operator does in an environment's namespace (bound there, never cluster-wide)."""
    return _cluster_role(
        naming.OPERATOR_CLUSTER_ROLE,
        [
            # Connection Secrets: server-side applied, and read first (never someone else's).
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch"]},
            # Quota and limits (server-side applied); the NetworkPolicy is also removed when switched off.
            {"apiGroups": [""], "resources": ["resourcequotas", "limitranges"], "verbs": ["create", "patch"]},
            {
                "apiGroups": ["networking.k8s.io"],
                "resources": ["networkpolicies"],
                "verbs": ["create", "patch", "delete"],
            },
            # Dashboards, alert rules and the PodMonitor: applied, and removed when no longer declared.
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "patch", "delete"]},
            {
                "apiGroups": ["monitoring.coreos.com"],
                "resources": ["podmonitors", "prometheusrules"],
                "verbs": ["create", "patch", "delete"],
            },
        ],
    )


def operator_subject(username: str) -> JSON:
    """The RBAC subject of the operator's own identity (a ServiceAccount in a cluster, else a user)."""
    prefix = "system:serviceaccount:"
    if username.startswith(prefix) and username.count(":") == 3:
        namespace, name = username[len(prefix) :].split(":")
        return {"kind": "ServiceAccount", "name": name, "namespace": namespace}
    return {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": username}


def cluster_rbac() -> list[JSON]:
    """All cluster-wide RBAC objects, in apply order."""
    return [
        service_requests_cluster_role(),
        feedback_cluster_role(),
        editor_cluster_role(),
        feedback_reader_cluster_role(),
        catalog_reader_cluster_role(),
        catalog_reader_binding(),
        request_approver_cluster_role(),
        developer_cluster_role(),
        developer_binding(),
        operator_environment_cluster_role(),
    ]
