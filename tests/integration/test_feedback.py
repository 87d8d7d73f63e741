"""Feedback through the real apiserver, webhook and operator: who may rate, who may read, `blacktop feedback`.

Tenants act with `kubectl --as/--as-group` and only the RBAC `blacktop install` gives them; the CLI runs
as a real process with a ServiceAccount token, the way a developer's kubeconfig would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import (
    API,
    REPO,
    Kubectl,
    OperatorProcess,
    apply_ready,
    condition,
    get,
    make_environment,
    service_account_kubeconfig,
    tiny_golden_path,
    unique,
    wait_for,
)

pytestmark = pytest.mark.integration


def feedback_body(name: str, namespace: str, score: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Feedback",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"score": score, **spec},
    }


def as_member(kubectl: Kubectl, team: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """kubectl as a member of ``team`` (its group is named like the team)."""
    return kubectl(*args, f"--as={team}-dev", f"--as-group={team}", input=input, check=False)


@pytest.fixture(scope="module")
def teams(kubectl: Kubectl, operator: OperatorProcess) -> Iterator[tuple[str, str, str]]:
    """Two teams with an environment each, and a golden path to rate."""
    team_a, team_b = unique("fba"), unique("fbb")
    env_a, env_b = (
        make_environment(kubectl, f"{team_a}-dev", team_a),
        make_environment(kubectl, f"{team_b}-dev", team_b),
    )
    golden_path = apply_ready(kubectl, tiny_golden_path(unique("rated")))
    # The aggregated editor role is filled in by the controller-manager: wait until it covers Feedback.
    wait_for(
        lambda: as_member(kubectl, team_a, "auth", "can-i", "create", "feedbacks", "-n", env_a).stdout.strip() == "yes",
        timeout=30,
        what="team members to be allowed to create Feedback",
    )
    yield env_a, env_b, golden_path
    kubectl("delete", "environment", env_a, env_b, "--wait=false")
    kubectl("delete", "goldenpath", golden_path, "--wait=false")


def test_a_team_member_rates_and_the_operator_counts_it_for_the_team(
    kubectl: Kubectl, teams: tuple[str, str, str]
) -> None:
    env_a, _, golden_path = teams
    team_a = env_a.removesuffix("-dev")
    body = feedback_body("great", env_a, 10, goldenPath=golden_path, comment="ready in seconds")
    created = as_member(kubectl, team_a, "create", "-f", "-", input=json.dumps(body))
    assert created.returncode == 0, created.stderr

    def counted() -> dict[str, Any] | None:
        fb = get(kubectl, "feedback", "great", "-n", env_a)
        return fb if (condition(fb) or {}).get("status") == "True" else None

    fb = wait_for(counted, timeout=30, what="the Feedback to be counted")
    assert fb["status"]["team"] == team_a
    assert fb["status"]["category"] == "Promoter"
    assert fb["status"]["quarter"].count("-Q") == 1
    assert (condition(fb) or {})["reason"] == "Counted"
    # The printer columns show what was rated and how it counts.
    table = kubectl("get", "feedback", "-n", env_a).stdout
    assert "SCORE" in table
    assert "Promoter" in table
    assert golden_path in table


def test_another_team_can_neither_rate_as_the_team_nor_read_its_comments(
    kubectl: Kubectl, teams: tuple[str, str, str]
) -> None:
    env_a, env_b, _ = teams
    team_a, team_b = env_a.removesuffix("-dev"), env_b.removesuffix("-dev")
    secret_comment = feedback_body("private", env_a, 2, comment="our on-call hates this")
    assert as_member(kubectl, team_a, "create", "-f", "-", input=json.dumps(secret_comment)).returncode == 0

    # Team B writing into team A's namespace: refused by RBAC, so it can never count for team A.
    forged = as_member(kubectl, team_b, "create", "-f", "-", input=json.dumps(feedback_body("forged", env_a, 0)))
    assert forged.returncode != 0
    assert "forbidden" in forged.stderr.lower()
    # Nor reading team A's ratings and comments, one by one or as a list.
    for args in (("get", "feedback", "private", "-n", env_a), ("get", "feedback", "-n", env_a)):
        read = as_member(kubectl, team_b, *args, "-o", "json")
        assert read.returncode != 0
        assert "forbidden" in read.stderr.lower()
        assert "on-call" not in read.stdout
    # A team field to claim another team does not exist: the namespace is the team.
    claimed = feedback_body("claimed", env_b, 0, team=team_a)
    refused = as_member(kubectl, team_b, "create", "-f", "-", input=json.dumps(claimed))
    assert refused.returncode != 0
    assert "team" in refused.stderr
    # Nobody but the operator writes how a rating counts.
    mine = feedback_body("mine", env_b, 5)
    assert as_member(kubectl, team_b, "create", "-f", "-", input=json.dumps(mine)).returncode == 0
    status = as_member(
        kubectl,
        team_b,
        "patch",
        "feedback",
        "mine",
        "-n",
        env_b,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"team": team_a}}),
    )
    assert status.returncode != 0
    assert "forbidden" in status.stderr.lower()


def test_read_only_access_to_a_namespace_does_not_show_comments_but_the_feedback_reader_role_does(
    kubectl: Kubectl, teams: tuple[str, str, str]
) -> None:
    env_a, _, _ = teams
    viewer, reader = unique("viewer"), unique("platform-reader")
    kubectl("create", "rolebinding", viewer, "--clusterrole=view", f"--user={viewer}", "-n", env_a)
    kubectl("create", "clusterrolebinding", reader, "--clusterrole=blacktop-feedback-reader", f"--user={reader}")
    try:
        # `view` sees the namespace's workloads, never its Feedback.
        assert kubectl("get", "pods", "-n", env_a, f"--as={viewer}", check=False).returncode == 0
        denied = kubectl("get", "feedback", "-n", env_a, f"--as={viewer}", check=False)
        assert denied.returncode != 0
        assert "forbidden" in denied.stderr.lower()
        # The platform team, bound to blacktop-feedback-reader, reads every team's.
        wait_for(
            lambda: kubectl("get", "feedback", "-A", f"--as={reader}", check=False).returncode == 0,
            timeout=30,
            what="the feedback reader to list Feedback",
        )
        # Everyone reads the scorecard; only the platform team changes its targets.
        assert kubectl("get", "platformscorecards", f"--as={viewer}", check=False).returncode == 0
        changed = kubectl(
            "patch",
            "platformscorecard",
            "team-onboarding",
            "--type=merge",
            "-p",
            '{"spec":{"target":"1h"}}',
            f"--as={viewer}",
            check=False,
        )
        assert changed.returncode != 0
        assert "forbidden" in changed.stderr.lower()
    finally:
        kubectl("delete", "rolebinding", viewer, "-n", env_a, "--ignore-not-found")
        kubectl("delete", "clusterrolebinding", reader, "--ignore-not-found")


def test_bad_ratings_are_refused_or_explained(kubectl: Kubectl, teams: tuple[str, str, str]) -> None:
    env_a, _, _ = teams
    team_a = env_a.removesuffix("-dev")
    unknown = feedback_body("typo", env_a, 7, goldenPath="no-such-golden-path")
    refused = as_member(kubectl, team_a, "create", "-f", "-", input=json.dumps(unknown))
    assert refused.returncode != 0
    assert "golden path 'no-such-golden-path' is not in the catalog" in refused.stderr
    assert "leave goldenPath out to rate the platform" in refused.stderr
    for score in (-1, 11):
        out_of_range = as_member(
            kubectl, team_a, "create", "-f", "-", input=json.dumps(feedback_body("x", env_a, score))
        )
        assert out_of_range.returncode != 0
        assert "spec.score" in out_of_range.stderr
    # Outside an environment's namespace a rating is kept but not counted, and says where it belongs.
    namespace = unique("not-an-env")
    kubectl("create", "namespace", namespace)
    try:
        kubectl("create", "-f", "-", input=json.dumps(feedback_body("stray", namespace, 9)))
        stray = wait_for(
            lambda: (
                (c := condition(get(kubectl, "feedback", "stray", "-n", namespace))) and c["status"] == "False" and c
            ),
            timeout=30,
            what="the stray Feedback to say it is not counted",
        )
        assert stray["reason"] == "EnvironmentNotFound"
        assert "not counted" in stray["message"]
        assert "environment's namespace" in stray["message"]
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false")


def _blacktop(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blacktop", "feedback", *args, f"--kubeconfig={kubeconfig}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )


def test_blacktop_feedback_rates_once_per_quarter_with_the_developers_own_credentials(
    kubectl: Kubectl, kubeconfig: Path, teams: tuple[str, str, str], tmp_path: Path
) -> None:
    _, env_b, golden_path = teams
    # A developer of team B: a ServiceAccount in the environment, made one of its owners.
    kubectl("create", "serviceaccount", "dev", "-n", env_b)
    owner = {"kind": "User", "name": f"system:serviceaccount:{env_b}:dev"}
    kubectl("patch", "environment", env_b, "--type=merge", "-p", json.dumps({"spec": {"owners": [owner]}}))
    token = kubectl("create", "token", "dev", "-n", env_b, "--duration=1h").stdout.strip()
    developer = service_account_kubeconfig(kubeconfig, token, tmp_path / "dev.kubeconfig", namespace=env_b)
    wait_for(
        lambda: (
            kubectl(
                "auth",
                "can-i",
                "create",
                "feedbacks",
                "-n",
                env_b,
                f"--as=system:serviceaccount:{env_b}:dev",
                check=False,
            ).stdout.strip()
            == "yes"
        ),
        timeout=30,
        what="the environment's owner to be allowed to create Feedback",
    )

    first = _blacktop(developer, "9", "-g", golden_path, "-m", "the database was ready in two minutes")
    assert first.returncode == 0, first.stderr
    assert f"9/10 for golden path {golden_path}" in first.stdout
    again = _blacktop(developer, "6", "-g", golden_path)  # changed their mind: replaces, never counts twice
    assert again.returncode == 0, again.stderr
    mine = [
        f
        for f in json.loads(kubectl("get", "feedback", "-n", env_b, "-o", "json").stdout)["items"]
        if f["spec"].get("goldenPath") == golden_path
    ]
    assert len(mine) == 1
    assert mine[0]["spec"]["score"] == 6
    assert mine[0]["metadata"]["name"].startswith(f"{golden_path}-")
    platform = _blacktop(developer, "8")
    assert platform.returncode == 0, platform.stderr
    assert "for the platform" in platform.stdout

    # What a developer can get wrong gets an answer that says what to do.
    typo = _blacktop(developer, "7", "-g", "no-such-golden-path")
    assert typo.returncode == 1
    assert "is not in the catalog (kubectl get goldenpaths)" in typo.stderr
    elsewhere = _blacktop(developer, "7", "-n", "default")
    assert elsewhere.returncode == 1
    assert "not an environment's namespace" in elsewhere.stderr
