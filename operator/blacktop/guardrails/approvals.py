"""Approvals bound to the plan: the plan's digest, who may approve, and what admission says. Pure.

A Plan-stage rule with ``requireApproval`` that fails in an Enforce policy (or a golden path whose
``driftPolicy`` is ``CorrectWithApproval``, for drift plans) stops the request after its plan. The
plan is named by a digest over what it would do (every resource change with its before and after,
output changes, the variables) and over what produced it (the request's uid and generation, the
golden path's generation and module digest): a new spec, a new golden path revision or a changed
plan is a new digest, so an approval can only ever apply the plan it names.

Approving is one annotation, ``blacktop.dev/approve: <digest>`` (``blacktop approve`` sets it).
Admission stamps who set it (``blacktop.dev/approved-by``) and who last changed the spec
(``blacktop.dev/requested-by``), so neither can be forged, and refuses an approval by someone who
may not approve, of a plan that is not the one waiting, or of one's own change unless the rule
allows it. Plans without changes never wait: re-verifying an approved request asks nobody.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from blacktop.api.common import Subject, SubjectKind, format_time, parse_time
from blacktop.api.guardrailpolicy import ApprovalRequirement
from blacktop.api.servicerequest import Approval, ApprovalRule, ApprovalState, ServiceRequestStatus
from blacktop.builders import naming
from blacktop.guardrails.engine import Violation

DIGEST_PREFIX = "sha256:"
DIGEST_HEX = 32  # 128 bits: unguessable, and short enough for a command line
DRIFT_POLICY_RULE = ApprovalRule(
    policy="GoldenPath", rule="driftPolicy", message="driftPolicy CorrectWithApproval: drift plans wait for approval"
)


def _change(change: Mapping[str, Any]) -> dict[str, Any]:
    inner = change.get("change") or {}
    return {
        "address": change.get("address"),
        "actions": inner.get("actions"),
        "before": inner.get("before"),
        "after": inner.get("after"),
        "after_unknown": inner.get("after_unknown"),
    }


def plan_digest(uid: str, generation: int, golden_path_revision: str, plan: Mapping[str, Any]) -> str:
    """``sha256:<32 hex>`` of what the plan does and what produced it (stable across re-plans of the
    same spec against the same infrastructure; never revealing a value it covers)."""
    changes = sorted((_change(c) for c in plan.get("resource_changes") or []), key=lambda c: str(c["address"]))
    outputs = {name: (o or {}).get("actions") for name, o in (plan.get("output_changes") or {}).items()}
    document = {
        "request": [uid, generation],
        "goldenPath": golden_path_revision,
        "resourceChanges": changes,
        "outputChanges": outputs,
        "variables": plan.get("variables") or {},
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return DIGEST_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()[:DIGEST_HEX]


def golden_path_revision(golden_path: Mapping[str, Any]) -> str:
    """What identifies a golden path's revision: its generation and its module's digest."""
    meta, status = golden_path.get("metadata") or {}, golden_path.get("status") or {}
    return f"{meta.get('generation', 0)}/{status.get('moduleDigest') or ''}"


def approvers_for(
    requirements: Sequence[ApprovalRequirement], owners: Sequence[Subject], team_group: str
) -> tuple[list[Subject], bool]:
    """Who may approve (everyone the asking rules name; none named: the Environment's owners, or the
    team's group when it names none) and whether self-approval is allowed (only if every rule allows it)."""
    named: list[Subject] = []
    for requirement in requirements:
        for subject in requirement.approvers:
            if subject not in named:
                named.append(subject)
    if not named:
        named = list(owners) or [Subject(kind=SubjectKind.GROUP, name=team_group)]
    return named, bool(requirements) and all(r.allow_self_approval for r in requirements)


def approve_command(namespace: str, name: str, digest: str) -> str:
    """The one kubectl step that approves ``digest`` (``blacktop approve`` runs the same)."""
    return f"kubectl annotate servicerequest -n {namespace} {name} {naming.APPROVE}={digest} --overwrite"


def pending(
    *,
    operation: str,
    digest: str,
    plan: str,
    monthly_cost: str | None,
    violations: Iterable[Violation],
    extra_rules: Iterable[ApprovalRule] = (),
    approvers: list[Subject],
    self_approval: bool,
    requested_by: str | None,
    namespace: str,
    name: str,
    previous: Approval | None,
    now: datetime,
) -> Approval:
    """The Pending approval of ``digest``; a plan that was already waiting keeps its start time."""
    same = previous is not None and previous.state is ApprovalState.PENDING and previous.plan_digest == digest
    rules = [ApprovalRule(policy=v.policy, rule=v.rule, message=v.message) for v in violations]
    return Approval(
        operation=operation,
        state=ApprovalState.PENDING,
        plan_digest=digest,
        plan=plan,
        monthly_cost=monthly_cost,
        rules=[*rules, *extra_rules],
        approvers=approvers,
        self_approval=self_approval,
        requested_by=requested_by,
        requested_at=previous.requested_at if same and previous is not None else format_time(now),
        command=approve_command(namespace, name, digest),
    )


def granted(approval: Approval, approved_by: str, now: datetime) -> Approval:
    """The approval once given: who, when, and how long the plan waited."""
    waited = max(0, round((now - parse_time(approval.requested_at)).total_seconds()))
    return approval.model_copy(
        update={
            "state": ApprovalState.APPROVED,
            "approved_by": approved_by,
            "approved_at": format_time(now),
            "waited_seconds": waited,
        }
    )


def verdict(annotations: Mapping[str, str], digest: str) -> tuple[str | None, str | None]:
    """(who approved ``digest``, or None; the approved digest when it names another plan, or None)."""
    value, by = annotations.get(naming.APPROVE), annotations.get(naming.APPROVED_BY)
    if value == digest and by:
        return by, None
    return None, value if value and value != digest else None


# -- admission ------------------------------------------------------------------------------------------


def _user(userinfo: Mapping[str, Any] | None) -> tuple[str, set[str]]:
    info = userinfo or {}
    return str(info.get("username") or ""), {str(g) for g in info.get("groups") or []}


def _annotations(body: Mapping[str, Any] | None) -> Mapping[str, str]:
    return ((body or {}).get("metadata") or {}).get("annotations") or {}


def is_approver(userinfo: Mapping[str, Any] | None, approvers: Iterable[Subject], admin_groups: Iterable[str]) -> bool:
    """Whether the user is named (as a user or through a group), or a platform admin."""
    username, groups = _user(userinfo)
    if groups & set(admin_groups):
        return True
    return any(
        (s.kind is SubjectKind.USER and s.name == username) or (s.kind is SubjectKind.GROUP and s.name in groups)
        for s in approvers
    )


def _names(subjects: Iterable[Subject]) -> str:
    return ", ".join(f"{s.kind.value} {s.name}" for s in subjects) or "nobody"


def approval_denial(
    body: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    userinfo: Mapping[str, Any] | None,
    admin_groups: Iterable[str],
) -> str | None:
    """Why this create/update may not set ``blacktop.dev/approve`` as it does (None: it may, or it does not
    touch the approval). ``old`` carries the status the controller wrote (who may approve which plan)."""
    value, before = _annotations(body).get(naming.APPROVE), _annotations(old).get(naming.APPROVE)
    if not value or value == before:
        return None  # no approval given now (removing one is always allowed)
    meta = body.get("metadata") or {}
    where = f"ServiceRequest {meta.get('namespace')}/{meta.get('name')}"
    if old is None:
        return (
            f"denied: {where} cannot be approved as it is created (nothing is planned yet); approve the digest "
            "its status.approval.planDigest shows once it is AwaitingApproval"
        )
    try:
        approval = ServiceRequestStatus.model_validate(old.get("status") or {}).approval
    except ValueError:
        approval = None
    if approval is None or approval.state is not ApprovalState.PENDING:
        done = f" (plan {approval.plan_digest} was approved by {approval.approved_by})" if approval else ""
        return f"denied: {where} has no plan awaiting approval{done}; approving does nothing"
    if value != approval.plan_digest:
        return (
            f"denied: {value} is not the plan awaiting approval, so approving it does nothing: plan "
            f"{approval.plan_digest} ({approval.plan}) awaits; approve it with: {approval.command}"
        )
    return _approver_denial(userinfo, approval, where, admin_groups)


def _approver_denial(
    userinfo: Mapping[str, Any] | None, approval: Approval, where: str, admin_groups: Iterable[str]
) -> str | None:
    """Why this user may not approve the waiting plan: not an approver, or approving their own change."""
    username, _ = _user(userinfo)
    if not is_approver(userinfo, approval.approvers, admin_groups):
        return (
            f"denied: user {username or '(unknown)'} may not approve {where}; its approvers are "
            f"{_names(approval.approvers)} (and platform admins)"
        )
    if not approval.self_approval and approval.requested_by and approval.requested_by == username:
        rules = ", ".join(f"{r.policy}/{r.rule}" for r in approval.rules)
        return (
            f"denied: user {username} made the change that awaits approval, and {rules} does not allow "
            f"self-approval; ask one of: {_names(approval.approvers)}"
        )
    return None


def stamps(
    body: Mapping[str, Any], old: Mapping[str, Any] | None, userinfo: Mapping[str, Any] | None
) -> dict[str, str | None]:
    """The annotations the mutating webhook sets (None: removes) so that who changed the spec and who
    approved are facts, never claims: any hand-made value is put back."""
    username, _ = _user(userinfo)
    new_annotations, old_annotations = _annotations(body), _annotations(old)
    spec_changed = old is None or (old.get("spec") or {}) != (body.get("spec") or {})
    requested_by = username if spec_changed else old_annotations.get(naming.REQUESTED_BY)
    approve = new_annotations.get(naming.APPROVE)
    if approve != old_annotations.get(naming.APPROVE):
        approved_by = username if approve else None
    else:
        approved_by = old_annotations.get(naming.APPROVED_BY)
    wanted = {naming.REQUESTED_BY: requested_by or None, naming.APPROVED_BY: approved_by or None}
    return {key: value for key, value in wanted.items() if new_annotations.get(key) != value}
