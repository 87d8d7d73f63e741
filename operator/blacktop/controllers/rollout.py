"""Rolling a golden path's target revision out to the requests already using it.

Each look (:func:`advance`, from a timer every ``rollout_check_seconds``) reads the golden path, its
revisions, its requests and their environments' tiers, lets :func:`blacktop.builders.rollout.next_step`
decide, and does at most one batch: every request of the batch is *planned* at the target revision
first (plan-stage guardrails included, nothing applied); only when all plans pass are they applied,
one after the other. A plan that fails or is denied, or an apply that fails, halts the rollout: the
golden path's ``status.rollout.halted`` names the request, its tier and the reason, later tiers
wait, and a Warning Event says so. The details (the redacted tool output, the denial) go to that
request's own ``UpgradeAvailable`` condition, which only its team can read: the golden path's status
is readable by every user of the catalog, so it never carries one team's errors. A halt lifts when
the halted request changes (its owner fixed it), is deleted, or the target changes (a new revision,
or ``spec.rollout.revision`` rolled back).

The actual plan and apply are the provisioning core's, reached through the small
:class:`Upgrader` protocol, so this controller is tested with a fake one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from blacktop.api.common import Condition, format_time
from blacktop.api.conditions import ConditionType, Reason, get_condition, is_true, set_condition
from blacktop.api.goldenpath import GoldenPathSpec, GoldenPathStatus, RolloutHalt, RolloutPhase, RolloutStatus
from blacktop.api.servicerequest import ServiceRequestStatus
from blacktop.builders import rollout
from blacktop.builders.rollout import Member, Step
from blacktop.controllers import lookup, revisions
from blacktop.controllers.context import Context
from blacktop.controllers.tracker import StatusTracker
from blacktop.kube import events
from blacktop.kube.resources import ENVIRONMENTS, GOLDENPATHS, SERVICEREQUESTS
from blacktop.kube.status import write_status

logger = logging.getLogger(__name__)

JSON = dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    """What planning or applying one request at a revision gave."""

    ok: bool
    reason: str = Reason.RECONCILED
    message: str = ""
    busy: bool = False  # could not run now (the request is being reconciled): try again next look


class Upgrader(Protocol):
    """Plans and applies one request at a given revision (the provisioning core does the work)."""

    async def plan(self, ctx: Context, namespace: str, name: str, revision: int) -> Outcome: ...

    async def apply(self, ctx: Context, namespace: str, name: str, revision: int) -> Outcome: ...


def request_key(request: JSON) -> str:
    meta = request["metadata"]
    return f"{meta['namespace']}/{meta['name']}"


def member_of(request: JSON, tier: str | None) -> Member:
    """A request as the rollout deciders see it."""
    status = request.get("status") or {}
    meta = request["metadata"]
    generation = int(meta.get("generation", 1))
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return Member(
        key=request_key(request),
        tier=tier,
        revision=status.get("revision"),
        pinned=(request.get("spec") or {}).get("revision"),
        provisioned=status.get("revision") is not None or status.get("firstReadyTime") is not None,
        ready=ready and status.get("observedGeneration") == generation,
        generation=generation,
    )


def kubectl_hint(member: Member) -> str:
    namespace, name = member.key.split("/", 1)
    return (
        f"kubectl patch servicerequest {name} -n {namespace} --type merge "
        '-p \'{{"spec":{{"revision":{revision}}}}}\''
    )


async def _members(ctx: Context, name: str, *, fresh: bool = False) -> tuple[list[JSON], list[Member]]:
    """The golden path's requests and what the deciders see of them: the informer cache's copies
    (a look every 10 s must not list every request of the cluster), or the API server's when
    ``fresh`` (right after a batch moved: the cache may be a moment behind its writes)."""
    everyone = await (ctx.client.list(SERVICEREQUESTS) if fresh else lookup.listed(ctx, "requests"))
    requests = [
        r
        for r in everyone
        if (r.get("spec") or {}).get("goldenPath") == name and not r["metadata"].get("deletionTimestamp")
    ]
    environments = await (ctx.client.list(ENVIRONMENTS) if fresh else lookup.listed(ctx, "environments"))
    tiers = {
        (env.get("status") or {}).get("namespace") or env["metadata"]["name"]: (env.get("spec") or {}).get("tier")
        for env in environments
    }
    return requests, [member_of(r, tiers.get(r["metadata"]["namespace"])) for r in requests]


def _rollout_status(target: int, step: Step, halt: RolloutHalt | None, batch: tuple[str, ...] = ()) -> RolloutStatus:
    return RolloutStatus(
        revision=target,
        phase=step.phase,
        tier=step.tier,
        progress=step.progress,
        tiers=list(step.tiers),
        batch=list(batch),
        pinned=step.pinned,
        halted=halt if step.phase == RolloutPhase.HALTED else None,
    )


def _rolled_out(tracker: StatusTracker[GoldenPathStatus], target: int, step: Step, halt: RolloutHalt | None) -> None:
    phase = step.phase
    if phase == RolloutPhase.COMPLETE:
        tracker.set(ConditionType.ROLLED_OUT, True, Reason.ROLLOUT_COMPLETE, f"revision {target}: {step.progress}")
    elif phase == RolloutPhase.HALTED and halt is not None:
        tracker.set(
            ConditionType.ROLLED_OUT,
            False,
            Reason.ROLLOUT_HALTED,
            f"revision {target} halted at {halt.tier}: {halt.request} {halt.reason}; {halt.message} ({step.progress})",
        )
    elif phase == RolloutPhase.WAITING:
        tracker.set(
            ConditionType.ROLLED_OUT,
            False,
            Reason.ROLLOUT_WAITING,
            f"revision {target} (Manual): requests move when their owners set spec.revision ({step.progress})",
        )
    else:
        waiting = f"; waiting for {', '.join(step.waiting_for[:5])} to be Ready" if step.waiting_for else ""
        tracker.set(
            ConditionType.ROLLED_OUT,
            False,
            Reason.ROLLOUT_PROGRESSING,
            f"revision {target} rolling out, at {step.tier or 'the end'}: {step.progress}{waiting}",
        )


async def advance(ctx: Context, name: str, upgrader: Upgrader) -> RolloutStatus | None:
    """One look at the rollout of golden path ``name``; the caller holds the golden path's lock."""
    golden = await ctx.client.get(GOLDENPATHS, name)
    if golden is None or golden["metadata"].get("deletionTimestamp"):
        return None
    tracker = StatusTracker(golden, GoldenPathStatus, now=ctx.now())
    status = tracker.status
    before = get_condition(status.conditions, ConditionType.ROLLED_OUT)
    # Only a golden path the reconciler has checked in its current form rolls anything out.
    if status.observed_generation != tracker.generation or not is_true(status.conditions, ConditionType.READY):
        return None
    spec = GoldenPathSpec.model_validate(golden.get("spec") or {})
    known = await revisions.history(ctx, golden)
    target = revisions.target_of(spec, known)
    if target is None or target not in {r.revision for r in known}:
        return None
    latest = known[-1].revision

    requests, members = await _members(ctx, name)
    halt = status.rollout.halted if status.rollout else None
    holds = rollout.halt_still_holds(halt, target, members)
    halt = halt if holds else None
    strategy, size = spec.rollout.strategy, spec.rollout.batch_size
    step = rollout.next_step(members, target, strategy, size, halted=holds)

    if step.batch:
        status.rollout = _rollout_status(target, step, halt, step.batch)
        _rolled_out(tracker, target, step, halt)
        await tracker.write(ctx.client, GOLDENPATHS)
        by_key = {m.key: m for m in members}
        halt = await _move(ctx, golden, upgrader, [by_key[k] for k in step.batch], target)
        requests, members = await _members(ctx, name, fresh=True)
        step = rollout.next_step(members, target, strategy, size, halted=halt is not None)

    status.rollout = _rollout_status(target, step, halt)
    _rolled_out(tracker, target, step, halt)
    await tracker.write(ctx.client, GOLDENPATHS)
    after = get_condition(status.conditions, ConditionType.ROLLED_OUT)
    if after is not None and (before is None or (before.status, before.reason) != (after.status, after.reason)):
        kind = events.WARNING if after.reason == Reason.ROLLOUT_HALTED else events.NORMAL
        await events.post_event(ctx.client, golden, kind, after.reason, after.message)
    await _upgrade_conditions(ctx, requests, members, latest=latest, target=target, spec=spec, step=step, halt=halt)
    return status.rollout


