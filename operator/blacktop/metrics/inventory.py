"""What the operator currently sees of its objects, reduced to what metrics need, and what changed.

The operator already watches every Environment, GoldenPath and ServiceRequest; each watch event is
fed to :meth:`Inventory.update`, which keeps a small view per object (never the whole body) and
returns the transitions worth counting: a request's first Ready (lead time), a finished run (result
and failure class), drift turning up. Scrape-time gauges (readiness, adoption, cost, budgets,
expiry, stuck deletions) are computed from these views by :mod:`blacktop.metrics.collector`. It also
holds the leftovers: the state of requests that are gone (a removed finalizer) or abandoned, whose
infrastructure still exists and still costs (controllers/leftovers.py keeps them current).

Pure apart from a lock: the prometheus-client HTTP server reads the views from its own thread while
the event loop updates them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from blacktop.api.common import money_to_cents, parse_time
from blacktop.api.conditions import ConditionType
from blacktop.api.history import RequestHistory

JSON = dict[str, Any]

ENVIRONMENT, GOLDEN_PATH, SERVICE_REQUEST = "Environment", "GoldenPath", "ServiceRequest"
KINDS = (ENVIRONMENT, GOLDEN_PATH, SERVICE_REQUEST)
TIERS = ("dev", "staging", "prod")
UNKNOWN = "unknown"


def _cents(text: object) -> int:
    try:
        return money_to_cents(str(text)) if text else 0
    except ValueError:
        return 0


def _time(text: object) -> datetime | None:
    try:
        return parse_time(str(text)) if text else None
    except ValueError:
        return None


def _condition(body: JSON, ctype: str) -> JSON | None:
    for cond in (body.get("status") or {}).get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == ctype:
            return cond
    return None


def readiness(body: JSON) -> str:
    """``true``, ``false`` or ``unknown``: the Ready condition as a bounded label value."""
    ready = _condition(body, ConditionType.READY)
    status = str((ready or {}).get("status", "Unknown")).lower()
    return status if status in ("true", "false") else UNKNOWN


@dataclass(frozen=True)
class RunView:
    """The last run of a request, as its status says."""

    id: str
    operation: str
    result: str | None


@dataclass(frozen=True)
class EnvironmentView:
    team: str
    tier: str
    ready: str
    budget_cents: int | None
    currency: str
    expires_at: datetime | None
    deleting_since: datetime | None


@dataclass(frozen=True)
class GoldenPathView:
    name: str
    ready: str
    tiers: tuple[str, ...]
    deleting_since: datetime | None


@dataclass(frozen=True)
class LeftoverView:
    """What a request that is gone left behind: its state, what it cost, why it is still there."""

    namespace: str
    golden_path: str
    team: str
    currency: str
    monthly_cost_cents: int
    reason: str  # orphaned (its request is gone: destroyed as soon as possible) or abandoned (by an admin)


LEFTOVER_REASONS = ("orphaned", "abandoned")


@dataclass(frozen=True)
class RequestView:
    golden_path: str
    environment: str
    ready: str
    ready_reason: str | None
    monthly_cost_cents: int
    deleting_since: datetime | None
    run: RunView | None
    first_ready_time: str | None
    lead_time_seconds: float | None
    drifted: bool
    drifted_reason: str | None  # a drift run's outcome is told by Drifted, not by Ready
    stage: str | None = None
    approval: ApprovalView | None = None

    # From status.history: delivered changes (generation, lead seconds, applied), and every episode
    # of trouble known (since, failure class, recovery seconds or None while open).
    changes: tuple[tuple[int, int, bool], ...] = ()
    episodes: tuple[tuple[str, str, int | None], ...] = ()


@dataclass(frozen=True)
class ApprovalView:
    """The request's last approval, as its status says."""

    operation: str
    state: str
    digest: str
    waited_seconds: float | None


def _history(status: JSON) -> RequestHistory:
    try:
        return RequestHistory.model_validate(status.get("history") or {})
    except ValueError:
        return RequestHistory()


def environment_view(body: JSON) -> EnvironmentView:
    spec, status = body.get("spec") or {}, body.get("status") or {}
    budget = spec.get("budget") or {}
    return EnvironmentView(
        team=str(spec.get("team") or UNKNOWN),
        tier=str(spec.get("tier") or UNKNOWN),
        ready=readiness(body),
        budget_cents=_cents(budget.get("monthly")) if budget.get("monthly") else None,
        currency=str(budget.get("currency") or (status.get("cost") or {}).get("currency") or "USD"),
        expires_at=_time(status.get("expiresAt")),
        deleting_since=_time(body["metadata"].get("deletionTimestamp")),
    )


