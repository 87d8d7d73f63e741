"""The ServiceRequest reconciler: validate, plan, apply, deliver the connection Secret; destroy on delete.

Level-based and idempotent: every call re-plans from the current spec, so a spec change, a resumed
operator or a retry after a failure all converge the same way. Progress is visible in status as it
happens (stage, Reconciling, the plan summary); failures carry a classified reason and the redacted
tail of the tool's message, and are retried with capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from python_terraform import IsFlagged

from blacktop.api.common import cents_to_money, format_time, parse_time
from blacktop.api.conditions import ConditionType, Reason, is_true
from blacktop.api.goldenpath import GoldenPathSpec
from blacktop.api.servicerequest import PlanSummary, RunInfo, ServiceRequestSpec, ServiceRequestStatus, Stage
from blacktop.builders import cost, naming, parameters
from blacktop.builders import servicerequest as builders
from blacktop.controllers import delivery, guardrails, leftovers, locks, lookup, monitoring, protections
from blacktop.controllers.context import Context
from blacktop.controllers.tracker import StatusTracker
from blacktop.kube import events
from blacktop.kube.resources import GOLDENPATHS, SERVICEREQUESTS, resource_for
from blacktop.terraform import module as modules
from blacktop.terraform import workspace
from blacktop.terraform.locks import new_lock_id, state_resources
from blacktop.terraform.plan import summarise
from blacktop.terraform.redact import tail
from blacktop.terraform.runner import Runner, RunResult, parse_outputs
from blacktop.toolbox import cache_dir, find_tool

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
SECRET = resource_for("v1", "Secret")
BACKOFF_BASE, BACKOFF_CAP = 5.0, 300.0
STALLED_RETRY = 600.0


class RetryLater(Exception):  # noqa: N818 (it is a signal to the caller, not an error)
    """The request is not done; reconcile again after ``delay`` seconds."""

    def __init__(self, delay: float, message: str) -> None:
        super().__init__(message)
        self.delay = delay


def backoff(failures: int, *, rng: random.Random | None = None) -> float:
    """Capped exponential backoff with full jitter over the upper half: 5 s, 10 s, 20 s ... 300 s."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(failures - 1, 0))
    jitter = float((rng or random).uniform(0, ceiling / 2))  # jitter, not cryptography
    return float(ceiling / 2 + jitter)


def _tracker(body: JSON) -> StatusTracker[ServiceRequestStatus]:
    return StatusTracker(body, ServiceRequestStatus)


def workspace_key(body: JSON) -> str:
    """The name of a request's workspace folder (a DNS-label name keeps it short)."""
    meta = body["metadata"]
    return f"{meta['namespace']}-{meta['name']}-{meta['uid'][:8]}"


def backend_for(ctx: Context, body: JSON) -> workspace.Backend:
    import os

    return workspace.Backend(
        namespace=ctx.settings.namespace, suffix=body["metadata"]["uid"], kubeconfig=os.environ.get("KUBECONFIG")
    )


async def _credentials(ctx: Context, spec: GoldenPathSpec) -> dict[str, str]:
    """The golden path's provider credentials as environment variables (never logged)."""
    ref = spec.credentials_secret_ref
    if ref is None:
        return {}
    secret = await ctx.client.get(SECRET, ref.name, ref.namespace)
    if secret is None:
        raise RetryLater(30, f"credentials Secret {ref.namespace}/{ref.name} of the golden path does not exist")
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def _standard_variables(body: JSON, env: JSON) -> dict[str, Any]:
    """Variables every module may declare to learn where it runs (and the uid that marks what it made)."""
    meta = body["metadata"]
    env_spec = env.get("spec") or {}
    return {
        "name": meta["name"],
        "namespace": meta["namespace"],
        "environment": env["metadata"]["name"],
        "team": env_spec.get("team"),
        "tier": env_spec.get("tier"),
        "uid": meta["uid"],
    }


