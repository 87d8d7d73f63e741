"""The cluster as the scorecard sees it: object bodies reduced to the facts its figures need. Pure.

The scorecard controller lists Environments, ServiceRequests, GoldenPaths, Feedback and the
workloads of environment namespaces, and :func:`observe` turns them into small frozen records. A
request's team and tier are its environment's (the namespace *is* the environment); its past is
its ``status.history`` (see :mod:`blacktop.builders.history`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from blacktop.api.common import parse_time
from blacktop.api.history import RequestHistory
from blacktop.api.scorecard import RetiredRequest
from blacktop.builders import naming
from blacktop.builders.history import last_change_time

JSON = dict[str, Any]
UNKNOWN = "unknown"
# The golden-path label of a request or rating naming no golden path of the catalog: what a tenant
# writes in a spec must never grow a label set.
NOT_IN_CATALOG = "(unknown)"
# Workload kinds counted for golden-path adoption (top-level ones: a ReplicaSet or a Job belongs to one).
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "CronJob")


def _time(text: object) -> datetime | None:
    try:
        return parse_time(str(text)) if text else None
    except ValueError:
        return None


@dataclass(frozen=True)
class EnvironmentFacts:
    name: str
    uid: str
    team: str
    tier: str
    created_at: datetime
    deleted_at: datetime | None
    last_change: datetime | None


@dataclass(frozen=True)
class RequestFacts:
    uid: str
    name: str  # "" when retired (only live requests make workloads)
    environment: str
    golden_path: str
    team: str
    tier: str
    created_at: datetime
    deleted_at: datetime | None
    first_ready: datetime | None
    last_change: datetime | None
    history: RequestHistory
    retired: bool = False  # known from the ledger only: the object is gone


@dataclass(frozen=True)
class FeedbackFacts:
    team: str | None  # None: not in an environment's namespace (not counted)
    golden_path: str | None  # None: about the platform as a whole
    score: int
    created_at: datetime


@dataclass(frozen=True)
class WorkloadFacts:
    namespace: str
    kind: str
    request: str | None  # the ServiceRequest that made it (label or owner), by name


@dataclass(frozen=True)
class Observed:
    """Everything live that the figures are computed from (plus the ledger for the past)."""

    environments: dict[str, EnvironmentFacts] = field(default_factory=dict)  # by name (= namespace)
    requests: list[RequestFacts] = field(default_factory=list)
    golden_paths: list[str] = field(default_factory=list)
    feedback: list[FeedbackFacts] = field(default_factory=list)
    workloads: list[WorkloadFacts] = field(default_factory=list)
    known_teams: tuple[str, ...] = ()


def environment_facts(body: JSON) -> EnvironmentFacts | None:
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    created = _time(meta.get("creationTimestamp"))
    if created is None or not meta.get("name"):
        return None
    return EnvironmentFacts(
        name=str(meta["name"]),
        uid=str(meta.get("uid") or meta["name"]),
        team=str(spec.get("team") or UNKNOWN),
        tier=str(spec.get("tier") or UNKNOWN),
        created_at=created,
        deleted_at=_time(meta.get("deletionTimestamp")),
        last_change=last_change_time(meta),
    )


def request_facts(body: JSON, environments: dict[str, EnvironmentFacts]) -> RequestFacts | None:
    meta, spec, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    created = _time(meta.get("creationTimestamp"))
    if created is None:
        return None
    namespace = str(meta.get("namespace") or "")
    env = environments.get(namespace)
    try:
        history = RequestHistory.model_validate(status.get("history") or {})
    except ValueError:
        history = RequestHistory()
    return RequestFacts(
        uid=str(meta.get("uid") or f"{namespace}/{meta.get('name')}"),
        name=str(meta.get("name") or ""),
        environment=namespace,
        golden_path=str(spec.get("goldenPath") or UNKNOWN),
        team=env.team if env else UNKNOWN,
        tier=env.tier if env else UNKNOWN,
        created_at=created,
        deleted_at=_time(meta.get("deletionTimestamp")),
        first_ready=_time(status.get("firstReadyTime")),
        last_change=last_change_time(meta),
        history=history,
    )


def feedback_facts(body: JSON, environments: dict[str, EnvironmentFacts]) -> FeedbackFacts | None:
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    created, score = _time(meta.get("creationTimestamp")), spec.get("score")
    if created is None or not isinstance(score, int) or not 0 <= score <= 10:
        return None
    env = environments.get(str(meta.get("namespace") or ""))
    golden_path = spec.get("goldenPath")
    return FeedbackFacts(
        team=env.team if env else None,
        golden_path=str(golden_path) if golden_path else None,
        score=score,
        created_at=created,
    )


def workload_facts(body: JSON) -> WorkloadFacts | None:
    """A top-level workload; None for one another controller owns (its owner is what counts)."""
    meta = body.get("metadata") or {}
    owners = meta.get("ownerReferences") or []
    made_by = next((o.get("name") for o in owners if o.get("kind") == "ServiceRequest"), None)
    if made_by is None and any(o.get("controller") for o in owners):
        return None
    label = (meta.get("labels") or {}).get(naming.LABEL_SERVICE_REQUEST)
    return WorkloadFacts(
        namespace=str(meta.get("namespace") or ""),
        kind=str(body.get("kind") or UNKNOWN),
        request=str(made_by or label) if (made_by or label) else None,
    )


def retired_facts(record: RetiredRequest) -> RequestFacts | None:
    """A deleted request, as the ledger remembers it."""
    created, deleted = _time(record.created_at), _time(record.deleted_at)
    if created is None or deleted is None:
        return None
    return RequestFacts(
        uid=record.uid,
        name="",
        environment=record.environment,
        golden_path=record.golden_path,
        team=record.team,
        tier=record.tier,
        created_at=created,
        deleted_at=deleted,
        first_ready=_time(record.first_ready_time),
        last_change=deleted,
        history=record.history,
        retired=True,
    )


def observe(
    environments: Iterable[JSON],
    requests: Iterable[JSON],
    golden_paths: Iterable[JSON],
    *,
    feedback: Iterable[JSON] = (),
    workloads: Iterable[JSON] = (),
    known_teams: Iterable[str] = (),
) -> Observed:
    """The facts of the listed objects (workloads of every kind in :data:`WORKLOAD_KINDS`)."""
    envs = {f.name: f for f in (environment_facts(b) for b in environments) if f is not None}
    catalog = sorted({str(b["metadata"]["name"]) for b in golden_paths if b.get("metadata", {}).get("name")})
    known = set(catalog)
    found = [f for f in (request_facts(b, envs) for b in requests) if f is not None]
    ratings = [f for f in (feedback_facts(b, envs) for b in feedback) if f is not None]
    return Observed(
        environments=envs,
        requests=[r if r.golden_path in known else replace(r, golden_path=NOT_IN_CATALOG) for r in found],
        golden_paths=catalog,
        feedback=[
            f if f.golden_path is None or f.golden_path in known else replace(f, golden_path=NOT_IN_CATALOG)
            for f in ratings
        ],
        workloads=[f for f in (workload_facts(b) for b in workloads) if f is not None],
        known_teams=tuple(sorted(set(known_teams))),
    )
