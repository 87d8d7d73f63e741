"""What the portal shows, as the operator's watches see it: a cache of Blacktop's objects.

Kopf already watches Environments, GoldenPaths, ServiceRequests and GuardrailPolicies; each watch
event is passed to :meth:`ClusterState.observe`, which keeps the object minus the bulky metadata
nobody reads (managedFields, the last-applied annotation). Pages read a :class:`Snapshot`, so a
page load costs no API call however many requests the cluster holds. Only these four kinds are
ever cached: Secrets never enter the portal.

Updates and snapshots run on the operator's event loop; a snapshot is a set of shallow copies, so
a page rendered in a worker thread never sees a table change under it (watch events replace whole
objects, they never mutate one in place).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from blacktop.api import kinds

JSON = dict[str, Any]

ENVIRONMENT, GOLDEN_PATH, SERVICE_REQUEST, GUARDRAIL_POLICY = (
    kinds.ENVIRONMENT.kind,
    kinds.GOLDEN_PATH.kind,
    kinds.SERVICE_REQUEST.kind,
    kinds.GUARDRAIL_POLICY.kind,
)
KINDS = tuple(k.kind for k in kinds.ALL_KINDS)
_DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def trimmed(body: JSON) -> JSON:
    """``body`` without managedFields and the last-applied annotation (a copy of the top levels)."""
    meta = dict(body.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in _DROPPED_ANNOTATIONS}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    return {**body, "metadata": meta}


def key_of(body: JSON) -> str:
    """``namespace/name`` (cluster-scoped objects: ``name``)."""
    meta = body.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name')}" if namespace else str(meta.get("name"))


@dataclass(frozen=True)
class Snapshot:
    """The four kinds at one moment, by key (``namespace/name`` for requests, ``name`` otherwise)."""

    environments: dict[str, JSON]
    golden_paths: dict[str, JSON]
    requests: dict[str, JSON]
    policies: dict[str, JSON]
    version: int  # grows with every change: lets callers cache what they derive from a snapshot
    by_namespace: dict[str, list[JSON]]

    def requests_in(self, namespace: str) -> list[JSON]:
        """The requests of one namespace (an Environment's namespace has the Environment's name)."""
        return self.by_namespace.get(namespace, [])


class ClusterState:
    """The cache the portal renders from; empty until the first watch events arrive."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[str, JSON]] = {kind: {} for kind in KINDS}
        self._version = 0
        self._snapshot: Snapshot | None = None

    def observe(self, kind: str, body: JSON, *, deleted: bool = False) -> None:
        """Take in one watch event of ``kind`` (``deleted`` for a DELETED event)."""
        table = self._tables[kind]
        key = key_of(body)
        if deleted:
            table.pop(key, None)
        else:
            table[key] = trimmed(body)
        self._version += 1
        self._snapshot = None

    def snapshot(self) -> Snapshot:
        """The tables as they are now (reused until the next change)."""
        if self._snapshot is None:
            requests = dict(self._tables[SERVICE_REQUEST])
            by_namespace: dict[str, list[JSON]] = {}
            for body in requests.values():
                by_namespace.setdefault(str(body["metadata"].get("namespace")), []).append(body)
            self._snapshot = Snapshot(
                environments=dict(self._tables[ENVIRONMENT]),
                golden_paths=dict(self._tables[GOLDEN_PATH]),
                requests=requests,
                policies=dict(self._tables[GUARDRAIL_POLICY]),
                version=self._version,
                by_namespace=by_namespace,
            )
        return self._snapshot
