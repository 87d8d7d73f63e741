"""The periodic drift check of a Ready ServiceRequest: does the real infrastructure still match?

When the golden path's ``driftCheckInterval`` has passed since the last check (or the last apply),
Blacktop plans with ``-detailed-exitcode`` (which refreshes from the real infrastructure) under the
request's state lock. Exit 0: ``Drifted=False``. Exit 2: ``Drifted=True`` (DriftDetected) with an
Event; and when the golden path's ``driftPolicy`` is ``Correct``, the saved plan is applied at once
and the request reports ``DriftCorrected``. A check that cannot run (server down) says so in the
Drifted condition (Unknown) and never touches Ready: the provisioning path owns that.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from python_terraform import IsFlagged

from blacktop.api.common import Condition, format_time, parse_duration, parse_time
from blacktop.api.conditions import ConditionType, Reason, get_condition
from blacktop.api.goldenpath import DriftPolicy, GoldenPathSpec
from blacktop.api.servicerequest import RunInfo, ServiceRequestSpec, ServiceRequestStatus, Stage
from blacktop.builders import parameters
from blacktop.builders import servicerequest as builders
from blacktop.controllers import delivery, guardrails, locks, lookup, protections
from blacktop.controllers import servicerequest as requests
from blacktop.controllers.context import Context
from blacktop.controllers.tracker import StatusTracker
from blacktop.kube import events
from blacktop.kube.resources import GOLDENPATHS, SERVICEREQUESTS
from blacktop.terraform import workspace
from blacktop.terraform.locks import new_lock_id
from blacktop.terraform.plan import summarise
from blacktop.terraform.redact import tail
from blacktop.terraform.runner import Runner, RunResult, parse_outputs

logger = logging.getLogger(__name__)

JSON = dict[str, Any]


def is_due(status: ServiceRequestStatus, interval: timedelta, now: datetime) -> bool:
    """Whether the interval has passed since the last check, or since the last run if never checked."""
    since = status.last_drift_check_time or (status.last_run.finished_at if status.last_run else None)
    return since is None or now - parse_time(since) >= interval


async def check_drift(ctx: Context, namespace: str, name: str) -> ServiceRequestStatus | None:
    """Check one request for drift if it is due; None when it was not checked."""
    body = await ctx.client.get(SERVICEREQUESTS, name, namespace)  # fresh: the caller's copy may be stale
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    tracker = StatusTracker(body, ServiceRequestStatus)
    status = tracker.status
    if status.stage != Stage.READY or status.observed_generation != tracker.generation:
        return None  # provisioning owns the request until it is Ready for its current spec
    spec = ServiceRequestSpec.model_validate(body.get("spec") or {})
    golden = await ctx.client.get(GOLDENPATHS, spec.golden_path)
    env = await lookup.environment_of(ctx, namespace)
    if golden is None or env is None:
        return None
    gp_spec = GoldenPathSpec.model_validate(golden["spec"])
    if not is_due(status, parse_duration(gp_spec.drift_check_interval), tracker.now):
        return None
    params, errors = parameters.validate(gp_spec.parameters, spec.parameters)
    if errors:
        return None
    recorded = locks.recorded_lock_ids(status.last_run)
    status.last_run = RunInfo(
        id=secrets.token_hex(6), operation="drift", started_at=format_time(datetime.now(UTC)), lock_id=new_lock_id()
    )
    await tracker.write(ctx.client, SERVICEREQUESTS)  # the lock ID is on record before the lock is taken
    tracker.previous = status.model_copy(deep=True)
    try:
        async with locks.held(ctx, body, requests.backend_for(ctx, body), status.last_run, recorded):
            result = await _plan_and_correct(ctx, body, env, gp_spec, params, tracker=tracker)
    except locks.StateLockedError as held:
        result = held.result()
        _unknown(tracker, result)
    except protections.ModuleRefused as refused:
        result = refused.result()
        _unknown(tracker, result)
    status.last_run.finished_at = format_time(datetime.now(UTC))
    status.last_run.result = "Succeeded" if result.ok else "Failed"
    status.last_drift_check_time = format_time(tracker.now)
    return await tracker.write(ctx.client, SERVICEREQUESTS)


def _unknown(tracker: StatusTracker[ServiceRequestStatus], result: RunResult) -> None:
    reason = result.classification.reason if result.classification else Reason.PLAN_FAILED
    detail = tail(result.stderr or result.stdout) or f"exit code {result.exit_code}"
    tracker.set(ConditionType.DRIFTED, None, reason, f"the drift check could not run: {detail}")


async def _correction_denial(
    ctx: Context,
    body: JSON,
    env: JSON,
    gp_spec: GoldenPathSpec,
    shown: RunResult,
    *,
    tracker: StatusTracker[ServiceRequestStatus],
) -> tuple[str, str] | None:
    """A correction is an apply like any other: the Plan-stage guardrails judge its plan first, and a
    plan that cannot be shown is never applied blind. (reason, message) of a refusal, else None."""
    if not shown.ok:
        return Reason.PLAN_FAILED, "the plan could not be shown: " + (tail(shown.stderr) or "no output")
    spec = ServiceRequestSpec.model_validate(body.get("spec") or {})
    golden_path = (spec.golden_path, gp_spec)
    return await guardrails.judge_plan(ctx, body, env, golden_path, json.loads(shown.stdout), tracker=tracker)


async def _plan_and_correct(
    ctx: Context,
    body: JSON,
    env: JSON,
    gp_spec: GoldenPathSpec,
    params: dict[str, Any],
    *,
    tracker: StatusTracker[ServiceRequestStatus],
) -> RunResult:
    variables = await requests.module_variables(ctx, body, env, gp_spec, params)
    runner = await requests.runner_for(ctx, body, gp_spec, variables)
    init = await runner.run("init", lock=False)
    if not init.ok:
        _unknown(tracker, init)
        return init
    plan = await runner.plan()
    if not plan.ok:
        _unknown(tracker, plan)
        return plan
    if plan.exit_code == 0:
        tracker.set(ConditionType.DRIFTED, False, Reason.NO_CHANGES, "the infrastructure matches the module")
        return plan
    shown = await runner.run("show", workspace.PLAN_FILE, json=IsFlagged)
    summary = summarise(json.loads(shown.stdout)) if shown.ok else None
    changes = (
        f"{summary.add} to add, {summary.change} to change, {summary.destroy} to destroy"
        + (f" ({', '.join(summary.addresses[:5])})" if summary.addresses else "")
        if summary
        else "changes planned"
    )
    message = f"the infrastructure no longer matches the module: {changes}"
    before = get_condition(tracker.status.conditions, ConditionType.DRIFTED)
    tracker.set(ConditionType.DRIFTED, True, Reason.DRIFT_DETECTED, message)
    if before is None or before.status != "True" or before.message != message:  # once, not every check
        await events.post_event(ctx.client, body, events.WARNING, Reason.DRIFT_DETECTED, message)
    if gp_spec.drift_policy != DriftPolicy.CORRECT:
        return plan
    drift = _Drift(plan, shown, message, changes, before)
    return await _correct(ctx, runner, drift, body=body, env=env, gp_spec=gp_spec, tracker=tracker)


@dataclass(frozen=True)
class _Drift:
    """What a drift check found: the plan run, its JSON rendering, and how it was described."""

    plan: RunResult
    shown: RunResult
    message: str
    changes: str
    before: Condition | None  # the Drifted condition before this check (to post each Event once)


async def _correct(
    ctx: Context,
    runner: Runner,
    drift: _Drift,
    *,
    body: JSON,
    env: JSON,
    gp_spec: GoldenPathSpec,
    tracker: StatusTracker[ServiceRequestStatus],
) -> RunResult:
    """Apply the drift plan (driftPolicy Correct), unless the guardrails refuse it."""
    denial = await _correction_denial(ctx, body, env, gp_spec, drift.shown, tracker=tracker)
    if denial is not None:
        refused = f"{drift.message}; not corrected: {denial[1]}"
        tracker.set(ConditionType.DRIFTED, True, Reason.DRIFT_DETECTED, refused)
        if drift.before is None or drift.before.message != refused:
            await events.post_event(ctx.client, body, events.WARNING, denial[0], f"drift not corrected: {denial[1]}")
        return drift.plan
    apply = await runner.run("apply", workspace.PLAN_FILE, lock=False)
    if not apply.ok:
        detail = tail(apply.stderr or apply.stdout)
        failed = f"{drift.message}; correcting it failed: {detail}"
        # The reason classifies the failed correction (ApplyFailed, ProviderError, ...), as for any run.
        reason = apply.classification.reason if apply.classification else Reason.APPLY_FAILED
        tracker.set(ConditionType.DRIFTED, True, reason, failed)
        return apply
    output = await runner.run("output", json=IsFlagged)
    if output.ok:  # outputs may have changed with the correction (a re-created resource)
        spec = ServiceRequestSpec.model_validate(body.get("spec") or {})
        secret = builders.build_connection_secret(body, spec.golden_path, gp_spec, parse_outputs(output.stdout))
        if conflict := await delivery.deliver(ctx, secret, body["metadata"]["uid"]):
            await events.post_event(ctx.client, body, events.WARNING, Reason.SECRET_CONFLICT, conflict)
    corrected = f"drift corrected by applying the module again ({drift.changes}) in {apply.seconds:.1f}s"
    tracker.set(ConditionType.DRIFTED, False, Reason.DRIFT_CORRECTED, corrected)
    await events.post_event(ctx.client, body, events.NORMAL, Reason.DRIFT_CORRECTED, corrected)
    logger.info("%s/%s: %s", body["metadata"]["namespace"], body["metadata"]["name"], corrected)
    return apply
