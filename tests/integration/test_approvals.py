"""Approvals through the real operator: a Plan-stage rule that requires approval stops the request
after its plan (AwaitingApproval, with digest, plan, cost, rule and approvers); one annotation (or
`blacktop approve`) by someone allowed approves that very plan; everything else is refused with a
clear line, and a new spec or a changed plan voids the approval. Drift corrections can wait too.

Tenants act with `kubectl --as/--as-group` and the RBAC Blacktop installs: the team through its
environment's editor role, approvers outside the team through `blacktop-request-approver`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import (
    API,
    REPO,
    Kubectl,
    OperatorProcess,
    apply_json,
    apply_ready,
    condition,
    environment_body,
    event_reasons,
    get,
    scrape_metrics,
    secret_values,
    service_request,
    tiny_golden_path,
    try_apply,
    unique,
    wait_for,
    wait_ready,
)
from receiver import Receiver, receiver

pytestmark = pytest.mark.integration

APPROVE, APPROVED_BY, REQUESTED_BY = "blacktop.dev/approve", "blacktop.dev/approved-by", "blacktop.dev/requested-by"


@pytest.fixture(scope="module")
def golden_path(kubectl: Kubectl, operator: OperatorProcess) -> Iterator[str]:
    name = apply_ready(kubectl, tiny_golden_path(unique("tiny-ap")))
    yield name
    kubectl("delete", "goldenpath", name, "--ignore-not-found", "--wait=false")


@pytest.fixture(scope="module")
def team(kubectl: Kubectl, golden_path: str) -> Iterator[dict[str, str]]:
    """A team's dev environment, the team's members allowed to edit requests in it (waited for)."""
    team = unique("ateam")
    name = f"{team}-dev"
    apply_json(kubectl, environment_body(name, team))
    kubectl("wait", "--for=condition=Ready", f"environment/{name}", "--timeout=60s")
    wait_for(
        lambda: (
            kubectl(
                "auth",
                "can-i",
                "patch",
                "servicerequests.platform.blacktop.dev",
                "-n",
                name,
                *as_member(team),
                check=False,
            ).stdout.strip()
            == "yes"
        ),
        timeout=30,
        what="the team's editor role to be aggregated",
    )
    yield {"name": name, "team": team}
    kubectl("delete", "environment", name, "--ignore-not-found", "--wait=true", "--timeout=240s")


def as_member(team: str, user: str = "alice") -> tuple[str, str]:
    return f"--as={user}", f"--as-group={team}"


def annotate(kubectl: Kubectl, namespace: str, name: str, value: str, *who: str) -> subprocess.CompletedProcess[str]:
    return kubectl(
        "annotate", "servicerequest", "-n", namespace, name, f"{APPROVE}={value}", "--overwrite", *who, check=False
    )


def resize(kubectl: Kubectl, namespace: str, name: str, size: str, *who: str) -> subprocess.CompletedProcess[str]:
    """Change the request's spec (its size), as ``who``."""
    patch = json.dumps({"spec": {"parameters": {"size": size}}})
    return kubectl("patch", "servicerequest", name, "-n", namespace, "--type=merge", "-p", patch, *who, check=False)


def annotations(kubectl: Kubectl, namespace: str, name: str) -> dict[str, str]:
    return ((get(kubectl, "servicerequest", name, "-n", namespace) or {}).get("metadata") or {}).get(
        "annotations"
    ) or {}


