"""The pure deciders behind issue 11 (tenancy hardening): bounds, names, boundaries, module reading, CEL cost."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blacktop.api.common import MAX_CONDITION_MESSAGE, Condition
from blacktop.api.guardrailpolicy import ApprovalRequirement, Mode, RuleStage
from blacktop.builders import parameters
from blacktop.builders.rbac import operator_subject
from blacktop.guardrails import boundaries, cel, cost, engine
from blacktop.terraform import module as modules
from blacktop.terraform import state as states

pytestmark = pytest.mark.unit


def test_parameter_bounds() -> None:
    assert parameters.bounds_problem({"size": "small", "tags": {"a": ["b"]}}) is None
    deep: dict[str, object] = {}
    node = deep
    for _ in range(20):
        node["d"] = {}
        node = node["d"]  # type: ignore[assignment]
    assert "nested 20 levels deep; at most 16" in (parameters.bounds_problem(deep) or "")
    assert "hold 2002 values; at most 1024" in (parameters.bounds_problem({"x": list(range(2000))}) or "")
    assert "at most 32768 are accepted" in (parameters.bounds_problem({"x": "y" * 40_000}) or "")
    assert parameters.bounds_problem([1]) == "parameters must be an object"


def test_depth_is_measured_without_recursion() -> None:
    value: object = 1
    for _ in range(5000):
        value = [value]
    assert "nested 5001 levels" in (parameters.bounds_problem({"x": value}) or "")


def test_identity_variables_are_never_parameters() -> None:
    problem = parameters.identity_problem({"namespace": "x", "size": "s", "uid": "u"})
    assert problem is not None
    assert problem.startswith("parameter(s) namespace, uid cannot be set")
    assert parameters.identity_problem({"size": "s"}) is None
    assert "golden_path cannot be set" in (parameters.identity_problem({"golden_path": "someone-elses"}) or "")
    _, errors = parameters.validate({"type": "object"}, {"environment": "theirs"})
    assert errors == [parameters.identity_problem({"environment": "theirs"})]


def test_schema_errors_stay_readable() -> None:
    schema = {"type": "object", "additionalProperties": False, "properties": {}}
    _, errors = parameters.validate(schema, {f"key{i}": "v" * 50 for i in range(200)})
    assert errors
    assert all(len(e) <= parameters.MAX_ERROR_LENGTH + 20 for e in errors)


def test_condition_messages_are_bounded() -> None:
    long = Condition(type="Ready", status="False", reason="X", message="m" * 100_000, last_transition_time="t")
    assert len(long.message) == MAX_CONDITION_MESSAGE
    assert long.message.endswith("(truncated)")


def test_reserved_names() -> None:
    reserved = boundaries.reserved_names("blacktop-system", "monitoring", ("platform-*",))
    assert "the monitoring namespace" in (boundaries.reserved_denial("monitoring", reserved) or "")
    assert "Blacktop itself runs in" in (boundaries.reserved_denial("blacktop-system", reserved) or "")
    assert "matches platform-*" in (boundaries.reserved_denial("platform-tools", reserved) or "")
    assert boundaries.reserved_denial("kube-anything", reserved) is not None
    assert boundaries.reserved_denial("default", reserved) is not None
    assert boundaries.reserved_denial("payments-dev", reserved) is None


@pytest.mark.parametrize(("operation", "verb"), [("CREATE", "create"), ("UPDATE", "change"), ("DELETE", "delete")])
def test_the_team_boundary_names_the_operation(operation: str, verb: str) -> None:
    outsider = {"username": "mallory", "groups": ["other"]}
    denial = boundaries.environment_denial(outsider, "payments", "payments", ["admins"], operation)
    assert denial is not None
    assert denial.endswith(f"to {verb} the Environment")
    member = {"username": "alice", "groups": ["payments"]}
    assert boundaries.environment_denial(member, "payments", "payments", ["admins"], operation) is None


def test_operator_subject() -> None:
    assert operator_subject("system:serviceaccount:ns:sa") == {
        "kind": "ServiceAccount",
        "name": "sa",
        "namespace": "ns",
    }
    assert operator_subject("blacktop-admin")["kind"] == "User"


def write(root: Path, files: dict[str, str], name: str = "m") -> Path:
    for path, text in files.items():
        target = root / name / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return root


def test_json_syntax_and_overrides_are_read(tmp_path: Path) -> None:
    provisioner = {"provisioner": [{"local-exec": {"command": "id"}}]}
    root = write(
        tmp_path,
        {
            "main.tf": 'output "x" {\n  value = 1\n}\n',
            "extra.tf.json": json.dumps({"resource": {"terraform_data": {"a": provisioner}}, "variable": {"v": {}}}),
            "override.tofu.json": json.dumps({"data": {"external": {"e": {"program": ["id"]}}}}),
            ".hidden.tf": "this is { not read",
        },
    )
    findings = modules.inspect(root, "m").findings
    assert any("extra.tf.json uses the local-exec provisioner" in v for v in findings.violations)
    assert any('data "external" "e" in override.tofu.json' in v for v in findings.violations)
    assert "v" in findings.variables


def test_module_calls_remote_and_nested(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "main.tf": 'module "remote" {\n  source = "registry.example.com/x/y/z"\n}\nmodule "inner" {\n  source = "./inner"\n}\n',
            "inner/main.tf": 'module "deeper" {\n  source = "./deeper"\n}\n',
            "inner/deeper/main.tf": 'resource "aws_instance" "i" {}\n',
        },
    )
    findings = modules.inspect(root, "m").findings
    assert any("has the remote source 'registry.example.com/x/y/z'" in v for v in findings.violations)
    assert "hashicorp/aws" in findings.providers  # found two levels down
    escape = write(tmp_path, {"main.tf": 'module "up" {\n  source = "../other"\n}\n'}, name="n")
    (escape / "other").mkdir()
    (escape / "other" / "main.tf").write_text("")
    assert any("leaves the folder of module 'n'" in v for v in modules.inspect(escape, "n").findings.violations)


def test_symlinked_files_out_of_the_root_are_refused(tmp_path: Path) -> None:
    (tmp_path / "outside.tf").write_text("")
    root = write(tmp_path / "root", {"main.tf": ""})
    (root / "m" / "linked.tf").symlink_to(tmp_path / "outside.tf")
    with pytest.raises(modules.ModuleEscapeError, match=r"linked\.tf in module folder 'm' is a symlink"):
        modules.inspect(root, "m")
    (root / "m" / "linked.tf").unlink()
    (root / "m" / "inside.tf").symlink_to(root / "m" / "main.tf")  # within the root: fine
    assert modules.inspect(root, "m").findings.violations == []


def test_every_run_checks_its_module_inside_the_tree_it_comes_from(tmp_path: Path) -> None:
    """A revision's module runs from its git commit's tree (or kept copy), outside the modules root:
    the runner checks it inside that tree, so a symlink out of the tree, a module folder swapped for
    a link, or a forbidden construct added later is refused before anything runs."""
    from blacktop.terraform.runner import RunIdentity, RunTarget
    from blacktop.terraform.subprocess_runner import SubprocessRunners

    runners = SubprocessRunners(
        binary="sh",  # never run: open only checks and copies
        workspace_root=tmp_path / "workspaces",
        timeout=1,
        grace=1,
        kubeconfig=None,
        cli_config=None,
        allowed_providers=("hashicorp/random",),
    )
    tree = write(tmp_path / "cache" / "trees" / "repo-abc", {"main.tf": 'output "x" {\n  value = 1\n}\n'})

    def open_target() -> object:
        target = RunTarget(
            name="ns.db", module=tree / "m", root=tree, variables={}, credentials={}, state=states.state_of("ns", "u")
        )
        run = RunIdentity(id="r", lock_id="l", operation="apply")
        return asyncio.run(runners.open(target, lambda _: contextlib.nullcontext(), run))  # type: ignore[arg-type, return-value]

    open_target()  # clean: copied into the request's workspace
    assert (tmp_path / "workspaces" / "ns.db" / "main.tf").is_file()
    (tmp_path / "secret.tf").write_text("")
    (tree / "m" / "linked.tf").symlink_to(tmp_path / "secret.tf")
    with pytest.raises(modules.ModuleRefused) as refused:
        open_target()
    assert refused.value.reason == "ModuleOutsideRoot"
    (tree / "m" / "linked.tf").unlink()
    (tree / "m" / "late.tf").write_text(
        'resource "terraform_data" "x" {\n  provisioner "local-exec" {\n    command = "id"\n  }\n}\n'
    )
    with pytest.raises(modules.ModuleRefused) as refused:
        open_target()
    assert refused.value.reason == "ForbiddenProvisioner"
    shutil.move(tree / "m", tmp_path / "moved")
    (tree / "m").symlink_to(tmp_path / "moved")  # the module folder itself now points out of the tree
    with pytest.raises(modules.ModuleRefused) as refused:
        open_target()
    assert refused.value.reason == "ModuleOutsideRoot"


def _price(expression: str) -> int:
    return cost.estimate(cel.compile_expression(expression).expression.serialize())


@pytest.mark.parametrize(
    "expression",
    [
        "!has(object.spec.parameters.size) || object.spec.parameters.size != 'large'",
        "plan.resource_changes.all(r, !(r.type in ['terraform_data', 'null_resource']))",
        "plan.resource_changes.filter(r, r.type == 'x').map(r, r.address).size() == 0",
        "cost.budget == null || cost.environmentMonthly <= cost.budget",
        "plan.resource_changes.all(r, r.change.after.tags.all(t, t.startsWith('team-')))",
    ],
)
def test_ordinary_rules_are_within_the_cost_limit(expression: str) -> None:
    assert _price(expression) < cost.DEFAULT_LIMIT


@pytest.mark.parametrize(
    "expression",
    [
        "object.spec.parameters.x.split(',').all(a, object.spec.parameters.x.split(',').all(b, a == b))",
        "object.spec.parameters.x.split(',').all(a, object.spec.parameters.x.split(',').size() > 0)",
        "plan.resource_changes.all(a, plan.resource_changes.all(b, plan.resource_changes.all(c, a == c)))",
    ],
)
def test_expensive_rules_are_over_the_cost_limit(expression: str) -> None:
    assert _price(expression) > cost.DEFAULT_LIMIT


def test_the_estimate_grows_with_nesting() -> None:
    flat = _price("object.spec.parameters.x.split(',').size() > 1")
    looped = _price("object.spec.parameters.x.split(',').all(a, a.size() > 1)")
    nested = _price("object.spec.parameters.x.split(',').all(a, a.split('.').all(b, b.size() > 1))")
    assert flat < looped < nested


def test_a_policy_over_the_limit_does_not_compile() -> None:
    body = {
        "metadata": {"name": "pricey"},
        "spec": {
            "rules": [
                {
                    "name": "slow",
                    "expression": "object.x.split(',').all(a, object.x.split(',').size() > 0)",
                    "message": "m",
                }
            ]
        },
    }
    engine.compile_body(body)  # fine without a limit (what the active set uses)
    with pytest.raises(engine.PolicyCompileError, match=r"rule slow: estimated worst-case cost .* exceeds the limit"):
        engine.compile_body(body, cost_limit=cost.DEFAULT_LIMIT)


@given(st.text(max_size=40))
def test_decoding_never_crashes_on_odd_bytes(junk: str) -> None:
    with contextlib.suppress(ValueError):
        cost.decode(junk.encode())


def test_decisions_travel_as_json() -> None:
    decision = engine.Decision(
        denials=[engine.Violation("p", "r", Mode.ENFORCE, RuleStage.PLAN, "why", ("a.b",))],
        warnings=[engine.Violation("w", "r", Mode.WARN, RuleStage.ADMISSION, "hm")],
        # A rule asking for approval keeps its requirement on the way back (approvals read it).
        approvals=[
            engine.Violation(
                "a",
                "lead",
                Mode.ENFORCE,
                RuleStage.PLAN,
                "a lead approves",
                approval=ApprovalRequirement.model_validate({"approvers": [{"kind": "Group", "name": "leads"}]}),
            )
        ],
        passed=[("p", "ok", Mode.AUDIT)],
        evaluated=4,
    )
    assert engine.decision_from_json(engine.decision_to_json(decision)) == decision
    unfinished = engine.unfinished("p", "r", RuleStage.ADMISSION, "the rule did not finish within 2s")
    assert unfinished.denial_text().startswith("denied by GuardrailPolicy p/r: the rule did not finish within 2s")


def test_state_resources() -> None:
    secret = states.empty_state_secret(states.state_of("ns", "uid"))
    assert states.state_resources(secret) == []
    state = {
        "resources": [
            {"mode": "managed", "type": "random_password", "name": "role", "instances": [{}]},
            {"mode": "data", "type": "postgresql_server", "name": "this", "instances": [{}]},
            {"mode": "managed", "module": "module.db", "type": "postgresql_role", "name": "app", "instances": [{}]},
            {"mode": "managed", "type": "gone", "name": "x", "instances": []},
        ]
    }
    secret["data"]["tfstate"] = base64.b64encode(gzip.compress(json.dumps(state).encode())).decode()
    assert states.state_resources(secret) == ["random_password.role", "module.db.postgresql_role.app"]
    assert states.state_resources({"data": {"tfstate": "not base64 at all"}}) == []