def golden_path_view(body: JSON) -> GoldenPathView:
    tiers = tuple(str(t) for t in (body.get("spec") or {}).get("tiers") or ()) or TIERS
    return GoldenPathView(
        name=str(body["metadata"]["name"]),
        ready=readiness(body),
        tiers=tiers,
        deleting_since=_time(body["metadata"].get("deletionTimestamp")),
    )


def request_view(body: JSON) -> RequestView:
    meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    last = status.get("lastRun") or None
    run = None
    if isinstance(last, dict) and last.get("id"):
        run = RunView(id=str(last["id"]), operation=str(last.get("operation") or UNKNOWN), result=last.get("result"))
    ready = _condition(body, ConditionType.READY)
    drifted = _condition(body, ConditionType.DRIFTED)
    lead = status.get("leadTimeSeconds")
    approval = status.get("approval") or None
    approval_view = None
    if isinstance(approval, dict) and approval.get("planDigest"):
        waited = approval.get("waitedSeconds")
        approval_view = ApprovalView(
            operation=str(approval.get("operation") or UNKNOWN),
            state=str(approval.get("state") or UNKNOWN),
            digest=str(approval["planDigest"]),
            waited_seconds=float(waited) if isinstance(waited, int | float) else None,
        )
    history = _history(status)
    episodes = [(e.since, e.failure_class, e.recovery_seconds) for e in history.episodes]
    if history.trouble is not None:
        episodes.append((history.trouble.since, history.trouble.failure_class, None))
    return RequestView(
        golden_path=str(spec.get("goldenPath") or UNKNOWN),
        environment=str(status.get("environment") or meta.get("namespace") or UNKNOWN),
        ready=readiness(body),
        ready_reason=str(ready["reason"]) if ready and ready.get("reason") else None,
        monthly_cost_cents=_cents(status.get("monthlyCost")),
        deleting_since=_time(meta.get("deletionTimestamp")),
        run=run,
        first_ready_time=status.get("firstReadyTime"),
        lead_time_seconds=float(lead) if isinstance(lead, int | float) else None,
        drifted=bool(drifted and drifted.get("status") == "True"),
        drifted_reason=str(drifted["reason"]) if drifted and drifted.get("reason") else None,
        stage=str(status["stage"]) if status.get("stage") else None,
        approval=approval_view,
        changes=tuple((c.generation, c.lead_time_seconds, c.applied) for c in history.changes),
        episodes=tuple(episodes),
    )


@dataclass(frozen=True)
class FinishedRun:
    operation: str
    golden_path: str
    failure_class: str | None  # None: succeeded


@dataclass
class Transitions:
    """What one watch event changed that counters and histograms record."""

    lead_time: tuple[str, str, float] | None = None  # golden path, tier, seconds
    runs: list[FinishedRun] = field(default_factory=list)
    drift_golden_path: str | None = None
    approvals_requested: list[str] = field(default_factory=list)  # operations whose plan began to wait
    approvals_granted: list[tuple[str, float | None]] = field(default_factory=list)  # (operation, waited s)
    golden_path: tuple[str, tuple[str, ...]] | None = None  # a golden path seen: name, tiers
    team_golden_path: tuple[str, str] | None = None  # a request seen: its team and golden path
    changes: list[tuple[str, str]] = field(default_factory=list)  # team, golden path
    change_lead_times: list[tuple[str, str, float]] = field(default_factory=list)  # golden path, tier, seconds
    troubles: list[tuple[str, str]] = field(default_factory=list)  # failure class, golden path
    recoveries: list[tuple[str, float]] = field(default_factory=list)  # failure class, seconds