def test_who_changed_the_spec_is_stamped_and_cannot_be_forged(
    kubectl: Kubectl, operator: OperatorProcess, team: dict[str, str], golden_path: str
) -> None:
    env = team["name"]
    name = unique("svc")
    body = service_request(name, env, golden_path)
    body["metadata"]["annotations"] = {REQUESTED_BY: "someone-else", APPROVED_BY: "a-lead"}
    assert try_apply(kubectl, body, *as_member(team["team"])).returncode == 0
    stamped = annotations(kubectl, env, name)
    assert stamped[REQUESTED_BY] == "alice"
    assert APPROVED_BY not in stamped
    forged = kubectl(
        "annotate",
        "servicerequest",
        "-n",
        env,
        name,
        f"{REQUESTED_BY}=mallory",
        "--overwrite",
        *as_member(team["team"], "bob"),
    )
    assert forged.returncode == 0
    assert annotations(kubectl, env, name)[REQUESTED_BY] == "alice"  # put back: only a spec change moves it
    assert resize(kubectl, env, name, "medium", *as_member(team["team"], "bob")).returncode == 0
    assert annotations(kubectl, env, name)[REQUESTED_BY] == "bob"
    # Nothing awaits approval: approving is refused, saying so; and a new request cannot come approved.
    wait_ready(kubectl, name, env)
    nothing = annotate(kubectl, env, name, "sha256:0123", *as_member(team["team"], "carol"))
    assert nothing.returncode != 0
    assert f"ServiceRequest {env}/{name} has no plan awaiting approval; approving does nothing" in nothing.stderr
    early = service_request(unique("early"), env, golden_path)
    early["metadata"]["annotations"] = {APPROVE: "sha256:0123"}
    created = try_apply(kubectl, early, "--dry-run=server", *as_member(team["team"]))
    assert created.returncode != 0
    assert "cannot be approved as it is created (nothing is planned yet)" in created.stderr
    kubectl("delete", "servicerequest", name, "-n", env, "--wait=false")


@pytest.fixture(scope="module")
def hooks() -> Iterator[Receiver]:
    with receiver() as running:
        yield running


@pytest.fixture(scope="module")
def gated(kubectl: Kubectl, team: dict[str, str], golden_path: str, hooks: Receiver) -> Iterator[dict[str, str]]:
    """The example prod-approval policy for this team's golden path (leads approve), approvers who are
    not in the team given the request-approver role in its namespace, and the team's webhook channel."""
    env, name = team["name"], team["team"]
    leads = f"{name}-leads"
    doc = yaml.safe_load((REPO / "examples" / "policies" / "prod-approval.yaml").read_text())
    doc["metadata"]["name"] = policy = unique("prod-approval")
    doc["spec"]["match"] = {"teams": [name], "tiers": ["dev"], "goldenPaths": [golden_path]}
    doc["spec"]["rules"][0]["requireApproval"]["approvers"] = [{"kind": "Group", "name": leads}]
    apply_json(kubectl, doc)
    wait_for(
        lambda: (c := condition(get(kubectl, "guardrailpolicy", policy))) and c["reason"] == "Active",
        timeout=30,
        what="the approval policy to be Active",
    )
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "leads-approve", "namespace": env},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "blacktop-request-approver",
        },
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": leads}],
    }
    apply_json(kubectl, binding)
    kubectl(
        "create",
        "secret",
        "generic",
        "approvals-hook",
        "-n",
        env,
        f"--from-literal=url={hooks.url('/approvals')}",
        "--from-literal=hmacKey=k",
    )
    kubectl(
        "patch",
        "environment",
        env,
        "--type=merge",
        "-p",
        json.dumps(
            {"spec": {"notifications": [{"name": "hook", "type": "Webhook", "secretRef": {"name": "approvals-hook"}}]}}
        ),
    )
    yield {"policy": policy, "leads": leads}
    kubectl("delete", "guardrailpolicy", policy, "--ignore-not-found")


def awaiting(kubectl: Kubectl, namespace: str, name: str, not_digest: str | None = None) -> dict[str, Any]:
    """The request once it waits for approval (of a plan other than ``not_digest``); its status."""
    return wait_for(
        lambda: (
            (sr := get(kubectl, "servicerequest", name, "-n", namespace))
            and (status := sr.get("status") or {}).get("stage") == "AwaitingApproval"
            and (status.get("approval") or {}).get("planDigest") not in (None, not_digest)
            and status
        ),
        timeout=120,
        what=f"ServiceRequest {name} to await approval",
    )


