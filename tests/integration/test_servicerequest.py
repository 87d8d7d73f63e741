"""ServiceRequests provisioned with real OpenTofu runs (the provider-free `tiny` golden path)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import (
    Kubectl,
    OperatorProcess,
    apply_json,
    condition,
    get,
    make_environment,
    patch_parameters,
    secret_values,
    service_request,
    tiny_golden_path,
    unique,
    wait_for,
    wait_reason,
)

pytestmark = pytest.mark.integration

TEAM = "payments"


@pytest.fixture(scope="module")
def catalog(kubectl: Kubectl, operator: OperatorProcess) -> Iterator[str]:
    """The example `tiny` golden path plus a variant whose parameters can make the apply fail."""
    apply_json(kubectl, tiny_golden_path())
    apply_json(kubectl, tiny_golden_path("tiny-failing", failable=True))
    for name in ("tiny", "tiny-failing"):
        kubectl("wait", "--for=condition=Ready", f"goldenpath/{name}", "--timeout=60s")
    yield "tiny"
    for name in ("tiny", "tiny-failing"):
        kubectl("delete", "goldenpath", name, "--ignore-not-found", "--wait=false")


@pytest.fixture(scope="module")
def environment(kubectl: Kubectl, catalog: str) -> Iterator[str]:
    name = make_environment(kubectl, unique("sr-env"), TEAM)
    yield name
    kubectl("delete", "environment", name, "--ignore-not-found", "--wait=true", "--timeout=180s")


def test_request_is_provisioned_updated_and_destroyed(
    kubectl: Kubectl, environment: str, operator: OperatorProcess
) -> None:
    name = unique("svc")
    apply_json(kubectl, service_request(name, environment, "tiny", size="small"))
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
    apply_json(kubectl, service_request(name, environment, "tiny", size="gigantic"))
    ready = wait_reason(kubectl, name, environment, "InvalidParameters")
    assert ready["status"] == "False"
    assert "parameters.size" in ready["message"]
    assert "gigantic" in ready["message"]
    patch_parameters(kubectl, name, environment, size="medium")
    kubectl("wait", "--for=condition=Ready", f"servicerequest/{name}", "-n", environment, "--timeout=180s")
    kubectl("delete", "servicerequest", name, "-n", environment, "--timeout=180s")


def test_unknown_golden_path(kubectl: Kubectl, environment: str) -> None:
    name = unique("ghost")
    apply_json(kubectl, service_request(name, environment, "no-such-path"))
    ready = wait_reason(kubectl, name, environment, "GoldenPathNotFound", timeout=60)
    assert "kubectl get goldenpaths" in ready["message"]
    kubectl("delete", "servicerequest", name, "-n", environment, "--timeout=60s")


def test_module_failure_is_classified_and_retried(kubectl: Kubectl, environment: str) -> None:
    name = unique("fails")
    apply_json(kubectl, service_request(name, environment, "tiny-failing", fail=True))
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
        apply_json(kubectl, service_request(name, ns, "tiny"))
        ready = wait_reason(kubectl, name, ns, "EnvironmentNotFound", timeout=60)
        assert "does not belong to an Environment" in ready["message"]
        kubectl("delete", "servicerequest", name, "-n", ns, "--timeout=60s")
    finally:
        kubectl("delete", "namespace", ns, "--wait=false")
