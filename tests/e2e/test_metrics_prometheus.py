"""A real Prometheus (Debian's) scrapes the operator during provisioning runs and evaluates the shipped rules.

One run of the `tiny` golden path succeeds, one of a variant is made to fail at plan; Prometheus'
HTTP API must then show the lead-time observation, the failure with its class, and the recording
rules' results.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import (
    Kubectl,
    OperatorProcess,
    apply_json,
    apply_ready,
    make_environment,
    service_request,
    tiny_golden_path,
    unique,
    wait_for,
)
from prometheus_support import Prometheus

pytestmark = pytest.mark.e2e


@pytest.fixture
def prometheus(tmp_path: Path, operator: OperatorProcess) -> Iterator[Prometheus]:
    with Prometheus(tmp_path, operator.metrics_port) as server:
        yield server


@pytest.fixture
def catalog(kubectl: Kubectl, operator: OperatorProcess) -> Iterator[tuple[str, str]]:
    """The example `tiny` golden path and a variant that can be made to fail, under this test's names."""
    ok_name = apply_ready(kubectl, tiny_golden_path(unique("tiny")))
    failing_name = apply_ready(kubectl, tiny_golden_path(unique("tiny-failing"), failable=True))
    yield ok_name, failing_name
    kubectl("delete", "goldenpath", ok_name, failing_name, "--ignore-not-found", "--wait=false")


@pytest.fixture
def environment(kubectl: Kubectl, operator: OperatorProcess) -> Iterator[str]:
    name = make_environment(kubectl, unique("metrics-env"), "measured", budget={"monthly": "100"})
    yield name
    kubectl("delete", "environment", name, "--ignore-not-found", "--wait=true", "--timeout=180s")


def test_prometheus_sees_lead_time_failures_and_rules(
    kubectl: Kubectl, prometheus: Prometheus, catalog: tuple[str, str], environment: str
) -> None:
    ok_path, failing_path = catalog
    lead_count = f'blacktop_provisioning_lead_time_seconds_count{{golden_path="{ok_path}",tier="dev"}}'
    plan_failed = f'blacktop_runs_total{{golden_path="{failing_path}",operation="apply",result="failed",failure_class="PlanFailed"}}'
    # The operator creates a golden path's series at zero when it sees it; wait until Prometheus has
    # scraped them, so the run below is an increase that rate() and the recording rules can see.
    wait_for(lambda: prometheus.value(lead_count) == 0, timeout=60, what=f"{lead_count} == 0 in Prometheus")
    wait_for(lambda: prometheus.value(plan_failed) == 0, timeout=60, what=f"{plan_failed} == 0 in Prometheus")

    good, bad = unique("fast"), unique("broken")
    apply_json(kubectl, service_request(good, environment, ok_path, size="medium"))
    apply_json(kubectl, service_request(bad, environment, failing_path, fail=True))
    kubectl("wait", "--for=condition=Ready", f"servicerequest/{good}", "-n", environment, "--timeout=180s", timeout=200)
    sr = json.loads(kubectl("get", "servicerequest", good, "-n", environment, "-o", "json").stdout)
    lead_time = sr["status"]["leadTimeSeconds"]

    # The lead-time histogram has the run, in the right bucket.
    wait_for(lambda: prometheus.value(lead_count) == 1, timeout=60, what=f"{lead_count} == 1")
    observed = prometheus.value(f'blacktop_provisioning_lead_time_seconds_sum{{golden_path="{ok_path}",tier="dev"}}')
    assert observed == lead_time
    succeeded = f'blacktop_runs_total{{golden_path="{ok_path}",operation="apply",result="succeeded"}}'
    assert prometheus.value(succeeded) == 1

    # Time per stage: waiting for a run slot, and each OpenTofu step.
    for stage in ("queued", "init", "plan", "apply"):
        count = prometheus.value(f'blacktop_stage_duration_seconds_count{{stage="{stage}"}}')
        assert count is not None, f"no {stage} stage observed"
        assert count >= 1

    # The failure counter has the injected failure, with its class.
    failures = wait_for(lambda: prometheus.value(plan_failed), timeout=120, what=f"{plan_failed} >= 1")
    assert failures >= 1
    classes = {
        s["metric"]["failure_class"]
        for s in prometheus.query(f'blacktop_runs_total{{golden_path="{failing_path}",result="failed"}} > 0')
    }
    assert classes == {"PlanFailed"}

    # The recording rules evaluate to real numbers over this data (rules run every second, a little
    # behind the scrapes: until they have seen the runs, the ratios are 0/0 = NaN).
    def rule(promql: str, expected: float) -> bool:
        value = prometheus.value(promql)
        return value is not None and value == expected

    failing_ratio = f'golden_path:blacktop_runs_failed:ratio_rate5m{{golden_path="{failing_path}"}}'
    ok_ratio = f'golden_path:blacktop_runs_failed:ratio_rate5m{{golden_path="{ok_path}"}}'
    # Every run of the failing variant failed; none of the example's did.
    wait_for(lambda: rule(failing_ratio, 1.0), timeout=60, what=f"{failing_ratio} == 1")
    wait_for(lambda: rule(ok_ratio, 0.0), timeout=60, what=f"{ok_ratio} == 0")
    by_class = 'failure_class:blacktop_runs_failed:rate5m{failure_class="PlanFailed"}'
    # Each rule is evaluated on its own tick: this one may see the failed run a moment after the ratio did.
    wait_for(lambda: (prometheus.value(by_class) or 0) > 0, timeout=60, what=f"{by_class} > 0")
    p95_rule = (
        f'golden_path_tier:blacktop_provisioning_lead_time_seconds:p95_rate1h{{golden_path="{ok_path}",tier="dev"}}'
    )
    p95 = wait_for(
        lambda: (v := prometheus.value(p95_rule)) is not None and math.isfinite(v) and v,
        timeout=60,
        what=f"{p95_rule} to be a number",
    )
    assert 0 < p95 <= 7200
    # Cost against budget: the medium tiny costs 5 and the failing small one 1, of the team's 100.
    used = 'team:blacktop_budget_used:ratio{team="measured"}'
    wait_for(lambda: prometheus.value(used) == pytest.approx(0.06), timeout=30, what=f"{used} == 0.06")
    rules = prometheus.api("rules")
    health = {rule["name"]: rule["health"] for group in rules["groups"] for rule in group["rules"]}
    assert health, "no rules loaded"
    assert set(health.values()) == {"ok"}, health

    for name in (good, bad):
        kubectl("delete", "servicerequest", name, "-n", environment, "--timeout=180s")
    destroyed = f'blacktop_runs_total{{golden_path="{ok_path}",operation="destroy",result="succeeded"}}'
    wait_for(lambda: prometheus.value(destroyed) == 1, timeout=60, what=f"{destroyed} == 1")