def test_a_plan_waits_for_a_lead_who_approves_that_very_plan(
    kubectl: Kubectl,
    operator: OperatorProcess,
    team: dict[str, str],
    golden_path: str,
    gated: dict[str, str],
    hooks: Receiver,
) -> None:
    env, name_of_team, leads = team["name"], team["team"], gated["leads"]
    name = unique("db")
    alice = as_member(name_of_team)
    assert try_apply(kubectl, service_request(name, env, golden_path, size="small"), *alice).returncode == 0
    status = awaiting(kubectl, env, name)
    approval = status["approval"]
    digest = approval["planDigest"]
    assert (approval["state"], approval["requestedBy"], approval["plan"]) == (
        "Pending",
        "alice",
        "1 to add, 0 to change, 0 to destroy",
    )
    assert approval["monthlyCost"] == "1.00"
    assert approval["approvers"] == [{"kind": "Group", "name": leads}]
    assert approval["rules"][0]["rule"] == "lead-approves-prod"
    ready = condition(get(kubectl, "servicerequest", name, "-n", env))
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "AwaitingApproval")
    assert get(kubectl, "secret", f"{name}-connection", "-n", env) is None  # nothing applied
    # The team hears about it, with the command.
    told = wait_for(
        lambda: [
            d
            for d in hooks.received("/approvals")
            if d.json["event"] == "AwaitingApproval" and d.json["object"]["name"] == name
        ],
        timeout=60,
        what="the AwaitingApproval notification",
    )
    assert told[0].json["details"]["command"] == approval["command"]

    # Refused, each with its line: not an approver; the requester (even as a lead); another team; a wrong plan.
    denied = annotate(kubectl, env, name, digest, *as_member(name_of_team, "carol"))
    assert f"user carol may not approve ServiceRequest {env}/{name}; its approvers are Group {leads}" in denied.stderr
    self_approval = annotate(
        kubectl, env, name, digest, "--as=alice", f"--as-group={name_of_team}", f"--as-group={leads}"
    )
    assert "user alice made the change that awaits approval" in self_approval.stderr
    outsider = annotate(kubectl, env, name, digest, "--as=mallory", "--as-group=other-team")
    assert "forbidden" in outsider.stderr.lower()
    wrong = annotate(kubectl, env, name, "sha256:" + "0" * 32, "--as=bob", f"--as-group={leads}")
    assert "is not the plan awaiting approval, so approving it does nothing" in wrong.stderr
    # An approver may approve, not change the request.
    change = resize(kubectl, env, name, "large", "--as=bob", f"--as-group={leads}")
    assert "denied by team boundary: user bob" in change.stderr
    assert get(kubectl, "secret", f"{name}-connection", "-n", env) is None

    approved = annotate(kubectl, env, name, digest, "--as=bob", f"--as-group={leads}")
    assert approved.returncode == 0, approved.stderr
    done = wait_ready(kubectl, name, env)
    record = done["status"]["approval"]
    assert (record["state"], record["approvedBy"], record["planDigest"]) == ("Approved", "bob", digest)
    assert record["waitedSeconds"] >= 0
    assert annotations(kubectl, env, name)[APPROVED_BY] == "bob"
    assert {"AwaitingApproval", "Approved", "Provisioned"} <= event_reasons(kubectl, name, env)

    # A new spec is a new plan: the old approval holds for the old plan only, and approving it again does nothing.
    assert resize(kubectl, env, name, "medium", *alice).returncode == 0
    again = awaiting(kubectl, env, name, not_digest=digest)
    second = again["approval"]["planDigest"]
    assert "ApprovalSuperseded" in event_reasons(kubectl, name, env)
    waiting = condition(get(kubectl, "servicerequest", name, "-n", env))
    assert waiting is not None
    assert f"the approval of {digest} was for an earlier plan and does nothing" in waiting["message"]
    stale = annotate(kubectl, env, name, "sha256:" + "1" * 32, "--as=bob", f"--as-group={leads}")
    assert "is not the plan awaiting approval, so approving it does nothing" in stale.stderr
    assert f"plan {second}" in stale.stderr
    # `blacktop approve` shows the plan and approves it (here as a platform admin).
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "blacktop",
            "approve",
            "-n",
            env,
            name,
            "--digest",
            second,
            "--kubeconfig",
            str(kubectl.kubeconfig),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert f"apply plan {second}" in cli.stdout
    assert "plan:     0 to add, 1 to change, 0 to destroy" in cli.stdout
    assert "changed by alice" in cli.stdout
    wait_for(
        lambda: secret_values(kubectl, f"{name}-connection", env)["endpoint"].endswith(".medium.svc:8080"),
        timeout=120,
        what="the approved change to be applied",
    )
    # Counted from the status transitions the watch sees (so poll the scrape).
    metrics = wait_for(
        lambda: (
            (text := scrape_metrics(operator))
            and 'blacktop_approvals_total{operation="apply",result="approved"} 2.0' in text
            and text
        ),
        timeout=30,
        what="both approvals in /metrics",
    )
    assert 'blacktop_stage_duration_seconds_count{stage="approval"} 2.0' in metrics
    assert 'outcome="approval"' in metrics
    kubectl("delete", "servicerequest", name, "-n", env, "--wait=false")


