"""The human step of a request: a plan that guardrails (or driftPolicy CorrectWithApproval) want
approved waits, recorded in status, until someone allowed approves that very plan.

:func:`gate` is called between the Plan-stage guardrails and apply, by provisioning and by drift
corrections alike. The digest names the plan (:mod:`blacktop.guardrails.approvals`); when the
request's ``blacktop.dev/approve`` annotation names it and admission stamped who set it, the plan is
applied and ``status.approval`` records who approved and when (``state: Approved``, ``approvedBy``,
``approvedAt``, ``waitedSeconds``: the scorecard's "a human step"), with an ``Approved`` Event.
Otherwise ``status.approval`` is Pending with the digest, the plan, the cost, the rules that asked
and who may approve, and the plan is not applied. An approval of another digest (an older plan,
before a new spec, golden path revision or changed infrastructure) is not one: an
``ApprovalSuperseded`` Event says so once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from blacktop.api.common import Subject
from blacktop.api.conditions import Reason
from blacktop.api.environment import EnvironmentSpec
from blacktop.api.guardrailpolicy import ApprovalRequirement
from blacktop.api.servicerequest import ApprovalState, ServiceRequestStatus
from blacktop.builders import naming
from blacktop.controllers.context import Context
from blacktop.controllers.inputs import Inputs
from blacktop.controllers.tracker import StatusTracker
from blacktop.guardrails import approvals
from blacktop.guardrails.engine import Violation
from blacktop.kube import events
from blacktop.terraform.runner import ShownPlan


def _owners(env_body: dict[str, Any]) -> Sequence[Subject]:
    try:
        return EnvironmentSpec.model_validate(env_body.get("spec") or {}).owners
    except ValidationError:
        return []  # a request being destroyed after its Environment: the team's group approves


async def gate(
    ctx: Context,
    inputs: Inputs,
    tracker: StatusTracker[ServiceRequestStatus],
    shown: ShownPlan,
    asked: Sequence[Violation],
    *,
    operation: str,
    drift_policy: bool = False,
) -> bool:
    """True when this plan may be applied now (it was approved); False when it waits for approval."""
    request, golden, status, now = inputs.request, inputs.golden_path, tracker.status, tracker.now
    digest = approvals.plan_digest(
        request.uid, tracker.generation, approvals.golden_path_revision(golden.body), shown.plan
    )
    requirements = [v.approval for v in asked if v.approval is not None] or [ApprovalRequirement()]
    approvers, self_approval = approvals.approvers_for(
        requirements, _owners(inputs.environment.body), ctx.settings.team_group(inputs.environment.team or "")
    )
    annotations = request.body["metadata"].get("annotations") or {}
    previous = status.approval
    waiting = approvals.pending(
        operation=operation,
        digest=digest,
        plan=shown.summary.counts(),
        monthly_cost=status.monthly_cost,
        violations=asked,
        extra_rules=[approvals.DRIFT_POLICY_RULE] if drift_policy else [],
        approvers=approvers,
        self_approval=self_approval,
        requested_by=annotations.get(naming.REQUESTED_BY),
        namespace=request.namespace,
        name=request.name,
        previous=previous,
        now=now,
    )
    approved_by, stale = approvals.verdict(annotations, digest)
    if approved_by is not None:
        if previous is not None and previous.state is ApprovalState.APPROVED and previous.plan_digest == digest:
            return True  # approved before (a retry of the same plan)
        status.approval = approvals.granted(waiting, approved_by, now)
        await events.post_event(
            ctx.client,
            request.body,
            events.NORMAL,
            Reason.APPROVED,
            f"{operation} plan {digest} ({waiting.plan}) approved by {approved_by} after "
            f"{status.approval.waited_seconds}s",
        )
        return True
    status.approval = waiting
    new = previous is None or previous.plan_digest != digest or previous.state is not ApprovalState.PENDING
    if new and stale is not None:
        await events.post_event(
            ctx.client,
            request.body,
            events.WARNING,
            Reason.APPROVAL_SUPERSEDED,
            f"the approval of plan {stale} does not apply to the plan now waiting ({digest}: {waiting.plan}): "
            "the spec, the golden path or the infrastructure changed since; approve the new plan",
        )
    return False


def forget_pending(status: ServiceRequestStatus, operation: str) -> None:
    """A plan of ``operation`` no longer waits (no rule asks any more): drop the Pending approval,
    keep an Approved one (the record that a human approved this request)."""
    approval = status.approval
    if approval is not None and approval.state is ApprovalState.PENDING and approval.operation == operation:
        status.approval = None


def waiting_message(status: ServiceRequestStatus, annotations: Mapping[str, str]) -> str:
    """Ready's message while a plan waits; an approval of another plan is named as not applying."""
    approval = status.approval
    assert approval is not None
    who = ", ".join(f"{s.kind.value} {s.name}" for s in approval.approvers)
    rules = "; ".join(f"{r.policy}/{r.rule}: {r.message}" for r in approval.rules)
    _, stale = approvals.verdict(annotations, approval.plan_digest)
    earlier = f"; the approval of {stale} was for an earlier plan and does nothing" if stale else ""
    return (
        f"plan {approval.plan_digest} ({approval.plan}) awaits approval by {who} (asked by {rules}){earlier}; "
        f"approve with: {approval.command}"
    )
