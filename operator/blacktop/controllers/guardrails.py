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
drift reported, uncorrected. Warn and Audit violations are recorded in their policies' status; Warn
also posts a Warning Event.
"""

from __future__ import annotations

import time
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
) -> tuple[str, str] | None:
    """Set PolicyCompliant for ``plan``; the (reason, message) of a denial, or None when it may be applied."""
    problems = plan_problems(plan, ctx.settings.allowed_providers)
    if problems:
        reason = Reason.PROVIDER_NOT_ALLOWED if "provider" in problems[0] else Reason.FORBIDDEN_PROVISIONER
        message = "denied by built-in protection: " + "; ".join(problems)
        tracker.set(ConditionType.POLICY_COMPLIANT, False, reason, message)
        return reason, message

    body, env, golden = inputs.request.body, inputs.environment.body, inputs.golden_path
    variables = context.request_variables(body, None, env, golden.body, None, plan=plan, golden_spec=golden.spec)
    policies = await active_policies(ctx)
    started = time.monotonic()
    decision = engine.evaluate(policies, context.request_subject(body, env), variables, RuleStage.PLAN)
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
