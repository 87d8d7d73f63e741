"""The GuardrailPolicy reconciler, the active policy set, and the record of violations.

A policy is Ready (reason Active) when every rule and message placeholder compiles, else Ready=False
with reason CompileError and the compiler's message. Warn and Audit violations, seen at admission
or on a plan, are appended to the policy's status (the last 20, and a running count). Every write
happens under the policy's lock on a freshly read object, so a reconcile and concurrent recordings
never overwrite each other's view.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from blacktop.api.common import format_time
from blacktop.api.conditions import Reason
from blacktop.api.guardrailpolicy import GuardrailPolicyStatus
from blacktop.api.guardrailpolicy import Violation as StatusViolation
from blacktop.controllers.context import Context
from blacktop.controllers.lookup import cached_list
from blacktop.controllers.tracker import StatusTracker
from blacktop.guardrails.engine import CompiledPolicy, PolicyCompileError, Violation, compile_body
from blacktop.kube.resources import GUARDRAILPOLICIES

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
MAX_VIOLATIONS = 20


def _lock_key(name: str) -> str:
    return f"GuardrailPolicy/{name}"


async def active_policies(ctx: Context) -> list[CompiledPolicy]:
    """Every policy that compiles (compiled programs are cached; the policies come from the informer
    cache, or from one list call until it has synced)."""
    policies = []
    bodies = cached_list(ctx, "policies")
    for body in bodies if bodies is not None else await ctx.client.list(GUARDRAILPOLICIES):
        if body["metadata"].get("deletionTimestamp"):
            continue
        try:
            policies.append(compile_body(body))
        except PolicyCompileError:
            continue  # its own status says CompileError; it could only have got in before the webhook ran
    return policies


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


def record_in_background(ctx: Context, violations: list[Violation], obj: JSON) -> None:
    """Record without holding up the admission response; failures are logged."""
    if not violations:
        return

    async def _run() -> None:
        try:
            await record(ctx, violations, obj)
        except Exception as exc:  # a lost record must never break admission; say so in the log
            logger.warning("could not record guardrail violations: %s", exc)

    task = asyncio.get_running_loop().create_task(_run())
    ctx.background.add(task)  # referenced until done, so it is not garbage-collected
    task.add_done_callback(ctx.background.discard)