async def _move(ctx: Context, golden: JSON, upgrader: Upgrader, batch: list[Member], target: int) -> RolloutHalt | None:
    """Plan every request of the batch at ``target``, then apply them all; the halt if one fails."""
    for stage in ("plan", "apply"):
        for member in batch:
            namespace, name = member.key.split("/", 1)
            run = upgrader.plan if stage == "plan" else upgrader.apply
            outcome = await run(ctx, namespace, name, target)
            if outcome.busy:
                return None  # being reconciled right now: the next look tries again
            if not outcome.ok:
                return await _halt(ctx, member, target, stage, outcome)
            if stage == "apply":
                await _post_request_event(
                    ctx,
                    member.key,
                    events.NORMAL,
                    Reason.UPGRADED,
                    f"moved from revision {member.revision} to {target} by the rollout of golden path "
                    f"{golden['metadata']['name']}",
                )
    return None


async def _halt(ctx: Context, member: Member, target: int, stage: str, outcome: Outcome) -> RolloutHalt:
    namespace, name = member.key.split("/", 1)
    halt = RolloutHalt(
        request=member.key,
        revision=target,
        tier=member.tier or "prod",
        reason=outcome.reason,
        # What every catalog reader may see: the class of failure and where its details are.
        message=f"the upgrade {stage} failed; details: kubectl describe servicerequest {name} -n {namespace}",
        generation=member.generation,
        time=format_time(ctx.now()),
    )
    detail = f"the {stage} at revision {target} failed ({outcome.reason}), so the rollout is halted: {outcome.message}"
    await _set_upgrade_condition(ctx, member.key, True, Reason.ROLLOUT_HALTED, detail[:2048])
    await _post_request_event(ctx, member.key, events.WARNING, Reason.ROLLOUT_HALTED, detail)
    logger.info("rollout of revision %d halted at %s (%s): %s", target, member.key, stage, outcome.reason)
    return halt


