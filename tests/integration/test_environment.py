"""The Environment controller against a real apiserver and a real operator process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import Kubectl, OperatorProcess, apply_json, condition, environment_body, get, unique, wait_for

pytestmark = pytest.mark.integration

TEAM = "payments"


def env_manifest(name: str, *, team: str = TEAM, ttl: str | None = None) -> dict[str, Any]:
    body = environment_body(
        name,
        team,
        owners=[{"kind": "User", "name": "olivia@example.com"}],
        quota={"cpu": "2", "memory": "4Gi", "pods": 10, "storage": "10Gi"},
    )
    if ttl:
        body["spec"]["ttl"] = ttl
    return body


@pytest.fixture
def environment(kubectl: Kubectl, operator: OperatorProcess) -> Iterator[str]:
    """A fresh Ready environment, deleted (and waited for) afterwards."""
    name = unique("env")
    apply_json(kubectl, env_manifest(name))
    kubectl("wait", "--for=condition=Ready", f"environment/{name}", "--timeout=60s")
    yield name
    kubectl("delete", "environment", name, "--ignore-not-found", "--wait=true", "--timeout=60s")


def test_example_environment_becomes_ready_with_all_children(
    kubectl: Kubectl, operator: OperatorProcess, tmp_path: Path
) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "environment.yaml"
    name = unique("example")
    import yaml

    doc = yaml.safe_load(example.read_text())
    doc["metadata"]["name"] = name
    apply_json(kubectl, doc)
    try:
        kubectl("wait", "--for=condition=Ready", f"environment/{name}", "--timeout=60s")
        env = get(kubectl, "environment", name)
        assert env is not None
        assert env["status"]["namespace"] == name
        assert env["status"]["observedGeneration"] == env["metadata"]["generation"]
        ns = get(kubectl, "namespace", name)
        assert ns is not None
        labels = ns["metadata"]["labels"]
        assert labels["platform.blacktop.dev/environment"] == name
        assert labels["platform.blacktop.dev/team"] == doc["spec"]["team"]
        assert labels["platform.blacktop.dev/tier"] == doc["spec"]["tier"]
        assert ns["metadata"]["ownerReferences"][0]["uid"] == env["metadata"]["uid"]
        for kind, child in [
            ("resourcequota", "blacktop-quota"),
            ("limitrange", "blacktop-limits"),
            ("networkpolicy", "blacktop-isolation"),
            ("rolebinding", "blacktop-environment-editors"),
        ]:
            obj = get(kubectl, kind, child, "-n", name)
            assert obj is not None, f"{kind}/{child} missing"
            assert obj["metadata"]["ownerReferences"][0]["uid"] == env["metadata"]["uid"]
        if ttl := doc["spec"].get("ttl"):
            assert env["status"]["expiresAt"], f"ttl {ttl} but no expiresAt"
    finally:
        kubectl("delete", "environment", name, "--ignore-not-found", "--wait=true", "--timeout=60s")


def test_children_have_the_right_content(kubectl: Kubectl, environment: str) -> None:
    quota = get(kubectl, "resourcequota", "blacktop-quota", "-n", environment)
    assert quota is not None
    assert quota["spec"]["hard"]["requests.cpu"] == "2"
    assert quota["spec"]["hard"]["limits.memory"] == "4Gi"
    assert quota["spec"]["hard"]["pods"] == "10"
    limits = get(kubectl, "limitrange", "blacktop-limits", "-n", environment)
    assert limits is not None
    assert limits["spec"]["limits"][0]["defaultRequest"] == {"cpu": "100m", "memory": "128Mi"}
    policy = get(kubectl, "networkpolicy", "blacktop-isolation", "-n", environment)
    assert policy is not None
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    sources = policy["spec"]["ingress"][0]["from"]
    assert {"podSelector": {}} in sources
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in sources
    binding = get(kubectl, "rolebinding", "blacktop-environment-editors", "-n", environment)
    assert binding is not None
    assert binding["roleRef"]["name"] == "blacktop-environment-editor"
    subjects = {(s["kind"], s["name"]) for s in binding["subjects"]}
    assert subjects == {("Group", TEAM), ("User", "olivia@example.com")}


def _can_i(kubectl: Kubectl, namespace: str, user: str, group: str, verb: str = "create") -> str:
    result = kubectl(
        "auth",
        "can-i",
        verb,
        "servicerequests.platform.blacktop.dev",
        "-n",
        namespace,
        f"--as={user}",
        f"--as-group={group}",
        check=False,
    )
    return result.stdout.strip()


def test_team_member_can_create_service_requests_and_outsider_cannot(kubectl: Kubectl, environment: str) -> None:
    # The aggregated ClusterRole is filled in by the controller-manager; wait for it.
    wait_for(
        lambda: _can_i(kubectl, environment, "alice", TEAM) == "yes",
        timeout=30,
        what="a team member to be allowed to create ServiceRequests",
    )
    assert _can_i(kubectl, environment, "mallory", "other-team") == "no"
    request = json.dumps(
        {
            "apiVersion": "platform.blacktop.dev/v1alpha1",
            "kind": "ServiceRequest",
            "metadata": {"name": "db", "namespace": environment},
            "spec": {"goldenPath": "postgres-database", "parameters": {"size": "small"}},
        }
    )
    member = kubectl(
        "create", "--dry-run=server", "-f", "-", "--as=alice", f"--as-group={TEAM}", input=request, check=False
    )
    assert member.returncode == 0, member.stderr
    outsider = kubectl(
        "create", "--dry-run=server", "-f", "-", "--as=mallory", "--as-group=other-team", input=request, check=False
    )
    assert outsider.returncode != 0
    assert "forbidden" in outsider.stderr.lower()
    # The team also gets ordinary workload permissions through the aggregated `edit` rules.
    assert (
        kubectl(
            "auth",
            "can-i",
            "create",
            "deployments.apps",
            "-n",
            environment,
            "--as=alice",
            f"--as-group={TEAM}",
            check=False,
        ).stdout.strip()
        == "yes"
    )


def test_quota_change_converges(kubectl: Kubectl, environment: str) -> None:
    kubectl("patch", "environment", environment, "--type=merge", "-p", '{"spec":{"quota":{"cpu":"3"}}}')
    wait_for(
        lambda: (
            (get(kubectl, "resourcequota", "blacktop-quota", "-n", environment) or {})
            .get("spec", {})
            .get("hard", {})
            .get("requests.cpu")
            == "3"
        ),
        timeout=30,
        what="the ResourceQuota to follow the new cpu quota",
    )
    env = get(kubectl, "environment", environment)
    assert env is not None
    wait_for(
        lambda: (
            (get(kubectl, "environment", environment) or {}).get("status", {}).get("observedGeneration")
            == env["metadata"]["generation"]
        ),
        timeout=30,
        what="observedGeneration to catch up",
    )


def test_deleted_or_edited_child_is_restored(kubectl: Kubectl, environment: str) -> None:
    before = get(kubectl, "resourcequota", "blacktop-quota", "-n", environment)
    assert before is not None
    kubectl("delete", "resourcequota", "blacktop-quota", "-n", environment)
    restored = wait_for(
        lambda: (
            (q := get(kubectl, "resourcequota", "blacktop-quota", "-n", environment))
            and q["metadata"]["uid"] != before["metadata"]["uid"]
            and q
        ),
        timeout=30,
        what="the deleted ResourceQuota to be re-created",
    )
    assert restored["spec"]["hard"] == before["spec"]["hard"]

    kubectl(
        "patch",
        "networkpolicy",
        "blacktop-isolation",
        "-n",
        environment,
        "--type=merge",
        "-p",
        '{"spec":{"ingress":[{}]}}',
    )
    wait_for(
        lambda: (
            {"podSelector": {}}
            in (get(kubectl, "networkpolicy", "blacktop-isolation", "-n", environment) or {})["spec"]["ingress"][0].get(
                "from", []
            )
        ),
        timeout=30,
        what="the edited NetworkPolicy to be restored",
    )


def test_open_network_policy_removes_isolation(kubectl: Kubectl, environment: str) -> None:
    kubectl(
        "patch", "environment", environment, "--type=merge", "-p", '{"spec":{"networkPolicy":{"isolation":"Open"}}}'
    )
    wait_for(
        lambda: get(kubectl, "networkpolicy", "blacktop-isolation", "-n", environment) is None,
        timeout=30,
        what="the NetworkPolicy to be removed for an Open environment",
    )


def test_short_ttl_deletes_environment_and_namespace(kubectl: Kubectl, operator: OperatorProcess) -> None:
    name = unique("ttl")
    apply_json(kubectl, env_manifest(name, ttl="15s"))
    try:
        kubectl("wait", "--for=condition=Ready", f"environment/{name}", "--timeout=60s")
        env = get(kubectl, "environment", name)
        assert env is not None
        assert env["status"]["expiresAt"]
        wait_for(lambda: get(kubectl, "environment", name) is None, timeout=60, what="the expired environment to go")
        wait_for(lambda: get(kubectl, "namespace", name) is None, timeout=90, what="its namespace to disappear")
        events = kubectl(
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            f"involvedObject.name={name},reason=Expired",
            "-o",
            "json",
        )
        assert json.loads(events.stdout)["items"], "no Expired event was posted"
    finally:
        kubectl("delete", "environment", name, "--ignore-not-found", "--wait=false")


def test_deletion_waits_for_service_requests(kubectl: Kubectl, operator: OperatorProcess) -> None:
    name = unique("del")
    apply_json(kubectl, env_manifest(name))
    kubectl("wait", "--for=condition=Ready", f"environment/{name}", "--timeout=60s")
    # A ServiceRequest held by a finalizer stands in for one whose infrastructure takes time to destroy.
    request = {
        "apiVersion": "platform.blacktop.dev/v1alpha1",
        "kind": "ServiceRequest",
        "metadata": {"name": "held", "namespace": name, "finalizers": ["test.blacktop.dev/hold"]},
        "spec": {"goldenPath": "does-not-exist-" + name},
    }
    apply_json(kubectl, request)
    kubectl("delete", "environment", name, "--wait=false")
    waiting = wait_for(
        lambda: (
            (c := condition(get(kubectl, "environment", name), "Ready"))
            and c["reason"] == "WaitingForServiceRequests"
            and c
        ),
        timeout=30,
        what="the environment to report it waits for its service requests",
    )
    assert "held" in waiting["message"]
    assert get(kubectl, "namespace", name) is not None, "namespace deleted before its service requests"
    sr = get(kubectl, "servicerequest", "held", "-n", name)
    assert sr is not None
    assert sr["metadata"].get("deletionTimestamp"), "the service request was not deleted first"
    kubectl("patch", "servicerequest", "held", "-n", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    wait_for(lambda: get(kubectl, "environment", name) is None, timeout=60, what="the environment to be deleted")
    wait_for(lambda: get(kubectl, "namespace", name) is None, timeout=90, what="its namespace to disappear")


def test_existing_foreign_namespace_is_never_adopted(kubectl: Kubectl, operator: OperatorProcess) -> None:
    name = unique("taken")
    kubectl("create", "namespace", name)
    kubectl("create", "configmap", "precious", "-n", name, "--from-literal=data=keep-me")
    try:
        apply_json(kubectl, env_manifest(name))
        ready = wait_for(
            lambda: (c := condition(get(kubectl, "environment", name), "Ready")) and c["status"] == "False" and c,
            timeout=30,
            what="a NamespaceConflict condition",
        )
        assert ready["reason"] == "NamespaceConflict"
        assert "already exists" in ready["message"]
        kubectl("delete", "environment", name, "--wait=true", "--timeout=60s")
        ns = get(kubectl, "namespace", name)
        assert ns is not None
        assert not ns["metadata"].get("deletionTimestamp")
        assert get(kubectl, "configmap", "precious", "-n", name) is not None
    finally:
        kubectl("delete", "environment", name, "--ignore-not-found", "--wait=false")
        kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=false")
