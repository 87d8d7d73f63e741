"""The committed CRDs are exactly what the models generate, and every schema is structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from blacktop import crdgen
from blacktop.api.kinds import ALL_KINDS

pytestmark = pytest.mark.unit

CRDS = Path(__file__).resolve().parents[2] / "crds"


def test_committed_crds_are_fresh() -> None:
    stale = crdgen.diff(CRDS)
    assert not stale, f"crds/ is stale: run `make crds`\n{stale}"


def _walk(node: dict[str, Any], path: str) -> list[str]:
    """Problems that make a schema non-structural (or undocumented)."""
    problems = []
    for banned in ("$ref", "anyOf", "oneOf", "allOf", "nullable", "title", "$defs"):
        if banned in node:
            problems.append(f"{path}: has {banned}")
    if "type" not in node:
        problems.append(f"{path}: no type")
    if node.get("additionalProperties") is False or node.get("additionalProperties") is True:
        problems.append(f"{path}: boolean additionalProperties")
    for name, sub in node.get("properties", {}).items():
        problems += _walk(sub, f"{path}.{name}")
    if "items" in node:
        problems += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += _walk(node["additionalProperties"], f"{path}{{}}")
    return problems


@pytest.mark.parametrize("info", ALL_KINDS, ids=lambda i: i.kind)
def test_schema_is_structural_and_documented(info: Any) -> None:
    crd = crdgen.build_crd(info)
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(root, info.kind) == []
    undocumented = []

    def leaves(node: dict[str, Any], path: str) -> None:
        for name, sub in node.get("properties", {}).items():
            if name == "metadata":
                continue
            if not sub.get("description"):
                undocumented.append(f"{path}.{name}")
            leaves(sub, f"{path}.{name}")
            if "items" in sub:
                leaves(sub["items"], f"{path}.{name}[]")

    leaves(root, info.kind)
    assert undocumented == [], "fields need descriptions for `kubectl explain`"


@pytest.mark.parametrize("info", ALL_KINDS, ids=lambda i: i.kind)
def test_printer_columns_point_at_real_fields(info: Any) -> None:
    crd = crdgen.build_crd(info)
    version = crd["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"].lstrip(".").split("[")[0].split(".")
        if path[0] == "metadata":
            continue
        node = root
        for part in path:
            assert part in node.get("properties", {}), f"{column['name']}: {column['jsonPath']} not in schema"
            node = node["properties"][part]


def test_crd_names_and_category() -> None:
    for info in ALL_KINDS:
        crd = yaml.safe_load((CRDS / f"platform.blacktop.dev_{info.plural}.yaml").read_text())
        names = crd["spec"]["names"]
        assert names["categories"] == ["blacktop"]
        assert names["kind"] == info.kind
        assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_check_command_reports_stale_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crdgen.main(["write", str(tmp_path)]) == 0
    assert crdgen.main(["check", str(tmp_path)]) == 0
    target = tmp_path / "platform.blacktop.dev_environments.yaml"
    target.write_text(target.read_text().replace("Time to live", "Time to die"))
    assert crdgen.main(["check", str(tmp_path)]) == 1
    assert "run `make crds`" in capsys.readouterr().err
