"""Blacktop's metrics: defined in one place, registered into an explicit ``CollectorRegistry``.

Nothing is registered globally at import time: :func:`create_metrics` builds a fresh set bound to
the registry it is given, so tests get isolated registries and the process exports exactly these
series. Label values are bounded sets (golden path, tier, team, reason, operation) — never an
object's name or uid, which would grow cardinality without limit.

Other parts of the operator record through the small typed methods of :class:`Metrics`
(``observe_guardrail_decision``, ``observe_admission_review``, ``observe_stage``, ``queued``, ``running``)
rather than touching the prometheus-client objects, so label names cannot drift between callers.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from blacktop.api.conditions import Reason
from blacktop.metrics.collector import InventoryCollector
from blacktop.metrics.inventory import Inventory

# Provisioning lead time: from a request's creation to its first Ready, 1 s to 2 h.
LEAD_TIME_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
STAGE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
# Admission reviews must answer within the webhook timeout (10 s at most); most take milliseconds.
ADMISSION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# The stages a request's time is spent in (label values of blacktop_stage_duration_seconds).
STAGES = ("queued", "init", "plan", "policy", "apply", "destroy")
# Run operations and results (label values of blacktop_runs_total).
OPERATIONS = ("apply", "destroy", "drift")
SUCCEEDED, FAILED = "succeeded", "failed"
NO_FAILURE = "none"
# The failure classes a run can end with: the Ready reasons the ServiceRequest controller writes.
FAILURE_CLASSES = (
    Reason.PLAN_FAILED,
    Reason.APPLY_FAILED,
    Reason.DESTROY_FAILED,
    Reason.STATE_LOCKED,
    Reason.PROVIDER_ERROR,
    Reason.TIMEOUT,
)
# Guardrail decision outcomes (label values of blacktop_guardrail_decisions_total).
OUTCOMES = ("allowed", "denied", "warned", "audited")
# What a ServiceRequest reconcile found (label values of blacktop_reconciles_total): nothing to do
# (its inputs did not change: no run, no write), a run that converged it, or a failure to retry.
RECONCILE_OUTCOMES = ("unchanged", "converged", "failed")


@dataclass(frozen=True)
class Metrics:
    """Every metric Blacktop records directly (scrape-time gauges come from the inventory collector)."""

    registry: CollectorRegistry
    lead_time: Histogram
    stage_duration: Histogram
    runs: Counter
    guardrail_decisions: Counter
    admission_duration: Histogram
    drift_detected: Counter
    reconciles: Counter
    runs_in_flight: Gauge
    runs_queued: Gauge
    event_loop_lag: Gauge
    inventory: Inventory

    @property
    def names(self) -> list[str]:
        """Names of all exported metric families in the registry (for docs and tests)."""
        return sorted({metric.name for metric in self.registry.collect()})

    # -- the typed API other parts call -------------------------------------------------------

    def observe_guardrail_decision(self, policy: str, rule: str, mode: str, outcome: str) -> None:
        """Count one rule's decision: ``mode`` Enforce/Warn/Audit, ``outcome`` one of :data:`OUTCOMES`.

        ``rule`` is the rule's name inside its policy (bounded by the policy), never the object checked.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"guardrail outcome {outcome!r} is not one of {OUTCOMES}")
        self.guardrail_decisions.labels(policy=policy, rule=rule, mode=mode, outcome=outcome).inc()

    def observe_admission_review(self, kind: str, allowed: bool, seconds: float) -> None:
        """Record how long one admission review of ``kind`` took and whether it was allowed."""
        self.admission_duration.labels(kind=kind, allowed="true" if allowed else "false").observe(seconds)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Record time spent in one stage (e.g. ``policy`` for the plan-stage guardrail evaluation)."""
        self.stage_duration.labels(stage=stage).observe(seconds)

    def observe_reconcile(self, kind: str, outcome: str) -> None:
        """Count one reconcile of ``kind`` by its outcome (one of :data:`RECONCILE_OUTCOMES`)."""
        if outcome not in RECONCILE_OUTCOMES:
            raise ValueError(f"reconcile outcome {outcome!r} is not one of {RECONCILE_OUTCOMES}")
        self.reconciles.labels(kind=kind, outcome=outcome).inc()

    def observe_object(self, kind: str, body: dict[str, Any], *, deleted: bool = False) -> None:
        """Take in one watch event of an Environment, GoldenPath or ServiceRequest and record what changed."""
        found = self.inventory.update(kind, body, deleted=deleted)
        if found.golden_path is not None:
            self.prepare_golden_path(*found.golden_path)
        if found.lead_time is not None:
            self.observe_lead_time(*found.lead_time)
        for run in found.runs:
            self.observe_run(run.operation, run.golden_path, run.failure_class)
        if found.drift_golden_path is not None:
            self.drift_detected.labels(golden_path=found.drift_golden_path).inc()

    def observe_run(self, operation: str, golden_path: str, failure_class: str | None) -> None:
        """Count one finished run; ``failure_class`` is the Ready reason of a failed run, None on success."""
        result = SUCCEEDED if failure_class is None else FAILED
        self.runs.labels(
            operation=operation, result=result, failure_class=failure_class or NO_FAILURE, golden_path=golden_path
        ).inc()

    def observe_lead_time(self, golden_path: str, tier: str, seconds: float) -> None:
        """Record one request's provisioning lead time (creation to first Ready)."""
        self.lead_time.labels(golden_path=golden_path, tier=tier).observe(seconds)

    def prepare_golden_path(self, golden_path: str, tiers: tuple[str, ...]) -> None:
        """Create the zero-valued series of a golden path before its first run.

        A series that first appears with value 1 has no increase for ``rate()``: the first failure of
        a golden path would be invisible to the failure-ratio alert. Touching the label sets early
        (golden paths and failure classes are small, known sets) makes every later increment count.
        """
        for operation in OPERATIONS:
            self.runs.labels(operation=operation, result=SUCCEEDED, failure_class=NO_FAILURE, golden_path=golden_path)
            for failure_class in FAILURE_CLASSES:
                self.runs.labels(
                    operation=operation, result=FAILED, failure_class=failure_class, golden_path=golden_path
                )
        for tier in tiers:
            self.lead_time.labels(golden_path=golden_path, tier=tier)
        self.drift_detected.labels(golden_path=golden_path)

    @asynccontextmanager
    async def queued(self) -> AsyncIterator[None]:
        """A run waiting for a slot for the block: counted in ``runs_queued``, timed as ``queued``."""
        self.runs_queued.inc()
        waiting = time.monotonic()
        try:
            yield
        finally:
            self.runs_queued.dec()
            self.observe_stage("queued", time.monotonic() - waiting)

    @asynccontextmanager
    async def running(self, stage: str) -> AsyncIterator[None]:
        """A tool running ``stage`` for the block: counted in ``runs_in_flight``, timed as ``stage``."""
        self.runs_in_flight.inc()
        started = time.monotonic()
        try:
            yield
        finally:
            self.runs_in_flight.dec()
            self.observe_stage(stage, time.monotonic() - started)


