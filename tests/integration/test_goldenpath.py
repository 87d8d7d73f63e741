"""The GoldenPath controller: the catalog says what is usable, and why not when it is not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import REPO, Kubectl, OperatorProcess, unique, wait_for

pytestmark = pytest.mark.integration


def golden_path(name: str, module: str, **spec: Any) -> str:
    body = {
        "apiVersion": "platform.blacktop.dev/v1alpha1",
        "kind": "GoldenPath",
        "metadata": {"name": name},
        "spec": {"description": f"test golden path {name}", "module": module, **spec},
    }
    return json.dumps(body)


@pytest.fixture
def apply_gp(kubectl: Kubectl, operator: OperatorProcess) -> Iterator[Any]:
    created: list[str] = []

    def apply(manifest: str) -> str:
        name = json.loads(manifest)["metadata"]["name"]
        kubectl("apply", "-f", "-", input=manifest)
        created.append(name)
        return name

    yield apply
    for name in created:
        kubectl("delete", "goldenpath", name, "--ignore-not-found", "--wait=false")


def ready(kubectl: Kubectl, name: str) -> dict[str, Any] | None:
    out = kubectl("get", "goldenpath", name, "-o", "json", check=False)
    if out.returncode != 0:
        return None
    status = json.loads(out.stdout).get("status") or {}
    return next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)


def wait_ready(kubectl: Kubectl, name: str) -> dict[str, Any]:
    return wait_for(lambda: ready(kubectl, name), timeout=30, what=f"GoldenPath {name} to report Ready")


def test_example_tiny_golden_path_is_ready(kubectl: Kubectl, apply_gp: Any) -> None:
    doc = yaml.safe_load((REPO / "examples" / "goldenpath-tiny.yaml").read_text())
    doc["metadata"]["name"] = unique("tiny")
    name = apply_gp(json.dumps(doc))
    condition = wait_ready(kubectl, name)
    assert condition["status"] == "True", condition
    status = json.loads(kubectl("get", "goldenpath", name, "-o", "json").stdout)["status"]
    assert len(status["moduleDigest"]) == 64
    assert status["providers"] == []
    assert status["observedGeneration"] == 1
    catalog = kubectl("get", "goldenpaths").stdout
    assert name in catalog
    assert "DESCRIPTION" in catalog


# Forbidden provisioners and providers never get this far: admission refuses them (test_guardrails.py).
@pytest.mark.parametrize(
    ("module", "spec", "reason", "words"),
    [
        ("no-such-module", {}, "ModuleNotFound", "not found"),
        (
            "tiny",
            {"parameters": {"type": "object", "properties": {"size": {"type": "banana"}}}},
            "InvalidSchema",
            "properties/size/type",
        ),
        ("tiny", {"outputs": [{"name": "nope"}]}, "InvalidSpec", "'nope' is not an output"),
        (
            "tiny",
            {
                "parameters": {"type": "object", "properties": {"size": {"enum": ["small", "large"]}}},
                "cost": {"parameter": "size", "table": {"small": "1"}},
            },
            "InvalidSpec",
            "no price for size = large",
        ),
    ],
)
def test_unusable_golden_paths_say_why(
    kubectl: Kubectl, apply_gp: Any, module: str, spec: dict[str, Any], reason: str, words: str
) -> None:
    name = apply_gp(golden_path(unique("bad"), module, **spec))
    condition = wait_ready(kubectl, name)
    assert condition["status"] == "False"
    assert condition["reason"] == reason
    assert words in condition["message"]
    status = json.loads(kubectl("get", "goldenpath", name, "-o", "json").stdout)["status"]
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True"
    events = json.loads(
        kubectl(
            "get", "events", "-n", "default", "--field-selector", f"involvedObject.name={name}", "-o", "json"
        ).stdout
    )["items"]
    assert any(e["reason"] == reason and e["type"] == "Warning" for e in events)


def test_fixing_a_golden_path_makes_it_ready(kubectl: Kubectl, apply_gp: Any) -> None:
    name = apply_gp(golden_path(unique("fix"), "no-such-module"))
    assert wait_ready(kubectl, name)["status"] == "False"
    kubectl("patch", "goldenpath", name, "--type=merge", "-p", '{"spec":{"module":"tiny"}}')
    wait_for(
        lambda: (c := ready(kubectl, name)) and c["status"] == "True" and c,
        timeout=30,
        what="the fixed golden path to become Ready",
    )


def test_module_outside_the_root_is_rejected_by_the_apiserver(kubectl: Kubectl, installed: Path) -> None:
    result = kubectl("apply", "--dry-run=server", "-f", "-", input=golden_path("escape", "../etc"), check=False)
    assert result.returncode != 0
    assert "module" in result.stderr
