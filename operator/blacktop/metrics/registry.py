"""Blacktop's metrics: defined in one place, registered into an explicit ``CollectorRegistry``.

Nothing is registered globally at import time: :func:`create_metrics` builds a fresh set bound to
the registry it is given, so tests get isolated registries and the process exports exactly these
series. Label values are bounded sets (golden path, tier, team, reason, operation) — never an
object's name or uid, which would grow cardinality without limit.

Other parts of the operator record through the small typed methods of :class:`Metrics`
(``observe_guardrail_decision``, ``observe_admission_review``, ``observe_stage``, ``queued``, ``slot_taken``)
rather than touching the prometheus-client objects, so label names cannot drift between callers.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from blacktop.api.conditions import RUN_FAILURES
from blacktop.builders.history import OTHER, TROUBLE_CLASSES
from blacktop.metrics.book import ScorecardBook
from blacktop.metrics.collector import InventoryCollector, ScorecardCollector
from blacktop.metrics.inventory import TIERS, Inventory

# Provisioning lead time: from a request's creation to its first Ready, 1 s to 2 h.
LEAD_TIME_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
STAGE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
# Admission reviews must answer within the webhook timeout (10 s at most); most take milliseconds.
ADMISSION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Scorecard durations: a spec change to Ready (target 1 h), trouble to recovery (target 4 h), an
# environment to its first Ready request (target 30 min); seconds to a week.
CHANGE_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)
RECOVERY_BUCKETS = (10, 30, 60, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400, 259200, 604800)
ONBOARDING_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 86400, 604800)

# The stages a request's time is spent in (label values of blacktop_stage_duration_seconds).
STAGES = ("queued", "init", "plan", "policy", "approval", "apply", "destroy")
# Run operations and results (label values of blacktop_runs_total).
OPERATIONS = ("apply", "destroy", "drift")
SUCCEEDED, FAILED = "succeeded", "failed"
NO_FAILURE = "none"
# The failure classes a run can end with: the Ready reasons the ServiceRequest controller writes.
FAILURE_CLASSES = RUN_FAILURES
# Guardrail decision outcomes (label values of blacktop_guardrail_decisions_total).
OUTCOMES = ("allowed", "denied", "warned", "audited", "approval")
# Notifications (label values of blacktop_notifications_total): what was told, through which kind of
# channel, of whom (a team's channel, the platform's, or none when it never got routed), and how it ended.
NOTIFICATION_EVENTS = ("Ready", "Failed", "AwaitingApproval", "Drifted", "Expiring", "BudgetNearlySpent")
NOTIFICATION_CHANNELS = ("Slack", "Webhook", "none")
NOTIFICATION_SCOPES = ("team", "platform", "none")
NOTIFICATION_RESULTS = ("delivered", "failed", "dropped")
NOTIFICATION_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800)
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
    approvals: Counter
    input_reapplies: Counter
    notifications: Counter
    notification_retries: Counter
    notifications_queued: Gauge
    notification_latency: Histogram
    change_lead_time: Histogram
    changes: Counter
    trouble: Counter
    time_to_recovery: Histogram
    environment_onboarding: Histogram
    inventory: Inventory
    scorecard: ScorecardBook  # the latest scorecard (ctx.metrics.scorecard.latest) and its notes

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
        for operation in found.approvals_requested:
            self.approvals.labels(operation=operation, result="requested").inc()
        for operation, waited in found.approvals_granted:
            self.approvals.labels(operation=operation, result="approved").inc()
            if waited is not None:
                # Waiting for a human is its own stage of the lead time.
                self.observe_stage("approval", waited)
        if found.team_golden_path is not None:
            self.changes.labels(team=found.team_golden_path[0], golden_path=found.team_golden_path[1])
        for team, golden_path in found.changes:
            self.changes.labels(team=team, golden_path=golden_path).inc()
        for golden_path, tier, seconds in found.change_lead_times:
            self.change_lead_time.labels(golden_path=golden_path, tier=tier).observe(seconds)
        for failure_class, golden_path in found.troubles:
            self.trouble.labels(failure_class=failure_class, golden_path=golden_path).inc()
        for failure_class, seconds in found.recoveries:
            self.time_to_recovery.labels(failure_class=failure_class).observe(seconds)

    def observe_environment_onboarding(self, tier: str, seconds: float) -> None:
        """Record one environment's onboarding: creation to its first Ready ServiceRequest."""
        self.environment_onboarding.labels(tier=tier).observe(seconds)

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
            self.change_lead_time.labels(golden_path=golden_path, tier=tier)
        self.drift_detected.labels(golden_path=golden_path)
        self.input_reapplies.labels(golden_path=golden_path)
        for failure_class in (*TROUBLE_CLASSES, OTHER):
            self.trouble.labels(failure_class=failure_class, golden_path=golden_path)

    def observe_input_reapply(self, golden_path: str) -> None:
        """Count one consumer applied again for its inputs (a source became ready or changed its outputs)."""
        self.input_reapplies.labels(golden_path=golden_path).inc()

    def observe_notification(self, event: str, channel_type: str, scope: str, result: str) -> None:
        """Count one notification's end: ``result`` delivered, failed (after its retries) or dropped."""
        if result not in NOTIFICATION_RESULTS:
            raise ValueError(f"notification result {result!r} is not one of {NOTIFICATION_RESULTS}")
        self.notifications.labels(event=event, channel_type=channel_type, scope=scope, result=result).inc()

    def observe_notification_latency(self, channel_type: str, seconds: float) -> None:
        """Record how long a delivered notification took from its transition (retries included)."""
        self.notification_latency.labels(channel_type=channel_type).observe(seconds)

    def prepare_notifications(self) -> None:
        """Zero-valued failure series, so ``rate()`` catches the first failed or dropped message."""
        for event in NOTIFICATION_EVENTS:
            for channel, scope in (
                ("Slack", "team"),
                ("Webhook", "team"),
                ("Slack", "platform"),
                ("Webhook", "platform"),
            ):
                for result in NOTIFICATION_RESULTS:
                    self.notifications.labels(event=event, channel_type=channel, scope=scope, result=result)
            self.notifications.labels(event=event, channel_type="none", scope="none", result="dropped")
            self.notifications.labels(event=event, channel_type="none", scope="none", result="failed")
        for channel in NOTIFICATION_CHANNELS:
            self.notification_retries.labels(channel_type=channel)
        for operation in ("apply", "drift"):
            for result in ("requested", "approved"):
                self.approvals.labels(operation=operation, result=result)

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

    def slot_taken(self) -> None:
        """A run holds a slot now (it keeps it to its end): counted in ``runs_in_flight``."""
        self.runs_in_flight.inc()

    def slot_released(self) -> None:
        """A run gave back the slot :meth:`slot_taken` counted."""
        self.runs_in_flight.dec()


