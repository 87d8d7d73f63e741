"""Kubernetes Events about our objects, so `kubectl describe` tells the story of a resource.

Messages are always written by Blacktop itself (never raw tool output) and capped in length; callers
redact anything that came from outside before it gets here.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime
from typing import Any

from blacktop.kube.client import Client
from blacktop.kube.errors import KubeApiError

logger = logging.getLogger(__name__)

COMPONENT = "blacktop"
NORMAL = "Normal"
WARNING = "Warning"
# The apiserver rejects longer messages; 1 KiB keeps `kubectl describe` readable anyway.
_MAX_MESSAGE = 1024


async def post_event(client: Client, involved: dict[str, Any], event_type: str, reason: str, message: str) -> None:
    """Record an Event about ``involved`` (an object body). Failing to post is logged, never raised:
    an Event is a courtesy, it must not fail a reconcile."""
    meta = involved.get("metadata", {})
    # Events of cluster-scoped objects live in `default`, like the Node events of the kubelet.
    namespace = meta.get("namespace") or "default"
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta.get('name', 'unknown')}.{secrets.token_hex(8)}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": event_type,
        "reason": reason,
        "message": message[:_MAX_MESSAGE],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        await client.create(body)
    except KubeApiError as exc:
        logger.warning("could not post event %s for %s: %s", reason, meta.get("name"), exc)
