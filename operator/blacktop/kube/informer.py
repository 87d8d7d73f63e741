"""Watch-fed copies of the few objects every review and reconcile reads: an informer cache.

An admission review of a ServiceRequest needs its Environment, the golden paths, the active
policies and the other requests of its namespace (the budget counts them). Reading them from the API
server on every review costs half a dozen calls, and the namespace's requests grow with it: 2,000
requests created by a GitOps sync made 2,000 lists of up to 2,000 objects. Instead each replica
lists and watches these kinds once (:class:`Informer`, one thread each, so a busy event loop never
delays them) and :class:`ClusterCache` answers from memory:

- GoldenPaths, GuardrailPolicies, Environments: whole objects (few of each), without managedFields;
- Namespaces that belong to an Environment: their name and that label only;
- ServiceRequests: the parts that budgets, costs, rollouts, the leftover sweep and the scorecard
  read (:func:`request_projection`), without what no periodic look needs (outputs, plans, most
  conditions, the managedFields of status writers). Periodic looks at every request (a rollout
  every 10 s per golden path, the scorecard and the leftover sweep every minute) read these copies
  instead of listing thousands of whole objects from the API server each time.

A cache is as fresh as its watch (milliseconds behind the API server). Callers fall back to the API
while it has not synced, and for an object it does not know (it may be a few milliseconds old).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from blacktop.kube.errors import KubeApiError
from blacktop.kube.resources import (
    ENVIRONMENTS,
    GOLDENPATHS,
    GUARDRAILPOLICIES,
    SERVICEREQUESTS,
    Resource,
    resource_for,
)

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
Key = tuple[str, str]  # namespace ("" when cluster-scoped), name
NAMESPACES = resource_for("v1", "Namespace")
# Server-side timeout of one watch request; the read timeout is longer, so a quiet watch is no error.
WATCH_SECONDS = 240


def whole(obj: JSON) -> JSON:
    """The object as it is, without managedFields (noise, and most of its size)."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


# What a request's copy keeps: metadata for identity and times, spec whole, and these status parts.
_REQUEST_METADATA = ("name", "namespace", "uid", "generation", "creationTimestamp", "deletionTimestamp")
_REQUEST_STATUS = ("monthlyCost", "revision", "firstReadyTime", "observedGeneration", "history")
_REQUEST_CONDITIONS = ("Ready", "UpgradeAvailable")


def request_projection(obj: JSON) -> JSON:
    """A request as periodic looks read it: identity and times, spec, price, revision, history, the
    Ready and UpgradeAvailable conditions, and of managedFields only who wrote the spec and when
    (the scorecard's lead time starts there), all in the object's own shape."""
    meta = obj.get("metadata") or {}
    kept: JSON = {k: meta[k] for k in _REQUEST_METADATA if k in meta}
    spec_writers = [
        {
            "manager": e.get("manager"),
            "operation": e.get("operation"),
            "time": e.get("time"),
            "fieldsV1": {"f:spec": {}},
        }
        for e in meta.get("managedFields") or []
        if isinstance(e.get("fieldsV1"), dict) and "f:spec" in e["fieldsV1"] and not e.get("subresource")
    ]
    if spec_writers:
        kept["managedFields"] = spec_writers
    projected: JSON = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": kept,
        "spec": obj.get("spec") or {},
    }
    status = obj.get("status") or {}
    part: JSON = {k: status[k] for k in _REQUEST_STATUS if k in status}
    conditions = [
        {k: c[k] for k in ("type", "status", "reason", "message") if k in c}
        for c in status.get("conditions") or []
        if c.get("type") in _REQUEST_CONDITIONS
    ]
    if conditions:
        part["conditions"] = conditions
    if part:
        projected["status"] = part
    return projected


def labels_only(obj: JSON) -> JSON:
    meta = obj.get("metadata") or {}
    return {"metadata": {"name": meta.get("name"), "labels": dict(meta.get("labels") or {})}}