def create_metrics(registry: CollectorRegistry | None = None) -> Metrics:
    """Build the metric set in ``registry`` (a new one if not given)."""
    registry = registry or CollectorRegistry(auto_describe=True)
    inventory = Inventory()
    registry.register(InventoryCollector(inventory))
    return Metrics(
        registry=registry,
        lead_time=Histogram(
            "blacktop_provisioning_lead_time_seconds",
            "Time from a ServiceRequest's creation to its first Ready, by golden path and environment tier.",
            ["golden_path", "tier"],
            buckets=LEAD_TIME_BUCKETS,
            registry=registry,
        ),
        stage_duration=Histogram(
            "blacktop_stage_duration_seconds",
            "Time spent per provisioning stage: queued (waiting for a run slot), init, plan, policy, apply, destroy.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        ),
        runs=Counter(
            "blacktop_runs",
            "Finished OpenTofu runs by operation, result, failure class (the Ready reason; none on success) and golden path.",
            ["operation", "result", "failure_class", "golden_path"],
            registry=registry,
        ),
        guardrail_decisions=Counter(
            "blacktop_guardrail_decisions",
            "Guardrail rule decisions by policy, rule, mode (Enforce, Warn, Audit) and outcome.",
            ["policy", "rule", "mode", "outcome"],
            registry=registry,
        ),
        admission_duration=Histogram(
            "blacktop_admission_review_duration_seconds",
            "Time to answer one admission review, by kind and whether it was allowed.",
            ["kind", "allowed"],
            buckets=ADMISSION_BUCKETS,
            registry=registry,
        ),
        drift_detected=Counter(
            "blacktop_drift_detected",
            "Times drift between a ServiceRequest's module and the real infrastructure was detected, by golden path.",
            ["golden_path"],
            registry=registry,
        ),
        reconciles=_reconciles(registry),
        runs_in_flight=Gauge("blacktop_runs_in_flight", "OpenTofu processes running now.", registry=registry),
        runs_queued=Gauge(
            "blacktop_runs_queued",
            "OpenTofu runs waiting for a slot (BLACKTOP_MAX_CONCURRENT_RUNS).",
            registry=registry,
        ),
        event_loop_lag=Gauge(
            "blacktop_event_loop_lag_seconds",
            "How late the operator's event loop woke up for its last lag probe (a blocked loop delays everything).",
            registry=registry,
        ),
        inventory=inventory,
    )


def _reconciles(registry: CollectorRegistry) -> Counter:
    counter = Counter(
        "blacktop_reconciles",
        "ServiceRequest reconciles by outcome: unchanged (nothing to do: no run, no write), converged, failed.",
        ["kind", "outcome"],
        registry=registry,
    )
    for outcome in RECONCILE_OUTCOMES:  # at zero from the start, so rate() sees the first one
        counter.labels(kind="ServiceRequest", outcome=outcome)
    return counter
