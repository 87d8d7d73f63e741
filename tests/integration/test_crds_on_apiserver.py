"""The generated CRDs on a real apiserver: established, structural, self-documenting, self-validating."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import Kubectl, unique, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_crds_are_established_and_structural(kubectl: Kubectl, installed: Path) -> None:
    crds = json.loads(kubectl("get", "crd", "-l", "app.kubernetes.io/part-of=blacktop", "-o", "json").stdout)["items"]
    assert len(crds) == 5
    for crd in crds:
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", crd["metadata"]["name"]
        assert conditions.get("NonStructuralSchema", "False") == "False", crd["metadata"]["name"]


def test_api_resources_and_category(kubectl: Kubectl, installed: Path) -> None:
    resources = kubectl("api-resources", "--api-group=platform.blacktop.dev", "-o", "name").stdout.split()
    assert sorted(resources) == sorted(
        f"{plural}.platform.blacktop.dev"
        for plural in ("environments", "goldenpaths", "goldenpathrevisions", "servicerequests", "guardrailpolicies")
    )
    assert kubectl("get", "blacktop", "--all-namespaces").returncode == 0


def explain(kubectl: Kubectl, field: str) -> str:
    """`kubectl explain`, once the apiserver publishes the CRD's schema in OpenAPI (a moment after Established)."""

    def published() -> str | None:
        result = kubectl("explain", field, check=False)
        return result.stdout if result.returncode == 0 else None

    return wait_for(published, timeout=30, what=f"kubectl explain {field} to find the published schema")


def test_kubectl_explain_teaches_the_fields(kubectl: Kubectl, installed: Path) -> None:
    assert "Time to live" in explain(kubectl, "environment.spec.ttl")
    assert "ServiceRequests" in explain(kubectl, "environment.spec.team")
    assert "golden path" in explain(kubectl, "servicerequest.spec.parameters")


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_pass_server_side_dry_run(kubectl: Kubectl, installed: Path, path: Path) -> None:
    # Namespaced examples live in the example environment's namespace, which a dry run cannot create;
    # use `default` for them instead (the dry run checks the schema, defaults and CEL rules).
    import yaml

    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        if doc["metadata"].get("namespace"):
            doc["metadata"]["namespace"] = "default"
        kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(doc))


def _env(name: str, **spec: Any) -> str:
    return json.dumps(
        {
            "apiVersion": "platform.blacktop.dev/v1alpha1",
            "kind": "Environment",
            "metadata": {"name": name},
            "spec": {"team": "payments", "tier": "dev", **spec},
        }
    )


@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        ("kube-stuff", {}, "reserved"),
        ("default", {}, "reserved"),
        ("ok-name", {"ttl": "5s"}, "ttl must be between 10s and 8760h"),
        ("ok-name", {"ttl": "9000h"}, "ttl must be between 10s and 8760h"),
        ("ok-name", {"tier": "qa"}, "Unsupported value"),
        ("ok-name", {"budget": {"monthly": "1.234"}}, "spec.budget.monthly"),
    ],
)
def test_apiserver_rejects_bad_environments(
    kubectl: Kubectl, installed: Path, name: str, spec: dict[str, Any], message: str
) -> None:
    result = kubectl("create", "--dry-run=server", "-f", "-", input=_env(name, **spec), check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_team_and_tier_are_immutable(kubectl: Kubectl, installed: Path) -> None:
    name = unique("immutable")
    # No operator is needed for this: the apiserver itself enforces the transition rules.
    kubectl("create", "-f", "-", input=_env(name))
    try:
        result = kubectl(
            "patch", "environment", name, "--type=merge", "-p", '{"spec":{"team":"other","tier":"prod"}}', check=False
        )
        assert result.returncode != 0
        assert "team is immutable" in result.stderr
        assert "tier is immutable" in result.stderr
    finally:
        kubectl("delete", "environment", name, "--wait=false")


def test_service_request_golden_path_is_immutable(kubectl: Kubectl, installed: Path) -> None:
    name = unique("sr")
    body = {
        "apiVersion": "platform.blacktop.dev/v1alpha1",
        "kind": "ServiceRequest",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"goldenPath": "tiny"},
    }
    kubectl("create", "-f", "-", input=json.dumps(body))
    try:
        result = kubectl(
            "patch",
            "servicerequest",
            name,
            "-n",
            "default",
            "--type=merge",
            "-p",
            '{"spec":{"goldenPath":"other"}}',
            check=False,
        )
        assert "goldenPath is immutable" in result.stderr
    finally:
        kubectl(
            "patch",
            "servicerequest",
            name,
            "-n",
            "default",
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
            check=False,
        )
        kubectl("delete", "servicerequest", name, "-n", "default", "--wait=false", check=False)
