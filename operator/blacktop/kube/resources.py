"""Where each kind Blacktop touches lives in the REST API.

A static table instead of discovery: the operator only ever touches these kinds, the table is tested
against the real apiserver, and it saves a discovery round trip (dozens of requests) at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from blacktop.api.kinds import API_VERSION


@dataclass(frozen=True)
class Resource:
    """One REST resource: its apiVersion, kind, plural and whether it is namespaced."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        """The REST path of the collection, or of one object (and optionally its subresource)."""
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name, safe='')}"
            if subresource:
                base += f"/{subresource}"
        return base


_RESOURCES = [
    Resource("v1", "Namespace", "namespaces", namespaced=False),
    Resource("v1", "ResourceQuota", "resourcequotas", namespaced=True),
    Resource("v1", "LimitRange", "limitranges", namespaced=True),
    Resource("v1", "Secret", "secrets", namespaced=True),
    Resource("v1", "ConfigMap", "configmaps", namespaced=True),
    Resource("v1", "Event", "events", namespaced=True),
    Resource("v1", "ServiceAccount", "serviceaccounts", namespaced=True),
    Resource("v1", "Service", "services", namespaced=True),
    Resource("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", namespaced=True),
    Resource("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", namespaced=True),
    Resource("rbac.authorization.k8s.io/v1", "Role", "roles", namespaced=True),
    Resource("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", namespaced=False),
    Resource("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", namespaced=False),
    Resource("coordination.k8s.io/v1", "Lease", "leases", namespaced=True),
    Resource("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", namespaced=False),
    Resource(
        "admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        namespaced=False,
    ),
    Resource("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors", namespaced=True),
    Resource("monitoring.coreos.com/v1", "PodMonitor", "podmonitors", namespaced=True),
    Resource("monitoring.coreos.com/v1", "PrometheusRule", "prometheusrules", namespaced=True),
    Resource(API_VERSION, "Environment", "environments", namespaced=False),
    Resource(API_VERSION, "GoldenPath", "goldenpaths", namespaced=False),
    Resource(API_VERSION, "GoldenPathRevision", "goldenpathrevisions", namespaced=False),
    Resource(API_VERSION, "ServiceRequest", "servicerequests", namespaced=True),
    Resource(API_VERSION, "GuardrailPolicy", "guardrailpolicies", namespaced=False),
]

_BY_KIND = {(r.api_version, r.kind): r for r in _RESOURCES}


def resource_for(api_version: str, kind: str) -> Resource:
    """Look up a kind; an unknown one is a programming error, so it raises ``KeyError`` loudly."""
    try:
        return _BY_KIND[(api_version, kind)]
    except KeyError:
        raise KeyError(f"blacktop does not know the resource {api_version}/{kind}") from None


def all_resources() -> list[Resource]:
    """Every resource in the table (for tests that check it against discovery)."""
    return list(_RESOURCES)


ENVIRONMENTS = resource_for(API_VERSION, "Environment")
GOLDENPATHS = resource_for(API_VERSION, "GoldenPath")
GOLDENPATHREVISIONS = resource_for(API_VERSION, "GoldenPathRevision")
SERVICEREQUESTS = resource_for(API_VERSION, "ServiceRequest")
GUARDRAILPOLICIES = resource_for(API_VERSION, "GuardrailPolicy")
