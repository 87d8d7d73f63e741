"""The metric set: names and labels, status transitions to counters, scrape-time gauges, run slots."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from blacktop.api.history import ChangeRecord, RequestHistory, TroubleEpisode
from blacktop.api.scorecard import ScorecardLedger
from blacktop.controllers.slots import FairSlots
from blacktop.metrics.collector import InventoryCollector
from blacktop.metrics.facts import observe
from blacktop.metrics.inventory import Inventory
from blacktop.metrics.ledger import next_ledger
from blacktop.metrics.registry import LEAD_TIME_BUCKETS, Metrics, create_metrics
from blacktop.metrics.scorecard import compute

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def runs(metrics: Metrics, operation: str, result: str, failure_class: str, golden_path: str = "tiny") -> float | None:
    """The blacktop_runs_total sample of one operation, result and failure class."""
    return value(
        metrics,
        "blacktop_runs_total",
        operation=operation,
        result=result,
        failure_class=failure_class,
        golden_path=golden_path,
    )


def ready(status: str, reason: str = "Reconciled") -> dict[str, str]:
    return {"type": "Ready", "status": status, "reason": reason}


def env(name: str, team: str, tier: str = "dev", **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"team": team, "tier": tier}
    status: dict[str, Any] = {"conditions": [ready("True")]}
    if "budget" in extra:
        spec["budget"] = {"monthly": extra["budget"], "currency": "EUR"}
    if "expires" in extra:
        status["expiresAt"] = extra["expires"]
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}"}
    if "deleting" in extra:
        meta["deletionTimestamp"] = extra["deleting"]
    return {"metadata": meta, "spec": spec, "status": status}


def request(uid: str, golden_path: str = "tiny", namespace: str = "e1", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": f"r-{uid}", "namespace": namespace, "uid": uid},
        "spec": {"goldenPath": golden_path},
        "status": {"environment": namespace, **status},
    }


def test_every_metric_follows_the_naming_rules() -> None:
    metrics = create_metrics()
    names = metrics.names
    for expected in (
        "blacktop_provisioning_lead_time_seconds",
        "blacktop_stage_duration_seconds",
        "blacktop_runs",
        "blacktop_guardrail_decisions",
        "blacktop_admission_review_duration_seconds",
        "blacktop_drift_detected",
        "blacktop_resources",
        "blacktop_service_requests",
        "blacktop_active_teams",
        "blacktop_team_monthly_cost",
        "blacktop_team_monthly_budget",
        "blacktop_environments_expiring",
        "blacktop_environments_past_ttl",
        "blacktop_deletions_stuck",
        "blacktop_event_loop_lag_seconds",
        "blacktop_runs_in_flight",
        "blacktop_runs_queued",
        "blacktop_reconciles",
    ):
        assert expected in names
    for family in metrics.registry.collect():
        assert family.name.startswith("blacktop_")
        if family.type == "counter":
            assert not family.name.endswith("_total")  # prometheus-client appends it
        for sample in family.samples:
            # Bounded labels only: never an object's name, namespace or uid.
            assert not {"name", "namespace", "uid"} & set(sample.labels)
    assert LEAD_TIME_BUCKETS[0] == 1
    assert LEAD_TIME_BUCKETS[-1] == 7200


def test_registries_are_isolated() -> None:
    first, second = create_metrics(), create_metrics(CollectorRegistry())
    first.observe_stage("plan", 1.0)
    assert value(first, "blacktop_stage_duration_seconds_count", stage="plan") == 1
    assert value(second, "blacktop_stage_duration_seconds_count", stage="plan") is None


def test_guardrail_and_admission_api() -> None:
    metrics = create_metrics()
    metrics.observe_guardrail_decision("cost-limits", "max-monthly", "Enforce", "denied")
    metrics.observe_guardrail_decision("cost-limits", "max-monthly", "Enforce", "denied")
    metrics.observe_admission_review("ServiceRequest", False, 0.004)
    assert (
        value(
            metrics,
            "blacktop_guardrail_decisions_total",
            policy="cost-limits",
            rule="max-monthly",
            mode="Enforce",
            outcome="denied",
        )
        == 2
    )
    assert (
        value(metrics, "blacktop_admission_review_duration_seconds_count", kind="ServiceRequest", allowed="false") == 1
    )
    assert (
        value(
            metrics,
            "blacktop_admission_review_duration_seconds_bucket",
            kind="ServiceRequest",
            allowed="false",
            le="0.005",
        )
        == 1
    )
    with pytest.raises(ValueError, match="outcome"):
        metrics.observe_guardrail_decision("p", "r", "Enforce", "maybe")


def test_lead_time_runs_and_drift_from_status_transitions() -> None:
    metrics = create_metrics()
    metrics.observe_object("Environment", env("e1", "payments", "staging"))
    metrics.observe_object(
        "GoldenPath", {"metadata": {"name": "tiny", "uid": "g"}, "spec": {"tiers": ["dev", "staging"]}}
    )
    # Series exist at zero before the first run, so rate() sees the first increase.
    assert runs(metrics, "apply", "failed", "PlanFailed") == 0
    assert value(metrics, "blacktop_provisioning_lead_time_seconds_count", golden_path="tiny", tier="staging") == 0

    metrics.observe_object("ServiceRequest", request("a"))  # first sighting: a baseline
    run = {"id": "r1", "operation": "apply"}
    metrics.observe_object("ServiceRequest", request("a", lastRun=run, conditions=[ready("False", "Progressing")]))
    failed = request("a", lastRun={**run, "result": "Failed"}, conditions=[ready("False", "PlanFailed")])
    metrics.observe_object("ServiceRequest", failed)
    metrics.observe_object("ServiceRequest", failed)  # the same status again (e.g. a resync) counts once
    assert runs(metrics, "apply", "failed", "PlanFailed") == 1

    done = request(
        "a",
        lastRun={"id": "r2", "operation": "apply", "result": "Succeeded"},
        conditions=[ready("True", "Provisioned")],
        firstReadyTime="2026-01-10T12:00:42Z",
        leadTimeSeconds=42,
    )
    metrics.observe_object("ServiceRequest", done)
    assert runs(metrics, "apply", "succeeded", "none") == 1
    assert value(metrics, "blacktop_provisioning_lead_time_seconds_count", golden_path="tiny", tier="staging") == 1
    assert value(metrics, "blacktop_provisioning_lead_time_seconds_sum", golden_path="tiny", tier="staging") == 42

    drifted = request(
        "a",
        lastRun={"id": "r2", "operation": "apply", "result": "Succeeded"},
        conditions=[ready("True", "Provisioned"), {"type": "Drifted", "status": "True", "reason": "DriftDetected"}],
        firstReadyTime="2026-01-10T12:00:42Z",
        leadTimeSeconds=42,
    )
    metrics.observe_object("ServiceRequest", drifted)
    assert value(metrics, "blacktop_drift_detected_total", golden_path="tiny") == 1

    destroying = request("a", lastRun={"id": "r3", "operation": "destroy"}, firstReadyTime="x", leadTimeSeconds=42)
    metrics.observe_object("ServiceRequest", destroying)
    metrics.observe_object("ServiceRequest", destroying, deleted=True)
    assert runs(metrics, "destroy", "succeeded", "none") == 1
    assert value(metrics, "blacktop_provisioning_lead_time_seconds_count", golden_path="tiny", tier="staging") == 1


def test_a_request_first_seen_ready_is_not_counted_again() -> None:
    """After an operator restart every object is seen anew; what it did before was counted already."""
    metrics = create_metrics()
    done = request(
        "b", lastRun={"id": "r1", "operation": "apply", "result": "Succeeded"}, firstReadyTime="t", leadTimeSeconds=5
    )
    metrics.observe_object("ServiceRequest", done)
    assert value(metrics, "blacktop_provisioning_lead_time_seconds_count", golden_path="tiny", tier="unknown") is None


def test_gauges_at_scrape_time() -> None:
    inventory = Inventory()
    collector = InventoryCollector(inventory, clock=lambda: NOW)
    registry = CollectorRegistry()
    registry.register(collector)
    soon = (NOW + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    late = (NOW - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    long_ago = (NOW - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    inventory.update("Environment", env("e1", "payments", "dev", budget="100", expires=soon))
    inventory.update("Environment", env("e2", "payments", "prod", budget="50.50"))
    inventory.update("Environment", env("e3", "search", "dev", expires=late, deleting=long_ago))
    inventory.update("ServiceRequest", request("a", monthlyCost="20.00", conditions=[ready("True")]))
    inventory.update("ServiceRequest", request("b", monthlyCost="1.25", namespace="e2"))
    inventory.update("ServiceRequest", request("c", golden_path="pg", monthlyCost="15", namespace="e2"))

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("blacktop_resources", kind="Environment", ready="true") == 3
    assert sample("blacktop_resources", kind="ServiceRequest", ready="true") == 1
    assert sample("blacktop_resources", kind="ServiceRequest", ready="unknown") == 2
    assert sample("blacktop_resources", kind="GoldenPath", ready="true") == 0
    assert sample("blacktop_service_requests", golden_path="tiny", tier="dev") == 1
    assert sample("blacktop_service_requests", golden_path="tiny", tier="prod") == 1
    assert sample("blacktop_service_requests", golden_path="pg", tier="prod") == 1
    assert sample("blacktop_active_teams") == 1  # search's only environment is being deleted
    assert sample("blacktop_team_monthly_cost", team="payments", currency="EUR") == 36.25
    assert sample("blacktop_team_monthly_cost", team="search", currency="USD") == 0
    assert sample("blacktop_team_monthly_budget", team="payments", currency="EUR") == 150.5
    assert sample("blacktop_team_monthly_budget", team="search", currency="USD") is None
    assert sample("blacktop_environments_expiring", tier="dev") == 1
    assert sample("blacktop_environments_past_ttl", tier="dev") == 1
    assert sample("blacktop_deletions_stuck", kind="Environment") == 1
    assert sample("blacktop_deletions_stuck", kind="ServiceRequest") == 0

    inventory.update("Environment", env("e3", "search", "dev"), deleted=True)
    assert sample("blacktop_deletions_stuck", kind="Environment") == 0
    assert sample("blacktop_environments_past_ttl", tier="dev") == 0


def test_runs_waiting_for_and_holding_slots_are_counted() -> None:
    metrics = create_metrics()

    async def scenario() -> tuple[float | None, float | None]:
        slots = FairSlots(1, 1)
        release = asyncio.Event()

        async def hold() -> None:
            async with metrics.queued():
                await slots.acquire("payments", slots.new_run())
            metrics.slot_taken()
            try:
                await release.wait()
            finally:
                metrics.slot_released()
                slots.release("payments")

        first = asyncio.create_task(hold())
        second = asyncio.create_task(hold())
        for _ in range(5):  # let both tasks reach the semaphore (a few loop turns, no wall-clock time)
            await asyncio.sleep(0)
        seen = value(metrics, "blacktop_runs_in_flight"), value(metrics, "blacktop_runs_queued")
        release.set()
        await asyncio.gather(first, second)
        return seen

    in_flight, queued = asyncio.run(scenario())
    assert (in_flight, queued) == (1, 1)
    assert value(metrics, "blacktop_runs_in_flight") == 0
    assert value(metrics, "blacktop_runs_queued") == 0
    assert value(metrics, "blacktop_stage_duration_seconds_count", stage="queued") == 2


def test_a_run_cancelled_while_it_waits_for_a_slot_holds_none() -> None:
    metrics = create_metrics()

    async def scenario() -> tuple[int, int]:
        slots = FairSlots(1, 1)
        await slots.acquire("payments", slots.new_run())  # the only slot is taken

        async def wait() -> None:
            async with metrics.queued():
                await slots.acquire("payments", slots.new_run())

        waiting = asyncio.create_task(wait())
        for _ in range(5):
            await asyncio.sleep(0)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        return slots.in_use, slots.waiting

    assert asyncio.run(scenario()) == (1, 0)  # the holder's slot only; the cancelled one waits no more
    assert value(metrics, "blacktop_runs_queued") == 0
    assert value(metrics, "blacktop_runs_in_flight") == 0


def test_a_failed_drift_run_is_classified_by_its_drifted_condition() -> None:
    metrics = create_metrics()
    ready_request = {"conditions": [ready("True", "Provisioned")], "firstReadyTime": "t", "leadTimeSeconds": 5}
    metrics.observe_object("ServiceRequest", request("d", **ready_request))
    failed_drift = request(
        "d",
        lastRun={"id": "r9", "operation": "drift", "result": "Failed"},
        **{
            **ready_request,
            "conditions": [
                ready("True", "Provisioned"),
                {"type": "Drifted", "status": "Unknown", "reason": "ProviderError"},
            ],
        },
    )
    metrics.observe_object("ServiceRequest", failed_drift)
    # Ready still says Provisioned (the service works); the failure class comes from Drifted.
    drift_failures = {"operation": "drift", "result": "failed", "golden_path": "tiny"}
    assert value(metrics, "blacktop_runs_total", failure_class="ProviderError", **drift_failures) == 1
    assert value(metrics, "blacktop_runs_total", failure_class="Provisioned", **drift_failures) is None


def test_approvals_are_counted_and_their_wait_is_a_stage_and_waiting_requests_a_gauge() -> None:
    metrics = create_metrics()
    pending = {
        "operation": "apply",
        "state": "Pending",
        "planDigest": "sha256:a",
        "requestedAt": "2026-01-10T11:00:00Z",
    }
    approved = {**pending, "state": "Approved", "approvedBy": "bob", "waitedSeconds": 1800}
    metrics.observe_object("ServiceRequest", request("w1", stage="Planning"))
    metrics.observe_object("ServiceRequest", request("w1", stage="AwaitingApproval", approval=pending))
    metrics.observe_object("ServiceRequest", request("w2", stage="WaitingForInputs"))
    text = generate_latest(metrics.registry).decode()
    assert 'blacktop_service_requests_waiting{stage="AwaitingApproval"} 1.0' in text
    assert 'blacktop_service_requests_waiting{stage="WaitingForInputs"} 1.0' in text
    assert value(metrics, "blacktop_approvals_total", operation="apply", result="requested") == 1
    metrics.observe_object("ServiceRequest", request("w1", stage="AwaitingApproval", approval=pending))  # no news
    metrics.observe_object("ServiceRequest", request("w1", stage="Applying", approval=approved))
    assert value(metrics, "blacktop_approvals_total", operation="apply", result="requested") == 1
    assert value(metrics, "blacktop_approvals_total", operation="apply", result="approved") == 1
    assert value(metrics, "blacktop_stage_duration_seconds_sum", stage="approval") == 1800
    assert value(metrics, "blacktop_approvals_total", operation="drift", result="approved") == 0


def _history(**fields: Any) -> dict[str, Any]:
    return RequestHistory(**fields).model_dump(by_alias=True, mode="json")


def test_history_transitions_feed_changes_lead_time_trouble_and_recovery() -> None:
    metrics = create_metrics()
    metrics.observe_object("Environment", env("e1", "payments", "staging"))
    metrics.observe_object("GoldenPath", {"metadata": {"name": "tiny", "uid": "g"}, "spec": {"tiers": ["staging"]}})
    assert value(metrics, "blacktop_trouble_total", failure_class="PolicyDenied", golden_path="tiny") == 0
    assert value(metrics, "blacktop_change_lead_time_seconds_count", golden_path="tiny", tier="staging") == 0
    assert value(metrics, "blacktop_time_to_recovery_seconds_count", failure_class="PlanFailed") == 0

    metrics.observe_object("ServiceRequest", request("a"))  # the first sighting: a baseline...
    assert value(metrics, "blacktop_changes_total", team="payments", golden_path="tiny") == 0  # ...at zero
    first = ChangeRecord(generation=1, changed_at="t0", ready_at="t1", lead_time_seconds=30, applied=True)
    trouble = TroubleEpisode(failure_class="PlanFailed", since="t2", failures=1)
    metrics.observe_object("ServiceRequest", request("a", history=_history(generation=1, changes=[first])))
    metrics.observe_object(
        "ServiceRequest", request("a", history=_history(generation=2, changes=[first], trouble=trouble))
    )
    recovered = trouble.model_copy(update={"recovered_at": "t4", "recovery_seconds": 95, "failures": 3})
    second = ChangeRecord(generation=2, changed_at="t3", ready_at="t4", lead_time_seconds=40, applied=True)
    done = request("a", history=_history(generation=2, changes=[first, second], episodes=[recovered]))
    metrics.observe_object("ServiceRequest", done)
    metrics.observe_object("ServiceRequest", done)  # the same history again counts nothing twice

    assert value(metrics, "blacktop_changes_total", team="payments", golden_path="tiny") == 2
    assert value(metrics, "blacktop_change_lead_time_seconds_count", golden_path="tiny", tier="staging") == 1
    assert value(metrics, "blacktop_change_lead_time_seconds_sum", golden_path="tiny", tier="staging") == 40
    assert value(metrics, "blacktop_trouble_total", failure_class="PlanFailed", golden_path="tiny") == 1
    assert value(metrics, "blacktop_time_to_recovery_seconds_count", failure_class="PlanFailed") == 1
    assert value(metrics, "blacktop_time_to_recovery_seconds_sum", failure_class="PlanFailed") == 95


def test_an_episode_seen_only_once_recovered_is_still_trouble_and_a_recovery() -> None:
    """The watch may skip the moment an episode was open: its closed record still counts both."""
    metrics = create_metrics()
    metrics.observe_object("ServiceRequest", request("b"))
    episode = TroubleEpisode(failure_class="Timeout", since="t", recovered_at="u", recovery_seconds=7)
    metrics.observe_object("ServiceRequest", request("b", history=_history(episodes=[episode])))
    assert value(metrics, "blacktop_trouble_total", failure_class="Timeout", golden_path="tiny") == 1
    assert value(metrics, "blacktop_time_to_recovery_seconds_sum", failure_class="Timeout") == 7


def test_scorecard_gauges_come_from_the_latest_scorecard() -> None:
    metrics = create_metrics()
    assert value(metrics, "blacktop_scorecard_value", metric="team-onboarding") is None  # nothing before the first
    assert "blacktop_scorecard_value" in metrics.names  # the family is there, without series
    observed = observe(
        [
            {
                "metadata": {"name": "e1", "uid": "u", "creationTimestamp": "2026-01-10T11:00:00Z"},
                "spec": {"team": "payments", "tier": "dev"},
            },
        ],
        [
            {
                "metadata": {"name": "db", "namespace": "e1", "uid": "r", "creationTimestamp": "2026-01-10T11:00:00Z"},
                "spec": {"goldenPath": "tiny"},
                "status": {"firstReadyTime": "2026-01-10T11:12:00Z"},
            }
        ],
        [{"metadata": {"name": "tiny"}}, {"metadata": {"name": "lonely"}}],
        feedback=[
            {"metadata": {"namespace": "e1", "creationTimestamp": "2026-01-10T11:30:00Z"}, "spec": {"score": 10}}
        ],
        workloads=[{"kind": "Deployment", "metadata": {"namespace": "e1"}}],
        known_teams=["payments", "search"],
    )
    scorecard = compute(observed, next_ledger(ScorecardLedger(), observed, [], NOW), {}, NOW)
    metrics.scorecard.publish(scorecard)

    assert value(metrics, "blacktop_scorecard_value", metric="team-onboarding") == 720
    assert value(metrics, "blacktop_scorecard_target", metric="team-onboarding") == 1800
    assert value(metrics, "blacktop_scorecard_target_met", metric="team-onboarding") == 1
    assert value(metrics, "blacktop_scorecard_target_met", metric="weekly-active-teams") == 0
    assert value(metrics, "blacktop_scorecard_target_met", metric="change-frequency") is None  # no target
    assert value(metrics, "blacktop_team_onboarding_seconds", team="payments", onboarded="true") == 720
    assert value(metrics, "blacktop_teams_known") == 2
    assert value(metrics, "blacktop_teams_active_weekly") == 1
    assert value(metrics, "blacktop_team_last_activity_timestamp_seconds", team="search") == 0
    assert value(metrics, "blacktop_workloads", team="payments", golden_path="(none)") == 1
    assert value(metrics, "blacktop_golden_path_unused", golden_path="lonely") == 1
    assert value(metrics, "blacktop_golden_path_unused", golden_path="tiny") == 0
    assert value(metrics, "blacktop_self_service_requests", golden_path="tiny", outcome="self_served") == 1
    assert value(metrics, "blacktop_feedback_responses", golden_path="(platform)", category="Promoter") == 1
    assert value(metrics, "blacktop_scorecard_value", metric="developer-satisfaction") == 100
    assert metrics.scorecard.latest is scorecard