def test_a_drift_correction_waits_for_the_team_under_correct_with_approval(
    kubectl: Kubectl, operator: OperatorProcess, team: dict[str, str], tmp_path: Path
) -> None:
    env, name_of_team = team["name"], team["team"]
    golden = unique("drifting-ap")
    apply_ready(
        kubectl,
        {
            "apiVersion": API,
            "kind": "GoldenPath",
            "metadata": {"name": golden},
            "spec": {
                "description": "Drifts when its marker file changes.",
                "module": "drifting",
                "parameters": {"type": "object", "properties": {"marker": {"type": "string"}}, "required": ["marker"]},
                "driftCheckInterval": "2s",
                "driftPolicy": "CorrectWithApproval",
            },
        },
    )
    marker = tmp_path / "marker"
    marker.write_text("v1")
    name = unique("drifty")
    assert (
        try_apply(kubectl, service_request(name, env, golden, marker=str(marker)), *as_member(name_of_team)).returncode
        == 0
    )
    wait_ready(kubectl, name, env)
    marker.write_text("changed out of band")
    pending = wait_for(
        lambda: (
            (a := ((get(kubectl, "servicerequest", name, "-n", env) or {}).get("status") or {}).get("approval"))
            and a["operation"] == "drift"
            and a["state"] == "Pending"
            and a
        ),
        timeout=60,
        what="the drift correction to wait for approval",
    )
    assert pending["approvers"] == [{"kind": "Group", "name": name_of_team}]  # no owners: the team approves
    drifted = condition(get(kubectl, "servicerequest", name, "-n", env), "Drifted")
    assert drifted is not None
    assert "not corrected yet" in drifted["message"]
    assert (condition(get(kubectl, "servicerequest", name, "-n", env)) or {}).get("status") == "True"  # still Ready
    assert (
        "user alice made the change"
        in annotate(kubectl, env, name, pending["planDigest"], *as_member(name_of_team)).stderr
    )
    ok = annotate(kubectl, env, name, pending["planDigest"], *as_member(name_of_team, "carol"))
    assert ok.returncode == 0, ok.stderr
    corrected = wait_for(
        lambda: (
            (c := condition(get(kubectl, "servicerequest", name, "-n", env), "Drifted"))
            and c["reason"] == "DriftCorrected"
            and c
        ),
        timeout=60,
        what="the approved correction to be applied",
    )
    assert corrected["status"] == "False"
    status = (get(kubectl, "servicerequest", name, "-n", env) or {})["status"]
    assert (status["approval"]["state"], status["approval"]["approvedBy"]) == ("Approved", "carol")
    kubectl("delete", "servicerequest", name, "-n", env, "--timeout=120s")
    kubectl("delete", "goldenpath", golden, "--wait=false")