async def _post_request_event(ctx: Context, key: str, kind: str, reason: str, message: str) -> None:
    namespace, name = key.split("/", 1)
    body = await ctx.client.get(SERVICEREQUESTS, name, namespace)
    if body is not None:
        await events.post_event(ctx.client, body, kind, reason, message)


async def _upgrade_conditions(
    ctx: Context,
    requests: list[JSON],
    members: list[Member],
    *,
    latest: int,
    target: int,
    spec: GoldenPathSpec,
    step: Step,
    halt: RolloutHalt | None,
) -> None:
    """Bring each request's UpgradeAvailable up to date (written only where it changed)."""
    for request, member in zip(requests, members, strict=True):
        if halt is not None and member.key == halt.request:
            continue  # keeps the detailed message written when it halted
        ok, reason, message = rollout.upgrade_condition(
            member,
            latest=latest,
            target=target,
            strategy=spec.rollout.strategy,
            step=step,
            halt=halt,
            kubectl_hint=kubectl_hint(member),
        )
        current = next(
            (c for c in (request.get("status") or {}).get("conditions") or [] if c.get("type") == "UpgradeAvailable"),
            None,
        )
        wanted = ("True" if ok else "False", reason, message)
        if current is None or (current.get("status"), current.get("reason"), current.get("message")) != wanted:
            await _set_upgrade_condition(ctx, member.key, ok, reason, message)


async def _set_upgrade_condition(ctx: Context, key: str, ok: bool, reason: str, message: str) -> None:
    """Write one condition into a request's status, leaving everything else (observedGeneration too)
    as provisioning wrote it: this is not a reconcile of the request."""
    namespace, name = key.split("/", 1)
    async with ctx.lock(f"ServiceRequest/{namespace}/{name}"):  # the key the request's handlers use
        body = await ctx.client.get(SERVICEREQUESTS, name, namespace)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        status = ServiceRequestStatus.model_validate(body.get("status") or {})
        current = get_condition(status.conditions, ConditionType.UPGRADE_AVAILABLE)
        if current is not None and (current.status, current.reason, current.message) == (
            "True" if ok else "False",
            reason,
            message,
        ):
            return  # the copy it was judged on was a moment behind: it says so already
        condition = Condition(
            type=ConditionType.UPGRADE_AVAILABLE,
            status="True" if ok else "False",
            reason=reason,
            message=message,
            observed_generation=status.observed_generation,
            last_transition_time=format_time(ctx.now()),
        )
        status.conditions = set_condition(status.conditions, condition)
        await write_status(ctx.client, SERVICEREQUESTS, name, status, namespace)