def create_metrics(registry: CollectorRegistry | None = None) -> Metrics:
    """Build the metric set in ``registry`` (a new one if not given)."""
    registry = registry or CollectorRegistry(auto_describe=True)
    inventory = Inventory()
    book = ScorecardBook()
    registry.register(InventoryCollector(inventory))
    registry.register(ScorecardCollector(book))
    metrics = Metrics(
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
            "Time spent per provisioning stage: queued (waiting for a run slot), init, plan, policy, approval "
            "(waiting for a human), apply, destroy.",
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
        runs_in_flight=Gauge(
            "blacktop_runs_in_flight", "OpenTofu runs holding a slot now (in pod mode: runner pods).", registry=registry
        ),
        runs_queued=Gauge(
            "blacktop_runs_queued",
            "OpenTofu runs waiting for a slot (BLACKTOP_MAX_CONCURRENT_RUNS, _PER_TEAM).",
            registry=registry,
        ),
        event_loop_lag=Gauge(
            "blacktop_event_loop_lag_seconds",
            "How late the operator's event loop woke up for its last lag probe (a blocked loop delays everything).",
            registry=registry,
        ),
        approvals=Counter(
            "blacktop_approvals",
            "Plans that began to wait for approval (requested) and that were approved, by operation (apply, drift).",
            ["operation", "result"],
            registry=registry,
        ),
        input_reapplies=Counter(
            "blacktop_input_reapplies",
            "Consumers applied again because an input became ready or a source's outputs changed, by golden path.",
            ["golden_path"],
            registry=registry,
        ),
        notifications=Counter(
            "blacktop_notifications",
            "Notifications by event, channel type (Slack, Webhook; none: never routed), scope (team, platform) and "
            "result (delivered, failed after its retries, dropped because the queue was full).",
            ["event", "channel_type", "scope", "result"],
            registry=registry,
        ),
        notification_retries=Counter(
            "blacktop_notification_retries",
            "Notification deliveries that failed and were scheduled again, by channel type.",
            ["channel_type"],
            registry=registry,
        ),
        notifications_queued=Gauge(
            "blacktop_notifications_queued",
            "Notifications waiting for delivery or for their next attempt (BLACKTOP_NOTIFICATION_QUEUE_SIZE bounds it).",
            registry=registry,
        ),
        notification_latency=Histogram(
            "blacktop_notification_delivery_seconds",
            "Time from a transition being seen to its notification being delivered (retries included), by channel type.",
            ["channel_type"],
            buckets=NOTIFICATION_LATENCY_BUCKETS,
            registry=registry,
        ),
        change_lead_time=Histogram(
            "blacktop_change_lead_time_seconds",
            "Time from a ServiceRequest's spec change (a new generation) to Ready on it, by golden path and tier.",
            ["golden_path", "tier"],
            buckets=CHANGE_BUCKETS,
            registry=registry,
        ),
        changes=Counter(
            "blacktop_changes",
            "Applies that changed something (a new request, or a spec change whose plan was not empty), by team and golden path.",
            ["team", "golden_path"],
            registry=registry,
        ),
        trouble=Counter(
            "blacktop_trouble",
            "Episodes of trouble (a ServiceRequest failing or stalled until its next Ready), by failure class and golden path.",
            ["failure_class", "golden_path"],
            registry=registry,
        ),
        time_to_recovery=Histogram(
            "blacktop_time_to_recovery_seconds",
            "Time from a ServiceRequest's first failure to its next Ready, by the first failure's class.",
            ["failure_class"],
            buckets=RECOVERY_BUCKETS,
            registry=registry,
        ),
        environment_onboarding=Histogram(
            "blacktop_environment_onboarding_seconds",
            "Time from an Environment's creation to its first Ready ServiceRequest, by tier.",
            ["tier"],
            buckets=ONBOARDING_BUCKETS,
            registry=registry,
        ),
        inventory=inventory,
        scorecard=book,
    )
    metrics.prepare_notifications()
    for failure_class in (*TROUBLE_CLASSES, OTHER):
        metrics.time_to_recovery.labels(failure_class=failure_class)
    for tier in TIERS:
        metrics.environment_onboarding.labels(tier=tier)
    return metrics


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
