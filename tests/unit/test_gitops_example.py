"""examples/gitops: every file parses, kustomizations point at what exists, Blacktop objects are valid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from blacktop.api.kinds import ALL_KINDS
from helpers import REPO

pytestmark = pytest.mark.unit

GITOPS = REPO / "examples" / "gitops"
MODELS = {info.kind: info.spec for info in ALL_KINDS}


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc) for path in sorted(GITOPS.rglob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc
    ]


def test_kustomizations_reference_existing_files() -> None:
    kustomizations = sorted(GITOPS.rglob("kustomization.yaml"))
    assert len(kustomizations) >= 3
    for path in kustomizations:
        for resource in yaml.safe_load(path.read_text())["resources"]:
            assert (path.parent / resource).exists(), f"{path}: {resource} does not exist"


def test_blacktop_objects_are_valid() -> None:
    kinds = set()
    for path, doc in _documents():
        if doc.get("apiVersion") != "platform.blacktop.dev/v1alpha1":
            continue
        kinds.add(doc["kind"])
        MODELS[doc["kind"]].model_validate(doc["spec"])
        assert "namespace" not in doc["metadata"], f"{path}: the kustomization sets the namespace"
    assert kinds == {"Environment", "ServiceRequest"}


def test_flux_health_checks_name_requests_that_exist() -> None:
    requests = {doc["metadata"]["name"] for _, doc in _documents() if doc.get("kind") == "ServiceRequest"}
    flux = [doc for _, doc in _documents() if doc.get("apiVersion", "").startswith("kustomize.toolkit.fluxcd.io")]
    checked = {c["name"] for doc in flux for c in doc["spec"].get("healthChecks", [])}
    assert checked == requests
    paths = {doc["spec"]["path"] for doc in flux}
    for path in paths:
        assert (GITOPS / path).is_dir(), path
    argo = [doc for _, doc in _documents() if doc.get("kind") == "Application"]
    assert (GITOPS / argo[0]["spec"]["source"]["path"] / "kustomization.yaml").exists()
