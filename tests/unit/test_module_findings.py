"""Static inspection of golden-path modules: providers needed, constructs forbidden."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blacktop.api.goldenpath import GoldenPathSpec
from blacktop.controllers.goldenpath import schema_problem, spec_problems
from blacktop.terraform import module as modules
from blacktop.terraform.findings import analyse, disallowed_providers, normalize_source

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "m") -> Path:
    (tmp_path / name).mkdir(exist_ok=True)
    (tmp_path / name / "main.tf").write_text(text)
    return tmp_path


def test_shipped_modules_are_clean() -> None:
    for module in (REPO / "terraform-modules").iterdir():
        info = modules.inspect(REPO / "terraform-modules", module.name)
        assert info.findings.violations == [], module.name


def test_tiny_needs_no_provider() -> None:
    info = modules.inspect(REPO / "terraform-modules", "tiny")
    assert info.findings.providers == set()
    assert {"endpoint", "token"} <= info.findings.outputs
    assert {"name", "size", "fail"} <= info.findings.variables


def test_fixtures_are_caught() -> None:
    root = REPO / "tests" / "fixtures" / "modules"
    assert "local-exec provisioner" in modules.inspect(root, "forbidden-local-exec").findings.violations[0]
    assert modules.inspect(root, "forbidden-provider").findings.providers == {"hashicorp/aws"}


def test_remote_exec_and_external_data_are_refused(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        """
resource "terraform_data" "a" {
  provisioner "remote-exec" { inline = ["id"] }
}
data "external" "e" { program = ["id"] }
""",
    )
    violations = modules.inspect(root, "m").findings.violations
    assert len(violations) == 2
    assert any("remote-exec" in v for v in violations)
    assert any('data "external" "e"' in v for v in violations)


def test_implicit_providers_from_resource_prefixes(tmp_path: Path) -> None:
    root = write(tmp_path, 'resource "random_pet" "p" {}\ndata "http" "h" { url = "x" }\n')
    assert modules.inspect(root, "m").findings.providers == {"hashicorp/random", "hashicorp/http"}


def test_required_providers_sources_are_normalised() -> None:
    assert normalize_source("pg", "registry.opentofu.org/CyrilGDN/PostgreSQL") == "cyrilgdn/postgresql"
    assert normalize_source("random", None) == "hashicorp/random"
    assert disallowed_providers({"hashicorp/random", "hashicorp/aws"}, ["hashicorp/random"]) == ["hashicorp/aws"]


@pytest.mark.parametrize("module", ["../x", "/etc", "nope"])
def test_modules_outside_root_or_missing(tmp_path: Path, module: str) -> None:
    (tmp_path / "root").mkdir()
    with pytest.raises(modules.ModuleError):
        modules.resolve(tmp_path / "root", module)


def test_symlink_escape_is_refused(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(modules.ModuleError, match="outside the modules root"):
        modules.resolve(tmp_path / "root", "link")


def test_unparsable_module_says_which_file(tmp_path: Path) -> None:
    root = write(tmp_path, 'resource "x" {{{')
    with pytest.raises(modules.ModuleError, match=r"cannot parse main\.tf"):
        modules.inspect(root, "m")


def test_digest_changes_with_content(tmp_path: Path) -> None:
    root = write(tmp_path, "# a\n")
    first = modules.digest(root / "m")
    (root / "m" / "main.tf").write_text("# b\n")
    assert modules.digest(root / "m") != first


@given(
    st.dictionaries(
        st.sampled_from(["resource", "data", "terraform", "variable", "output", "provider", "x"]),
        st.lists(
            st.dictionaries(
                st.text(max_size=5),
                st.none() | st.text(max_size=5) | st.dictionaries(st.text(max_size=3), st.text(max_size=3)),
                max_size=3,
            ),
            max_size=3,
        ),
    )
)
def test_analyse_never_crashes_on_odd_shapes(doc: dict[str, object]) -> None:
    analyse({"main.tf": doc})  # type: ignore[dict-item]


def test_schema_problems() -> None:
    assert schema_problem({"type": "object", "properties": {"a": {"type": "string"}}}) is None
    assert "not a valid JSON Schema" in (schema_problem({"type": "object", "properties": {"a": {"type": 3}}}) or "")
    assert "must describe an object" in (schema_problem({"type": "string"}) or "")


def test_spec_problems() -> None:
    spec = GoldenPathSpec.model_validate(
        {
            "description": "d",
            "module": "tiny",
            "parameters": {"type": "object", "properties": {"size": {"enum": ["s", "l"]}}},
            "outputs": [{"name": "endpoint"}, {"name": "ghost"}],
            "cost": {"parameter": "size", "table": {"s": "1"}},
        }
    )
    problems = spec_problems(spec, {"endpoint"})
    assert problems == ["output 'ghost' is not an output of module 'tiny'", "cost.table has no price for size = l"]
