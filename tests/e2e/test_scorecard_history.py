"""The platform scorecard over a small real history, checked figure by figure against what the test did.

A control plane of its own (the scorecard is cluster-wide: other tests' teams would be in it), the
real operator, OpenTofu and a real Prometheus scraping it with the shipped rules. Two teams onboard;
alpha provisions a database and changes it, beta's first request fails until beta fixes it, the
platform team provisions one for alpha, workloads are deployed with and without golden paths, and
developers rate the platform. Every figure is computed by hand from the objects' own timestamps and
compared with the PlatformScorecard objects and with Prometheus. Then the operator is killed and
restarted (the same figures), beta deletes its request (still counted) and the operator is killed
again (still the same).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from blacktop.api.common import parse_time
from blacktop.api.scorecard import Metric
from blacktop.metrics.registry import CHANGE_BUCKETS, RECOVERY_BUCKETS
from helpers import (
    API,
    Kubectl,
    OperatorProcess,
    apply_json,
    apply_ready,
    condition,
    get,
    install_blacktop,
    make_environment,
    scrape_metrics,
    service_request,
    tiny_golden_path,
    wait_for,
    wait_ready,
)
from prometheus_support import Prometheus

pytestmark = pytest.mark.e2e

ALPHA, BETA = ("alice", "alpha"), ("bob", "beta")  # (user, team = group)
METRICS = [m.value for m in Metric]


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from blacktop.localcluster import LocalCluster

    with LocalCluster(tmp_path_factory.mktemp("scorecard-cluster")) as local:
        install_blacktop(local.kubeconfig)
        yield local


@pytest.fixture(scope="module")
def admin(own_cluster: Any) -> Kubectl:
    return Kubectl(own_cluster.kubeconfig)


@pytest.fixture(scope="module")
def scorecard_operator(
    own_cluster: Any, modules_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    # The only operator of this control plane: it serves admission here (platform edits are seen there),
    # trusting this control plane's webhook client certificate (not the session's).
    proc = OperatorProcess(
        own_cluster.kubeconfig,
        tmp_path_factory.mktemp("scorecard-operator") / "operator.log",
        env={
            "BLACKTOP_MODULES_ROOT": str(modules_root),
            "BLACKTOP_WEBHOOK_MANAGE_CONFIG": "true",
            "BLACKTOP_WEBHOOK_CLIENT_CA": str(own_cluster.webhook_client_ca),
        },
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def prometheus(tmp_path: Path, scorecard_operator: OperatorProcess) -> Iterator[Prometheus]:
    with Prometheus(tmp_path, scorecard_operator.metrics_port) as server:
        yield server


def tenant(kubectl: Kubectl, who: tuple[str, str], *args: str, input: str | None = None) -> str:
    """kubectl as a member of a team, with the RBAC the install gives it; fails the test if refused."""
    user, group = who
    return kubectl(*args, f"--as={user}", f"--as-group={group}", input=input).stdout


def tenant_apply(kubectl: Kubectl, who: tuple[str, str], body: dict[str, Any]) -> None:
    tenant(kubectl, who, "apply", "-f", "-", input=json.dumps(body))


def obj(kubectl: Kubectl, *args: str) -> dict[str, Any]:
    found = get(kubectl, *args)
    assert found is not None, args
    return found


def t(text: str) -> datetime:
    return parse_time(text)


def seconds(start: str, end: str) -> float:
    return (t(end) - t(start)).total_seconds()


def spec_written(kubectl: Kubectl, name: str, namespace: str) -> str:
    """When the request's spec was last written, read straight from its managedFields."""
    body = obj(kubectl, "servicerequest", name, "-n", namespace, "--show-managed-fields")
    times = [e["time"] for e in body["metadata"]["managedFields"] if "f:spec" in e.get("fieldsV1", {})]
    return max(times, key=t)


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(0.9 * len(ordered)) - 1]


