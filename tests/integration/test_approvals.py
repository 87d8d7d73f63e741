"""Approvals through the real operator: a Plan-stage rule that requires approval stops the request
after its plan (AwaitingApproval, with digest, plan, cost, rule and approvers); one annotation (or
`blacktop approve`) by someone allowed approves that very plan; everything else is refused with a
clear line, and a new spec or a changed plan voids the approval. Drift corrections can wait too.

Tenants act with `kubectl --as/--as-group` and the RBAC Blacktop installs: the team through its
environment's editor role, approvers outside the team through `blacktop-request-approver`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from helpers import (
    Kubectl,
    OperatorProcess,
    apply_json,
    apply_ready,
    environment_body,
    get,
    service_request,
    tiny_golden_path,
    try_apply,
    unique,
    wait_for,
    wait_ready,
)

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
    kubectl(
        "patch",
        "servicerequest",
        "-n",
        env,
        name,
        "--type=merge",
        "-p",
        '{"spec":{"parameters":{"size":"medium"}}}',
        *as_member(team["team"], "bob"),
    )
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
