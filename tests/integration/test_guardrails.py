"""Guardrails against the real control plane: the admission webhook answers `kubectl apply`, the
Plan stage stops a forbidden plan before apply, and policies report whether they are active.

Example policies are applied from examples/policies/ under a unique name and narrowed to a unique
team (match.teams), so they never touch other tests' objects; every test deletes what it made.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import (
    API,
    DEVELOPERS,
    REPO,
    Kubectl,
    OperatorProcess,
    apply_ready,
    condition,
    environment_body,
    get,
    scrape_metrics,
    service_request,
    tiny_golden_path,
    try_apply,
    unique,
    wait_for,
    webhook_urls,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def golden_path(kubectl: Kubectl, operator: OperatorProcess) -> Iterator[str]:
    """A copy of the example `tiny` golden path (provider-free, provisions in seconds)."""
    name = apply_ready(kubectl, tiny_golden_path(unique("tiny-gr")))
    yield name
    kubectl("delete", "goldenpath", name, "--ignore-not-found", "--wait=false")


@pytest.fixture
def cleanup(kubectl: Kubectl) -> Iterator[list[tuple[str, ...]]]:
    """Objects to delete after the test: (kind, name) or (kind, name, namespace)."""
    made: list[tuple[str, ...]] = []
    yield made
    for item in reversed(made):
        namespace = ["-n", item[2]] if len(item) > 2 else []
        kubectl("delete", item[0], item[1], *namespace, "--ignore-not-found", "--wait=false")


@pytest.fixture
def team_environment(kubectl: Kubectl, operator: OperatorProcess, cleanup: list[tuple[str, ...]]) -> Callable[..., str]:
    """Make a Ready environment for a fresh team; returns its name (the team is the name's prefix)."""

    def make(tier: str = "dev", **spec: Any) -> str:
        team = unique("team")
        name = f"{team}-{tier}"
        body = environment_body(name, team, tier, ttl="2h", **spec)
        admit(kubectl, cleanup, body)
        kubectl("wait", "--for=condition=Ready", f"environment/{name}", "--timeout=60s")
        return name

    return make


@pytest.fixture
def example_policy(kubectl: Kubectl, operator: OperatorProcess, cleanup: list[tuple[str, ...]]) -> Callable[..., str]:
    """Apply examples/policies/<example>.yaml for one team only; returns the policy's name."""

    def make(example: str, team: str, mode: str | None = None) -> str:
        doc = yaml.safe_load((REPO / "examples" / "policies" / f"{example}.yaml").read_text())
        doc["metadata"]["name"] = name = unique(example)
        doc["spec"]["match"]["teams"] = [team]
        if mode:
            doc["spec"]["mode"] = mode
        admit(kubectl, cleanup, doc)
        wait_for(
            lambda: (c := condition(get(kubectl, "guardrailpolicy", name))) and c["reason"] == "Active" and c,
            timeout=30,
            what=f"GuardrailPolicy {name} to be Active",
        )
        return name

    return make


def team_of(environment: str) -> str:
    return environment.rsplit("-", 1)[0]


def admit(kubectl: Kubectl, cleanup: list[tuple[str, ...]], body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """Apply ``body``, which admission must accept, and have the test's cleanup delete it."""
    result = try_apply(kubectl, body)
    assert result.returncode == 0, result.stderr
    meta = body["metadata"]
    cleanup.append((body["kind"].lower(), meta["name"], *([meta["namespace"]] if "namespace" in meta else [])))
    return result


def assert_refused(kubectl: Kubectl, body: dict[str, Any], *phrases: str) -> None:
    """Admission refuses ``body`` both in a server-side dry run and for real, saying every phrase."""
    for args in (("--dry-run=server",), ()):
        denied = try_apply(kubectl, body, *args)
        assert denied.returncode != 0
        for phrase in phrases:
            assert phrase in denied.stderr


# -- webhook configuration -------------------------------------------------------------------------


def test_webhook_configuration_is_strict_and_excludes_system_namespaces(kubectl: Kubectl, operator: Any) -> None:
    config = get(kubectl, "validatingwebhookconfiguration", "blacktop")
    assert config is not None
    paths = sorted(h["clientConfig"]["url"].rsplit("/", 1)[1] for h in config["webhooks"])
    assert paths == [
        "validate-environment",
        "validate-feedback",
        "validate-goldenpath",
        "validate-guardrailpolicy",
        "validate-servicerequest",
    ]
    for hook in config["webhooks"]:
        assert hook["failurePolicy"] == "Fail"
        assert hook["timeoutSeconds"] <= 5
        assert hook["clientConfig"]["url"].startswith(f"https://127.0.0.1:{operator.webhook_port}/")
    namespaced = [h for h in config["webhooks"] if h.get("namespaceSelector")]
    assert len(namespaced) == 2  # ServiceRequests and Feedback
    for hook in namespaced:
        excluded = hook["namespaceSelector"]["matchExpressions"][0]["values"]
        assert {"kube-system", "kube-public", "kube-node-lease", "blacktop-system"} <= set(excluded)


def test_operator_points_the_webhook_at_itself_and_releases_it_on_stop(
    kubectl: Kubectl, operator: OperatorProcess, modules_root: Path, tmp_path: Path
) -> None:
    """A stopped operator must not leave a failurePolicy=Fail webhook behind (it would refuse every
    later apply of Blacktop's kinds); the session operator's configuration is restored afterwards."""
    saved = get(kubectl, "validatingwebhookconfiguration", "blacktop")
    saved_mutating = get(kubectl, "mutatingwebhookconfiguration", "blacktop")
    assert saved is not None
    assert saved_mutating is not None
    own = OperatorProcess(
        operator.kubeconfig,
        tmp_path / "operator.log",
        env={"BLACKTOP_MODULES_ROOT": str(modules_root), "BLACKTOP_WEBHOOK_MANAGE_CONFIG": "true"},
    )
    try:
        own.start()
        wait_for(
            lambda: (
                (urls := webhook_urls(kubectl) + webhook_urls(kubectl, "mutatingwebhookconfiguration"))
                and all(f":{own.webhook_port}/" in u for u in urls)
            ),
            timeout=60,
            what="the new operator to point the webhook configuration at itself",
        )
        body = {
            "apiVersion": API,
            "kind": "GuardrailPolicy",
            "metadata": {"name": unique("broken")},
            "spec": {"rules": [{"name": "r", "expression": "nope ==", "message": "m"}]},
        }
        refused = try_apply(kubectl, body, "--dry-run=server")
        assert refused.returncode != 0
        assert "does not compile" in refused.stderr
        own.stop()
        assert "admission webhook configuration blacktop removed" in own.log_text()
        assert get(kubectl, "validatingwebhookconfiguration", "blacktop") is None
        assert get(kubectl, "mutatingwebhookconfiguration", "blacktop") is None
        # With no webhook, applies of Blacktop's kinds are not wedged.
        assert try_apply(kubectl, body, "--dry-run=server").returncode == 0
        # A broken policy that gets in while no webhook runs is reported, not enforced.
        assert try_apply(kubectl, body).returncode == 0
        try:
            ready = wait_for(
                lambda: condition(get(kubectl, "guardrailpolicy", body["metadata"]["name"])),
                timeout=30,
                what="the broken policy's status",
            )
            assert (ready["status"], ready["reason"]) == ("False", "CompileError")
            assert "rule r: expression:" in ready["message"]
            assert "Syntax error" in ready["message"]
        finally:
            kubectl("delete", "guardrailpolicy", body["metadata"]["name"], "--ignore-not-found")
    finally:
        own.stop()
        for config in (saved, saved_mutating):
            meta = config["metadata"]
            config["metadata"] = {"name": meta["name"], "labels": meta.get("labels") or {}}
            assert try_apply(kubectl, config).returncode == 0
    assert all(f":{operator.webhook_port}/" in u for u in webhook_urls(kubectl))


# -- built-in protections and broken policies ---------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "words"),
    [
        ("forbidden-local-exec", "uses the local-exec provisioner"),
        ("forbidden-provider", "provider(s) hashicorp/aws not allowed"),
    ],
)
def test_golden_path_with_a_forbidden_module_is_refused(
    kubectl: Kubectl, operator: OperatorProcess, module: str, words: str
) -> None:
    name = unique("forbidden")
    body = {
        "apiVersion": API,
        "kind": "GoldenPath",
        "metadata": {"name": name},
        "spec": {"description": "x", "module": module},
    }
    assert_refused(kubectl, body, f"denied by built-in protection: GoldenPath {name}, module '{module}'", words)
    assert get(kubectl, "goldenpath", name) is None


@pytest.mark.parametrize(
    ("expression", "message", "words"),
    [
        ("object.spec.team ==", "m", "Syntax error"),
        ("objct.spec.team == 'a'", "m", "undeclared reference to 'objct.spec.team'"),
        ("size(object.metadata.name)", "m", "returns int, but a rule must return a bool"),
        ("true", "{{ object.spec. }}", "rule r: message"),
    ],
)
def test_policy_with_a_broken_expression_is_refused(
    kubectl: Kubectl, operator: OperatorProcess, expression: str, message: str, words: str
) -> None:
    name = unique("broken")
    body = {
        "apiVersion": API,
        "kind": "GuardrailPolicy",
        "metadata": {"name": name},
        "spec": {"rules": [{"name": "r", "expression": expression, "message": message}]},
    }
    result = try_apply(kubectl, body)
    assert result.returncode != 0
    assert f"GuardrailPolicy {name} does not compile: rule r:" in result.stderr
    assert words in result.stderr
    assert get(kubectl, "guardrailpolicy", name) is None


# -- team boundaries ----------------------------------------------------------------------------------


def test_cross_team_environment_is_refused(
    kubectl: Kubectl, operator: OperatorProcess, developers_may_create_environments: str
) -> None:
    team = unique("team")
    body = environment_body(f"{team}-dev", team)
    outsider = try_apply(
        kubectl, body, "--dry-run=server", "--as=mallory", f"--as-group={DEVELOPERS}", "--as-group=other"
    )
    assert outsider.returncode != 0
    assert f"denied by team boundary: user mallory is not in group '{team}' of team '{team}'" in outsider.stderr
    member = try_apply(
        kubectl, body, "--dry-run=server", "--as=alice", f"--as-group={DEVELOPERS}", f"--as-group={team}"
    )
    assert member.returncode == 0, member.stderr


# -- example policies: Enforce, Warn, Audit -------------------------------------------------------------


def test_dev_max_ttl_denies_an_environment_without_ttl(
    kubectl: Kubectl, operator: OperatorProcess, example_policy: Callable[..., str]
) -> None:
    team = unique("team")
    policy = example_policy("dev-max-ttl", team)
    body = environment_body(f"{team}-dev", team)
    assert_refused(
        kubectl,
        body,
        f"denied by GuardrailPolicy {policy}/ttl-at-most-a-week: dev environments need a ttl",
        "(got: none)",
    )
    body["spec"]["ttl"] = "72h"
    assert try_apply(kubectl, body, "--dry-run=server").returncode == 0


def test_request_over_budget_is_refused(
    kubectl: Kubectl,
    operator: OperatorProcess,
    golden_path: str,
    team_environment: Callable[..., str],
    example_policy: Callable[..., str],
    cleanup: list[tuple[str, ...]],
) -> None:
    env = team_environment(budget={"monthly": "21"})
    policy = example_policy("team-budget", team_of(env))
    first = unique("large")
    admit(kubectl, cleanup, service_request(first, env, golden_path, size="large"))  # 20 of 21
    # The existing request counts: 20 + 1 fits, 20 + 5 does not.
    fits = try_apply(kubectl, service_request(unique("small"), env, golden_path, size="small"), "--dry-run=server")
    assert fits.returncode == 0, fits.stderr
    over = service_request(unique("medium"), env, golden_path, size="medium")
    assert_refused(
        kubectl,
        over,
        f"denied by GuardrailPolicy {policy}/within-budget: ",
        f"costs 5 USD/month, which would take environment {env} to 25 USD/month, over its budget of 21",
    )
    assert get(kubectl, "servicerequest", over["metadata"]["name"], "-n", env) is None
    # Both denials (dry run and real) are counted, and admission reviews are timed.
    scrape = scrape_metrics(operator)
    denied_series = (
        f'blacktop_guardrail_decisions_total{{mode="Enforce",outcome="denied",policy="{policy}",rule="within-budget"}}'
    )
    assert f"{denied_series} 2.0" in scrape, scrape
    assert 'blacktop_admission_review_duration_seconds_count{allowed="false",kind="ServiceRequest"}' in scrape
    # A denial is logged (who, why) but not as an ERROR: those are for failures an SRE must act on.
    denial_lines = [line for line in operator.log_text().splitlines() if f"{policy}/within-budget" in line]
    assert denial_lines
    assert not [line for line in denial_lines if "ERROR" in line], denial_lines
    # The environment's status carries what its requests cost against its budget.
    cost = wait_for(
        lambda: (
            (c := ((get(kubectl, "environment", env) or {}).get("status") or {}).get("cost"))
            and c.get("monthly") == "20.00"
            and c
        ),
        timeout=60,
        what="the environment's status to carry the requests' monthly cost",
    )
    assert (cost["budget"], cost["serviceRequests"]) == ("21", 1)


def test_warn_mode_admits_with_a_warning_and_records_it(
    kubectl: Kubectl,
    golden_path: str,
    team_environment: Callable[..., str],
    example_policy: Callable[..., str],
    cleanup: list[tuple[str, ...]],
) -> None:
    env = team_environment()
    policy = example_policy("dev-small-sizes", team_of(env))
    name = unique("medium")
    body = service_request(name, env, golden_path, size="medium")
    line = f"Warning: GuardrailPolicy {policy}/small-only (Warn): size medium is not small"
    dry = try_apply(kubectl, body, "--dry-run=server")
    assert dry.returncode == 0, dry.stderr
    assert line in dry.stderr
    result = admit(kubectl, cleanup, body)
    assert line in result.stderr
    status = wait_for(
        lambda: (s := (get(kubectl, "guardrailpolicy", policy) or {}).get("status")) and s.get("violations") and s,
        timeout=30,
        what="the warning to be recorded in the policy's status",
    )
    # Recorded once: the dry run had no side effects.
    assert status["violationCount"] == 1
    assert [(v["name"], v["namespace"], v["rule"]) for v in status["violations"]] == [(name, env, "small-only")]


def test_audit_mode_admits_and_records(
    kubectl: Kubectl,
    golden_path: str,
    team_environment: Callable[..., str],
    example_policy: Callable[..., str],
    cleanup: list[tuple[str, ...]],
) -> None:
    env = team_environment()
    policy = example_policy("audit-large-requests", team_of(env))
    names = [unique("large"), unique("large")]
    for name in names:
        result = admit(kubectl, cleanup, service_request(name, env, golden_path, size="large"))
        assert "Warning" not in result.stderr
    status = wait_for(
        lambda: (
            (s := (get(kubectl, "guardrailpolicy", policy) or {}).get("status")) and s.get("violationCount") == 2 and s
        ),
        timeout=30,
        what="both violations to be recorded in the policy's status",
    )
    assert sorted(v["name"] for v in status["violations"]) == sorted(names)
    assert all(v["rule"] == "not-large" and v["kind"] == "ServiceRequest" for v in status["violations"])
    assert "blacktop-admin asked for size large" in status["violations"][0]["message"]
    listing = kubectl("get", "guardrailpolicy", policy).stdout
    assert "Audit" in listing
    assert "Active" in listing


# -- the Plan stage ---------------------------------------------------------------------------------------


def test_plan_stage_rule_stops_a_forbidden_plan_before_apply(
    kubectl: Kubectl,
    golden_path: str,
    team_environment: Callable[..., str],
    example_policy: Callable[..., str],
    cleanup: list[tuple[str, ...]],
) -> None:
    env = team_environment("staging")
    policy = example_policy("staging-no-placeholders", team_of(env))
    name = unique("placeholder")
    # Admitted: the rule is a Plan-stage rule, so it only looks at the plan.
    admit(kubectl, cleanup, service_request(name, env, golden_path))
    compliant = wait_for(
        lambda: condition(get(kubectl, "servicerequest", name, "-n", env), "PolicyCompliant"),
        timeout=180,
        what="the plan to be checked against the guardrails",
    )
    assert compliant["status"] == "False"
    assert compliant["reason"] == "PolicyDenied"
    assert f"denied by GuardrailPolicy {policy}/no-forbidden-resource-types" in compliant["message"]
    assert "[resources: terraform_data.service]" in compliant["message"]
    sr = get(kubectl, "servicerequest", name, "-n", env)
    assert sr is not None
    ready = condition(sr)
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "PolicyDenied")
    assert sr["status"]["stage"] == "Failed"
    assert condition(sr, "Applied") is None  # nothing was applied
    assert get(kubectl, "secret", f"{name}-connection", "-n", env) is None
    events = json.loads(
        kubectl("get", "events", "-n", env, "--field-selector", f"involvedObject.name={name}", "-o", "json").stdout
    )["items"]
    assert any(e["reason"] == "PolicyDenied" and e["type"] == "Warning" for e in events)


def test_plan_stage_warning_lets_the_apply_go_on_and_is_recorded(
    kubectl: Kubectl,
    golden_path: str,
    team_environment: Callable[..., str],
    example_policy: Callable[..., str],
    cleanup: list[tuple[str, ...]],
) -> None:
    env = team_environment("staging")
    policy = example_policy("staging-no-placeholders", team_of(env), mode="Warn")
    name = unique("placeholder")
    admit(kubectl, cleanup, service_request(name, env, golden_path))
    kubectl("wait", "--for=condition=Ready", f"servicerequest/{name}", "-n", env, "--timeout=180s")
    compliant = condition(get(kubectl, "servicerequest", name, "-n", env), "PolicyCompliant")
    assert compliant is not None
    assert (compliant["status"], compliant["reason"]) == ("True", "PolicyWarned")
    assert f"GuardrailPolicy {policy}/no-forbidden-resource-types (Warn)" in compliant["message"]
    status = (get(kubectl, "guardrailpolicy", policy) or {}).get("status") or {}
    assert status.get("violationCount") == 1
    assert status["violations"][0]["name"] == name
