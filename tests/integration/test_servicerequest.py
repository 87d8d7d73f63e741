"""ServiceRequests provisioned with real OpenTofu runs (the provider-free `tiny` golden path)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import REPO, Kubectl, OperatorProcess, unique, wait_for

pytestmark = pytest.mark.integration

TEAM = "payments"


def apply_json(kubectl: Kubectl, body: dict[str, Any]) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(body))


def get(kubectl: Kubectl, *args: str) -> dict[str, Any] | None:
    result = kubectl("get", *args, "-o", "json", check=False)
    if result.returncode != 0:
        assert "NotFound" in result.stderr, result.stderr
        return None
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def condition(obj: dict[str, Any] | None, ctype: str = "Ready") -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions", []):
        if cond["type"] == ctype:
            return dict(cond)
    return None


@pytest.fixture(scope="module")
def catalog(kubectl: Kubectl, operator: OperatorProcess) -> Iterator[str]:
    """The example `tiny` golden path plus a variant whose parameters can make the apply fail."""
    tiny = yaml.safe_load((REPO / "examples" / "goldenpath-tiny.yaml").read_text())
    apply_json(kubectl, tiny)
    failing = json.loads(json.dumps(tiny))
    failing["metadata"]["name"] = "tiny-failing"
    failing["spec"]["parameters"]["properties"]["fail"] = {"type": "boolean", "default": False}
    apply_json(kubectl, failing)
    for name in ("tiny", "tiny-failing"):
        kubectl("wait", "--for=condition=Ready", f"goldenpath/{name}", "--timeout=60s")
    yield "tiny"
    for name in ("tiny", "tiny-failing"):
        kubectl("delete", "goldenpath", name, "--ignore-not-found", "--wait=false")


@pytest.fixture(scope="module")
def environment(kubectl: Kubectl, catalog: str) -> Iterator[str]:
    name = unique("sr-env")
    apply_json(
        kubectl,
        {
            "apiVersion": "platform.blacktop.dev/v1alpha1",
            "kind": "Environment",
            "metadata": {"name": name},
            "spec": {"team": TEAM, "tier": "dev"},
        },
    )
    kubectl("wait", "--for=condition=Ready", f"environment/{name}", "--timeout=60s")
    yield name
    kubectl("delete", "environment", name, "--ignore-not-found", "--wait=true", "--timeout=180s")


def request(name: str, namespace: str, golden_path: str = "tiny", **parameters: Any) -> dict[str, Any]:
    return {
        "apiVersion": "platform.blacktop.dev/v1alpha1",
        "kind": "ServiceRequest",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"goldenPath": golden_path, "parameters": parameters},
    }


def wait_reason(kubectl: Kubectl, name: str, namespace: str, reason: str, timeout: float = 120) -> dict[str, Any]:
    return wait_for(
        lambda: (c := condition(get(kubectl, "servicerequest", name, "-n", namespace))) and c["reason"] == reason and c,
        timeout=timeout,
        what=f"ServiceRequest {name} to report {reason}",
    )


def secret_values(kubectl: Kubectl, name: str, namespace: str) -> dict[str, str]:
    secret = get(kubectl, "secret", name, "-n", namespace)
    assert secret is not None, f"secret {name} missing"
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_request_is_provisioned_updated_and_destroyed(
    kubectl: Kubectl, environment: str, operator: OperatorProcess
) -> None:
    name = unique("svc")
    apply_json(kubectl, request(name, environment, size="small"))
    kubectl("wait", "--for=condition=Ready", f"servicerequest/{name}", "-n", environment, "--timeout=180s")
    sr = get(kubectl, "servicerequest", name, "-n", environment)
    assert sr is not None
    status = sr["status"]
    assert status["stage"] == "Ready"
    assert status["environment"] == environment
    assert status["plan"]["add"] == 1
    assert status["leadTimeSeconds"] >= 0
    assert status["monthlyCost"] == "1.00"
    assert status["connectionSecret"] == f"{name}-connection"
    assert status["outputs"] == ["endpoint", "token"]
    values = secret_values(kubectl, f"{name}-connection", environment)
    assert values["endpoint"] == f"tiny://{name}.small.svc:8080"
    token = values["token"]
    assert len(token) == 64
    state_secret = f"tfstate-default-{sr['metadata']['uid']}"
    assert get(kubectl, "secret", state_secret, "-n", "blacktop-system") is not None

    # A parameter change re-plans and re-applies.
    kubectl(
        "patch",
        "servicerequest",
        name,
        "-n",
        environment,
        "--type=merge",
        "-p",
        '{"spec":{"parameters":{"size":"large"}}}',
    )
    wait_for(
        lambda: (
            secret_values(kubectl, f"{name}-connection", environment)["endpoint"] == f"tiny://{name}.large.svc:8080"
        ),
        timeout=180,
        what="the connection Secret to follow the new size",
    )
    final = get(kubectl, "servicerequest", name, "-n", environment)
    assert final is not None
    assert final["status"]["monthlyCost"] == "20.00"
    assert final["status"]["observedGeneration"] == final["metadata"]["generation"]

    # No secret value in status, events or the operator's log.
    events = kubectl("get", "events", "-n", environment, "-o", "json").stdout
    assert token not in json.dumps(final)
    assert token not in events
    assert token not in operator.log_text()

    kubectl("delete", "servicerequest", name, "-n", environment, "--timeout=180s")
    assert get(kubectl, "secret", state_secret, "-n", "blacktop-system") is None
    wait_for(
        lambda: get(kubectl, "secret", f"{name}-connection", "-n", environment) is None,
        timeout=60,
        what="the connection Secret to be garbage-collected",
    )


def test_invalid_parameters_are_reported_and_fixable(kubectl: Kubectl, environment: str) -> None:
    name = unique("bad")
    apply_json(kubectl, request(name, environment, size="gigantic"))
    ready = wait_reason(kubectl, name, environment, "InvalidParameters")
    assert ready["status"] == "False"
    assert "parameters.size" in ready["message"]
    assert "gigantic" in ready["message"]
    kubectl(
        "patch",
        "servicerequest",
        name,
        "-n",
        environment,
        "--type=merge",
        "-p",
        '{"spec":{"parameters":{"size":"medium"}}}',
    )
    kubectl("wait", "--for=condition=Ready", f"servicerequest/{name}", "-n", environment, "--timeout=180s")
    kubectl("delete", "servicerequest", name, "-n", environment, "--timeout=180s")


def test_unknown_golden_path(kubectl: Kubectl, environment: str) -> None:
    name = unique("ghost")
    apply_json(kubectl, request(name, environment, golden_path="no-such-path"))
    ready = wait_reason(kubectl, name, environment, "GoldenPathNotFound", timeout=60)
    assert "kubectl get goldenpaths" in ready["message"]
    kubectl("delete", "servicerequest", name, "-n", environment, "--timeout=60s")


def test_module_failure_is_classified_and_retried(kubectl: Kubectl, environment: str) -> None:
    name = unique("fails")
    apply_json(kubectl, request(name, environment, golden_path="tiny-failing", fail=True))
    ready = wait_reason(kubectl, name, environment, "PlanFailed", timeout=180)
    assert "failed to start" in ready["message"]
    sr = get(kubectl, "servicerequest", name, "-n", environment)
    assert sr is not None
    assert sr["status"]["failures"] >= 1
    assert sr["status"]["nextRetryTime"]
    reconciling = condition(sr, "Reconciling")
    assert reconciling is not None
    assert reconciling["status"] == "True"
    # Fixing the parameters recovers without any manual step.
    kubectl(
        "patch",
        "servicerequest",
        name,
        "-n",
        environment,
        "--type=merge",
        "-p",
        '{"spec":{"parameters":{"fail":false}}}',
    )
    kubectl("wait", "--for=condition=Ready", f"servicerequest/{name}", "-n", environment, "--timeout=180s")
    kubectl("delete", "servicerequest", name, "-n", environment, "--timeout=180s")


def test_request_outside_an_environment(kubectl: Kubectl, catalog: str, installed: Path) -> None:
    ns = unique("plain")
    kubectl("create", "namespace", ns)
    try:
        name = unique("lost")
        apply_json(kubectl, request(name, ns))
        ready = wait_reason(kubectl, name, ns, "EnvironmentNotFound", timeout=60)
        assert "does not belong to an Environment" in ready["message"]
        kubectl("delete", "servicerequest", name, "-n", ns, "--timeout=60s")
    finally:
        kubectl("delete", "namespace", ns, "--wait=false")
