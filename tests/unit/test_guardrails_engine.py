"""The guardrail engine: compiling policies, matching, evaluating every mode at every stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from blacktop.api.guardrailpolicy import Mode, RuleStage
from blacktop.guardrails import cel, context, engine
from blacktop.guardrails.engine import Subject
from helpers import REPO

pytestmark = pytest.mark.unit

EXAMPLES = REPO / "examples" / "policies"

TINY: dict[str, Any] = {
    "metadata": {"name": "tiny"},
    "spec": {
        "description": "tiny",
        "module": "tiny",
        "parameters": {"type": "object", "properties": {"size": {"type": "string", "default": "small"}}},
        "cost": {"parameter": "size", "table": {"small": "1", "medium": "5", "large": "20"}},
    },
}


def policy(mode: str = "Enforce", match: dict[str, Any] | None = None, **rule: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p"},
        "spec": {
            "mode": mode,
            "match": match or {},
            "rules": [{"name": "r", "expression": "true", "message": "m", **rule}],
        },
    }


def env(tier: str = "dev", team: str = "payments", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": f"{team}-{tier}"}, "spec": {"team": team, "tier": tier, **spec}}


def request(name: str = "db", **parameters: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "payments-dev"},
        "spec": {"goldenPath": "tiny", "parameters": parameters},
    }


def decide_request(
    policies: list[dict[str, Any]],
    req: dict[str, Any],
    environment: dict[str, Any],
    *,
    stage: RuleStage = RuleStage.ADMISSION,
    siblings: list[dict[str, Any]] = (),  # type: ignore[assignment]
    plan: dict[str, Any] | None = None,
) -> engine.Decision:
    compiled = [engine.compile_body(p) for p in policies]
    variables = context.request_variables(
        req,
        None,
        environment,
        TINY,
        {"username": "alice", "groups": ["payments"]},
        siblings=[(s, TINY) for s in siblings],
        plan=plan,
    )
    return engine.evaluate(compiled, context.request_subject(req, environment), variables, stage)


def example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    return doc


# -- compiling -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_policies_compile(path: Path) -> None:
    compiled = engine.compile_body(yaml.safe_load(path.read_text()))
    assert compiled.rules


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        ({"expression": "object.spec =="}, "Syntax error"),
        ({"expression": "objct.spec.team == 'a'"}, "undeclared reference to 'objct.spec.team'"),
        ({"expression": "1 + 2"}, "returns int, but a rule must return a bool"),
        ({"expression": "'a' + 1 == 'a1'"}, "no matching overload"),
        ({"message": "bad {{ object. }} placeholder"}, "rule r: message"),
        ({"message": "empty {{ }} placeholder"}, "empty {{ }} placeholder"),
    ],
)
def test_compile_errors_carry_the_compilers_message(rule: dict[str, Any], words: str) -> None:
    with pytest.raises(engine.PolicyCompileError) as caught:
        engine.compile_body(policy(**rule))
    assert words in str(caught.value)
    assert str(caught.value).startswith("GuardrailPolicy p does not compile: rule r:")


def test_invalid_spec_is_a_compile_error() -> None:
    with pytest.raises(engine.PolicyCompileError, match=r"spec\.rules"):
        engine.compile_body({"metadata": {"name": "p"}, "spec": {"mode": "Enforce", "rules": []}})


def test_compiled_programs_are_cached() -> None:
    first = cel.compile_condition("object.metadata.name == 'cached'")
    assert cel.compile_condition("object.metadata.name == 'cached'") is first


# -- matching ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "subject", "expected"),
    [
        ({}, Subject("Environment", "dev", "a"), True),
        ({"kinds": ["ServiceRequest"]}, Subject("Environment", "dev", "a"), False),
        ({"kinds": ["ServiceRequest"]}, Subject("ServiceRequest", "dev", "a", "tiny"), True),
        ({"tiers": ["prod"]}, Subject("ServiceRequest", "dev", "a", "tiny"), False),
        ({"tiers": ["dev", "prod"]}, Subject("ServiceRequest", "dev", "a", "tiny"), True),
        ({"teams": ["b"]}, Subject("Environment", "dev", "a"), False),
        ({"teams": ["a"]}, Subject("Environment", "dev", "a"), True),
        ({"goldenPaths": ["postgres"]}, Subject("ServiceRequest", "dev", "a", "tiny"), False),
        ({"goldenPaths": ["tiny"]}, Subject("ServiceRequest", "dev", "a", "tiny"), True),
        ({"goldenPaths": ["tiny"]}, Subject("Environment", "dev", "a"), False),
    ],
)
def test_matching(match: dict[str, Any], subject: Subject, expected: bool) -> None:
    compiled = engine.compile_body(policy(match=match))
    assert engine.matches(compiled.match, subject) is expected


def test_unmatched_policies_are_not_evaluated() -> None:
    decision = decide_request([policy(match={"tiers": ["prod"]}, expression="false")], request(), env())
    assert decision.allowed
    assert decision.evaluated == 0


# -- modes and stages ----------------------------------------------------------------------------


@pytest.mark.parametrize("stage", [RuleStage.ADMISSION, RuleStage.PLAN])
@pytest.mark.parametrize("mode", ["Enforce", "Warn", "Audit"])
def test_every_mode_at_every_stage(mode: str, stage: RuleStage) -> None:
    failing = policy(mode, expression="object.spec.parameters.size == 'small'", message="too big", stage=stage.value)
    plan = {"resource_changes": []} if stage is RuleStage.PLAN else None
    decision = decide_request([failing], request(size="large"), env(), stage=stage, plan=plan)
    assert decision.evaluated == 1
    found = {"Enforce": decision.denials, "Warn": decision.warnings, "Audit": decision.audits}[mode]
    assert [(v.policy, v.rule, v.message, v.mode, v.stage) for v in found] == [("p", "r", "too big", Mode(mode), stage)]
    assert decision.allowed is (mode != "Enforce")
    assert len(decision.recorded) == (0 if mode == "Enforce" else 1)
    passing = decide_request([failing], request(size="small"), env(), stage=stage, plan=plan)
    assert passing.allowed
    assert not passing.recorded


def test_rules_of_the_other_stage_are_skipped() -> None:
    plan_rule = policy(expression="false", stage="Plan")
    assert decide_request([plan_rule], request(), env()).evaluated == 0
    admission_rule = policy(expression="false")
    assert decide_request([admission_rule], request(), env(), stage=RuleStage.PLAN, plan={}).evaluated == 0


def test_denial_line_names_policy_rule_and_reason() -> None:
    decision = decide_request([example("team-budget")], request(size="large"), env(budget={"monthly": "10"}))
    assert not decision.allowed
    assert decision.denial_text() == (
        "denied by GuardrailPolicy team-budget/within-budget: db costs 20 USD/month, which would take environment "
        "payments-dev to 20 USD/month, over its budget of 10"
    )


def test_warning_and_audit_lines() -> None:
    warn = decide_request([example("dev-small-sizes")], request(size="medium"), env())
    assert [v.text for v in warn.warnings] == [
        "GuardrailPolicy dev-small-sizes/small-only (Warn): size medium is not small; dev environments should use "
        "size small"
    ]
    audit = decide_request([example("audit-large-requests")], request(size="large"), env())
    assert [v.text for v in audit.audits] == [
        "GuardrailPolicy audit-large-requests/not-large (Audit): alice asked for size large (tiny, 20 USD/month)"
    ]


# -- budgets, TTL, plans ---------------------------------------------------------------------------


def test_budget_counts_the_other_requests_of_the_environment() -> None:
    budget = example("team-budget")
    environment = env(budget={"monthly": "25"})
    others = [request("a", size="large"), request("b", size="small")]  # 21
    assert decide_request([budget], request(size="medium"), environment, siblings=others).denials  # 26 > 25
    assert decide_request([budget], request(size="small"), environment, siblings=others).allowed  # 22
    # An update of a request counts its new price once, not its old one too.
    assert decide_request([budget], request("a", size="large"), environment, siblings=others).allowed  # 21
    assert decide_request([budget], request(size="large"), env()).allowed  # no budget: no limit


def test_defaults_of_the_golden_path_set_the_cost() -> None:
    variables = context.request_variables(request(), None, env(), TINY, None)
    assert variables["cost"] == {"monthly": 1.0, "currency": "USD", "environmentMonthly": 1.0, "budget": None}
    assert context.request_variables(request(), None, env(), None, None)["cost"]["monthly"] == 0.0


@pytest.mark.parametrize(("ttl", "denied"), [(None, True), ("72h", False), ("168h", False), ("169h", True)])
def test_dev_max_ttl(ttl: str | None, denied: bool) -> None:
    compiled = [engine.compile_body(example("dev-max-ttl"))]
    environment = env(**({"ttl": ttl} if ttl else {}))
    variables = context.environment_variables(environment, None, {"username": "u", "groups": []})
    decision = engine.evaluate(compiled, context.environment_subject(environment), variables, RuleStage.ADMISSION)
    assert bool(decision.denials) is denied
    if denied:
        assert f"(got: {ttl or 'none'})" in decision.denial_text()


def _change(address: str, rtype: str) -> dict[str, Any]:
    return {
        "address": address,
        "type": rtype,
        "provider_name": "registry.opentofu.org/hashicorp/random",
        "change": {"actions": ["create"]},
    }


def test_plan_rule_names_the_offending_resources() -> None:
    plan = {
        "resource_changes": [
            _change("random_password.p", "random_password"),
            _change("terraform_data.a", "terraform_data"),
            _change("module.m.null_resource.b", "null_resource"),
        ]
    }
    decision = decide_request(
        [example("staging-no-placeholders")], request(), env("staging"), stage=RuleStage.PLAN, plan=plan
    )
    [denial] = decision.denials
    assert denial.resources == ("terraform_data.a", "module.m.null_resource.b")
    assert denial.text.endswith("[resources: terraform_data.a, module.m.null_resource.b]")
    assert "terraform_data, null_resource" in denial.message
    clean = {"resource_changes": [_change("random_password.p", "random_password")]}
    assert decide_request(
        [example("staging-no-placeholders")], request(), env("staging"), stage=RuleStage.PLAN, plan=clean
    ).allowed


def test_a_plan_rule_not_about_resources_names_none() -> None:
    rule = policy(expression="cost.monthly < 1.0", stage="Plan")
    plan = {"resource_changes": [_change("terraform_data.a", "terraform_data")]}
    [denial] = decide_request([rule], request(), env(), stage=RuleStage.PLAN, plan=plan).denials
    assert denial.resources == ()


def test_plan_providers_are_in_the_context() -> None:
    rule = policy(expression="plan.providers == ['hashicorp/random']", stage="Plan")
    plan = {"resource_changes": [_change("random_password.p", "random_password")]}
    assert decide_request([rule], request(), env(), stage=RuleStage.PLAN, plan=plan).allowed


# -- evaluation problems fail closed ---------------------------------------------------------------


def test_a_rule_that_cannot_be_evaluated_is_a_violation_that_says_why() -> None:
    decision = decide_request([policy(expression="object.spec.nope == 1", message="x")], request(), env())
    [denial] = decision.denials
    assert "could not be evaluated" in denial.message
    assert "nope" in denial.message
    assert "has()" in denial.message


def test_a_dyn_rule_that_returns_no_bool_is_a_violation() -> None:
    decision = decide_request([policy(expression="object.spec.parameters.size", message="x")], request(size="s"), env())
    assert "not a bool" in decision.denials[0].message


def test_a_placeholder_that_fails_renders_as_a_question_mark() -> None:
    decision = decide_request([policy(expression="false", message="a {{ object.nope }} b")], request(), env())
    assert decision.denials[0].message == "a <?> b"


@pytest.mark.parametrize(
    ("value", "text"),
    [(15.0, "15"), (15.5, "15.5"), (15.25, "15.25"), (True, "true"), (None, "null"), (["a", 1], "a, 1"), ("s", "s")],
)
def test_render(value: Any, text: str) -> None:
    assert cel.render(value) == text


def test_outcomes_name_every_evaluated_rule_once() -> None:
    passing = policy("Enforce", expression="true")
    denying = {**policy("Enforce", expression="false"), "metadata": {"name": "deny"}}
    warning = {**policy("Warn", expression="false"), "metadata": {"name": "warn"}}
    auditing = {**policy("Audit", expression="false"), "metadata": {"name": "audit"}}
    decision = decide_request([passing, denying, warning, auditing], request(), env())
    assert sorted(decision.outcomes()) == [
        ("audit", "r", Mode.AUDIT, "audited"),
        ("deny", "r", Mode.ENFORCE, "denied"),
        ("p", "r", Mode.ENFORCE, "allowed"),
        ("warn", "r", Mode.WARN, "warned"),
    ]
    assert decision.evaluated == 4


def _kubernetes_change(namespace: str, actions: tuple[str, ...] = ("create",)) -> dict[str, Any]:
    after = None if actions == ("delete",) else {"metadata": [{"name": "web", "namespace": namespace}]}
    return {
        "address": f"kubernetes_deployment_v1.{namespace}",
        "type": "kubernetes_deployment_v1",
        "change": {"actions": list(actions), "after": after},
    }


def test_kubernetes_objects_stay_in_the_requests_namespace() -> None:
    rule = [example("kubernetes-own-namespace")]

    def decide(*changes: dict[str, Any]) -> engine.Decision:
        plan = {"resource_changes": list(changes)}
        return decide_request(rule, request(), env(), stage=RuleStage.PLAN, plan=plan)

    assert decide(_kubernetes_change("payments-dev"), _change("terraform_data.a", "terraform_data")).allowed
    assert decide(_kubernetes_change("elsewhere", ("delete",))).allowed
    [denial] = decide(_kubernetes_change("payments-dev"), _kubernetes_change("bank-dev")).denials
    assert denial.resources == ("kubernetes_deployment_v1.bank-dev",)
    assert "must stay in namespace payments-dev; the plan writes to" in denial.message
    assert "bank-dev" in denial.message


def test_every_example_policy_compiles_within_the_cost_limit_admission_applies() -> None:
    """What `kubectl apply -f examples/policies/` sends: admission refuses a rule over the limit."""
    from blacktop.config import Settings

    limit = Settings().cel_cost_limit
    found = sorted(EXAMPLES.glob("*.yaml"))
    assert found
    for path in found:
        engine.compile_body(yaml.safe_load(path.read_text()), cost_limit=limit)  # raises if over
