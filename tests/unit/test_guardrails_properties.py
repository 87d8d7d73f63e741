"""Malformed input never crashes the guardrail engine: always a decision or a clear compile error.

Also the other pure guardrail deciders: team boundaries, built-in protections on a plan, and the
webhook configuration.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blacktop.api.environment import EnvironmentSpec
from blacktop.api.guardrailpolicy import RuleStage
from blacktop.builders import cost as cost_model
from blacktop.builders import webhook
from blacktop.controllers import budget
from blacktop.guardrails import boundaries, context, engine
from blacktop.guardrails.plan import plan_problems, plan_providers
from fakes import harness

pytestmark = pytest.mark.unit

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)

# Fragments of CEL, so generated expressions are often almost valid (and sometimes valid).
cel_fragments = st.sampled_from(
    [
        "object",
        "environment",
        "plan",
        "cost",
        "user",
        ".",
        "spec",
        "metadata",
        "name",
        "has(",
        ")",
        "(",
        "[",
        "]",
        "{",
        "}",
        "'a'",
        '"',
        "1",
        "2.5",
        "==",
        "!=",
        "<",
        "&&",
        "||",
        "!",
        "?",
        ":",
        ",",
        " in ",
        ".all(x, ",
        ".exists(x, ",
        "x",
        "size(",
        ".startsWith(",
        "duration('1h')",
        "true",
        "false",
        "null",
        "\\",
        "{{",
        "}}",
    ]
)
expressions = st.one_of(st.text(max_size=80), st.lists(cel_fragments, max_size=25).map("".join))


def _policy(expression: str, message: str, mode: str = "Enforce", stage: str = "Admission") -> dict[str, Any]:
    return {
        "metadata": {"name": "fuzz"},
        "spec": {"mode": mode, "rules": [{"name": "r", "expression": expression, "message": message, "stage": stage}]},
    }


def _compile(body: dict[str, Any]) -> engine.CompiledPolicy | engine.PolicyCompileError:
    """The compiled policy, or the compile error (returned, so the test can look at it)."""
    try:
        return engine.compile_body(body)
    except engine.PolicyCompileError as exc:
        return exc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expression=expressions, message=expressions, variables=st.dictionaries(st.text(max_size=12), json_values))
def test_any_expression_compiles_or_fails_clearly_and_any_context_decides(
    expression: str, message: str, variables: dict[str, Any]
) -> None:
    compiled = _compile(_policy(expression, message))
    if isinstance(compiled, engine.PolicyCompileError):
        assert str(compiled).startswith("GuardrailPolicy fuzz does not compile: ")
        assert compiled.problems
        return
    decision = engine.evaluate([compiled], engine.Subject("Environment"), variables, RuleStage.ADMISSION)
    assert decision.evaluated == 1
    assert len(decision.denials) in (0, 1)
    assert all(v.text.startswith("denied by GuardrailPolicy fuzz/r: ") for v in decision.denials)


@settings(max_examples=200, deadline=None)
@given(body=json_values)
def test_any_policy_body_compiles_or_fails_clearly(body: Any) -> None:
    if not isinstance(body, dict):
        body = {"spec": body}
    result = _compile(body)
    assert isinstance(result, engine.CompiledPolicy) or "does not compile" in str(result)


@settings(max_examples=200, deadline=None)
@given(obj=json_values, env=json_values, golden=json_values, plan=json_values)
def test_any_objects_give_a_decision(obj: Any, env: Any, golden: Any, plan: Any) -> None:
    policies = [
        engine.compile_body(_policy("object.spec.parameters.size == 'small'", "{{ object.metadata.name }}")),
        engine.compile_body(
            _policy("plan.resource_changes.all(r, r.type != 'x')", "{{ plan.providers }}", "Warn", "Plan")
        ),
        engine.compile_body(_policy("cost.budget == null || cost.environmentMonthly <= cost.budget", "b", "Audit")),
    ]
    request = {"metadata": {"name": "r"}, "spec": obj} if not isinstance(obj, dict) else obj
    environment = env if isinstance(env, dict) else None
    golden_path = golden if isinstance(golden, dict) else None
    plan_doc = plan if isinstance(plan, dict) else {"resource_changes": plan}
    for stage in RuleStage:
        variables = context.request_variables(
            request, None, environment, golden_path, None, plan=plan_doc if stage is RuleStage.PLAN else None
        )
        subject = context.request_subject(request, environment)
        decision = engine.evaluate(policies, subject, variables, stage)
        assert decision.evaluated >= 1


# -- team boundaries --------------------------------------------------------------------------------

ADMINS = ("blacktop:platform-admins", "system:masters")


@pytest.mark.parametrize(
    ("groups", "allowed"),
    [
        (["payments"], True),
        (["blacktop:platform-admins"], True),
        (["orders", "system:authenticated"], False),
        ([], False),
    ],
)
def test_environment_team_boundary(groups: list[str], allowed: bool) -> None:
    denial = boundaries.environment_denial({"username": "bob", "groups": groups}, "payments", "payments", ADMINS)
    assert (denial is None) is allowed
    if denial:
        assert "bob is not in group 'payments' of team 'payments'" in denial


def test_request_team_boundary_counts_owners() -> None:
    env = {
        "metadata": {"name": "e"},
        "spec": {"team": "payments", "owners": [{"kind": "User", "name": "olivia"}, {"kind": "Group", "name": "sre"}]},
    }
    assert boundaries.request_denial({"username": "olivia", "groups": []}, env, "payments", ADMINS) is None
    assert boundaries.request_denial({"username": "x", "groups": ["sre"]}, env, "payments", ADMINS) is None
    assert boundaries.request_denial({"username": "x", "groups": ["payments"]}, env, "payments", ADMINS) is None
    denial = boundaries.request_denial({"username": "mallory", "groups": ["orders"]}, env, "payments", ADMINS)
    assert denial is not None
    assert "mallory" in denial


# -- built-in protections on the plan -----------------------------------------------------------------


def test_plan_providers_and_problems() -> None:
    plan = {
        "resource_changes": [
            {"address": "terraform_data.a", "provider_name": "terraform.io/builtin/terraform"},
            {"address": "aws_s3_bucket.b", "provider_name": "registry.opentofu.org/hashicorp/aws"},
        ],
        "configuration": {
            "provider_config": {"random": {"name": "random", "full_name": "registry.opentofu.org/hashicorp/random"}},
            "root_module": {
                "resources": [{"address": "terraform_data.a", "mode": "managed", "type": "terraform_data"}],
                "module_calls": {
                    "m": {
                        "module": {
                            "resources": [
                                {
                                    "address": "terraform_data.s",
                                    "mode": "managed",
                                    "type": "terraform_data",
                                    "provisioners": [{"type": "local-exec"}],
                                },
                                {"address": "data.external.x", "mode": "data", "type": "external"},
                            ]
                        }
                    }
                },
            },
        },
    }
    assert plan_providers(plan) == {"builtin/terraform", "hashicorp/aws", "hashicorp/random"}
    problems = plan_problems(plan, ["hashicorp/random"])
    assert problems[0] == "the plan uses provider(s) hashicorp/aws, which are not on the allow-list"
    assert any("terraform_data.s uses the local-exec provisioner" in p for p in problems)
    assert any("data.external.x runs an external program" in p for p in problems)
    assert plan_problems({"resource_changes": plan["resource_changes"][:1]}, []) == []


@settings(max_examples=100, deadline=None)
@given(plan=st.dictionaries(st.sampled_from(["resource_changes", "configuration", "x"]), json_values))
def test_plan_checks_never_crash(plan: dict[str, Any]) -> None:
    assert isinstance(plan_problems(plan, ["hashicorp/random"]), list)


# -- the webhook configuration ------------------------------------------------------------------------


def test_webhook_configuration_local_mode() -> None:
    config = webhook.build_configuration(
        operator_namespace="blacktop-system", url="https://127.0.0.1:9443/", ca_bundle="Q0E="
    )
    assert config["metadata"]["name"] == "blacktop"
    hooks = {h["clientConfig"]["url"].rsplit("/", 1)[1]: h for h in config["webhooks"]}
    assert set(hooks) == {
        "validate-environment",
        "validate-servicerequest",
        "validate-guardrailpolicy",
        "validate-goldenpath",
        "validate-feedback",
    }
    for hook in config["webhooks"]:
        assert hook["failurePolicy"] == "Fail"
        assert hook["timeoutSeconds"] <= 5
        assert hook["clientConfig"]["caBundle"] == "Q0E="
        assert hook["sideEffects"] == "NoneOnDryRun"
    selector = hooks["validate-servicerequest"]["namespaceSelector"]["matchExpressions"][0]
    assert selector["operator"] == "NotIn"
    assert set(selector["values"]) == {"kube-system", "kube-public", "kube-node-lease", "blacktop-system"}
    assert hooks["validate-environment"]["clientConfig"]["url"] == "https://127.0.0.1:9443/validate-environment"


def test_webhook_configuration_service_mode() -> None:
    config = webhook.build_configuration(
        operator_namespace="ops", service={"name": "blacktop", "namespace": "ops", "port": 443}, ca_bundle="x"
    )
    paths = sorted(h["clientConfig"]["service"]["path"] for h in config["webhooks"])
    assert paths == [
        "/validate-environment",
        "/validate-feedback",
        "/validate-goldenpath",
        "/validate-guardrailpolicy",
        "/validate-servicerequest",
    ]
    with pytest.raises(ValueError, match="exactly one"):
        webhook.build_configuration(operator_namespace="ops", ca_bundle="x")


def test_mutating_configuration_stamps_service_requests_only() -> None:
    config = webhook.build_configuration(
        operator_namespace="ops", url="https://127.0.0.1:9443", ca_bundle="x", kind=webhook.MUTATING
    )
    assert config["kind"] == "MutatingWebhookConfiguration"
    (hook,) = config["webhooks"]
    assert hook["clientConfig"]["url"] == "https://127.0.0.1:9443/mutate-servicerequest"
    assert hook["rules"][0]["resources"] == ["servicerequests"]
    assert hook["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    assert (hook["sideEffects"], hook["failurePolicy"], hook["reinvocationPolicy"]) == ("None", "Fail", "Never")
    validating = webhook.build_configuration(operator_namespace="ops", url="https://h", ca_bundle="x")
    operations = {h["name"]: h["rules"][0]["operations"] for h in validating["webhooks"]}
    assert operations["validate-servicerequest.platform.blacktop.dev"] == ["CREATE", "UPDATE", "DELETE"]
    assert operations["validate-environment.platform.blacktop.dev"] == ["CREATE", "UPDATE", "DELETE"]  # team boundary
    assert operations["validate-goldenpath.platform.blacktop.dev"] == ["CREATE", "UPDATE"]


# -- environment cost -----------------------------------------------------------------------------------


def test_environment_cost_sums_the_requests() -> None:
    spec = EnvironmentSpec.model_validate({"team": "t", "tier": "dev", "budget": {"monthly": "50", "currency": "EUR"}})
    requests = [{"status": {"monthlyCost": "20.00"}}, {"status": {"monthlyCost": "1.5"}}, {"status": {}}, {}]
    cost = cost_model.environment_cost(spec, requests)
    assert (cost.monthly, cost.budget, cost.currency, cost.service_requests) == ("21.50", "50", "EUR", 4)


def test_only_price_changes_refresh_the_environment() -> None:
    ctx = harness().ctx
    request: dict[str, Any] = {"metadata": {"uid": "u-1"}, "status": {"monthlyCost": "1.00"}}
    assert budget.price_changed(ctx, request, deleted=False)
    assert not budget.price_changed(ctx, request, deleted=False)
    request["status"]["monthlyCost"] = "20.00"
    assert budget.price_changed(ctx, request, deleted=False)
    assert budget.price_changed(ctx, request, deleted=True)
    assert ctx.prices == {}  # a deleted request is forgotten: the table is bounded by live requests


# -- webhook settings and serving certificate -------------------------------------------------------------


def test_webhook_settings() -> None:
    from blacktop.config import Settings

    defaults = Settings.from_env({})
    assert (defaults.webhook_port, defaults.webhook_manage_config, defaults.webhook_cert_dir) == (9443, True, None)
    chart = Settings.from_env(
        {"BLACKTOP_WEBHOOK_MANAGE_CONFIG": "false", "BLACKTOP_WEBHOOK_CERT_DIR": "/certs", "BLACKTOP_WEBHOOK_PORT": "0"}
    )
    assert (chart.webhook_port, chart.webhook_manage_config, str(chart.webhook_cert_dir)) == (0, False, "/certs")


def test_generated_serving_certificate_is_trusted_for_its_hosts(tmp_path: Any, monkeypatch: Any) -> None:
    import ssl
    import tempfile

    from cryptography import x509

    from blacktop.localcluster.webhookcert import serving_cert

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    cert = serving_cert(None, ("127.0.0.1", "localhost"))
    assert cert.certfile.parent.parent == tmp_path / "tmp"
    leaf = x509.load_pem_x509_certificate(cert.certfile.read_bytes())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert.certfile, cert.keyfile)  # the key matches the certificate
    ssl.create_default_context(cadata=cert.ca_pem.decode())  # the bundle is a usable CA
    # A mounted Secret wins; without ca.crt the certificate itself is the bundle.
    (tmp_path / "tls.crt").write_bytes(cert.certfile.read_bytes())
    (tmp_path / "tls.key").write_bytes(cert.keyfile.read_bytes())
    mounted = serving_cert(tmp_path, ("ignored",))
    assert mounted.certfile == tmp_path / "tls.crt"
    assert mounted.ca_pem == cert.certfile.read_bytes()
    (tmp_path / "tls.key").unlink()
    with pytest.raises(FileNotFoundError, match=r"tls\.key"):
        serving_cert(tmp_path, ())


def test_a_start_removes_the_certificate_folders_of_operators_that_were_killed(tmp_path: Any) -> None:
    import os
    import subprocess

    from blacktop.localcluster.webhookcert import PREFIX, sweep_stale

    dead_pid = subprocess.Popen(["true"]).pid  # a process that has ended (and been reaped): its pid runs nothing
    os.waitpid(dead_pid, 0)
    dead, alive, other = tmp_path / f"{PREFIX}{dead_pid}-x1", tmp_path / f"{PREFIX}{os.getpid()}-x2", tmp_path / "keep"
    for folder in (dead, alive, other):
        folder.mkdir()
        (folder / "tls.key").write_text("k")
    assert sweep_stale(tmp_path) == [dead]
    assert not dead.exists()
    assert alive.exists()
    assert other.exists()