async def _fail(ctx: Context, tracker: StatusTracker[ServiceRequestStatus], result: RunResult, what: str) -> RetryLater:
    """Record a failed run in status (reason, redacted tail), and say when to retry."""
    assert result.classification is not None
    reason = result.classification.reason
    detail = tail(result.stderr or result.stdout) or f"exit code {result.exit_code}"
    if reason == Reason.STATE_LOCKED:
        holder = result.classification.lock_holder or "unknown"
        detail = f"the state is locked by {holder} (lock ID {result.classification.lock_id}); {detail}"
    status = tracker.status
    status.failures += 1
    delay = backoff(status.failures)
    stalled = status.failures >= ctx.settings.max_failures_before_stalled
    if stalled:
        delay = STALLED_RETRY
    status.next_retry_time = format_time(tracker.now + timedelta(seconds=delay))
    status.stage = Stage.FAILED
    if status.last_run is not None:
        status.last_run.finished_at = format_time(datetime.now(UTC))
        status.last_run.result = "Failed"
    message = f"{what} failed ({reason}, attempt {status.failures}, next retry in {delay:.0f}s): {detail}"
    tracker.not_ready(reason, message, stalled=stalled)
    if stalled:
        tracker.set(ConditionType.STALLED, True, Reason.RETRIES_EXHAUSTED, message)
    await tracker.write(ctx.client, SERVICEREQUESTS)
    return RetryLater(delay, message)


async def reconcile_service_request(ctx: Context, body: JSON) -> ServiceRequestStatus:
    """Converge one ServiceRequest; raises RetryLater when it must be tried again."""
    tracker = _tracker(body)
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        return tracker.status
    try:
        spec = ServiceRequestSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        tracker.not_ready(Reason.INVALID_SPEC, f"spec is invalid: {exc.errors()[0]['msg']}", stalled=True)
        return await tracker.write(ctx.client, SERVICEREQUESTS)

    env = await lookup.environment_of(ctx, meta["namespace"])
    if env is None:
        tracker.not_ready(
            Reason.ENVIRONMENT_NOT_FOUND,
            f"namespace {meta['namespace']} does not belong to an Environment; create ServiceRequests in the "
            "namespace of an Environment (kubectl get environments)",
            stalled=True,
        )
        tracker.status.stage = Stage.FAILED
        return await tracker.write(ctx.client, SERVICEREQUESTS)
    tracker.status.environment = env["metadata"]["name"]

    golden = await ctx.client.get(GOLDENPATHS, spec.golden_path)
    if golden is None or not is_true(_conditions(golden), ConditionType.READY):
        reason = Reason.GOLDEN_PATH_NOT_FOUND if golden is None else Reason.GOLDEN_PATH_NOT_READY
        words = (
            "does not exist"
            if golden is None
            else "is not ready (kubectl describe goldenpath " + spec.golden_path + ")"
        )
        message = f"golden path {spec.golden_path!r} {words}; see the catalog with `kubectl get goldenpaths`"
        tracker.not_ready(reason, message, stalled=False)
        tracker.status.stage = Stage.PENDING
        await tracker.write(ctx.client, SERVICEREQUESTS)
        raise RetryLater(30, message)
    gp_spec = GoldenPathSpec.model_validate(golden["spec"])

    tier = (env.get("spec") or {}).get("tier")
    if gp_spec.tiers and tier not in {t.value for t in gp_spec.tiers}:
        allowed = ", ".join(t.value for t in gp_spec.tiers)
        message = f"golden path {spec.golden_path!r} is offered in tiers {allowed}, not in {tier}"
        tracker.not_ready(Reason.TIER_NOT_ALLOWED, message, stalled=True)
        tracker.status.stage = Stage.FAILED
        return await tracker.write(ctx.client, SERVICEREQUESTS)

    params, errors = parameters.validate(gp_spec.parameters, spec.parameters)
    tracker.status.stage = Stage.VALIDATING
    if errors:
        message = "invalid parameters: " + "; ".join(errors)
        tracker.set(ConditionType.PARAMETERS_VALID, False, Reason.INVALID_PARAMETERS, message)
        tracker.not_ready(Reason.INVALID_PARAMETERS, message, stalled=True)
        tracker.status.stage = Stage.FAILED
        return await tracker.write(ctx.client, SERVICEREQUESTS)
    tracker.set(ConditionType.PARAMETERS_VALID, True, Reason.RECONCILED, "parameters match the golden path's schema")
    tracker.status.monthly_cost = cents_to_money(cost.monthly_cost_cents(gp_spec.cost, params))
    try:
        return await _provision(ctx, _Request(body, env, spec, gp_spec, params), tracker)
    except protections.ModuleRefused as refused:
        raise await _fail(ctx, tracker, refused.result(), "checking the module") from None


