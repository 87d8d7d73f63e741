"""The Helm chart's static parts: generated copies are fresh, values match their schema, the Argo CD
health check maps kstatus conditions as documented, and the Dockerfile pins what versions.env pins."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from blacktop import crdgen
from blacktop.api.conditions import Reason
from blacktop.api.kinds import ALL_KINDS
from chart_support import CHART, HEALTH_LUA, argocd_health
from helpers import REPO

pytestmark = pytest.mark.unit


def test_chart_copies_of_crds_and_catalog_are_fresh() -> None:
    stale = crdgen.diff()
    assert not stale, f"the chart's copies are stale: run `make crds`\n{stale}"


def test_chart_crds_equal_the_generated_ones() -> None:
    chart = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}
    assert chart == {p.name: p.read_text() for p in (REPO / "crds").glob("*.yaml")}
    assert len(chart) == len(ALL_KINDS)


def test_a_stale_chart_copy_is_reported(tmp_path: Path) -> None:
    crdgen.write(tmp_path)
    victim = next(tmp_path.glob("*.yaml"))
    victim.write_text(victim.read_text().replace("served: true", "served: false"))
    assert "served: false" in crdgen.diff(tmp_path)


def _schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return data


def _values() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return data


def test_default_values_match_the_schema() -> None:
    jsonschema.validate(_values(), _schema())


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("replicaCount",), -1),
        (("leaderElection", "leaseSeconds"), 0),
        (("webhook", "certificate", "mode"), "selfmade"),
        (("webhook", "failurePolicy"), "Maybe"),
        (("webhook", "timeoutSeconds"), 31),
        (("config", "maxConcurrentRuns"), 0),
        (("modules", "inline"), {"Bad_Name": {"main.tf": ""}}),
        (("metrics", "unknownKey"), True),
    ],
)
def test_schema_rejects_bad_values(path: tuple[str, ...], value: Any) -> None:
    values = _values()
    node = values
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(values, _schema())


def _obj(generation: int, observed: int | None, *conditions: tuple[str, str, str]) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": "x", "generation": generation}}
    if observed is not None:
        obj["status"] = {
            "observedGeneration": observed,
            "conditions": [{"type": t, "status": s, "reason": r, "message": f"{t} {r}"} for t, s, r in conditions],
        }
    return obj


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (_obj(1, None), "Progressing"),
        (_obj(2, 1, ("Ready", "True", "Reconciled")), "Progressing"),
        (_obj(2, 2, ("Ready", "True", "Reconciled")), "Healthy"),
        (_obj(1, 1, ("Ready", "False", "Progressing"), ("Reconciling", "True", "Progressing")), "Progressing"),
        (_obj(1, 1, ("Ready", "False", "InvalidParameters"), ("Stalled", "True", "InvalidParameters")), "Degraded"),
        (_obj(1, 1, ("Ready", "False", "ApplyFailed"), ("Reconciling", "True", "ApplyFailed")), "Degraded"),
        (_obj(1, 1, ("Ready", "False", "GoldenPathNotReady")), "Progressing"),
        (_obj(1, 1, ("Ready", "Unknown", "Progressing")), "Progressing"),
        (_obj(1, 1), "Progressing"),
    ],
)
def test_argocd_health_follows_kstatus(obj: dict[str, Any], expected: str) -> None:
    health = argocd_health(obj)
    assert health["status"] == expected, health
    assert health["message"]


def test_argocd_failure_reasons_are_real_reasons() -> None:
    listed = set(re.findall(r"^\s+(\w+) = true,$", HEALTH_LUA.read_text(), re.MULTILINE))
    known = {v for k, v in vars(Reason).items() if k.isupper()}
    assert listed, "no failure reasons found in health.lua"
    assert listed <= known, f"health.lua names reasons that do not exist: {listed - known}"


def test_argocd_docs_embed_the_tested_script() -> None:
    docs = (CHART / "argocd" / "README.md").read_text()
    block = re.search(r"resource\.customizations\.health\.platform\.blacktop\.dev_\*: \|\n((?:      .*\n|\n)+)", docs)
    assert block, "argocd/README.md lacks the argocd-cm snippet"
    embedded = "\n".join(line[6:] for line in block.group(1).splitlines()).strip()
    assert embedded == HEALTH_LUA.read_text().strip()


def test_dockerfile_is_pinned_and_non_root() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    # Tools come from install.sh, i.e. from the pins of versions.env, not from versions of its own.
    assert "bash hack/tools/install.sh ${TOOLS}" in dockerfile
    assert "COPY hack/tools/ hack/tools/" in dockerfile
    images = re.findall(r"^ARG \w+_IMAGE=(\S+)$", dockerfile, re.MULTILINE)
    assert len(images) == 3
    for image in images:
        # golang/python: a patch version; Debian: a point release (12.12).
        assert re.search(r":\d+\.\d+(\.\d+)?-", image), f"base image {image} is not pinned to a patch version"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    user = values["podSecurityContext"]["runAsUser"]
    assert re.search(rf"^USER {user}:{user}$", dockerfile, re.MULTILINE), "image user must match the chart's"
    assert f"BLACKTOP_MODULES_ROOT={values['modules']['root']}" in dockerfile
