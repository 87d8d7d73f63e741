"""The Plan stage of guardrails: after the plan and before apply, what would run must pass.

Two checks, in order: the built-in protections (every provider the plan uses is on the operator's
allow-list; no local-exec/remote-exec provisioner, no external data source), then the Plan-stage
rules of the matching GuardrailPolicies with ``plan`` in their context (the ``show -json``
document). The document costs a tool run of its own, so it is made only when something reads it
(:func:`needs_plan_document`): a Plan-stage rule that applies to the request, or a module whose code
its golden path did not check itself: one that calls other modules (fetched by ``init``), or whose
files changed since the golden path validated them. Otherwise the module's own analysis (the
providers and constructs of its files, the same findings the golden path was admitted with) is the
protection, checked again on every run (:func:`judge_module`). A denial sets
PolicyCompliant=False (reason PolicyDenied, or the built-in protection's reason) naming the policy,
the rule and the offending resource addresses, and is returned to the caller, which stops the run
before apply: provisioning reports Ready=False and Stalled (a human must change the request or the
policy) with a Warning Event; a drift correction is an apply too, and a denied correction leaves the
drift reported, uncorrected. A failing Enforce rule with ``requireApproval`` does not deny: the
verdict lists it, and the caller has the plan wait for approval (:mod:`blacktop.controllers.approvals`).
Warn and Audit violations are recorded in their policies' status; Warn also posts a Warning Event.
Rules never see the values of inputs taken from other requests: the plan's variables mask them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from blacktop.api.conditions import ConditionType, Reason
from blacktop.api.guardrailpolicy import RuleStage
from blacktop.api.servicerequest import ServiceRequestStatus
from blacktop.controllers.admission import observe
from blacktop.controllers.context import Context
from blacktop.controllers.guardrailpolicy import active_policies, record
from blacktop.controllers.inputs import Inputs
from blacktop.controllers.tracker import StatusTracker
from blacktop.guardrails import context, engine
from blacktop.guardrails.plan import plan_problems
from blacktop.kube import events
from blacktop.terraform.findings import disallowed_providers

JSON = dict[str, Any]
MASKED = "(input of another request)"


@dataclass(frozen=True)
class Verdict:
    """What the Plan stage says: a denial (reason, message), or the Enforce rules that ask for approval
    instead (none: the plan may be applied)."""

    denial: tuple[str, str] | None = None
    approvals: tuple[engine.Violation, ...] = ()


def _masked(plan: JSON, variables: list[str]) -> JSON:
    """The plan as rules see it: the values of variables that came from other requests' outputs are
    masked, so no rule message can quote one into status."""
    values = plan.get("variables")
    if not variables or not isinstance(values, dict):
        return plan
    return {**plan, "variables": {k: ({"value": MASKED} if k in variables else v) for k, v in values.items()}}


async def needs_plan_document(ctx: Context, inputs: Inputs) -> bool:
    """Whether the saved plan must be shown (see the module docstring)."""
    info = inputs.module  # parsed once by inputs.resolve, from the revision's folder or git commit
    if info.findings.module_calls or info.digest != inputs.golden_path.module_digest:
        return True
    subject = context.request_subject(inputs.request.body, inputs.environment.body)
    return bool(engine.rules_for(await active_policies(ctx), subject, RuleStage.PLAN))


async def judge_module(
    ctx: Context, inputs: Inputs, *, tracker: StatusTracker[ServiceRequestStatus]
) -> tuple[str, str] | None:
    """The built-in protections on the module's own analysis (no Plan-stage rule applies); like
    :func:`judge_plan`, sets PolicyCompliant and returns the (reason, message) of a refusal."""
    info = inputs.module  # parsed once by inputs.resolve, from the revision's folder or git commit
    problems = list(info.findings.violations)
    if bad := disallowed_providers(info.findings.providers, ctx.settings.allowed_providers):
        problems.insert(0, f"the module uses provider(s) {', '.join(bad)}, which are not on the allow-list")
    if problems:
        reason = Reason.PROVIDER_NOT_ALLOWED if "provider" in problems[0] else Reason.FORBIDDEN_PROVISIONER
        message = "denied by built-in protection: " + "; ".join(problems)
        tracker.set(ConditionType.POLICY_COMPLIANT, False, reason, message)
        return reason, message
    tracker.set(
        ConditionType.POLICY_COMPLIANT,
        True,
        Reason.RECONCILED,
        "the module passes the built-in protections; no Plan-stage rule applies",
    )
    return None


async def judge_plan(
    ctx: Context, inputs: Inputs, plan: JSON, *, tracker: StatusTracker[ServiceRequestStatus]
) -> Verdict:
    """Set PolicyCompliant for ``plan``; its verdict: a denial, approvals it waits for, or neither."""
    problems = plan_problems(plan, ctx.settings.allowed_providers)
    if problems:
        reason = Reason.PROVIDER_NOT_ALLOWED if "provider" in problems[0] else Reason.FORBIDDEN_PROVISIONER
        message = "denied by built-in protection: " + "; ".join(problems)
        tracker.set(ConditionType.POLICY_COMPLIANT, False, reason, message)
        return Verdict(denial=(reason, message))

    body, env, golden = inputs.request.body, inputs.environment.body, inputs.golden_path
    plan = _masked(plan, [i.variable for i in inputs.request.spec.inputs])
    variables = context.request_variables(body, None, env, golden.body, None, plan=plan, golden_spec=golden.spec)
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
        return Verdict(denial=(Reason.POLICY_DENIED, message))
    asked = "".join(f"; {v.text}" for v in decision.approvals)
    if decision.warnings:
        text = "; ".join(v.text for v in decision.warnings)
        tracker.set(ConditionType.POLICY_COMPLIANT, True, Reason.POLICY_WARNED, text + asked)
        await events.post_event(ctx.client, body, events.WARNING, Reason.POLICY_WARNED, text)
    else:
        tracker.set(
            ConditionType.POLICY_COMPLIANT,
            True,
            Reason.RECONCILED,
            f"the plan passes the built-in protections and {decision.evaluated} Plan-stage rule(s){asked}",
        )
    return Verdict(approvals=tuple(decision.approvals))