def _conditions(obj: JSON) -> list[Any]:
    from blacktop.api.common import Condition

    return [Condition.model_validate(c) for c in (obj.get("status") or {}).get("conditions", [])]


async def module_variables(
    ctx: Context, body: JSON, env: JSON, gp_spec: GoldenPathSpec, params: dict[str, Any]
) -> dict[str, Any]:
    """The standard variables and the parameters, limited to those the module declares. The standard
    ones are the operator's: a parameter of the same name never overrides them (admission refuses it)."""
    try:
        info = await asyncio.to_thread(modules.inspect, ctx.settings.modules_root, gp_spec.module)
    except modules.ModuleError as exc:
        raise protections.refused(exc) from None
    candidates = {**params, **_standard_variables(body, env)}
    return {k: v for k, v in candidates.items() if k in info.findings.variables}


async def runner_for(ctx: Context, body: JSON, gp_spec: GoldenPathSpec, variables: dict[str, Any]) -> Runner:
    credentials = await _credentials(ctx, gp_spec)
    # Every run checks the module it runs (controllers/protections.py); a refusal is ModuleRefused.
    module_dir = await asyncio.to_thread(protections.source, ctx.settings.modules_root, gp_spec.module)
    workdir = await asyncio.to_thread(
        workspace.prepare,
        ctx.settings.workspace_root,
        workspace_key(body),
        module_dir,
        variables,
        backend_for(ctx, body),
    )
    await asyncio.to_thread(protections.check_workspace, workdir, gp_spec.module, ctx.settings.allowed_providers)
    env = workspace.environment(cache_dir() / "tofu.tfrc", credentials)
    return Runner(
        str(find_tool(ctx.settings.terraform_binary)),
        workdir,
        env,
        timeout=ctx.settings.run_timeout_seconds,
        semaphore=ctx.runs,
        secrets=tuple(credentials.values()),
        metrics=ctx.metrics,
    )


@dataclass(frozen=True)
class _Request:
    """A validated request and what it resolved to."""

    body: JSON
    env: JSON
    spec: ServiceRequestSpec
    golden_path: GoldenPathSpec
    parameters: dict[str, Any]


async def _provision(
    ctx: Context, request: _Request, tracker: StatusTracker[ServiceRequestStatus]
) -> ServiceRequestStatus:
    body, env, spec, gp_spec, params = request.body, request.env, request.spec, request.golden_path, request.parameters
    status = tracker.status
    variables = await module_variables(ctx, body, env, gp_spec, params)
    status.stage = Stage.PLANNING
    recorded = locks.recorded_lock_ids(status.last_run)
    status.last_run = RunInfo(
        id=secrets.token_hex(6), operation="apply", started_at=format_time(datetime.now(UTC)), lock_id=new_lock_id()
    )
    tracker.not_ready(Reason.PROGRESSING, f"planning {spec.golden_path} (run {status.last_run.id})", stalled=False)
    await tracker.write(ctx.client, SERVICEREQUESTS)
    tracker.previous = status.model_copy(deep=True)
    try:
        async with locks.held(ctx, body, backend_for(ctx, body), status.last_run, recorded):
            return await _plan_and_apply(ctx, request, tracker, variables)
    except locks.StateLockedError as held:
        raise await _fail(ctx, tracker, held.result(), "locking the state") from None


