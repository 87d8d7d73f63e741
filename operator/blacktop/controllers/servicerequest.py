"""The ServiceRequest reconciler: validate, plan, apply, deliver the connection Secret; destroy on delete.

Level-triggered without waste: every call compares what the request needs now with what its last
successful apply was made of (``status.appliedDigest``, see :mod:`blacktop.controllers.inputs`). A
Ready request whose inputs are unchanged starts no run and writes nothing, however often it is
resumed (an operator restart or upgrade) or resynced. A spec change plans again (Ready=False while
it works, then Ready); a Ready request whose golden path, credentials, inputs or environment changed
is re-verified: planned again while Ready stays True and Reconciling says what happens. A plan
without changes is never applied (and never waits for approval).

Each reconcile reads in four steps: decode (the request, its Environment and GoldenPath into typed
views, once), decide (a pure :func:`check` of what they allow, and :func:`up_to_date`), act (one run
through :mod:`blacktop.controllers.runs`: init, plan, then if anything changes show (when something
reads the saved plan: a Plan-stage rule, which is also what may ask for approval), the Plan-stage
guardrails, the approval a rule may ask for (:mod:`blacktop.controllers.approvals`) and apply;
outputs), write status (the tracker). Inputs from other requests are read with the run's other
inputs; a request whose sources are not Ready waits (WaitingForInputs), and one others consume is
destroyed only after them. Progress is visible in status as it happens (stage, queue position,
Reconciling, the plan summary). Every failure, a tool's or not (the API server, the disk, the module,
a bug), carries a classified reason and words, a Warning Event, and is retried with backoff.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from blacktop.api.common import cents_to_money, format_time
from blacktop.api.conditions import ConditionType, Reason, get_condition
from blacktop.api.servicerequest import PlanSummary, ServiceRequestStatus, Stage
from blacktop.builders import cost, naming, parameters
from blacktop.controllers import (
    approvals,
    composition,
    delivery,
    guardrails,
    leftovers,
    lookup,
    monitoring,
    revisions,
    runs,
    statelock,
    views,
)
from blacktop.controllers.context import Context
from blacktop.controllers.failures import Failure
from blacktop.controllers.inputs import Inputs, resolve
from blacktop.controllers.runs import Progress
from blacktop.controllers.tracker import StatusTracker
from blacktop.controllers.views import EnvironmentRef, GoldenPathView, RequestView
from blacktop.kube import events
from blacktop.kube.resources import SERVICEREQUESTS
from blacktop.terraform.runner import Outputs, RunResult, ShownPlan
from blacktop.terraform.state import state_of

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
Tracker = StatusTracker[ServiceRequestStatus]


@dataclass(frozen=True)
class Refusal:
    """Why a request cannot run now, and what that makes it."""

    reason: str
    message: str
    stage: Stage
    retry: bool = False  # waits for something that may appear by itself (Reconciling); else Stalled
    conditions: tuple[str, ...] = ()  # further condition types that are False for the same reason


@dataclass(frozen=True)
class Decision:
    """What :func:`check` decided: a refusal, or the parameters to run with (defaults applied)."""

    refusal: Refusal | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def check(
    request: RequestView, env: EnvironmentRef | None, golden: GoldenPathView | None, *, golden_exists: bool
) -> Decision:
    """May this request run, and with which parameters? Pure."""
    if env is None:
        return Decision(
            Refusal(
                Reason.ENVIRONMENT_NOT_FOUND,
                f"namespace {request.namespace} does not belong to an Environment; create ServiceRequests in the "
                "namespace of an Environment (kubectl get environments)",
                Stage.FAILED,
            )
        )
    name = request.spec.golden_path
    if golden is None or not golden.ready:
        reason = Reason.GOLDEN_PATH_NOT_READY if golden_exists else Reason.GOLDEN_PATH_NOT_FOUND
        words = f"is not ready (kubectl describe goldenpath {name})" if golden_exists else "does not exist"
        message = f"golden path {name!r} {words}; see the catalog with `kubectl get goldenpaths`"
        return Decision(Refusal(reason, message, Stage.PENDING, retry=True))
    tiers = golden.spec.tiers
    if tiers and env.tier not in {t.value for t in tiers}:
        allowed = ", ".join(t.value for t in tiers)
        message = f"golden path {name!r} is offered in tiers {allowed}, not in {env.tier}"
        return Decision(Refusal(Reason.TIER_NOT_ALLOWED, message, Stage.FAILED))
    params, errors = parameters.validate(golden.spec.parameters, request.spec.parameters)
    if errors:
        message = parameters.refusal(errors)
        return Decision(
            Refusal(Reason.INVALID_PARAMETERS, message, Stage.FAILED, conditions=(ConditionType.PARAMETERS_VALID,))
        )
    return Decision(parameters=params)


def settled(status: ServiceRequestStatus, generation: int) -> bool:
    """Whether the request is Ready for its current spec (a later run re-verifies it). Pure."""
    ready = get_condition(status.conditions, ConditionType.READY)
    return (
        ready is not None
        and ready.status == "True"
        and status.stage == Stage.READY
        and status.observed_generation == generation
    )


def up_to_date(status: ServiceRequestStatus, generation: int, digest: str, revision: int | None) -> bool:
    """Whether nothing is to be done: Ready for this spec, made of exactly these inputs, and (with
    revisions) recorded at the ``revision`` it runs. Pure."""
    return (
        settled(status, generation)
        and status.applied_digest == digest
        and status.failures == 0
        and (revision is None or status.revision == revision)
    )


async def reconcile_service_request(ctx: Context, body: JSON, *, revision: int | None = None) -> ServiceRequestStatus:
    """Converge one ServiceRequest; raises Failure when it must be tried again. It runs the revision of
    its golden path it runs already (or its pin; a new request: the rollout's target); ``revision``
    moves it (a rollout)."""
    tracker = StatusTracker(body, ServiceRequestStatus, now=ctx.now())
    if body["metadata"].get("deletionTimestamp"):
        return tracker.status
    # Decode.
    try:
        request = views.request_view(body)
    except ValidationError as exc:
        tracker.not_ready(Reason.INVALID_SPEC, f"spec is invalid: {exc.errors()[0]['msg']}", stalled=True)
        return await tracker.write(ctx.client, SERVICEREQUESTS)
    was_settled = settled(tracker.status, tracker.generation)
    try:
        await runs.record_interruption(ctx, tracker, f"{request.namespace}/{request.name}", keep_ready=was_settled)
        status = await _reconcile(ctx, tracker, request, was_settled, revision)
    except Failure:
        ctx.metrics.observe_reconcile("ServiceRequest", "failed")
        raise
    except Exception as exc:  # the API server, the disk, the module, a bug: one failure path
        ctx.metrics.observe_reconcile("ServiceRequest", "failed")
        failed = runs.RunFailed.of_exception(exc)
        raise await runs.failed_attempt(ctx, tracker, failed, keep_ready=was_settled) from None
    ctx.metrics.observe_reconcile("ServiceRequest", "unchanged" if status is tracker.unchanged else "converged")
    return status


async def _reconcile(
    ctx: Context, tracker: Tracker, request: RequestView, was_settled: bool, revision: int | None
) -> ServiceRequestStatus:
    env = await lookup.environment_ref(ctx, request.namespace)
    exists, golden = await lookup.golden_path(ctx, request.spec.golden_path)
    if golden is not None and golden.ready:
        try:
            golden = await revisions.at_revision(ctx, tracker.body, golden, revision=revision)
        except Failure as missing:
            return await _refuse(ctx, tracker, Refusal(missing.reason, missing.message, Stage.FAILED))
    # Decide.
    decision = check(request, env, golden, golden_exists=exists)
    if env is not None:
        tracker.status.environment = env.name
    if decision.refusal is not None:
        return await _refuse(ctx, tracker, decision.refusal)
    assert env is not None
    assert golden is not None
    waiting = Stage.READY if was_settled else Stage.PENDING
    inputs = await _resolve(
        ctx, tracker, request=request, env=env, golden=golden, params=decision.parameters, waiting=waiting
    )
    runs_revision = golden.revision.revision if golden.revision is not None else None
    if up_to_date(tracker.status, tracker.generation, inputs.digest, runs_revision):
        logger.debug("%s/%s is up to date: nothing to do", request.namespace, request.name)
        return tracker.unchanged  # resumed or resynced with nothing changed: no run, no write
    if not was_settled:
        tracker.status.stage = Stage.VALIDATING
    tracker.set(ConditionType.PARAMETERS_VALID, True, Reason.RECONCILED, "parameters match the golden path's schema")
    tracker.status.monthly_cost = cents_to_money(cost.monthly_cost_cents(golden.spec.cost, decision.parameters))
    # Act.
    tracker.status.inputs = list(inputs.request_inputs)
    what = f"re-verifying {golden.name}: its inputs changed" if was_settled else f"planning {golden.name}"
    progress = Progress(Stage.PLANNING, what, keep_ready=was_settled)
    async with runs.attempt(ctx, inputs, tracker, "apply", progress=progress) as run:
        # Under the state lock, before any tool runs: what destroying it needs if the request goes without.
        await leftovers.record(ctx, inputs, tracker.status.monthly_cost)
        converged = await _plan_and_apply(ctx, inputs, tracker, run, keep_ready=was_settled)
    if converged is not None:
        await _deliver(ctx, inputs, tracker, converged)
    # Write status.
    return await tracker.write(ctx.client, SERVICEREQUESTS)


async def _refuse(ctx: Context, tracker: Tracker, refusal: Refusal) -> ServiceRequestStatus:
    """Report a refusal; one that waits for something is retried (Failure), the others wait for a change."""
    for ctype in refusal.conditions:
        tracker.set(ctype, False, refusal.reason, refusal.message)
    tracker.not_ready(refusal.reason, refusal.message, stalled=not refusal.retry)
    tracker.status.stage = refusal.stage
    status = await tracker.write(ctx.client, SERVICEREQUESTS)
    if refusal.retry:
        raise Failure(refusal.reason, refusal.message, delay=ctx.settings.dependency_retry_seconds)
    return status


async def _resolve(
    ctx: Context,
    tracker: Tracker,
    *,
    request: RequestView,
    env: EnvironmentRef,
    golden: GoldenPathView,
    params: dict[str, Any],
    waiting: Stage,
) -> Inputs:
    """The run's inputs; a missing module or credentials Secret, or a source of its inputs that is not
    Ready (stage WaitingForInputs, each input's state in status), is reported (Reconciling) and retried.
    A request that is Ready (``waiting`` Ready) stays Ready when its credentials are missing: only
    Reconciling says what it waits for."""
    try:
        # Provisioning takes inputs from settled sources only; a destroy takes what they deliver now.
        return await resolve(ctx, request, env, golden, params, settled=waiting is not Stage.DELETING)
    except composition.InputsNotReady as sources:
        if waiting is not Stage.DELETING:
            tracker.status.stage = Stage.WAITING_FOR_INPUTS
        tracker.status.inputs = list(sources.resolved.statuses)
        tracker.not_ready(sources.reason, sources.message, stalled=False)
        await tracker.write(ctx.client, SERVICEREQUESTS)
        raise
    except Failure as missing:
        if waiting == Stage.READY:
            tracker.set(ConditionType.RECONCILING, True, missing.reason, missing.message)
        else:
            tracker.status.stage = waiting
            tracker.not_ready(missing.reason, missing.message, stalled=False)
        await tracker.write(ctx.client, SERVICEREQUESTS)
        raise


@dataclass(frozen=True)
class Converged:
    """What a successful run left: what it applied (None: the plan had no changes) and the outputs."""

    applied: RunResult | None
    outputs: Outputs
    digest: str


async def _plan_and_apply(
    ctx: Context, inputs: Inputs, tracker: Tracker, run: runs.Run, *, keep_ready: bool
) -> Converged | None:
    """init, plan, and if it changes anything: show (when something reads the saved plan), guardrails,
    approval, apply; then outputs. None when a guardrail denied the plan or the plan waits for approval."""
    runner, status, name = run.runner, tracker.status, inputs.golden_path.name
    await run.step(runner.init())
    plan = await run.step(runner.plan())
    if not plan.changes:  # nothing to apply, judge or approve: the infrastructure is as the module says
        status.plan = PlanSummary()
        tracker.set(ConditionType.PLANNED, True, Reason.RECONCILED, f"plan: {PlanSummary().counts()}")
        approvals.forget_pending(status, "apply")
        return Converged(None, await run.step(runner.outputs()), inputs.digest)
    shown: ShownPlan | None = None
    if await guardrails.needs_plan_document(ctx, inputs):  # a Plan-stage rule (approval rules are) or new code
        shown = await run.step(runner.show_plan())
        status.plan = shown.summary
        verdict = await guardrails.judge_plan(ctx, inputs, shown.plan, tracker=tracker)
    else:  # nothing reads the plan's document: its summary came with the plan
        status.plan = plan.summary
        verdict = guardrails.Verdict(denial=await guardrails.judge_module(ctx, inputs, tracker=tracker))
    tracker.set(ConditionType.PLANNED, True, Reason.RECONCILED, f"plan: {status.plan.counts()}")
    if verdict.denial is not None:  # nothing is applied; a human changes the request or the policy
        run.failed()
        if keep_ready:  # what exists stays as it is, and Ready with it; Stalled says why it cannot change
            tracker.clear(ConditionType.RECONCILING)
            tracker.set(ConditionType.STALLED, True, *verdict.denial)
            await events.post_event(ctx.client, inputs.request.body, events.WARNING, *verdict.denial)
        else:
            status.stage = Stage.FAILED
            tracker.not_ready(*verdict.denial, stalled=True)
        return None
    if verdict.approvals and shown is not None and not shown.summary.empty:  # an empty plan never waits
        if not await approvals.gate(ctx, inputs, tracker, shown, verdict.approvals, operation="apply"):
            run.waiting()  # nothing is applied until someone allowed approves this very plan
            status.stage = Stage.AWAITING_APPROVAL
            tracker.not_ready(
                Reason.AWAITING_APPROVAL,
                approvals.waiting_message(status, inputs.request.body["metadata"].get("annotations") or {}),
                stalled=False,
            )
            return None
    else:
        approvals.forget_pending(status, "apply")
    await run.progress(Stage.APPLYING, f"applying {name}")
    applied = await run.step(runner.apply_plan())
    outputs = await run.step(runner.outputs())
    return Converged(applied, outputs, inputs.digest)


async def _deliver(ctx: Context, inputs: Inputs, tracker: Tracker, converged: Converged) -> None:
    """After a successful run: the connection Secret, monitoring, lead time, the digest, Ready."""
    request, golden, status = inputs.request, inputs.golden_path, tracker.status
    try:
        secret = await delivery.deliver(ctx, inputs, converged.outputs.values)
    except delivery.SecretTaken as taken:
        if converged.applied is not None:
            tracker.set(ConditionType.APPLIED, True, Reason.PROVISIONED, f"applied in {converged.applied.seconds:.1f}s")
        tracker.not_ready(Reason.SECRET_CONFLICT, str(taken), stalled=True)
        status.stage = Stage.FAILED
        await tracker.write(ctx.client, SERVICEREQUESTS)
        # The user may delete or rename their Secret at any moment: look again soon.
        raise Failure(Reason.SECRET_CONFLICT, str(taken), delay=ctx.settings.dependency_retry_seconds) from None
    now = ctx.now()
    status.connection_secret = secret["metadata"]["name"]
    status.outputs = sorted(secret["data"])
    status.failures = 0
    status.next_retry_time = None
    status.stage = Stage.READY
    status.applied_digest = converged.digest
    if golden.revision is not None:  # what it now runs, for rollouts and `kubectl get servicerequests`
        status.revision = golden.revision.revision
        status.commit = golden.revision.git.commit if golden.revision.git else None
    if status.first_ready_time is None:
        status.first_ready_time = format_time(now)
        # Never negative, even if the API server's clock is ahead of ours.
        status.lead_time_seconds = max(0, round((now - request.created).total_seconds()))
    applied = converged.applied
    if applied is not None:
        tracker.set(ConditionType.APPLIED, True, Reason.PROVISIONED, f"applied in {applied.seconds:.1f}s")
    elif get_condition(status.conditions, ConditionType.APPLIED) is None:
        tracker.set(ConditionType.APPLIED, True, Reason.PROVISIONED, "nothing to apply: no changes were needed")
    await monitoring.configure_request(ctx, request.body, golden.name, golden.spec, tracker)
    tracker.ready(
        f"{golden.name} is ready; connection details in Secret {status.connection_secret}", Reason.PROVISIONED
    )
    if applied is not None:
        tracker.announce()  # every successful apply says so; a plan without changes has nothing to say


async def finalize_service_request(ctx: Context, body: JSON) -> None:
    """Destroy what the request made, then its state; raises Failure while that fails. A request a
    platform admin abandoned goes without a destroy (recorded); one that never applied anything goes at once."""
    tracker = StatusTracker(body, ServiceRequestStatus, now=ctx.now())
    try:
        await _finalize(ctx, tracker, body)
    except Failure:
        raise
    except Exception as exc:  # the API server, the disk, the module, a bug: one failure path
        raise await runs.failed_attempt(ctx, tracker, runs.RunFailed.of_exception(exc)) from None


async def _finalize(ctx: Context, tracker: Tracker, body: JSON) -> None:
    # Decode.
    request = views.request_view(body)
    # Decide: requests that consume this one's outputs are destroyed first (their destroy reads them).
    if dependents := await composition.dependents_of(ctx, request):
        message = f"deleting: waiting for {', '.join(dependents)} (they consume its outputs) to be deleted first"
        tracker.set(ConditionType.READY, False, Reason.WAITING_FOR_DEPENDENTS, message)
        tracker.set(ConditionType.RECONCILING, True, Reason.WAITING_FOR_DEPENDENTS, message)
        await tracker.write(ctx.client, SERVICEREQUESTS)
        raise Failure(Reason.WAITING_FOR_DEPENDENTS, message, delay=ctx.settings.deletion_poll_seconds)
    state = state_of(ctx.settings.namespace, request.uid)
    recorded = statelock.recorded_lock_ids(tracker.status.last_run)
    if naming.ABANDON_ANNOTATION in (body["metadata"].get("annotations") or {}):
        await leftovers.abandon(ctx, body)
        return
    if not await leftovers.anything_applied(ctx, state):  # no state, or the empty one seeded before a first run
        await statelock.forget(ctx, request, state, recorded)  # a run that failed early still made the Lease
        await ctx.runners.discard(request.key)
        return  # nothing was ever applied (or it is already destroyed)
    exists, golden = await lookup.golden_path(ctx, request.spec.golden_path)
    # Decide.
    if golden is None:
        name = request.spec.golden_path
        words = f"cannot be read (kubectl describe goldenpath {name})" if exists else "no longer exists"
        message = f"cannot destroy: golden path {name!r} {words}; re-create it so its module can run"
        tracker.not_ready(Reason.DESTROY_FAILED, message, stalled=True)
        await tracker.write(ctx.client, SERVICEREQUESTS)
        raise Failure(Reason.DESTROY_FAILED, message, delay=ctx.settings.blocked_retry_seconds)
    with contextlib.suppress(Failure):  # destroy with the revision it runs; if that is gone, with today's
        golden = await revisions.at_revision(ctx, body, golden)
    env = await lookup.environment_ref(ctx, request.namespace) or views.NO_ENVIRONMENT
    params, _ = parameters.validate(golden.spec.parameters, request.spec.parameters)
    # Act.
    inputs = await _resolve(
        ctx, tracker, request=request, env=env, golden=golden, params=params, waiting=Stage.DELETING
    )
    tracker.status.stage = Stage.DELETING
    tracker.set(ConditionType.READY, False, Reason.DELETING, f"destroying {golden.name}")
    tracker.set(ConditionType.RECONCILING, True, Reason.DELETING, f"destroying {golden.name}")
    async with runs.attempt(ctx, inputs, tracker, "destroy") as run:
        await run.step(run.runner.init())
        destroyed = await run.step(run.runner.destroy())
    await statelock.forget(ctx, request, state, recorded)
    await events.post_event(
        ctx.client, body, events.NORMAL, Reason.DESTROYED, f"{golden.name} destroyed in {destroyed.seconds:.1f}s"
    )
    await ctx.runners.discard(request.key)


async def reapply_for_inputs(ctx: Context, namespace: str, name: str) -> bool:
    """Apply a Ready consumer again when a source's outputs changed (the inputs timer); True if it did."""
    body = await ctx.client.get(SERVICEREQUESTS, name, namespace)  # fresh: the timer's copy may be stale
    if body is None or body["metadata"].get("deletionTimestamp") or not await composition.due(ctx, body):
        return False
    golden_path = str((body.get("spec") or {}).get("goldenPath") or "")
    ctx.metrics.observe_input_reapply(golden_path)
    message = "a source's outputs changed: applying again with the new inputs"
    await events.post_event(ctx.client, body, events.NORMAL, Reason.INPUTS_CHANGED, message)
    await reconcile_service_request(ctx, body)
    return True