class Informer:
    """One resource, listed and then watched by a thread of its own, kept as projections."""

    def __init__(
        self,
        stream: Callable[..., Iterator[JSON]],
        lister: Callable[..., JSON],
        resource: Resource,
        project: Callable[[JSON], JSON],
        *,
        label_selector: str | None = None,
    ) -> None:
        self.resource = resource
        self.synced = threading.Event()
        self._stream = stream
        self._list = lister
        self._project = project
        self._selector = label_selector
        self._lock = threading.Lock()
        self._objects: dict[Key, JSON] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch {resource.plural}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def get(self, name: str, namespace: str | None = None) -> JSON | None:
        with self._lock:
            return self._objects.get((namespace or "", name))

    def objects(self, namespace: str | None = None) -> list[JSON]:
        with self._lock:
            return [o for (ns, _), o in self._objects.items() if namespace is None or ns == namespace]

    def apply(self, event_type: str, obj: JSON) -> None:
        """Take in one watch event (ADDED, MODIFIED, DELETED)."""
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name")))
        with self._lock:
            if event_type == "DELETED":
                self._objects.pop(key, None)
            else:
                self._objects[key] = self._project(obj)

    def replace(self, items: list[JSON]) -> None:
        """Take in a full list (start, or a watch that fell too far behind)."""
        fresh = {}
        for obj in items:
            meta = obj.get("metadata") or {}
            fresh[(str(meta.get("namespace") or ""), str(meta.get("name")))] = self._project(obj)
        with self._lock:
            self._objects = fresh

    def _run(self) -> None:
        backoff = 0.5
        while not self._stopped.is_set():
            try:
                version = self._relist()
                self.synced.set()
                backoff = 0.5
                while not self._stopped.is_set():
                    version = self._watch(version)
            except _ExpiredError:
                continue  # relist at once: our version is too old for the API server's watch cache
            except (KubeApiError, OSError, ValueError) as exc:
                logger.debug("watch of %s interrupted (%s); listing again in %.1fs", self.resource.plural, exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def _query(self) -> dict[str, str]:
        return {"labelSelector": self._selector} if self._selector else {}

    def _relist(self) -> str:
        data = self._list("GET", self.resource.path(), query=self._query() or None)
        self.replace(list(data.get("items") or []))
        return str((data.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, version: str) -> str:
        query = {
            **self._query(),
            "watch": "1",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
            "resourceVersion": version,
        }
        for event in self._stream(self.resource.path(), query=query, timeout=WATCH_SECONDS + 30):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _ExpiredError
                raise ValueError(f"watch error: {obj.get('message')}")
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if kind != "BOOKMARK":
                self.apply(str(kind), obj)
            if self._stopped.is_set():
                break
        return version


class _ExpiredError(Exception):
    """The watch's resourceVersion is gone (410): list again."""


def parse_lines(chunks: Iterator[bytes]) -> Iterator[JSON]:
    """JSON objects, one per line, from a stream of byte chunks (a watch response)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if pending.strip():
        yield json.loads(pending)


class Source(Protocol):
    """What informers read with: :class:`blacktop.kube.client.KubeClient`'s blocking calls."""

    def stream_sync(self, path: str, *, query: Mapping[str, str] | None = None, timeout: float) -> Iterator[JSON]: ...

    def request_sync(self, method: str, path: str, *, query: Mapping[str, str] | None = None) -> JSON: ...


class ClusterCache:
    """The informers of one replica and the reads they answer (see the module docstring)."""

    def __init__(self, source: Source, environment_label: str) -> None:
        stream, lister = source.stream_sync, source.request_sync
        self.golden_paths = Informer(stream, lister, GOLDENPATHS, whole)
        self.policies = Informer(stream, lister, GUARDRAILPOLICIES, whole)
        self.environments = Informer(stream, lister, ENVIRONMENTS, whole)
        self.namespaces = Informer(stream, lister, NAMESPACES, labels_only, label_selector=environment_label)
        self.requests = Informer(stream, lister, SERVICEREQUESTS, request_projection)
        self._label = environment_label
        self._all = (self.golden_paths, self.policies, self.environments, self.namespaces, self.requests)

    def start(self) -> None:
        for informer in self._all:
            informer.start()

    def stop(self) -> None:
        for informer in self._all:
            informer.stop()

    @property
    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self._all)

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(i.synced.wait(max(0.0, deadline - time.monotonic())) for i in self._all)

    def environment_name_of(self, namespace: str) -> str | None:
        found = self.namespaces.get(namespace)
        name = ((found or {}).get("metadata", {}).get("labels") or {}).get(self._label)
        return str(name) if name else None