async def _plan_and_apply(
    ctx: Context, request: _Request, tracker: StatusTracker[ServiceRequestStatus], variables: dict[str, Any]
) -> ServiceRequestStatus:
    """init, plan, apply, deliver; the caller holds the state lock (so every run passes -lock=false)."""
    body, spec, gp_spec, status = request.body, request.spec, request.golden_path, tracker.status
    assert status.last_run is not None
    currency = gp_spec.cost.currency if gp_spec.cost else "USD"
    await leftovers.record(
        ctx,
        body,
        request.env,
        golden_path=spec.golden_path,
        variables=variables,
        cost=status.monthly_cost,
        currency=currency,
    )
    runner = await runner_for(ctx, body, gp_spec, variables)
    init = await runner.run("init", lock=False)
    if not init.ok:
        raise await _fail(ctx, tracker, init, "init")
    plan = await runner.plan()
    if not plan.ok:
        raise await _fail(ctx, tracker, plan, "plan")
    shown = await runner.run("show", workspace.PLAN_FILE, json=IsFlagged)
    if not shown.ok:
        raise await _fail(ctx, tracker, shown, "show")
    plan_doc = json.loads(shown.stdout)
    summary = summarise(plan_doc)
    status.plan = PlanSummary(
        add=summary.add, change=summary.change, destroy=summary.destroy, resources=summary.addresses
    )
    tracker.set(
        ConditionType.PLANNED,
        True,
        Reason.RECONCILED,
        f"plan: {summary.add} to add, {summary.change} to change, {summary.destroy} to destroy",
    )
    gp = (spec.golden_path, gp_spec)
    if stopped := await guardrails.check_plan(ctx, body, request.env, gp, plan_doc, tracker=tracker):
        return stopped  # a guardrail denied the plan: nothing is applied
    status.stage = Stage.APPLYING
    tracker.not_ready(Reason.PROGRESSING, f"applying {spec.golden_path} (run {status.last_run.id})", stalled=False)
    await tracker.write(ctx.client, SERVICEREQUESTS)
    tracker.previous = status.model_copy(deep=True)

    apply = await runner.run("apply", workspace.PLAN_FILE, lock=False)
    if not apply.ok:
        raise await _fail(ctx, tracker, apply, "apply")
    output = await runner.run("output", json=IsFlagged)
    if not output.ok:
        raise await _fail(ctx, tracker, output, "output")
    return await _deliver(ctx, request, tracker, apply, parse_outputs(output.stdout))


async def _deliver(
    ctx: Context,
    request: _Request,
    tracker: StatusTracker[ServiceRequestStatus],
    apply: RunResult,
    outputs: dict[str, tuple[Any, bool]],
) -> ServiceRequestStatus:
    """After a successful apply: the connection Secret, lead time, Ready."""
    body, spec, status = request.body, request.spec, tracker.status
    secret = builders.build_connection_secret(body, spec.golden_path, request.golden_path, outputs)
    if conflict := await delivery.deliver(ctx, secret, body["metadata"]["uid"]):
        tracker.set(ConditionType.APPLIED, True, Reason.PROVISIONED, f"applied in {apply.seconds:.1f}s")
        tracker.not_ready(Reason.SECRET_CONFLICT, conflict, stalled=True)
        status.stage = Stage.FAILED
        await tracker.write(ctx.client, SERVICEREQUESTS)
        raise RetryLater(15, conflict)  # the user may delete or rename their Secret at any moment
    assert status.last_run is not None
    now = datetime.now(UTC)
    status.connection_secret = secret["metadata"]["name"]
    status.outputs = sorted(secret["data"])
    status.failures = 0
    status.next_retry_time = None
    status.stage = Stage.READY
    status.last_run.finished_at = format_time(now)
    status.last_run.result = "Succeeded"
    if status.first_ready_time is None:
        status.first_ready_time = format_time(now)
        created = parse_time(body["metadata"]["creationTimestamp"])
        status.lead_time_seconds = max(0, round((now - created).total_seconds()))
    tracker.set(ConditionType.APPLIED, True, Reason.PROVISIONED, f"applied in {apply.seconds:.1f}s")
    await monitoring.configure_request(ctx, body, spec.golden_path, request.golden_path, tracker)
    tracker.ready(
        f"{spec.golden_path} is ready; connection details in Secret {status.connection_secret}", Reason.PROVISIONED
    )
    tracker.previous = tracker.previous.model_copy(update={"conditions": []})  # Ready just turned True: announce it
    return await tracker.write(ctx.client, SERVICEREQUESTS)


