"""The ValidatingWebhookConfiguration `blacktop`: which kinds go to which webhook path, and how. Pure.

One webhook per kind, its URL path the Kopf handler id (`validate-environment`, ...). The same
shape serves local mode (``url`` client config, applied by the operator itself) and the Helm chart
(``service`` client config). Blacktop builds it instead of letting Kopf manage it because Kopf's
managed configuration has a fixed 30 s timeout and no namespace selector; here the timeout is 5 s,
failurePolicy is Fail (a guardrail that fails open is no guardrail) and system namespaces are
excluded, so the cluster's own machinery never waits on Blacktop.
"""

from __future__ import annotations

from typing import Any

from blacktop.api.kinds import GROUP, VERSION
from blacktop.builders import naming

NAME = "blacktop"
TIMEOUT_SECONDS = 5
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")

# (handler id = URL path, plural, namespaced). Environments are reviewed on deletion too: who may
# delete one is the team boundary's business, not only RBAC's.
WEBHOOKS: tuple[tuple[str, str, bool], ...] = (
    ("validate-environment", "environments", False),
    ("validate-servicerequest", "servicerequests", True),
    ("validate-guardrailpolicy", "guardrailpolicies", False),
    ("validate-goldenpath", "goldenpaths", False),
)
OPERATIONS = {"environments": ["CREATE", "UPDATE", "DELETE"]}
DEFAULT_OPERATIONS = ["CREATE", "UPDATE"]


def excluded_namespaces(operator_namespace: str) -> list[str]:
    """Namespaces whose objects never reach the webhook."""
    return sorted({*SYSTEM_NAMESPACES, operator_namespace})


def _webhook(path: str, plural: str, namespaced: bool, client_config: dict[str, Any], excluded: list[str]) -> Any:
    webhook: dict[str, Any] = {
        "name": f"{path}.{GROUP}",
        "admissionReviewVersions": ["v1"],
        "clientConfig": client_config,
        "rules": [
            {
                "apiGroups": [GROUP],
                "apiVersions": [VERSION],
                "operations": OPERATIONS.get(plural, DEFAULT_OPERATIONS),
                "resources": [plural],
                "scope": "Namespaced" if namespaced else "Cluster",
            }
        ],
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        # Audit violations are recorded in the policy's status, but never for dry runs.
        "sideEffects": "NoneOnDryRun",
        "timeoutSeconds": TIMEOUT_SECONDS,
    }
    if namespaced:
        webhook["namespaceSelector"] = {
            "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": excluded}]
        }
    return webhook


def build_configuration(
    *,
    operator_namespace: str,
    ca_bundle: str,
    url: str | None = None,
    service: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The configuration for a webhook server at ``url`` (base URL) or behind ``service`` (name, namespace, port).

    ``ca_bundle`` is the base64 PEM of the CA that signed the serving certificate.
    """
    if (url is None) == (service is None):
        raise ValueError("give exactly one of url and service")
    excluded = excluded_namespaces(operator_namespace)
    webhooks = []
    for path, plural, namespaced in WEBHOOKS:
        if url is not None:
            client_config: dict[str, Any] = {"url": f"{url.rstrip('/')}/{path}", "caBundle": ca_bundle}
        else:
            assert service is not None
            client_config = {"service": {**service, "path": f"/{path}"}, "caBundle": ca_bundle}
        webhooks.append(_webhook(path, plural, namespaced, client_config, excluded))
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": NAME, "labels": {naming.MANAGED_BY: naming.MANAGER}},
        "webhooks": webhooks,
    }
