"""The Plan stage of guardrails: after ``show -json`` and before apply, the plan must pass.

Two checks, in order: the built-in protections (every provider the plan uses is on the operator's
allow-list; no local-exec/remote-exec provisioner, no external data source), then the Plan-stage
rules of the matching GuardrailPolicies with ``plan`` in their context. A denial stops the run
before apply: PolicyCompliant=False (reason PolicyDenied, or the built-in protection's reason) naming
the policy, the rule and the offending resource addresses, Ready=False and Stalled (a human must
change the request or the policy), and a Warning Event. Warn and Audit violations are recorded in
their policies' status; Warn also posts a Warning Event. A drift correction is an apply too: its plan
is judged the same way, and a denied correction leaves the drift reported, uncorrected.
"""

from __future__ import annotations

import time
from typing import Any

from blacktop.api.conditions import ConditionType, Reason
from blacktop.api.goldenpath import GoldenPathSpec
from blacktop.api.guardrailpolicy import RuleStage
from blacktop.api.servicerequest import ServiceRequestStatus, Stage
from blacktop.controllers.admission import observe
from blacktop.controllers.context import Context
from blacktop.controllers.guardrailpolicy import active_policies, record
from blacktop.controllers.tracker import StatusTracker
from blacktop.guardrails import context
from blacktop.guardrails.plan import plan_problems
from blacktop.kube import events
from blacktop.kube.resources import SERVICEREQUESTS

JSON = dict[str, Any]


def _golden_path_body(name: str, spec: GoldenPathSpec) -> JSON:
    return {"metadata": {"name": name}, "spec": spec.model_dump(by_alias=True, mode="json", exclude_none=True)}


async def _stop(
    ctx: Context, tracker: StatusTracker[ServiceRequestStatus], reason: str, message: str
) -> ServiceRequestStatus:
    status = tracker.status
    status.stage = Stage.FAILED
    if status.last_run is not None:
        status.last_run.result = "Failed"
    tracker.not_ready(reason, message, stalled=True)
    return await tracker.write(ctx.client, SERVICEREQUESTS)


async def judge_plan(
    ctx: Context,
    body: JSON,
    env: JSON,
    golden_path: tuple[str, GoldenPathSpec],
    plan: JSON,
    *,
    tracker: StatusTracker[ServiceRequestStatus],
) -> tuple[str, str] | None:
    """Set PolicyCompliant for ``plan``; the (reason, message) of a denial, or None when it may be applied."""
    problems = plan_problems(plan, ctx.settings.allowed_providers)
    if problems:
        reason = Reason.PROVIDER_NOT_ALLOWED if "provider" in problems[0] else Reason.FORBIDDEN_PROVISIONER
        message = "denied by built-in protection: " + "; ".join(problems)
        tracker.set(ConditionType.POLICY_COMPLIANT, False, reason, message)
        return reason, message

    gp_body = _golden_path_body(*golden_path)
    variables = context.request_variables(body, None, env, gp_body, None, plan=plan)
    policies = await active_policies(ctx)
    started = time.monotonic()
    decision = await ctx.evaluator.evaluate(policies, context.request_subject(body, env), variables, RuleStage.PLAN)
    ctx.metrics.observe_stage("policy", time.monotonic() - started)
    observe(ctx, decision)
    if decision.recorded:
        await record(ctx, decision.recorded, body)
    if decision.denials:
        message = decision.denial_text()
        tracker.set(ConditionType.POLICY_COMPLIANT, False, Reason.POLICY_DENIED, message)
        return Reason.POLICY_DENIED, message
    if decision.warnings:
        text = "; ".join(v.text for v in decision.warnings)
        tracker.set(ConditionType.POLICY_COMPLIANT, True, Reason.POLICY_WARNED, text)
        await events.post_event(ctx.client, body, events.WARNING, Reason.POLICY_WARNED, text)
    else:
        tracker.set(
            ConditionType.POLICY_COMPLIANT,
            True,
            Reason.RECONCILED,
            f"the plan passes the built-in protections and {decision.evaluated} Plan-stage rule(s)",
        )
    return None


async def check_plan(
    ctx: Context,
    body: JSON,
    env: JSON,
    golden_path: tuple[str, GoldenPathSpec],
    plan: JSON,
    *,
    tracker: StatusTracker[ServiceRequestStatus],
) -> ServiceRequestStatus | None:
    """None when the plan may be applied; else the written status of a stopped run."""
    denial = await judge_plan(ctx, body, env, golden_path, plan, tracker=tracker)
    return None if denial is None else await _stop(ctx, tracker, *denial)
