"""What an Environment implies: its namespace and the guard rails inside it.

Pure functions from an Environment (its body and decoded spec) to the child objects Blacktop keeps
converged with server-side apply. Keeping this free of I/O means the exact objects are unit-tested,
and the controller only decides *when* to apply them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from blacktop.api.environment import EnvironmentSpec, NetworkIsolation
from blacktop.builders import naming
from blacktop.builders.rbac import operator_subject

JSON = dict[str, Any]

POD_SECURITY_ENFORCE = "pod-security.kubernetes.io/enforce"
POD_SECURITY_WARN = "pod-security.kubernetes.io/warn"


@dataclass(frozen=True)
class ChildRef:
    """Identity of a child object, enough to find or delete it."""

    api_version: str
    kind: str
    name: str
    namespace: str | None


@dataclass(frozen=True)
class EnvironmentChildren:
    """The objects that must exist, and those that must not (e.g. a policy switched off)."""

    present: list[JSON]
    absent: list[ChildRef]


def namespace_name(env: JSON) -> str:
    """An environment's namespace carries its name: `kubectl -n <environment>` just works."""
    return str(env["metadata"]["name"])


def labels(env: JSON, spec: EnvironmentSpec) -> dict[str, str]:
    """Labels on every child, so they can be found (and watched) by environment, team and tier."""
    return {
        naming.MANAGED_BY: naming.MANAGER,
        naming.LABEL_ENVIRONMENT: env["metadata"]["name"],
        naming.LABEL_TEAM: spec.team,
        naming.LABEL_TIER: spec.tier.value,
    }


def _meta(env: JSON, spec: EnvironmentSpec, name: str, namespace: str | None) -> JSON:
    meta: JSON = {
        "name": name,
        "labels": labels(env, spec),
        "ownerReferences": [naming.owner_reference(env)],
    }
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def build_namespace(env: JSON, spec: EnvironmentSpec) -> JSON:
    """The namespace, with Pod Security admission: baseline enforced, restricted warned about."""
    meta = _meta(env, spec, namespace_name(env), None)
    meta["labels"] = {**meta["labels"], POD_SECURITY_ENFORCE: "baseline", POD_SECURITY_WARN: "restricted"}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def build_resource_quota(env: JSON, spec: EnvironmentSpec) -> JSON:
    """Hard caps for the whole namespace. CPU and memory cap requests and limits alike, so the
    quota is what the team can really use, not a number they can overcommit past."""
    quota = spec.quota
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": _meta(env, spec, naming.RESOURCE_QUOTA, namespace_name(env)),
        "spec": {
            "hard": {
                "requests.cpu": quota.cpu,
                "limits.cpu": quota.cpu,
                "requests.memory": quota.memory,
                "limits.memory": quota.memory,
                "pods": str(quota.pods),
                "requests.storage": quota.storage,
            }
        },
    }


def build_limit_range(env: JSON, spec: EnvironmentSpec) -> JSON:
    """Container defaults, so a pod without resources still fits the quota instead of being rejected."""
    limits = spec.limits
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": _meta(env, spec, naming.LIMIT_RANGE, namespace_name(env)),
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "defaultRequest": {
                        "cpu": limits.default_request.cpu,
                        "memory": limits.default_request.memory,
                    },
                    "default": {"cpu": limits.default.cpu, "memory": limits.default.memory},
                }
            ]
        },
    }


def build_network_policy(env: JSON, spec: EnvironmentSpec, monitoring_namespace: str) -> JSON:
    """Deny ingress by default; allow the namespace itself, monitoring, and listed namespaces."""
    allowed = [monitoring_namespace, *spec.network_policy.allow_from_namespaces]
    sources: list[JSON] = [{"podSelector": {}}]
    sources += [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
        for ns in dict.fromkeys(allowed)  # de-duplicated, order kept for stable diffs
    ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(env, spec, naming.NETWORK_POLICY, namespace_name(env)),
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": sources}]},
    }


def _role_binding(env: JSON, spec: EnvironmentSpec, name: str, cluster_role: str, subjects: list[JSON]) -> JSON:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(env, spec, name, namespace_name(env)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
        "subjects": subjects,
    }


def build_role_binding(env: JSON, spec: EnvironmentSpec, team_group: str) -> JSON:
    """The team's group and the listed owners get the aggregated editor role in the namespace."""
    subjects: list[JSON] = [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": team_group}]
    for owner in spec.owners:
        subject = {"apiGroup": "rbac.authorization.k8s.io", "kind": owner.kind.value, "name": owner.name}
        if subject not in subjects:
            subjects.append(subject)
    return _role_binding(env, spec, naming.EDITOR_ROLE_BINDING, naming.EDITOR_CLUSTER_ROLE, subjects)


def build_operator_binding(env: JSON, spec: EnvironmentSpec, operator_username: str) -> JSON:
    """The operator's own rights in the namespace (Secrets, quota, dashboards...), so it holds none of
    them cluster-wide. Created right after the namespace, before anything that needs it."""
    subjects = [operator_subject(operator_username)]
    return _role_binding(env, spec, naming.OPERATOR_ROLE_BINDING, naming.OPERATOR_CLUSTER_ROLE, subjects)


def build_children(
    env: JSON, spec: EnvironmentSpec, *, team_group: str, monitoring_namespace: str, operator_username: str = ""
) -> EnvironmentChildren:
    """Everything an Environment implies, namespace first (the others live in it), then the operator's
    own binding (the others need it)."""
    present = [build_namespace(env, spec)]
    if operator_username:
        present.append(build_operator_binding(env, spec, operator_username))
    present += [
        build_resource_quota(env, spec),
        build_limit_range(env, spec),
        build_role_binding(env, spec, team_group),
    ]
    absent: list[ChildRef] = []
    if spec.network_policy.isolation == NetworkIsolation.ISOLATED:
        present.append(build_network_policy(env, spec, monitoring_namespace))
    else:
        absent.append(ChildRef("networking.k8s.io/v1", "NetworkPolicy", naming.NETWORK_POLICY, namespace_name(env)))
    return EnvironmentChildren(present=present, absent=absent)
