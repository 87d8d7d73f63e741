"""The webhook configurations `blacktop`: which kinds go to which webhook path, and how. Pure.

The ValidatingWebhookConfiguration has one webhook per kind, its URL path the Kopf handler id
(`validate-environment`, ...; Environments also on DELETE, for the team boundary, and ServiceRequests,
so a request others consume cannot go first). The MutatingWebhookConfiguration has one, `mutate-servicerequest`: it stamps who last changed
a request's spec and who approved its plan (annotations nobody can forge). The same
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

CHANGES = ("CREATE", "UPDATE")
# (handler id = URL path, plural, namespaced, operations). Environments are reviewed on deletion too
# (who may delete one is the team boundary's business, not only RBAC's), and so are ServiceRequests
# (one whose outputs others consume is refused).
WEBHOOKS: tuple[tuple[str, str, bool, tuple[str, ...]], ...] = (
    ("validate-environment", "environments", False, (*CHANGES, "DELETE")),
    ("validate-servicerequest", "servicerequests", True, (*CHANGES, "DELETE")),
    ("validate-guardrailpolicy", "guardrailpolicies", False, CHANGES),
    ("validate-goldenpath", "goldenpaths", False, CHANGES),
    ("validate-feedback", "feedbacks", True, CHANGES),
)
MUTATING_WEBHOOKS: tuple[tuple[str, str, bool, tuple[str, ...]], ...] = (
    ("mutate-servicerequest", "servicerequests", True, CHANGES),
)
VALIDATING, MUTATING = "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"


def operations_of(plural: str) -> list[str]:
    """The operations the validating webhook of ``plural`` reviews (the handler registers the same)."""
    return next(list(ops) for _, kind, _, ops in WEBHOOKS if kind == plural)


def excluded_namespaces(operator_namespace: str) -> list[str]:
    """Namespaces whose objects never reach the webhook."""
    return sorted({*SYSTEM_NAMESPACES, operator_namespace})


def _webhook(
    hook: tuple[str, str, bool, tuple[str, ...]], client_config: dict[str, Any], excluded: list[str], *, mutating: bool
) -> Any:
    path, plural, namespaced, operations = hook
    webhook: dict[str, Any] = {
        "name": f"{path}.{GROUP}",
        "admissionReviewVersions": ["v1"],
        "clientConfig": client_config,
        "rules": [
            {
                "apiGroups": [GROUP],
                "apiVersions": [VERSION],
                "operations": list(operations),
                "resources": [plural],
                "scope": "Namespaced" if namespaced else "Cluster",
            }
        ],
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        # Audit violations are recorded in the policy's status, but never for dry runs; stamping has none.
        "sideEffects": "None" if mutating else "NoneOnDryRun",
        "timeoutSeconds": TIMEOUT_SECONDS,
    }
    if mutating:
        webhook["reinvocationPolicy"] = "Never"
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
    kind: str = VALIDATING,
) -> dict[str, Any]:
    """The configuration (``kind``: validating or mutating) for a webhook server at ``url`` (base URL)
    or behind ``service`` (name, namespace, port).

    ``ca_bundle`` is the base64 PEM of the CA that signed the serving certificate.
    """
    if (url is None) == (service is None):
        raise ValueError("give exactly one of url and service")
    excluded = excluded_namespaces(operator_namespace)
    mutating = kind == MUTATING
    webhooks = []
    for hook in MUTATING_WEBHOOKS if mutating else WEBHOOKS:
        path = hook[0]
        if url is not None:
            client_config: dict[str, Any] = {"url": f"{url.rstrip('/')}/{path}", "caBundle": ca_bundle}
        else:
            assert service is not None
            client_config = {"service": {**service, "path": f"/{path}"}, "caBundle": ca_bundle}
        webhooks.append(_webhook(hook, client_config, excluded, mutating=mutating))
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": NAME, "labels": {naming.MANAGED_BY: naming.MANAGER}},
        "webhooks": webhooks,
    }