def request_transitions(
    old: RequestView | None, new: RequestView, tier: str, *, deleted: bool, team: str = UNKNOWN
) -> Transitions:
    """Compare the last view of a request with the new one.

    The first sighting (``old`` None: an operator start, or a new object) is a baseline: what a
    request did before the operator saw it was counted by the process that saw it.
    """
    # The request's changes series exists at zero from its first sighting, so rate() sees its first change.
    found = Transitions(team_golden_path=(team, new.golden_path) if team != UNKNOWN else None)
    if old is None:
        return found
    _history_transitions(found, old, new, tier, team)
    if new.first_ready_time and not old.first_ready_time and new.lead_time_seconds is not None:
        found.lead_time = (new.golden_path, tier, new.lead_time_seconds)
    run = new.run
    # A run whose plan waits for approval has no result yet (its apply is counted when it happens).
    if run is not None and run.result in ("Succeeded", "Failed") and run != old.run:
        failed = run.result.lower() == "failed"
        reason = new.drifted_reason if run.operation == "drift" else new.ready_reason
        failure = (reason or UNKNOWN) if failed else None
        found.runs.append(FinishedRun(run.operation, new.golden_path, failure))
    # A request disappears right after its destroy succeeded: the finalizer only lets go then.
    if deleted and run is not None and run.operation == "destroy" and not run.result:
        found.runs.append(FinishedRun("destroy", new.golden_path, None))
    if new.drifted and not old.drifted:
        found.drift_golden_path = new.golden_path
    approval, before = new.approval, old.approval
    if approval is not None and (before is None or (before.digest, before.state) != (approval.digest, approval.state)):
        if approval.state == "Pending":
            found.approvals_requested.append(approval.operation)
        elif approval.state == "Approved":
            found.approvals_granted.append((approval.operation, approval.waited_seconds))
    return found


def _history_transitions(found: Transitions, old: RequestView, new: RequestView, tier: str, team: str) -> None:
    """What the request's history gained: changes delivered, episodes begun and ended."""
    delivered = {generation for generation, _, _ in old.changes}
    for generation, lead, applied in new.changes:
        if generation in delivered:
            continue
        if applied:
            found.changes.append((team, new.golden_path))
        if generation >= 2:
            found.change_lead_times.append((new.golden_path, tier, float(lead)))
    known = {since for since, _, _ in old.episodes}
    ended = {since for since, _, recovered in old.episodes if recovered is not None}
    for since, failure_class, recovered in new.episodes:
        if since not in known:
            found.troubles.append((failure_class, new.golden_path))
        if recovered is not None and since not in ended:
            found.recoveries.append((failure_class, float(recovered)))


class Inventory:
    """Views of every object the operator watches, keyed by uid (environments by name)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.environments: dict[str, EnvironmentView] = {}
        self.golden_paths: dict[str, GoldenPathView] = {}
        self.requests: dict[str, RequestView] = {}
        self.leftovers: dict[str, LeftoverView] = {}  # by the uid of the request that is gone

    def update(self, kind: str, body: JSON, *, deleted: bool = False) -> Transitions:
        """Take in one watch event of ``kind`` (``deleted`` for a DELETED event)."""
        uid = str(body["metadata"].get("uid") or f"{body['metadata'].get('namespace')}/{body['metadata']['name']}")
        with self._lock:
            if kind == ENVIRONMENT:
                # By name: requests name their environment, and Environments are cluster-scoped.
                self._put(self.environments, str(body["metadata"]["name"]), environment_view(body), deleted)
                return Transitions()
            if kind == GOLDEN_PATH:
                view = golden_path_view(body)
                self._put(self.golden_paths, uid, view, deleted)
                return Transitions(golden_path=None if deleted else (view.name, view.tiers))
            if kind == SERVICE_REQUEST:
                new = request_view(body)
                old = self.requests.get(uid)
                self._put(self.requests, uid, new, deleted)
                env = self.environments.get(new.environment)
                return request_transitions(
                    old, new, env.tier if env else UNKNOWN, deleted=deleted, team=env.team if env else UNKNOWN
                )
        raise ValueError(f"unknown kind {kind!r}")

    @staticmethod
    def _put(table: dict[str, Any], uid: str, view: object, deleted: bool) -> None:
        if deleted:
            table.pop(uid, None)
        else:
            table[uid] = view

    def _tier_of(self, environment: str) -> str:
        env = self.environments.get(environment)
        return env.tier if env else UNKNOWN

    def set_leftovers(self, leftovers: dict[str, LeftoverView]) -> None:
        """Replace what is known to be left behind (after a look at the state Secrets)."""
        with self._lock:
            self.leftovers = dict(leftovers)

    def leftover_cents(self, namespace: str) -> int:
        """What the leftovers of requests in ``namespace`` still cost per month."""
        with self._lock:
            return sum(v.monthly_cost_cents for v in self.leftovers.values() if v.namespace == namespace)

    def leftover_views(self) -> list[LeftoverView]:
        with self._lock:
            return list(self.leftovers.values())

    def snapshot(self) -> tuple[dict[str, EnvironmentView], list[GoldenPathView], list[RequestView]]:
        """Copies of the views (environments by name), taken under the lock."""
        with self._lock:
            return dict(self.environments), list(self.golden_paths.values()), list(self.requests.values())