def workload(kind: str, name: str, namespace: str, request: str | None = None) -> dict[str, Any]:
    labels = {"app": name} | ({"platform.blacktop.dev/service-request": request} if request else {})
    pod = {"containers": [{"name": "main", "image": "registry.example.com/app:1"}]}
    if kind == "Deployment":
        spec: dict[str, Any] = {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod},
        }
        api = "apps/v1"
    else:
        job = {"template": {"spec": {**pod, "restartPolicy": "Never"}}}
        spec, api = {"schedule": "*/5 * * * *", "jobTemplate": {"spec": job}}, "batch/v1"
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": spec,
    }


def feedback(name: str, namespace: str, score: int, golden_path: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"score": score} | ({"goldenPath": golden_path} if golden_path else {})
    return {"apiVersion": API, "kind": "Feedback", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def figures(kubectl: Kubectl) -> dict[str, dict[str, Any]]:
    """Every PlatformScorecard's status, by metric."""
    items = json.loads(kubectl("get", "platformscorecards", "-o", "json").stdout)["items"]
    return {i["metadata"]["name"]: i.get("status") or {} for i in items}


def met(status: dict[str, Any]) -> str | None:
    return (condition({"status": status}, "TargetMet") or {}).get("status")


def close(actual: float | None, expected: float) -> bool:
    return actual is not None and abs(actual - expected) < 1e-6


def wait_series(prometheus: Prometheus, series: str, ok: Any, what: str) -> float:
    """Poll Prometheus until ``series`` has a value ``ok`` accepts; fail with the last value seen."""
    seen: list[float | None] = [None]

    def probe() -> bool:
        seen[0] = prometheus.value(series)
        return seen[0] is not None and bool(ok(seen[0]))

    try:
        wait_for(probe, timeout=60, what=what)
    except AssertionError:
        raise AssertionError(f"{what}: Prometheus has {series} = {seen[0]}") from None
    assert seen[0] is not None
    return seen[0]


def wait_figures(kubectl: Kubectl, expected: dict[str, float], what: str) -> dict[str, dict[str, Any]]:
    """Poll until every object shows its expected value (the operator refreshes every 10 s here)."""

    def probe() -> dict[str, dict[str, Any]] | None:
        found = figures(kubectl)
        return found if all(close(found.get(m, {}).get("value"), v) for m, v in expected.items()) else None

    try:
        return wait_for(probe, timeout=90, interval=1, what=what)
    except AssertionError:
        found = figures(kubectl)
        wrong = {
            m: (found.get(m, {}).get("value"), v)
            for m, v in expected.items()
            if not close(found.get(m, {}).get("value"), v)
        }
        raise AssertionError(f"{what}: (shown, expected) {wrong}") from None


def test_the_scorecard_of_a_small_real_history(
    admin: Kubectl, scorecard_operator: OperatorProcess, prometheus: Prometheus
) -> None:
    # -- the platform team's catalog and known teams --------------------------------------------------------
    wait_for(lambda: len(figures(admin)) == len(METRICS), timeout=60, what="the operator to create the scorecard")
    admin("patch", "platformscorecard", "weekly-active-teams", "--type=merge",
          "-p", '{"spec":{"knownTeams":["alpha","beta","gamma"]}}')  # fmt: skip
    for golden_path in (tiny_golden_path("tiny"), tiny_golden_path("flaky", failable=True), tiny_golden_path("lonely")):
        apply_ready(admin, golden_path)
    alpha_env, beta_env = make_environment(admin, "alpha-dev", "alpha"), make_environment(admin, "beta-dev", "beta")

    # -- alpha self-serves a database, then changes it -----------------------------------------------------
    tenant_apply(admin, ALPHA, service_request("db", alpha_env, "tiny", size="small"))
    db_first = wait_ready(admin, "db", alpha_env)

    # -- beta's first request fails until beta fixes it ----------------------------------------------------
    tenant_apply(admin, BETA, service_request("cache", beta_env, "flaky", fail=True))
    first_failure = wait_for(
        lambda: (
            (sr := get(admin, "servicerequest", "cache", "-n", beta_env))
            and (sr.get("status") or {}).get("lastRun", {}).get("result") == "Failed"
            and sr
        ),
        timeout=120,
        interval=0.2,
        what="cache's first failed run",
    )
    assert first_failure["status"]["failures"] == 1
    failed_at = first_failure["status"]["lastRun"]["finishedAt"]
    wait_for(
        lambda: (obj(admin, "servicerequest", "cache", "-n", beta_env)["status"].get("history") or {}).get("trouble"),
        timeout=30,
        what="cache's trouble to be recorded",
    )
    tenant(admin, BETA, "patch", "servicerequest", "cache", "-n", beta_env, "--type=merge",
           "-p", '{"spec":{"parameters":{"fail":false}}}')  # fmt: skip
    cache = wait_ready(admin, "cache", beta_env)

    tenant(admin, ALPHA, "patch", "servicerequest", "db", "-n", alpha_env, "--type=merge",
           "-p", '{"spec":{"parameters":{"size":"medium"}}}')  # fmt: skip
    db = wait_ready(admin, "db", alpha_env)

    # -- the platform team provisions one for alpha: not self-service ------------------------------------------
    apply_json(admin, service_request("ops", alpha_env, "tiny"))
    ops = wait_ready(admin, "ops", alpha_env)

    # -- workloads: two of three made by a golden path; and ratings -------------------------------------------
    tenant_apply(admin, ALPHA, workload("Deployment", "web", alpha_env))
    tenant_apply(admin, ALPHA, workload("Deployment", "db-proxy", alpha_env, request="db"))
    tenant_apply(admin, BETA, workload("CronJob", "cache-warmer", beta_env, request="cache"))
    tenant_apply(admin, ALPHA, feedback("tiny-is-great", alpha_env, 10, "tiny"))
    tenant_apply(admin, ALPHA, feedback("platform-ok", alpha_env, 8))
    tenant_apply(admin, BETA, feedback("platform-hurt", beta_env, 3))

    # -- the figures by hand, from the objects' own timestamps ---------------------------------------------------
    alpha_created = obj(admin, "environment", alpha_env)["metadata"]["creationTimestamp"]
    beta_created = obj(admin, "environment", beta_env)["metadata"]["creationTimestamp"]
    alpha_onboarding = seconds(alpha_created, db_first["status"]["firstReadyTime"])
    beta_onboarding = seconds(beta_created, cache["status"]["firstReadyTime"])
    db_lead = seconds(spec_written(admin, "db", alpha_env), db["status"]["lastRun"]["finishedAt"])
    cache_lead = seconds(spec_written(admin, "cache", beta_env), cache["status"]["lastRun"]["finishedAt"])
    recovery = seconds(failed_at, cache["status"]["lastRun"]["finishedAt"])
    assert ops["metadata"]["generation"] == 1
    expected = {
        "team-onboarding": p90([alpha_onboarding, beta_onboarding]),
        "environment-onboarding": p90([alpha_onboarding, beta_onboarding]),
        "weekly-active-teams": 2 / 3,  # alpha and beta of alpha, beta, gamma
        "golden-path-adoption": 2 / 3,  # db-proxy (tiny) and cache-warmer (flaky); not web
        "self-service-rate": 1 / 3,  # db; not cache (manual retry) nor ops (platform edit)
        "change-lead-time": p90([db_lead, cache_lead]),
        "change-frequency": 4,  # db created, db changed, cache created (its fix), ops created
        "weekly-trouble": 1,  # cache, however many attempts failed
        "time-to-recovery": recovery,
        "developer-satisfaction": 0,  # 1 promoter, 1 passive, 1 detractor: (1 - 1) / 3
    }
    verdicts = {
        "team-onboarding": "True",
        "environment-onboarding": "True",
        "weekly-active-teams": "False",
        "golden-path-adoption": "False",
        "self-service-rate": "False",
        "change-lead-time": "True",
        "change-frequency": "Unknown",
        "weekly-trouble": "False",  # up from none the week before
        "time-to-recovery": "True",
        "developer-satisfaction": "False",
    }
    shown = wait_figures(admin, expected, "the scorecard objects to show the history")
    print(
        f"by hand: alpha onboarded in {alpha_onboarding:.0f}s, beta in {beta_onboarding:.0f}s; change lead times "
        f"db {db_lead:.0f}s, cache {cache_lead:.0f}s; cache recovered {recovery:.0f}s after its first failure"
    )
    for metric, value in expected.items():  # the closing note of issue 15: by hand, and as shown
        print(f"{metric:24} expected {value:10.4f}  shown {shown[metric]['display']:>8} ({met(shown[metric])})")
    assert {m: met(s) for m, s in shown.items()} == verdicts
    _check_breakdowns(shown)
    cache_history = obj(admin, "servicerequest", "cache", "-n", beta_env)["status"]["history"]
    assert [s["kind"] for s in cache_history["humanSteps"]] == ["ManualRetry"]
    assert cache_history["episodes"][0]["since"] == failed_at
    ops_history = obj(admin, "servicerequest", "ops", "-n", alpha_env)["status"]["history"]
    assert [s["kind"] for s in ops_history["humanSteps"]] == ["PlatformEdit"]

    # -- the same, as a real Prometheus scraped it -------------------------------------------------------------
    for metric, value in expected.items():
        series = f'blacktop_scorecard_value{{metric="{metric}"}}'
        wait_series(prometheus, series, lambda v, w=value: close(v, w), f"{series} == {value}")
    for metric, status in verdicts.items():
        series = f'blacktop_scorecard_target_met{{metric="{metric}"}}'
        assert prometheus.value(series) == {"True": 1.0, "False": 0.0, "Unknown": None}[status], series
    _check_prometheus(prometheus, alpha_onboarding, beta_onboarding, db_lead, cache_lead, recovery)
    # -- a crash: the restarted operator computes the same scorecard -------------------------------------------
    _crash_and_restart(admin, scorecard_operator)
    for metric, value in expected.items():
        assert close(_scraped(scorecard_operator, metric), value), metric

    # -- beta gives up on cache: its trouble and its changes still count -----------------------------------------
    tenant(admin, BETA, "delete", "cronjob", "cache-warmer", "-n", beta_env)
    tenant(admin, BETA, "delete", "servicerequest", "cache", "-n", beta_env, "--timeout=180s")
    after_delete = {**expected, "golden-path-adoption": 1 / 2}  # db-proxy of db-proxy and web
    shown = wait_figures(admin, after_delete, "the scorecard after cache was deleted")
    adoption = {(e["dimension"], e["key"]): e.get("value") for e in shown["golden-path-adoption"]["breakdown"]}
    assert adoption[("goldenPath", "tiny")] == 1.0
    assert adoption[("goldenPath", "flaky")] == 0.0
    assert ("unusedGoldenPath", "flaky") not in adoption  # used minutes ago
    assert ("unusedGoldenPath", "lonely") in adoption
    ledger = json.loads(
        admin("get", "configmap", "blacktop-scorecard-ledger", "-n", "blacktop-system", "-o", "json").stdout
    )
    retired = json.loads(ledger["data"]["ledger.json"])["retiredRequests"]
    assert [(r["team"], r["goldenPath"]) for r in retired] == [("beta", "flaky")]
    _crash_and_restart(admin, scorecard_operator)


def _check_breakdowns(shown: dict[str, dict[str, Any]]) -> None:
    def entries(metric: str) -> dict[tuple[str, str], dict[str, Any]]:
        return {(e["dimension"], e["key"]): e for e in shown[metric]["breakdown"]}

    active = entries("weekly-active-teams")
    assert {k[1]: e["value"] for k, e in active.items()} == {"alpha": 1.0, "beta": 1.0, "gamma": 0.0}
    assert active[("team", "gamma")]["display"] == "inactive, last change never"
    assert shown["weekly-active-teams"]["summary"].endswith("inactive: gamma")
    adoption = entries("golden-path-adoption")
    assert ("unusedGoldenPath", "lonely") in adoption
    assert ("unusedGoldenPath", "tiny") not in adoption
    assert adoption[("goldenPath", "tiny")]["value"] == pytest.approx(2 / 3)  # db and ops of three requests
    assert adoption[("team", "alpha")]["value"] == 0.5
    frequency = entries("change-frequency")
    assert {k: e["value"] for k, e in frequency.items()} == {
        ("team", "alpha"): 3,
        ("team", "beta"): 1,
        ("goldenPath", "tiny"): 3,
        ("goldenPath", "flaky"): 1,
    }
    assert {k: e["value"] for k, e in entries("weekly-trouble").items()} == {("failureClass", "PlanFailed"): 1}
    satisfaction = entries("developer-satisfaction")
    assert satisfaction[("goldenPath", "tiny")]["value"] == 100
    assert satisfaction[("goldenPath", "(platform)")]["value"] == -50
    assert shown["weekly-trouble"]["target"] == "0 (none the 7 days before)"
    assert shown["team-onboarding"]["target"] == "< 30m"


def _check_prometheus(
    prometheus: Prometheus,
    alpha_onboarding: float,
    beta_onboarding: float,
    db_lead: float,
    cache_lead: float,
    recovery: float,
) -> None:
    """The per-team and per-golden-path series and the recording rules, as Prometheus has them."""
    exact = {
        'blacktop_team_onboarding_seconds{team="alpha",onboarded="true"}': alpha_onboarding,
        'blacktop_team_onboarding_seconds{team="beta",onboarded="true"}': beta_onboarding,
        "blacktop_teams_known": 3,
        "blacktop_teams_active_weekly": 2,
        'blacktop_team_last_activity_timestamp_seconds{team="gamma"}': 0,
        'blacktop_workloads{team="alpha",golden_path="tiny"}': 1,
        'blacktop_workloads{team="alpha",golden_path="(none)"}': 1,
        'blacktop_workloads{team="beta",golden_path="flaky"}': 1,
        'blacktop_golden_path_unused{golden_path="lonely"}': 1,
        'blacktop_golden_path_unused{golden_path="tiny"}': 0,
        'blacktop_self_service_requests{golden_path="tiny",outcome="self_served"}': 1,
        'blacktop_self_service_requests{golden_path="tiny",outcome="human_step"}': 1,
        'blacktop_self_service_requests{golden_path="flaky",outcome="human_step"}': 1,
        'blacktop_changes_total{team="alpha",golden_path="tiny"}': 3,
        'blacktop_changes_total{team="beta",golden_path="flaky"}': 1,
        'blacktop_change_lead_time_seconds_count{golden_path="tiny",tier="dev"}': 1,
        'blacktop_change_lead_time_seconds_sum{golden_path="tiny",tier="dev"}': db_lead,
        'blacktop_change_lead_time_seconds_sum{golden_path="flaky",tier="dev"}': cache_lead,
        'blacktop_trouble_total{failure_class="PlanFailed",golden_path="flaky"}': 1,
        'blacktop_time_to_recovery_seconds_sum{failure_class="PlanFailed"}': recovery,
        'blacktop_environment_onboarding_seconds_count{tier="dev"}': 2,
        'blacktop_environment_onboarding_seconds_sum{tier="dev"}': alpha_onboarding + beta_onboarding,
        'blacktop_feedback_responses{golden_path="tiny",category="Promoter"}': 1,
        'blacktop_feedback_responses{golden_path="(platform)",category="Passive"}': 1,
        'blacktop_feedback_responses{golden_path="(platform)",category="Detractor"}': 1,
        # The recording rules over them.
        "blacktop_teams_active_weekly:ratio": 2 / 3,
        "blacktop_workloads_golden_path:ratio": 2 / 3,
        'team:blacktop_workloads_golden_path:ratio{team="beta"}': 1,
        'golden_path:blacktop_self_service_requests:ratio{golden_path="tiny"}': 0.5,
        'golden_path:blacktop_nps:quarter{golden_path="tiny"}': 100,
        'golden_path:blacktop_nps:quarter{golden_path="(platform)"}': -50,
        "blacktop_nps:quarter": 0,
    }
    for series, value in exact.items():
        wait_series(prometheus, series, lambda v, w=value: close(v, w), f"{series} == {value}")
    # Increases over a week extrapolate a little past the samples, and a series Prometheus first saw
    # already counting loses its first increment (the trouble series exists at zero from the moment
    # the golden path is seen, but the failure may come before the next scrape): each rule must be
    # what Prometheus itself makes of its counter, whose exact values are checked above.
    trouble = 'failure_class:blacktop_trouble:increase1w{failure_class="PlanFailed"}'
    trouble_direct = prometheus.value('sum(increase(blacktop_trouble_total{failure_class="PlanFailed"}[1w]))')
    assert trouble_direct is not None
    wait_series(prometheus, trouble, lambda v: abs(v - trouble_direct) <= 0.1, f"{trouble} ~ {trouble_direct}")
    per_week = 'team_golden_path:blacktop_changes:increase1w{team="alpha",golden_path="tiny"}'
    direct = prometheus.value('increase(blacktop_changes_total{team="alpha",golden_path="tiny"}[1w])')
    assert direct is not None
    assert direct >= 2
    wait_series(prometheus, per_week, lambda v: abs(v - direct) <= 0.1 * direct, f"{per_week} ~ {direct}")
    # A quantile of one observation interpolates 90% into the bucket that holds it.
    quantiles = {
        'golden_path:blacktop_change_lead_time_seconds:p90_rate1d{golden_path="tiny"}': (db_lead, CHANGE_BUCKETS),
        'failure_class:blacktop_time_to_recovery_seconds:p90_rate1d{failure_class="PlanFailed"}': (
            recovery,
            RECOVERY_BUCKETS,
        ),
    }
    for series, (observed, buckets) in quantiles.items():
        upper = next(b for b in buckets if observed <= b)
        lower = max([0, *(b for b in buckets if b < upper)])
        wanted = lower + 0.9 * (upper - lower)
        wait_series(prometheus, series, lambda v, w=wanted: close(v, w), f"{series} == {wanted}")
    # The missed targets' alerts are pending (they fire after their `for`), the met ones are not.
    missed = {
        "BlacktopWeeklyActiveTeamsLow",
        "BlacktopGoldenPathAdoptionLow",
        "BlacktopSelfServiceRateLow",
        "BlacktopTroubleIncreasing",
        "BlacktopDeveloperSatisfactionLow",
    }

    def pending() -> set[str]:
        return {s["metric"]["alertname"] for s in prometheus.query('ALERTS{alertstate="pending"}')}

    wait_for(lambda: missed <= pending(), timeout=60, what=f"the alerts {sorted(missed)} to be pending")
    assert not pending() & {"BlacktopTeamOnboardingSlow", "BlacktopChangeLeadTimeHigh", "BlacktopTimeToRecoveryHigh"}
    health = {r["name"]: r["health"] for g in prometheus.api("rules")["groups"] for r in g["rules"]}
    assert set(health.values()) == {"ok"}, health


def _crash_and_restart(kubectl: Kubectl, operator: OperatorProcess) -> None:
    """SIGKILL the operator, start it again, and check its first scorecard is the one before."""
    before = _snapshot(kubectl)
    operator.kill()
    operator.start()

    def first_scorecard() -> bool:
        try:
            return "blacktop_scorecard_value{" in scrape_metrics(operator)
        except OSError:
            return False  # healthy before its metrics endpoint listens: a moment later it does

    wait_for(first_scorecard, timeout=60, what="the restarted operator's first scorecard")
    assert _snapshot(kubectl) == before


def _snapshot(kubectl: Kubectl) -> dict[str, tuple[Any, ...]]:
    """What a restart must not change: each figure, its target and verdict, and its breakdown's values
    (not their words: "last change 3m ago" moves with the clock)."""
    return {
        m: (
            s.get("value"),
            s.get("target"),
            met(s),
            sorted((e["dimension"], e["key"], e.get("value", -1)) for e in s["breakdown"]),
        )
        for m, s in figures(kubectl).items()
    }


def _scraped(operator: OperatorProcess, metric: str) -> float | None:
    prefix = f'blacktop_scorecard_value{{metric="{metric}"}} '
    lines = [line for line in scrape_metrics(operator).splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else None
