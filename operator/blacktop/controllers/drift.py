"""The periodic drift check of a Ready ServiceRequest: does the real infrastructure still match?

When the golden path's ``driftCheckInterval`` has passed since the last check (or the last apply),
Blacktop plans (which refreshes from the real infrastructure) in a run of its own
(:mod:`blacktop.controllers.runs`: recorded, under the request's state lock). No changes:
``Drifted=False``. Changes: ``Drifted=True`` (DriftDetected) with an Event; and when the golden
path's ``driftPolicy`` is ``Correct``, the saved plan is judged by the Plan-stage guardrails and
applied at once, and the request reports ``DriftCorrected``; while the correction applies,
Reconciling=True says so. Under ``CorrectWithApproval`` (or when a Plan-stage rule asks for
approval of the correction), the drift plan waits in ``status.approval`` until someone allowed
approves its digest; the approval triggers a check at once, which applies the plan if it is still
the one approved. Re-verification never turns Ready False (kstatus sees Reconciling, then Current
again). A check that cannot run, whatever the cause (the server down, the state locked, the
credentials Secret gone, the API server timing out, a full disk), says so in the Drifted condition
(Unknown, with the classified reason, and a Warning Event when the reason is new) and never touches
Ready: the provisioning path owns that. A request whose inputs changed since its last apply (its
golden path's module, its credentials) is not checked for drift: the change is no drift, and the
request is handed to provisioning, which re-verifies it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from blacktop.api.common import Condition, format_time, parse_duration, parse_time
from blacktop.api.conditions import ConditionType, Reason, get_condition
from blacktop.api.goldenpath import DriftPolicy
from blacktop.api.servicerequest import ServiceRequestStatus, Stage
from blacktop.builders import parameters
from blacktop.controllers import approvals, delivery, guardrails, lookup, revisions, runs, servicerequest, views
from blacktop.controllers.context import Context
from blacktop.controllers.failures import Failure
from blacktop.controllers.inputs import Inputs, resolve
from blacktop.controllers.tracker import StatusTracker
from blacktop.controllers.views import EnvironmentRef, GoldenPathView, RequestView
from blacktop.kube import events
from blacktop.kube.resources import SERVICEREQUESTS
from blacktop.terraform.runner import PlanResult, ShownPlan

logger = logging.getLogger(__name__)

Tracker = StatusTracker[ServiceRequestStatus]


def is_due(status: ServiceRequestStatus, interval: timedelta, now: datetime) -> bool:
    """Whether the interval has passed since the last check, or since the last run if never checked."""
    since = status.last_drift_check_time or (status.last_run.finished_at if status.last_run else None)
    return since is None or now - parse_time(since) >= interval


@dataclass(frozen=True)
class _Due:
    """A request whose drift check is due, decoded, with what it resolved to."""

    tracker: Tracker
    request: RequestView
    environment: EnvironmentRef
    golden_path: GoldenPathView
    parameters: dict[str, Any]


async def _due(ctx: Context, namespace: str, name: str, *, force: bool = False) -> _Due | None:
    """Decode the request (fresh: the timer's copy may be stale) and decide whether a check is due."""
    body = await ctx.client.get(SERVICEREQUESTS, name, namespace)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    tracker = StatusTracker(body, ServiceRequestStatus, now=ctx.now())
    status = tracker.status
    if status.stage != Stage.READY or status.observed_generation != tracker.generation:
        return None  # provisioning owns the request until it is Ready for its current spec
    request = views.request_view(body)
    _, golden = await lookup.golden_path(ctx, request.spec.golden_path)
    env = await lookup.environment_ref(ctx, namespace)
    if golden is None or env is None:
        return None
    try:  # the revision it runs: a newer one is a rollout's business, not drift
        golden = await revisions.at_revision(ctx, body, golden)
    except Failure:
        return None
    if not force and not is_due(status, parse_duration(golden.spec.drift_check_interval), tracker.now):
        return None
    params, errors = parameters.validate(golden.spec.parameters, request.spec.parameters)
    return None if errors else _Due(tracker, request, env, golden, params)


async def check_drift(ctx: Context, namespace: str, name: str, *, force: bool = False) -> ServiceRequestStatus | None:
    """Check one request for drift if it is due (``force``: now, e.g. its correction was approved);
    None when it was not checked. A request whose inputs changed is reconciled instead (raises
    Failure like provisioning when that must be retried)."""
    # Decode and decide.
    due = await _due(ctx, namespace, name, force=force)
    if due is None:
        return None
    tracker = due.tracker
    before = get_condition(tracker.status.conditions, ConditionType.DRIFTED)
    # Act.
    try:
        inputs = await resolve(ctx, due.request, due.environment, due.golden_path, due.parameters, settled=False)
        if inputs.digest != tracker.status.applied_digest:
            return await servicerequest.reconcile_service_request(ctx, tracker.body)
        async with runs.run(ctx, inputs, tracker, "drift") as run:
            await _plan_and_correct(ctx, inputs, tracker, run)
    except Failure as waiting:
        _could_not_run(tracker, waiting.reason, waiting.message)
    except runs.RunFailed as failed:
        _could_not_run(tracker, failed.reason, failed.detail)
    except Exception as exc:  # the API server, the disk, the module, a bug: classified like any failure
        classified = runs.RunFailed.of_exception(exc)
        _could_not_run(tracker, classified.reason, classified.detail)
    # Write status.
    tracker.status.last_drift_check_time = format_time(tracker.now)
    status = await tracker.write(ctx.client, SERVICEREQUESTS)
    after = get_condition(status.conditions, ConditionType.DRIFTED)
    if after is not None and after.status == "Unknown" and (before is None or before.reason != after.reason):
        await events.post_event(ctx.client, tracker.body, events.WARNING, after.reason, after.message)
    return status


async def scheduled_check(ctx: Context, namespace: str, name: str) -> float | None:
    """A check the schedule found due (:mod:`blacktop.controllers.schedule`), under the request's lock;
    when to look again if the request's next watch event does not say (None: it will)."""
    lock = ctx.lock(f"ServiceRequest/{namespace}/{name}")
    if lock.locked():
        return ctx.settings.drift_check_seconds  # provisioning or deletion is running: check later
    async with lock:
        try:
            checked = await check_drift(ctx, namespace, name)
        except Failure as failure:  # handed to provisioning, which must be retried
            return failure.delay
    return None if checked is not None else ctx.settings.drift_check_seconds


def _could_not_run(tracker: Tracker, reason: str, detail: str) -> None:
    tracker.clear(ConditionType.RECONCILING)
    tracker.set(ConditionType.DRIFTED, None, reason, f"the drift check could not run: {detail}")


@dataclass(frozen=True)
class _Drift:
    """What a drift check found: the plan, its JSON rendering, and how it was described."""

    shown: ShownPlan
    message: str
    changes: str
    before: Condition | None  # the Drifted condition before this check (to post each Event once)


async def _plan_and_correct(ctx: Context, inputs: Inputs, tracker: Tracker, run: runs.Run) -> None:
    await run.step(run.runner.init())
    plan: PlanResult = await run.step(run.runner.plan())
    if not plan.changes:
        tracker.set(ConditionType.DRIFTED, False, Reason.NO_CHANGES, "the infrastructure matches the module")
        approvals.forget_pending(tracker.status, "drift")  # nothing left to approve
        return
    shown = await run.runner.show_plan()  # a plan that cannot be shown is still drift, only less precise
    summary = shown.summary if shown.ok else None
    changes = (
        summary.counts() + (f" ({', '.join(summary.resources[:5])})" if summary.resources else "")
        if summary
        else "changes planned"
    )
    message = f"the infrastructure no longer matches the module: {changes}"
    before = get_condition(tracker.status.conditions, ConditionType.DRIFTED)
    tracker.set(ConditionType.DRIFTED, True, Reason.DRIFT_DETECTED, message)
    body = inputs.request.body
    if before is None or before.status != "True" or before.message != message:  # once, not every check
        await events.post_event(ctx.client, body, events.WARNING, Reason.DRIFT_DETECTED, message)
    if inputs.golden_path.spec.drift_policy in (DriftPolicy.CORRECT, DriftPolicy.CORRECT_WITH_APPROVAL):
        await _correct(ctx, inputs, tracker, run, _Drift(shown, message, changes, before))


async def _correction_verdict(ctx: Context, inputs: Inputs, tracker: Tracker, shown: ShownPlan) -> guardrails.Verdict:
    """A correction is an apply like any other: the Plan-stage guardrails judge its plan first, and a
    plan that cannot be shown is never applied blind."""
    if not shown.ok:
        return guardrails.Verdict(denial=(Reason.PLAN_FAILED, "the plan could not be shown: " + shown.detail))
    return await guardrails.judge_plan(ctx, inputs, shown.plan, tracker=tracker)


async def _approved(ctx: Context, inputs: Inputs, tracker: Tracker, drift: _Drift, verdict: guardrails.Verdict) -> bool:
    """Whether the correction may be applied now: nobody has to approve it, or its plan was approved.
    A waiting correction is reported in Drifted (Ready is provisioning's), with an Event once."""
    with_approval = inputs.golden_path.spec.drift_policy == DriftPolicy.CORRECT_WITH_APPROVAL
    if not verdict.approvals and not with_approval:
        approvals.forget_pending(tracker.status, "drift")
        return True
    asked = verdict.approvals
    if await approvals.gate(ctx, inputs, tracker, drift.shown, asked, operation="drift", drift_policy=with_approval):
        return True
    annotations = inputs.request.body["metadata"].get("annotations") or {}
    waiting = (
        f"{drift.message}; not corrected yet: the correction {approvals.waiting_message(tracker.status, annotations)}"
    )
    tracker.set(ConditionType.DRIFTED, True, Reason.DRIFT_DETECTED, waiting)
    if drift.before is None or drift.before.message != waiting:
        await events.post_event(
            ctx.client,
            inputs.request.body,
            events.NORMAL,
            Reason.AWAITING_APPROVAL,
            approvals.waiting_message(tracker.status, annotations),
        )
    return False


async def _correct(ctx: Context, inputs: Inputs, tracker: Tracker, run: runs.Run, drift: _Drift) -> None:
    """Apply the drift plan (driftPolicy Correct, or CorrectWithApproval once approved), unless the
    guardrails refuse it."""
    body = inputs.request.body
    verdict = await _correction_verdict(ctx, inputs, tracker, drift.shown)
    denial = verdict.denial
    if denial is not None:
        refused = f"{drift.message}; not corrected: {denial[1]}"
        tracker.set(ConditionType.DRIFTED, True, Reason.DRIFT_DETECTED, refused)
        if drift.before is None or drift.before.message != refused:
            await events.post_event(ctx.client, body, events.WARNING, denial[0], f"drift not corrected: {denial[1]}")
        return
    if not await _approved(ctx, inputs, tracker, drift, verdict):
        return
    # kstatus: in progress while the correction changes the infrastructure; Ready stays True.
    tracker.set(ConditionType.RECONCILING, True, Reason.DRIFT_DETECTED, f"correcting drift: {drift.changes}")
    await tracker.write(ctx.client, SERVICEREQUESTS)
    applied = await run.runner.apply_plan()
    tracker.clear(ConditionType.RECONCILING)
    if not applied.ok:
        # The reason classifies the failed correction (ApplyFailed, ProviderError, ...), as for any run.
        reason = applied.classification.reason if applied.classification else Reason.APPLY_FAILED
        message = f"{drift.message}; correcting it failed: {applied.detail}"
        tracker.set(ConditionType.DRIFTED, True, reason, message)
        await events.post_event(ctx.client, body, events.WARNING, reason, message)
        run.failed()
        return
    outputs = await run.runner.outputs()
    if outputs.ok:  # outputs may have changed with the correction (a re-created resource)
        try:
            await delivery.deliver(ctx, inputs, outputs.values)
        except delivery.SecretTaken as taken:  # someone else's Secret took the name: never overwritten
            await events.post_event(ctx.client, body, events.WARNING, Reason.SECRET_CONFLICT, str(taken))
    corrected = f"drift corrected by applying the module again ({drift.changes}) in {applied.seconds:.1f}s"
    tracker.set(ConditionType.DRIFTED, False, Reason.DRIFT_CORRECTED, corrected)
    await events.post_event(ctx.client, body, events.NORMAL, Reason.DRIFT_CORRECTED, corrected)
    logger.info("%s/%s: %s", inputs.request.namespace, inputs.request.name, corrected)
