"""Which status transitions deserve a message, and what it says. Pure.

The operator's watch sees every write of a ServiceRequest's or Environment's status; most are
progress (Planning, Applying, a retry) that nobody wants in chat. :class:`Memory` keeps one small
mark per object (what was last announced) and turns a new body into at most one notice per event:

- Ready: Ready turned True for a generation not announced yet, or after a failure. A resumed
  operator re-verifying a Ready request (Progressing, then Ready again) says nothing.
- Failed: the request failed (stage Failed) with a reason not announced for this generation; the
  retries that follow with the same reason say nothing until it recovers or fails differently.
- AwaitingApproval: a plan digest waits for approval (once per digest).
- Drifted: the Drifted condition turned True.
- Expiring: an Environment's ``Expiring`` condition turned True (its TTL runs out within 24 h).
- BudgetNearlySpent: an Environment's monthly cost reached 90% of its budget.

The first sighting of an object (an operator start, a new object) is a baseline, never a message:
a restart does not repeat yesterday's news. Messages carry what status already shows (Blacktop's own
words, redacted at the source), never a Secret's value. Notice ids are deterministic (object uid,
event, what was announced), so a receiver can drop a duplicate delivery.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from blacktop.api.common import format_time, money_to_cents
from blacktop.api.conditions import ConditionType, get_condition
from blacktop.api.environment import EnvironmentStatus
from blacktop.api.notifications import NotificationEvent
from blacktop.api.servicerequest import ApprovalState, ServiceRequestStatus, Stage

JSON = dict[str, Any]
SERVICE_REQUEST, ENVIRONMENT = "ServiceRequest", "Environment"
# A budget counts as nearly spent from this share on (cents * 10 >= budget * 9).
BUDGET_NUMERATOR, BUDGET_DENOMINATOR = 9, 10
MAX_TEXT = 1500  # what a chat line can carry; status messages are capped at 1 KiB already


@dataclass(frozen=True)
class Notice:
    """One message about one transition of one object."""

    id: str
    event: NotificationEvent
    kind: str
    name: str
    namespace: str | None
    environment: str  # the Environment whose channels receive it
    reason: str
    summary: str  # one line
    message: str  # the detail, in Blacktop's own words (status messages)
    time: str
    golden_path: str | None = None
    team: str | None = None  # filled in when the notice is routed
    details: tuple[tuple[str, str], ...] = ()

    def with_team(self, team: str | None) -> Notice:
        return replace(self, team=team)


def notice_id(uid: str, event: NotificationEvent, key: str) -> str:
    """Deterministic: the same announcement of the same object always has the same id."""
    return hashlib.sha256(f"{uid}\x00{event.value}\x00{key}".encode()).hexdigest()[:24]


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


@dataclass(frozen=True)
class _About:
    """The object notices are about, and where they go."""

    uid: str
    kind: str
    name: str
    namespace: str | None
    environment: str
    time: str
    golden_path: str | None = None
    team: str | None = None

    def notice(
        self, event: NotificationEvent, key: str, reason: str, summary: str, message: str, **details: str
    ) -> Notice:
        """One notice (details without value are left out)."""
        return Notice(
            id=notice_id(self.uid, event, key),
            event=event,
            kind=self.kind,
            name=self.name,
            namespace=self.namespace,
            environment=self.environment,
            reason=reason,
            summary=_cut(summary),
            message=_cut(message),
            time=self.time,
            golden_path=self.golden_path,
            team=self.team,
            details=tuple((k, v) for k, v in details.items() if v),
        )


# -- ServiceRequests ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestMark:
    """What was last announced (or, at the baseline, what already held) for one request."""

    ready_generation: int | None = None
    failed: tuple[int, str] | None = None  # (generation, reason)
    approval: str | None = None  # the plan digest last announced as awaiting approval
    drifted: bool = False


@dataclass(frozen=True)
class _RequestNow:
    status: ServiceRequestStatus
    generation: int
    ready: bool
    ready_reason: str
    ready_message: str
    failed: tuple[int, str] | None
    approval: str | None
    drifted: bool
    drift_message: str


def _request_now(body: JSON) -> _RequestNow | None:
    try:
        status = ServiceRequestStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return None
    ready = get_condition(status.conditions, ConditionType.READY)
    generation = (ready.observed_generation if ready else None) or status.observed_generation or 0
    is_ready = ready is not None and ready.status == "True"
    failed = None
    if ready is not None and ready.status == "False" and status.stage == Stage.FAILED:
        failed = (generation, ready.reason)
    approval = status.approval
    pending = approval.plan_digest if approval and approval.state == ApprovalState.PENDING else None
    drifted = get_condition(status.conditions, ConditionType.DRIFTED)
    return _RequestNow(
        status=status,
        generation=generation,
        ready=is_ready,
        ready_reason=ready.reason if ready else "",
        ready_message=ready.message if ready else "",
        failed=failed,
        approval=pending,
        drifted=drifted is not None and drifted.status == "True",
        drift_message=drifted.message if drifted else "",
    )


def _mark_of(now: _RequestNow) -> RequestMark:
    return RequestMark(
        ready_generation=now.generation if now.ready else None,
        failed=now.failed,
        approval=now.approval,
        drifted=now.drifted,
    )


def request_notices(old: RequestMark | None, body: JSON, now: datetime) -> tuple[RequestMark | None, list[Notice]]:
    """The new mark of a request and what to announce (nothing at the first sighting)."""
    current = _request_now(body)
    if current is None:
        return old, []
    if old is None:
        return _mark_of(current), []
    meta = body.get("metadata") or {}
    name, namespace = str(meta.get("name") or ""), meta.get("namespace")
    golden_path = str((body.get("spec") or {}).get("goldenPath") or "") or None
    where = f"{namespace}/{name}"
    about = _About(
        uid=str(meta.get("uid") or ""),
        kind=SERVICE_REQUEST,
        name=name,
        namespace=namespace,
        environment=current.status.environment or str(namespace or ""),
        time=format_time(now),
        golden_path=golden_path,
    )
    made: list[Notice] = []

    def notice(event: NotificationEvent, key: str, reason: str, summary: str, message: str, **details: str) -> None:
        made.append(about.notice(event, key, reason, summary, message, **details))

    mark = old
    status = current.status
    if current.ready and (old.ready_generation != current.generation or old.failed is not None):
        notice(
            NotificationEvent.READY,
            f"{current.generation}/{old.failed}",
            current.ready_reason,
            f"ServiceRequest {where} ({golden_path}) is Ready",
            current.ready_message,
            generation=str(current.generation),
            connectionSecret=status.connection_secret or "",
            outputs=", ".join(status.outputs),
            monthlyCost=status.monthly_cost or "",
        )
        mark = replace(mark, ready_generation=current.generation, failed=None)
    elif current.failed is not None and current.failed != old.failed:
        notice(
            NotificationEvent.FAILED,
            f"{current.failed[0]}/{current.failed[1]}",
            current.failed[1],
            f"ServiceRequest {where} ({golden_path}) failed: {current.failed[1]}",
            current.ready_message,
            generation=str(current.generation),
            attempt=str(status.failures) if status.failures else "",
            nextRetryTime=status.next_retry_time or "",
        )
        mark = replace(mark, failed=current.failed)
    if current.approval is not None and current.approval != old.approval and status.approval is not None:
        approval = status.approval
        approvers = ", ".join(f"{s.kind.value} {s.name}" for s in approval.approvers)
        rules = "; ".join(f"{r.policy}/{r.rule}: {r.message}" for r in approval.rules)
        notice(
            NotificationEvent.AWAITING_APPROVAL,
            current.approval,
            "AwaitingApproval",
            f"ServiceRequest {where} ({golden_path}) awaits approval of its {approval.operation} plan",
            f"plan {approval.plan_digest}: {approval.plan}; asked by {rules or 'a guardrail'}; "
            f"approve with: {approval.command}",
            planDigest=approval.plan_digest,
            plan=approval.plan,
            monthlyCost=approval.monthly_cost or "",
            rules=rules,
            approvers=approvers,
            requestedBy=approval.requested_by or "",
            command=approval.command,
        )
        mark = replace(mark, approval=current.approval)
    if current.drifted and not old.drifted:
        notice(
            NotificationEvent.DRIFTED,
            f"{status.last_drift_check_time}",
            "DriftDetected",
            f"ServiceRequest {where} ({golden_path}) has drifted",
            current.drift_message,
        )
    return replace(mark, drifted=current.drifted), made


# -- Environments ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvironmentMark:
    """Whether an environment was (last seen) expiring, and over 90% of its budget."""

    expiring: bool = False
    budget_nearly_spent: bool = False


def _cents(text: str | None) -> int | None:
    try:
        return money_to_cents(text) if text else None
    except ValueError:
        return None


def budget_nearly_spent(status: EnvironmentStatus) -> bool:
    """Whether the monthly cost is at least 90% of a (set) budget."""
    budget, cost = _cents(status.cost.budget), _cents(status.cost.monthly) or 0
    return budget is not None and cost > 0 and cost * BUDGET_DENOMINATOR >= budget * BUDGET_NUMERATOR


def environment_notices(
    old: EnvironmentMark | None, body: JSON, now: datetime
) -> tuple[EnvironmentMark | None, list[Notice]]:
    """The new mark of an environment and what to announce (nothing at the first sighting)."""
    try:
        status = EnvironmentStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return old, []
    expiring = get_condition(status.conditions, ConditionType.EXPIRING)
    current = EnvironmentMark(
        expiring=expiring is not None and expiring.status == "True",
        budget_nearly_spent=budget_nearly_spent(status),
    )
    if old is None:
        return current, []
    meta = body.get("metadata") or {}
    name = str(meta.get("name") or "")
    about = _About(
        uid=str(meta.get("uid") or ""),
        kind=ENVIRONMENT,
        name=name,
        namespace=None,
        environment=name,
        time=format_time(now),
        team=str((body.get("spec") or {}).get("team") or "") or None,
    )
    made: list[Notice] = []

    def notice(event: NotificationEvent, key: str, reason: str, summary: str, message: str, **details: str) -> None:
        made.append(about.notice(event, key, reason, summary, message, **details))

    if current.expiring and not old.expiring and expiring is not None:
        notice(
            NotificationEvent.EXPIRING,
            status.expires_at or "",
            expiring.reason,
            f"Environment {name} expires at {status.expires_at}",
            expiring.message,
            expiresAt=status.expires_at or "",
        )
    if current.budget_nearly_spent and not old.budget_nearly_spent:
        cost = status.cost
        budget, spent = _cents(cost.budget) or 1, _cents(cost.monthly) or 0
        percent = spent * 100 // budget
        notice(
            NotificationEvent.BUDGET_NEARLY_SPENT,
            f"{cost.monthly}/{cost.budget}",
            "BudgetNearlySpent",
            f"Environment {name} has used {percent}% of its monthly budget",
            f"its ServiceRequests cost {cost.monthly} {cost.currency} a month of a {cost.budget} {cost.currency} "
            "budget; new requests beyond the budget may be refused by guardrails",
            monthlyCost=cost.monthly,
            budget=cost.budget or "",
            currency=cost.currency,
            percent=str(percent),
        )
    return current, made


# -- the memory -----------------------------------------------------------------------------------------


@dataclass
class Memory:
    """Marks of every object seen, keyed by uid; fed with each watch event (from the event loop only)."""

    requests: dict[str, RequestMark] = field(default_factory=dict)
    environments: dict[str, EnvironmentMark] = field(default_factory=dict)

    def observe(self, kind: str, body: JSON, now: datetime, *, deleted: bool = False) -> list[Notice]:
        """Take in one watch event; the notices it calls for."""
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        if kind == SERVICE_REQUEST:
            if deleted:
                self.requests.pop(uid, None)
                return []
            request_mark, notices = request_notices(self.requests.get(uid), body, now)
            if request_mark is not None:
                self.requests[uid] = request_mark
            return notices
        if kind == ENVIRONMENT:
            if deleted or meta.get("deletionTimestamp"):
                self.environments.pop(uid, None)  # a deleted environment's expiry and budget are nobody's news
                return []
            env_mark, notices = environment_notices(self.environments.get(uid), body, now)
            if env_mark is not None:
                self.environments[uid] = env_mark
            return notices
        raise ValueError(f"unknown kind {kind!r}")
