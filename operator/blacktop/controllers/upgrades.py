"""Moving one request to another revision for a rollout: plan it there first, then apply it.

:class:`ProvisioningUpgrader` is the :class:`blacktop.controllers.rollout.Upgrader` of the running
operator. Both steps hold the request's lock (the one its Kopf handlers take), so they never
interleave with its own reconciles or drift checks.

- ``plan``: a run of its own (recorded in ``lastRun``, under the state lock, like any run) of init,
  plan and show at the revision, and the Plan-stage guardrails on that plan; nothing is applied, and
  the request's conditions are left as they are (its PolicyCompliant is about what it runs now).
- ``apply``: the ordinary reconcile of the request, at the revision: plan, guardrails, apply,
  deliver, exactly as a spec change would. If that fails, the request is put back on the revision it
  ran (the same reconcile, in reverse); if that fails too, its status no longer names a revision
  (which one its infrastructure is at is unknown), so the next move takes it to the target.

A request its own reconcile has not caught up with (a spec change not yet provisioned) is *busy*:
the rollout tries it again at its next look instead of planning something its owner is changing.
"""

from __future__ import annotations

from typing import Any

from blacktop.api.conditions import ConditionType, Reason, get_condition
from blacktop.api.servicerequest import ServiceRequestStatus
from blacktop.builders import parameters
from blacktop.controllers import guardrails, lookup, revisions, runs, servicerequest, views
from blacktop.controllers.context import Context
from blacktop.controllers.failures import Failure
from blacktop.controllers.inputs import resolve
from blacktop.controllers.rollout import Outcome
from blacktop.controllers.tracker import StatusTracker
from blacktop.kube.resources import SERVICEREQUESTS
from blacktop.kube.status import write_status
from blacktop.terraform.module import ModuleError

JSON = dict[str, Any]

BUSY = Outcome(ok=False, busy=True)


def request_lock_key(namespace: str, name: str) -> str:
    """The key of a request's lock in the Context (the same its Kopf handlers use)."""
    return f"ServiceRequest/{namespace}/{name}"


class ProvisioningUpgrader:
    """Plans and applies requests at a revision through the provisioning core."""

    async def plan(self, ctx: Context, namespace: str, name: str, revision: int) -> Outcome:
        async with ctx.lock(request_lock_key(namespace, name)):
            body = await ctx.client.get(SERVICEREQUESTS, name, namespace)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return BUSY  # gone or going: the next look does not see it any more
            tracker = StatusTracker(body, ServiceRequestStatus, now=ctx.now())
            if tracker.status.observed_generation != tracker.generation:
                return BUSY
            request = views.request_view(body)
            env = await lookup.environment_ref(ctx, namespace)
            _, golden = await lookup.golden_path(ctx, request.spec.golden_path)
            if env is None or golden is None:
                return BUSY
            return await _plan_at(ctx, tracker, request, env, golden, revision=revision)

    async def apply(self, ctx: Context, namespace: str, name: str, revision: int) -> Outcome:
        async with ctx.lock(request_lock_key(namespace, name)):
            body = await ctx.client.get(SERVICEREQUESTS, name, namespace)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return BUSY
            previous = (body.get("status") or {}).get("revision")
            moved = await _reconcile_at(ctx, body, revision)
            if moved.ok or previous is None:
                return moved
            # Health gate: an apply that failed half-way leaves the request neither here nor there;
            # put it back on the revision it ran, the same operation in reverse.
            body = await ctx.client.get(SERVICEREQUESTS, name, namespace) or body
            back = await _reconcile_at(ctx, body, previous)
            if back.ok:
                return Outcome(
                    ok=False, reason=moved.reason, message=f"{moved.message}; put back on revision {previous}"
                )
            await _forget_revision(ctx, namespace, name)
            return Outcome(
                ok=False,
                reason=moved.reason,
                message=f"{moved.message}; putting it back on revision {previous} failed too: {back.message}",
            )


async def _reconcile_at(ctx: Context, body: JSON, revision: int) -> Outcome:
    """The ordinary reconcile of the request, at ``revision``; whether it ended Ready there."""
    try:
        status = await servicerequest.reconcile_service_request(ctx, body, revision=revision)
    except Failure as failure:
        return Outcome(ok=False, reason=failure.reason, message=failure.message)
    ready = get_condition(status.conditions, ConditionType.READY)
    if status.revision == revision and ready is not None and ready.status == "True":
        return Outcome(ok=True)
    reason = ready.reason if ready is not None else Reason.APPLY_FAILED
    return Outcome(ok=False, reason=reason, message=ready.message if ready is not None else "not applied")


async def _forget_revision(ctx: Context, namespace: str, name: str) -> None:
    """Neither revision applied: which one its infrastructure is at is unknown, so status says none,
    and the rollout (or its next reconcile) takes it to the target like a request never applied."""
    body = await ctx.client.get(SERVICEREQUESTS, name, namespace)
    if body is None:
        return
    status = ServiceRequestStatus.model_validate(body.get("status") or {})
    status.revision = None
    status.commit = None
    status.applied_digest = None  # nor what it was made of: its next reconcile runs
    await write_status(ctx.client, SERVICEREQUESTS, name, status, namespace)


async def _plan_at(
    ctx: Context,
    tracker: StatusTracker[ServiceRequestStatus],
    request: views.RequestView,
    env: views.EnvironmentRef,
    golden: views.GoldenPathView,
    *,
    revision: int,
) -> Outcome:
    """Plan ``request`` at ``revision`` and judge the plan; the caller holds the request's lock."""
    try:
        golden = await revisions.at_revision(ctx, request.body, golden, revision=revision)
        params, errors = parameters.validate(golden.spec.parameters, request.spec.parameters)
        if errors:
            message = "its parameters do not match the revision's schema: " + "; ".join(errors)
            return Outcome(ok=False, reason=Reason.INVALID_PARAMETERS, message=message)
        inputs = await resolve(ctx, request, env, golden, params)
        # The guardrails' verdict on a plan not applied is not the request's PolicyCompliant.
        scratch = StatusTracker(request.body, ServiceRequestStatus, now=ctx.now())
        async with runs.run(ctx, inputs, tracker, "plan") as run:
            await run.step(run.runner.init())
            await run.step(run.runner.plan())
            shown = await run.step(run.runner.show_plan())
            verdict = await guardrails.judge_plan(ctx, inputs, shown.plan, tracker=scratch)
    except (runs.RunFailed, ModuleError) as exc:  # a module that cannot be read here: that batch waits
        failed = exc if isinstance(exc, runs.RunFailed) else runs.RunFailed.of_exception(exc)
        if isinstance(exc, runs.RunFailed):
            await tracker.write(ctx.client, SERVICEREQUESTS)  # lastRun says the plan run failed
        return Outcome(ok=False, reason=failed.reason, message=f"{failed.step}: {failed.detail}")
    except Failure as failure:
        return Outcome(ok=False, reason=failure.reason, message=failure.message)
    await tracker.write(ctx.client, SERVICEREQUESTS)
    if verdict.denial is not None:
        return Outcome(ok=False, reason=verdict.denial[0], message=verdict.denial[1])
    if verdict.approvals:
        # A rollout never approves on a human's behalf: the owner moves the request (spec.revision),
        # and that change waits for its approval like any other.
        rules = "; ".join(v.text for v in verdict.approvals)
        message = f"the plan at revision {revision} needs an approval ({rules}); pin spec.revision to move it"
        return Outcome(ok=False, reason=Reason.AWAITING_APPROVAL, message=message)
    return Outcome(ok=True, message=f"plan: {shown.summary.counts()}")