async def _nothing_to_destroy(
    ctx: Context, body: JSON, tracker: StatusTracker[ServiceRequestStatus], backend: workspace.Backend
) -> bool:
    """Whether the request may go without a destroy: abandoned by a platform admin (recorded), or nothing
    was ever applied (no state, or the empty state seeded before a first run that never got further)."""
    if naming.ABANDON_ANNOTATION in (body["metadata"].get("annotations") or {}):
        await leftovers.abandon(ctx, body)
        return True
    state = await ctx.client.get(SECRET, backend.state_secret, backend.namespace)
    if state is not None and state_resources(state):
        return False
    if state is not None:
        await ctx.client.delete(SECRET, backend.state_secret, backend.namespace)
    recorded = locks.recorded_lock_ids(tracker.status.last_run)
    await locks.forget(ctx, body, backend, recorded)  # a run that failed early still made the Lease
    workspace.remove(ctx.settings.workspace_root, workspace_key(body))
    return True


async def finalize_service_request(ctx: Context, body: JSON) -> None:
    """Destroy what the request made, then its state; raises RetryLater while that fails. A request a
    platform admin abandoned goes without a destroy (recorded); one that never applied anything goes at once."""
    tracker = _tracker(body)
    backend = backend_for(ctx, body)
    if await _nothing_to_destroy(ctx, body, tracker, backend):
        return
    spec = ServiceRequestSpec.model_validate(body.get("spec") or {})
    golden = await ctx.client.get(GOLDENPATHS, spec.golden_path)
    if golden is None:
        message = (
            f"cannot destroy: golden path {spec.golden_path!r} no longer exists; re-create it so its module can run"
        )
        tracker.not_ready(Reason.DESTROY_FAILED, message, stalled=True)
        await tracker.write(ctx.client, SERVICEREQUESTS)
        raise RetryLater(60, message)
    gp_spec = GoldenPathSpec.model_validate(golden["spec"])
    env = await lookup.environment_of(ctx, body["metadata"]["namespace"]) or {"metadata": {"name": ""}, "spec": {}}
    params, _ = parameters.validate(gp_spec.parameters, spec.parameters)
    try:
        variables = await module_variables(ctx, body, env, gp_spec, params)
    except protections.ModuleRefused as refused:
        raise await _fail(ctx, tracker, refused.result(), "checking the module before destroying") from None

    tracker.status.stage = Stage.DELETING
    recorded = locks.recorded_lock_ids(tracker.status.last_run)
    tracker.status.last_run = RunInfo(
        id=secrets.token_hex(6), operation="destroy", started_at=format_time(datetime.now(UTC)), lock_id=new_lock_id()
    )
    tracker.set(ConditionType.READY, False, Reason.DELETING, f"destroying {spec.golden_path}")
    tracker.set(ConditionType.RECONCILING, True, Reason.DELETING, f"destroying {spec.golden_path}")
    await tracker.write(ctx.client, SERVICEREQUESTS)
    tracker.previous = tracker.status.model_copy(deep=True)

    try:
        async with locks.held(ctx, body, backend, tracker.status.last_run, recorded):
            runner = await runner_for(ctx, body, gp_spec, variables)
            init = await runner.run("init", lock=False)
            destroy = init if not init.ok else await runner.run("destroy", var_file=workspace.VAR_FILE, lock=False)
    except locks.StateLockedError as held:
        raise await _fail(ctx, tracker, held.result(), "locking the state") from None
    except protections.ModuleRefused as refused:
        raise await _fail(ctx, tracker, refused.result(), "checking the module before destroying") from None
    if not destroy.ok:
        failure = await _fail(ctx, tracker, destroy, "destroy")
        raise failure
    await ctx.client.delete(SECRET, backend.state_secret, backend.namespace)
    await locks.forget(ctx, body, backend, recorded)
    await events.post_event(
        ctx.client, body, events.NORMAL, "Destroyed", f"{spec.golden_path} destroyed in {destroy.seconds:.1f}s"
    )
    workspace.remove(ctx.settings.workspace_root, workspace_key(body))
