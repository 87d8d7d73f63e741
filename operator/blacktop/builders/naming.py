"""Names and labels shared by everything Blacktop creates, in one place so they never drift apart."""

from __future__ import annotations

from typing import Any

from blacktop.api.kinds import GROUP

# Labels, annotations and the finalizer carry the API group as their prefix.
DOMAIN = GROUP
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "blacktop"
LABEL_ENVIRONMENT = f"{DOMAIN}/environment"
LABEL_TEAM = f"{DOMAIN}/team"
LABEL_TIER = f"{DOMAIN}/tier"
LABEL_SERVICE_REQUEST = f"{DOMAIN}/service-request"
LABEL_GOLDEN_PATH = f"{DOMAIN}/golden-path"
LABEL_AGGREGATE_TO_EDITOR = f"{DOMAIN}/aggregate-to-environment-editor"
# On a Secret in the operator's namespace: a platform-wide notification channel (value Slack or Webhook).
LABEL_NOTIFICATION_CHANNEL = f"{DOMAIN}/notification-channel"

FINALIZER = f"{DOMAIN}/finalizer"
# Set by a platform admin on a ServiceRequest: delete it without destroying what it made (recorded).
ABANDON_ANNOTATION = f"{DOMAIN}/abandon"

# Annotations people and the admission webhook write on ServiceRequests. Not under DOMAIN: Kopf keeps
# its own marks there and ignores changes to them, and an approval must wake the request up.
USER_DOMAIN = "blacktop.dev"
APPROVE = f"{USER_DOMAIN}/approve"  # set by an approver: the digest of the plan they approve
APPROVED_BY = f"{USER_DOMAIN}/approved-by"  # stamped by admission: who set APPROVE
REQUESTED_BY = f"{USER_DOMAIN}/requested-by"  # stamped by admission: who last changed the spec

EDITOR_CLUSTER_ROLE = "blacktop-environment-editor"
EDITOR_ROLE_BINDING = "blacktop-environment-editors"
# What the operator may do inside an environment's namespace, bound there to the operator itself.
OPERATOR_CLUSTER_ROLE = "blacktop-operator-environment"
OPERATOR_ROLE_BINDING = "blacktop-operator"
RESOURCE_QUOTA = "blacktop-quota"
LIMIT_RANGE = "blacktop-limits"
NETWORK_POLICY = "blacktop-isolation"


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """A controller ownerReference to ``owner`` (an object body), so garbage collection follows it."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def is_owned_by(obj: dict[str, Any], owner_uid: str) -> bool:
    """Whether ``obj`` names the object with ``owner_uid`` among its owners."""
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner_uid for ref in refs)


def request_child_metadata(
    request: dict[str, Any], golden_path: str, name: str, extra_labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """Metadata of an object a ServiceRequest owns (Secret, PrometheusRule, ...): same namespace,
    our labels, and a controller ownerReference so it goes away with the request."""
    meta = request["metadata"]
    return {
        "name": name,
        "namespace": meta["namespace"],
        "labels": {
            MANAGED_BY: MANAGER,
            LABEL_SERVICE_REQUEST: meta["name"],
            LABEL_GOLDEN_PATH: golden_path,
            **(extra_labels or {}),
        },
        "ownerReferences": [owner_reference(request)],
    }
