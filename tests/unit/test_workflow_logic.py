"""Approvals and composition, the pure parts: the plan digest, approvers, what admission says about an
approval and which annotations it stamps; inputs, cycles, dependents and when a consumer re-applies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from blacktop.api.common import Subject
from blacktop.api.goldenpath import GoldenPathSpec
from blacktop.api.guardrailpolicy import ApprovalRequirement, GuardrailPolicySpec, RuleStage
from blacktop.api.servicerequest import Approval, InputStatus
from blacktop.builders import composition, naming
from blacktop.guardrails import approvals, engine
from blacktop.guardrails.engine import Subject as MatchSubject

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PLAN = {
    "format_version": "1.2",
    "timestamp": "2026-03-01T12:00:00Z",
    "resource_changes": [
        {"address": "b.x", "change": {"actions": ["create"], "before": None, "after": {"n": 1}}},
        {"address": "a.y", "change": {"actions": ["update"], "before": {"n": 1}, "after": {"n": 2}}},
    ],
    "output_changes": {"uri": {"actions": ["create"]}},
    "variables": {"name": {"value": "db"}},
}


def user(name: str, *groups: str) -> dict[str, Any]:
    return {"username": name, "groups": list(groups)}


# -- the digest ---------------------------------------------------------------------------------------


def test_digest_is_stable_and_changes_with_the_plan_the_spec_and_the_golden_path() -> None:
    digest = approvals.plan_digest("uid", 1, "3/abc", PLAN)
    assert digest.startswith("sha256:")
    assert len(digest) == len("sha256:") + 32
    reordered = {**PLAN, "timestamp": "later", "resource_changes": list(reversed(PLAN["resource_changes"]))}
    assert approvals.plan_digest("uid", 1, "3/abc", reordered) == digest  # same plan, planned again
    changed = {**PLAN, "resource_changes": [PLAN["resource_changes"][0]]}
    assert approvals.plan_digest("uid", 1, "3/abc", changed) != digest
    assert approvals.plan_digest("uid", 2, "3/abc", PLAN) != digest  # a new spec
    assert approvals.plan_digest("uid", 1, "4/abc", PLAN) != digest  # a new golden path revision
    assert approvals.plan_digest("other", 1, "3/abc", PLAN) != digest  # another request
    secret = {**PLAN, "variables": {"password": {"value": "hunter2"}}}
    assert "hunter2" not in approvals.plan_digest("uid", 1, "3/abc", secret)
    assert approvals.golden_path_revision({"metadata": {"generation": 4}, "status": {"moduleDigest": "f00"}}) == "4/f00"


# -- the engine asks for approval instead of denying ----------------------------------------------------


def policy(mode: str = "Enforce", stage: str = "Plan", **require: Any) -> engine.CompiledPolicy:
    rule: dict[str, Any] = {
        "name": "prod",
        "expression": "environment.spec.tier != 'prod'",
        "message": "prod",
        "stage": stage,
    }
    if require is not None:
        rule["requireApproval"] = require
    return engine.compile_policy("approvals", GuardrailPolicySpec.model_validate({"mode": mode, "rules": [rule]}))


def test_a_failing_rule_with_require_approval_asks_instead_of_denying() -> None:
    variables = {"environment": {"spec": {"tier": "prod"}}, "plan": {}}
    subject = MatchSubject(kind="ServiceRequest", tier="prod")
    decision = engine.evaluate(
        [policy(approvers=[{"kind": "Group", "name": "leads"}])], subject, variables, RuleStage.PLAN
    )
    assert decision.denials == []
    [asked] = decision.approvals
    assert asked.approval is not None
    assert asked.text == "approval required by GuardrailPolicy approvals/prod: prod"
    assert list(decision.outcomes()) == [("approvals", "prod", engine.Mode.ENFORCE, "approval")]
    # Warn mode warns, and a rule that holds asks nothing.
    warned = engine.evaluate([policy("Warn")], subject, variables, RuleStage.PLAN)
    assert warned.approvals == []
    assert len(warned.warnings) == 1
    held = engine.evaluate([policy()], subject, {"environment": {"spec": {"tier": "dev"}}}, RuleStage.PLAN)
    assert held.approvals == []


def test_require_approval_is_plan_stage_only() -> None:
    with pytest.raises(engine.PolicyCompileError, match="requireApproval needs stage: Plan"):
        policy(stage="Admission")


def test_approvers_default_to_the_owners_then_the_team() -> None:
    leads = Subject.model_validate({"kind": "Group", "name": "leads"})
    olivia = Subject.model_validate({"kind": "User", "name": "olivia"})
    named = ApprovalRequirement.model_validate({"approvers": [leads.model_dump(), leads.model_dump()]})
    open_ = ApprovalRequirement.model_validate({"allowSelfApproval": True})
    assert approvals.approvers_for([named], [olivia], "payments") == ([leads], False)
    assert approvals.approvers_for([open_], [olivia], "payments") == ([olivia], True)
    team, self_ok = approvals.approvers_for([open_, named], [], "payments")
    assert team == [leads]
    assert self_ok is False  # every asking rule must allow it
    assert approvals.approvers_for([ApprovalRequirement()], [], "payments")[0][0].name == "payments"


# -- admission -------------------------------------------------------------------------------------------


def waiting(
    previous: Approval | None = None,
    now: datetime = NOW,
    *,
    requested_by: str | None = "alice",
    self_approval: bool = False,
) -> Approval:
    """The Pending approval of plan sha256:aa of pay-prod/db (leads approve)."""
    return approvals.pending(
        operation="apply",
        digest="sha256:aa",
        plan="1 to add, 0 to change, 0 to destroy",
        monthly_cost="20.00",
        violations=[],
        approvers=[Subject.model_validate({"kind": "Group", "name": "leads"})],
        self_approval=self_approval,
        requested_by=requested_by,
        namespace="pay-prod",
        name="db",
        previous=previous,
        now=now,
    )


def awaiting(digest: str = "sha256:aa", requested_by: str = "alice", self_approval: bool = False) -> dict[str, Any]:
    approval = waiting(requested_by=requested_by, self_approval=self_approval).model_copy(
        update={"plan_digest": digest}
    )
    return {
        "metadata": {"name": "db", "namespace": "pay-prod", "annotations": {}},
        "spec": {"goldenPath": "tiny"},
        "status": {"approval": approval.model_dump(by_alias=True, mode="json")},
    }


def approving(old: dict[str, Any], digest: str) -> dict[str, Any]:
    return {**old, "metadata": {**old["metadata"], "annotations": {naming.APPROVE: digest}}}


ADMINS = ("blacktop:platform-admins",)


def test_an_approver_may_approve_the_waiting_digest() -> None:
    old = awaiting()
    assert approvals.approval_denial(approving(old, "sha256:aa"), old, user("bob", "leads"), ADMINS) is None
    assert approvals.approval_denial(approving(old, "sha256:aa"), old, user("root", *ADMINS), ADMINS) is None


@pytest.mark.parametrize(
    ("who", "digest", "words"),
    [
        (
            user("mallory", "devs"),
            "sha256:aa",
            "user mallory may not approve ServiceRequest pay-prod/db; its approvers are Group leads",
        ),
        (user("alice", "leads"), "sha256:aa", "user alice made the change that awaits approval"),
        (
            user("bob", "leads"),
            "sha256:old",
            "sha256:old is not the plan awaiting approval, so approving it does nothing",
        ),
    ],
)
def test_approvals_that_are_refused(who: dict[str, Any], digest: str, words: str) -> None:
    old = awaiting()
    denial = approvals.approval_denial(approving(old, digest), old, who, ADMINS)
    assert denial is not None
    assert words in denial
    if "not the plan" in words:
        assert "kubectl annotate servicerequest -n pay-prod db blacktop.dev/approve=sha256:aa --overwrite" in denial


def test_self_approval_when_the_rules_allow_it_and_nothing_to_approve() -> None:
    old = awaiting(self_approval=True)
    assert approvals.approval_denial(approving(old, "sha256:aa"), old, user("alice", "leads"), ADMINS) is None
    nothing = {"metadata": {"name": "db", "namespace": "n"}, "spec": {}, "status": {}}
    denial = approvals.approval_denial(approving(nothing, "sha256:aa"), nothing, user("bob", "leads"), ADMINS)
    assert denial is not None
    assert "has no plan awaiting approval" in denial
    created = approvals.approval_denial(approving(nothing, "sha256:aa"), None, user("bob"), ADMINS)
    assert created is not None
    assert "as it is created" in created
    # Unchanged or removed annotations are not approvals at all.
    given = approving(old, "sha256:aa")
    assert approvals.approval_denial(given, given, user("mallory"), ADMINS) is None
    assert approvals.approval_denial(old, given, user("mallory"), ADMINS) is None


def test_stamps_record_who_changed_the_spec_and_who_approved_and_undo_forgeries() -> None:
    created = {"metadata": {"annotations": {naming.REQUESTED_BY: "someone-else"}}, "spec": {"a": 1}}
    assert approvals.stamps(created, None, user("alice")) == {naming.REQUESTED_BY: "alice"}
    old = {"metadata": {"annotations": {naming.REQUESTED_BY: "alice"}}, "spec": {"a": 1}}
    changed = {"metadata": {"annotations": {naming.REQUESTED_BY: "alice"}}, "spec": {"a": 2}}
    assert approvals.stamps(changed, old, user("carol")) == {naming.REQUESTED_BY: "carol"}
    forged = {"metadata": {"annotations": {naming.REQUESTED_BY: "bob", naming.APPROVED_BY: "bob"}}, "spec": {"a": 1}}
    assert approvals.stamps(forged, old, user("mallory")) == {naming.REQUESTED_BY: "alice", naming.APPROVED_BY: None}
    approve = {
        "metadata": {"annotations": {naming.REQUESTED_BY: "alice", naming.APPROVE: "sha256:aa"}},
        "spec": {"a": 1},
    }
    assert approvals.stamps(approve, old, user("bob")) == {naming.APPROVED_BY: "bob"}
    kept = {
        "metadata": {"annotations": {**approve["metadata"]["annotations"], naming.APPROVED_BY: "bob"}},
        "spec": {"a": 1},
    }
    assert approvals.stamps(kept, kept, user("kopf")) == {}


def test_verdict_and_granted_approval() -> None:
    assert approvals.verdict({naming.APPROVE: "sha256:aa", naming.APPROVED_BY: "bob"}, "sha256:aa") == ("bob", None)
    assert approvals.verdict({naming.APPROVE: "sha256:aa", naming.APPROVED_BY: "bob"}, "sha256:bb") == (
        None,
        "sha256:aa",
    )
    assert approvals.verdict({naming.APPROVE: "sha256:aa"}, "sha256:aa") == (None, None)  # not stamped: no one
    pending = waiting()
    later = waiting(pending, NOW + timedelta(hours=1))
    assert later.requested_at == pending.requested_at  # the same plan keeps waiting since it first did
    done = approvals.granted(later, "bob", NOW + timedelta(minutes=90))
    assert (done.state.value, done.approved_by, done.waited_seconds) == ("Approved", "bob", 5400)


# -- composition -------------------------------------------------------------------------------------------


def sr(name: str, golden_path: str = "tiny", *inputs: tuple[str, str, str], **parameters: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"goldenPath": golden_path, "parameters": parameters}
    if inputs:
        spec["inputs"] = [{"variable": v, "from": {"serviceRequest": s, "output": o}} for v, s, o in inputs]
    return {"metadata": {"name": name, "namespace": "n"}, "spec": spec}


GPS = {
    "db": GoldenPathSpec.model_validate(
        {"description": "d", "module": "db", "outputs": [{"name": "uri", "key": "URI"}]}
    ),
    "tiny": GoldenPathSpec.model_validate({"description": "t", "module": "tiny"}),
}


def outputs_of(name: str) -> set[str] | None:
    return composition.delivered_outputs(GPS[name], {"endpoint", "token"} if name == "tiny" else None)


def review(
    request: dict[str, Any], *siblings: dict[str, Any], variables: set[str] | None = None
) -> composition.InputReview:
    return composition.review_inputs(request, [request, *siblings], GPS, outputs_of=outputs_of, variables=variables)


def test_inputs_that_are_admitted_and_those_that_wait() -> None:
    api = sr("api", "tiny", ("database_uri", "db", "uri"))
    assert review(api, sr("db", "db"), variables={"database_uri", "name"}).denials == []
    waiting = review(api)
    assert waiting.denials == []
    assert waiting.warnings == [
        "input database_uri: ServiceRequest db does not exist yet; api waits until it exists and is Ready"
    ]
    assert composition.secret_key(GPS["db"], "uri") == "URI"
    assert composition.secret_key(GPS["tiny"], "endpoint") == "endpoint"


@pytest.mark.parametrize(
    ("request_", "siblings", "words"),
    [
        (sr("api", "tiny", ("x", "api", "endpoint")), [], "cannot take inputs from itself"),
        (
            sr("api", "tiny", ("x", "db", "password")),
            [sr("db", "db")],
            "output password is not one golden path db of ServiceRequest db declares (it declares: uri)",
        ),
        (sr("api", "tiny", ("x", "w", "nope")), [sr("w", "tiny")], "(it declares: endpoint, token)"),
        (
            sr("api", "tiny", ("size", "db", "uri"), size="small"),
            [sr("db", "db")],
            "size is also given in spec.parameters",
        ),
        (
            sr("api", "tiny", ("bogus", "db", "uri")),
            [sr("db", "db")],
            "has no variable bogus (its variables: name, size)",
        ),
        (
            sr("a", "tiny", ("x", "b", "endpoint")),
            [sr("b", "tiny", ("x", "c", "endpoint")), sr("c", "tiny", ("x", "a", "endpoint"))],
            "inputs form a cycle: a -> b -> c -> a",
        ),
    ],
)
def test_inputs_that_are_refused(request_: dict[str, Any], siblings: list[dict[str, Any]], words: str) -> None:
    found = review(request_, *siblings, variables={"name", "size", "x"} if "bogus" not in words else {"name", "size"})
    assert any(words in d for d in found.denials), found.denials


def test_dependents_and_deletion() -> None:
    db = sr("db", "db")
    api = sr("api", "tiny", ("u", "db", "uri"))
    worker = sr("worker", "tiny", ("u", "db", "uri"))
    gone = {**worker, "metadata": {**worker["metadata"], "name": "old", "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    assert composition.dependents("db", [db, api, worker, gone]) == ["api", "old", "worker"]
    denial = composition.deletion_denial("db", [db, api, worker, gone])
    assert denial is not None
    assert "ServiceRequest db is an input of api, worker" in denial
    assert composition.deletion_denial("api", [db, api, worker]) is None


def test_a_consumer_applies_again_when_an_input_is_ready_or_changed() -> None:
    def state(ready: bool, revision: str | None) -> list[InputStatus]:
        return [InputStatus(variable="u", service_request="db", output="uri", ready=ready, revision=revision)]

    assert composition.needs_apply(state(False, None), state(True, "7"))
    assert composition.needs_apply(state(True, "7"), state(True, "9"))
    assert not composition.needs_apply(state(True, "7"), state(True, "7"))
    assert not composition.needs_apply(state(True, "7"), state(False, None))
    assert composition.waiting_message(state(False, None)) == (
        "waiting for input(s) from db (for u) to be Ready and deliver their outputs"
    )


def test_input_schema() -> None:
    from blacktop.api.servicerequest import ServiceRequestSpec

    spec = ServiceRequestSpec.model_validate(sr("api", "tiny", ("u", "db", "uri"))["spec"])
    assert spec.inputs[0].from_.service_request == "db"
    with pytest.raises(ValidationError):
        ServiceRequestSpec.model_validate(
            {"goldenPath": "t", "inputs": [{"variable": "u", "from": {"serviceRequest": "db"}}]}
        )
