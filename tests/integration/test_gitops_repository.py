"""The team repository of examples/gitops, rendered like Flux and Argo CD do (kustomize) and dry-run
against the API server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from helpers import REPO, Kubectl, scratch_namespace

pytestmark = pytest.mark.integration


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    with scratch_namespace(kubectl, "gitops") as name:
        yield name


def test_team_repository_renders_and_passes_a_server_side_dry_run(
    kubectl: Kubectl, installed: Path, namespace: str
) -> None:
    out = kubectl("kustomize", str(REPO / "examples" / "gitops" / "teams" / "payments")).stdout
    objects = [doc for doc in yaml.safe_load_all(out) if doc]
    assert sorted(o["kind"] for o in objects) == ["Environment", "ServiceRequest", "ServiceRequest"]
    for obj in objects:
        if obj["kind"] == "ServiceRequest":
            assert obj["metadata"]["namespace"] == "payments-staging"
            # The environment's namespace does not exist before Blacktop makes it: dry-run in another.
            obj["metadata"]["namespace"] = namespace
        result = kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(obj)).stdout
        assert "(server dry run)" in result
