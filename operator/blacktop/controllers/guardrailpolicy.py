"""The GuardrailPolicy reconciler, the active policy set, and the record of violations.

A policy is Ready (reason Active) when every rule and message placeholder compiles, else Ready=False
with reason CompileError and the compiler's message; a rule whose estimated cost is over the limit
(one that got in before the webhook checked it) gives CostLimitExceeded: it is still enforced, under
the evaluation deadline. Warn and Audit violations, seen at admission or on a plan, are appended to
the policy's status (the last 20, and a running count). Every write happens under the policy's lock
on a freshly read object, so a reconcile and concurrent recordings never overwrite each other's
view. A violation seen at admission is recorded only once the reviewed object exists in the API as
reviewed (same uid, same spec): what an admission review says is never written on its word alone,
so a forged review cannot fill a policy's status with fake violations or flush the real ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from blacktop.api.common import format_time
from blacktop.api.conditions import Reason
from blacktop.api.guardrailpolicy import GuardrailPolicyStatus
from blacktop.api.guardrailpolicy import Violation as StatusViolation
from blacktop.controllers import lookup
from blacktop.controllers.context import Context
from blacktop.controllers.tracker import StatusTracker
from blacktop.guardrails.engine import CompiledPolicy, PolicyCompileError, Violation, compile_active, compile_body
from blacktop.kube.resources import ENVIRONMENTS, GUARDRAILPOLICIES, SERVICEREQUESTS

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
MAX_VIOLATIONS = 20


def _lock_key(name: str) -> str:
    return f"GuardrailPolicy/{name}"


async def active_policies(ctx: Context) -> list[CompiledPolicy]:
    """Every policy that compiles (compiled programs are cached; the policies come from the informer
    cache, or from one list call until it has synced)."""
    return compile_active(await lookup.listed(ctx, "policies"))


async def reconcile_policy(ctx: Context, name: str) -> GuardrailPolicyStatus | None:
    """Compile the policy and say in status whether it is active."""
    async with ctx.lock(_lock_key(name)):
        body = await ctx.client.get(GUARDRAILPOLICIES, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        tracker = StatusTracker(body, GuardrailPolicyStatus, now=ctx.now())
        try:
            compiled = compile_body(body)
        except PolicyCompileError as exc:
            tracker.not_ready(Reason.COMPILE_ERROR, "; ".join(exc.problems), stalled=True)
            return await tracker.write(ctx.client, GUARDRAILPOLICIES)
        try:
            compile_body(body, cost_limit=ctx.settings.cel_cost_limit)
        except PolicyCompileError as exc:
            message = "; ".join(exc.problems) + "; it is enforced all the same, under the evaluation deadline"
            tracker.not_ready(Reason.COST_LIMIT_EXCEEDED, message, stalled=True)
        else:
            stages = sorted({r.stage.value for r in compiled.rules})
            tracker.ready(
                f"active in {compiled.mode.value} mode: {len(compiled.rules)} rule(s) at stage(s) {', '.join(stages)}",
                Reason.ACTIVE,
            )
        return await tracker.write(ctx.client, GUARDRAILPOLICIES)


async def record(ctx: Context, violations: Iterable[Violation], obj: JSON) -> None:
    """Append Warn/Audit violations about ``obj`` to their policies' status."""
    meta = obj.get("metadata") or {}
    by_policy: dict[str, list[Violation]] = {}
    for violation in violations:
        by_policy.setdefault(violation.policy, []).append(violation)
    now = format_time(ctx.now())
    for policy, found in by_policy.items():
        async with ctx.lock(_lock_key(policy)):
            body = await ctx.client.get(GUARDRAILPOLICIES, policy)
            if body is None:
                continue
            tracker = StatusTracker(body, GuardrailPolicyStatus, now=ctx.now())
            status = tracker.status
            status.violations = [
                *status.violations,
                *(
                    StatusViolation(
                        time=now,
                        kind=str(obj.get("kind") or ""),
                        namespace=meta.get("namespace"),
                        name=str(meta.get("name") or ""),
                        rule=v.rule,
                        message=v.message,
                    )
                    for v in found
                ),
            ][-MAX_VIOLATIONS:]
            status.violation_count += len(found)
            await tracker.write(ctx.client, GUARDRAILPOLICIES)


CONFIRM_SECONDS = 15.0


async def stored_as_reviewed(ctx: Context, obj: JSON, deadline_seconds: float = CONFIRM_SECONDS) -> bool:
    """Whether ``obj`` (as an admission review showed it) is now stored: same uid, same spec. The
    apiserver stores an admitted object right after the review; poll for it with a deadline."""
    meta = obj.get("metadata") or {}
    resource = {"Environment": ENVIRONMENTS, "ServiceRequest": SERVICEREQUESTS}.get(str(obj.get("kind")))
    if resource is None or not meta.get("name") or not meta.get("uid"):
        return False
    deadline = time.monotonic() + deadline_seconds
    while True:
        stored = await ctx.client.get(resource, str(meta["name"]), meta.get("namespace"))
        same = stored is not None and stored["metadata"].get("uid") == meta["uid"]
        if same and stored is not None and (stored.get("spec") or {}) == (obj.get("spec") or {}):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.5)


def record_in_background(ctx: Context, violations: list[Violation], obj: JSON) -> None:
    """Record without holding up the admission response, once the object is stored as reviewed;
    failures are logged."""
    if not violations:
        return

    async def _run() -> None:
        try:
            if not await stored_as_reviewed(ctx, obj):
                meta = obj.get("metadata") or {}
                logger.warning(
                    "not recording %d guardrail violation(s) about %s %s/%s: no such object was stored as reviewed",
                    len(violations),
                    obj.get("kind"),
                    meta.get("namespace") or "",
                    meta.get("name"),
                )
                return
            await record(ctx, violations, obj)
        except Exception as exc:  # a lost record must never break admission; say so in the log
            logger.warning("could not record guardrail violations: %s", exc)

    task = asyncio.get_running_loop().create_task(_run())
    ctx.background.add(task)  # referenced until done, so it is not garbage-collected
    task.add_done_callback(ctx.background.discard)
