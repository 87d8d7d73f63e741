"""The scorecard's figures on synthetic histories, the ledger's memory, targets and restart safety."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blacktop.api.common import format_time
from blacktop.api.history import ChangeRecord, HumanStep, HumanStepKind, RequestHistory, TroubleEpisode
from blacktop.api.scorecard import Metric, ScorecardLedger
from blacktop.metrics.facts import Observed, observe
from blacktop.metrics.ledger import next_ledger
from blacktop.metrics.scorecard import (
    NO_GOLDEN_PATH,
    PLATFORM,
    InvalidTargetError,
    Scorecard,
    compute,
    human_duration,
    nps,
    p90,
    parse_target,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 2, 20, 12, 0, tzinfo=UTC)  # 2026-Q1
MIN, HOUR, DAY = 60.0, 3600.0, 86400.0


def ago(seconds: float) -> str:
    return format_time(NOW - timedelta(seconds=seconds))


def env(name: str, team: str, created: float, *, changed: float | None = None, tier: str = "dev") -> dict[str, Any]:
    """An Environment created ``created`` seconds ago (its spec last written ``changed`` seconds ago)."""
    written = ago(changed if changed is not None else created)
    return {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "creationTimestamp": ago(created),
            "managedFields": [{"manager": "kubectl", "time": written, "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"team": team, "tier": tier},
    }


def req(
    name: str,
    namespace: str,
    created: float,
    *,
    golden_path: str = "tiny",
    ready: float | None = None,  # first Ready, seconds ago
    history: RequestHistory | None = None,
    deleting: float | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": f"uid-{namespace}-{name}",
        "creationTimestamp": ago(created),
        "managedFields": [{"manager": "kubectl", "time": ago(created), "fieldsV1": {"f:spec": {}}}],
    }
    if deleting is not None:
        meta["deletionTimestamp"] = ago(deleting)
    status: dict[str, Any] = {}
    if ready is not None:
        status["firstReadyTime"] = ago(ready)
    if history is not None:
        status["history"] = history.model_dump(by_alias=True, mode="json")
    return {"metadata": meta, "spec": {"goldenPath": golden_path}, "status": status}


def gp(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}}


def feedback(namespace: str, score: int, created: float, golden_path: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"score": score}
    if golden_path:
        spec["goldenPath"] = golden_path
    return {"metadata": {"namespace": namespace, "creationTimestamp": ago(created)}, "spec": spec}


def workload(namespace: str, kind: str = "Deployment", request: str | None = None, **meta: Any) -> dict[str, Any]:
    labels = {"platform.blacktop.dev/service-request": request} if request else {}
    return {"kind": kind, "metadata": {"namespace": namespace, "labels": labels, **meta}}


def change(generation: int, ready: float, lead: float, applied: bool = True) -> ChangeRecord:
    return ChangeRecord(
        generation=generation,
        changed_at=ago(ready + lead),
        ready_at=ago(ready),
        lead_time_seconds=int(lead),
        applied=applied,
    )


def episode(since: float, recovered_after: float | None, failure_class: str = "PlanFailed") -> TroubleEpisode:
    if recovered_after is None:
        return TroubleEpisode(failure_class=failure_class, since=ago(since))
    return TroubleEpisode(
        failure_class=failure_class,
        since=ago(since),
        recovered_at=ago(since - recovered_after),
        recovery_seconds=int(recovered_after),
    )


def card(
    observed: Observed, ledger: ScorecardLedger | None = None, targets: dict[Metric, str | None] | None = None
) -> tuple[Scorecard, ScorecardLedger]:
    folded = next_ledger(ledger or ScorecardLedger(), observed, [], NOW)
    return compute(observed, folded, targets or {}, NOW), folded


def world(**kw: Any) -> Observed:
    return observe(
        kw.get("envs", []),
        kw.get("requests", []),
        kw.get("gps", [gp("tiny")]),
        feedback=kw.get("feedback", []),
        workloads=kw.get("workloads", []),
        known_teams=kw.get("known", []),
    )


# -- onboarding --------------------------------------------------------------------------------------------


def test_a_team_that_onboards_in_12_minutes_and_one_that_never_does() -> None:
    quick = world(
        envs=[env("alpha-dev", "alpha", 2 * HOUR)],
        requests=[req("db", "alpha-dev", 2 * HOUR, ready=2 * HOUR - 12 * MIN)],
    )
    scorecard, _ = card(quick)
    figure = scorecard.figure(Metric.TEAM_ONBOARDING)
    assert figure.value == 12 * MIN
    assert (figure.display, figure.target_display, figure.met) == ("12m", "< 30m", True)
    assert scorecard.team_onboarding == (("alpha", 12 * MIN, True),)

    both = world(
        envs=[env("alpha-dev", "alpha", 2 * HOUR), env("beta-dev", "beta", 2 * HOUR)],
        requests=[req("db", "alpha-dev", 2 * HOUR, ready=2 * HOUR - 12 * MIN), req("q", "beta-dev", HOUR)],
    )
    scorecard, _ = card(both)
    figure = scorecard.figure(Metric.TEAM_ONBOARDING)
    assert figure.value == 2 * HOUR  # beta is still waiting: with fewer than ten teams the p90 is the slowest
    assert figure.met is False
    assert ("beta", 2 * HOUR, False) in scorecard.team_onboarding
    assert {e.key: e.display for e in figure.breakdown} == {"alpha": "12m", "beta": "waiting 2h"}
    assert "2 team(s) started in the last 90 days: 1 onboarded, 1 not yet" in figure.summary


def test_onboarding_counts_from_the_teams_first_environment_only() -> None:
    """A team's second environment is not a new team; it is a new environment."""
    observed = world(
        envs=[env("alpha-dev", "alpha", 10 * DAY), env("alpha-prod", "alpha", HOUR, tier="prod")],
        requests=[req("db", "alpha-dev", 10 * DAY, ready=10 * DAY - 5 * MIN), req("db", "alpha-prod", HOUR)],
    )
    scorecard, ledger = card(observed)
    assert scorecard.figure(Metric.TEAM_ONBOARDING).value == 5 * MIN
    environments = scorecard.figure(Metric.ENVIRONMENT_ONBOARDING)
    assert environments.value == HOUR  # alpha-prod: waiting an hour so far
    assert environments.summary.startswith("2 environment(s) created in the last 90 days: 1 onboarded, 1 not yet")
    assert {e.name: e.onboarded_at for e in ledger.environments} == {
        "alpha-dev": ago(10 * DAY - 5 * MIN),
        "alpha-prod": None,
    }


def test_onboarding_is_remembered_after_the_request_and_environment_are_gone() -> None:
    first = world(envs=[env("alpha-dev", "alpha", DAY)], requests=[req("db", "alpha-dev", DAY, ready=DAY - 20 * MIN)])
    _, ledger = card(first)
    later = world(envs=[env("alpha-two", "alpha", HOUR)])  # alpha-dev and its request deleted
    scorecard, ledger = card(later, ledger)
    assert scorecard.figure(Metric.TEAM_ONBOARDING).value == 20 * MIN  # still the team's real onboarding
    gone = next(e for e in ledger.environments if e.name == "alpha-dev")
    assert gone.deleted_at == format_time(NOW)
    assert gone.onboarded_at == ago(DAY - 20 * MIN)


def test_a_team_that_gave_up_stops_the_clock_at_its_last_environment() -> None:
    _, ledger = card(world(envs=[env("beta-dev", "beta", 3 * HOUR)]))
    scorecard, _ = card(world(), ledger)  # beta-dev deleted (now), never onboarded
    figure = scorecard.figure(Metric.TEAM_ONBOARDING)
    assert figure.value == 3 * HOUR
    assert figure.breakdown[0].display == "gave up after 3h"


# -- activity and adoption -----------------------------------------------------------------------------------


def test_weekly_active_teams_against_every_known_team() -> None:
    observed = world(
        envs=[env("alpha-dev", "alpha", 30 * DAY, changed=DAY), env("beta-dev", "beta", 30 * DAY, changed=10 * DAY)],
        requests=[req("db", "beta-dev", 20 * DAY)],
        known=["alpha", "beta", "gamma"],
    )
    scorecard, _ = card(observed)
    figure = scorecard.figure(Metric.WEEKLY_ACTIVE_TEAMS)
    assert figure.value == pytest.approx(1 / 3)
    assert (figure.display, figure.target_display, figure.met) == ("33.3%", "≥ 90%", False)
    assert figure.summary == "1 of 3 known team(s) active in the last 7 days; inactive: beta, gamma"
    assert dict(scorecard.team_activity)["gamma"] is None
    assert scorecard.active_teams == 1
    # A new request is activity of its team.
    busy = world(
        envs=[env("alpha-dev", "alpha", 30 * DAY, changed=DAY), env("beta-dev", "beta", 30 * DAY, changed=10 * DAY)],
        requests=[req("db", "beta-dev", 20 * DAY), req("cache", "beta-dev", 2 * HOUR)],
    )
    assert card(busy)[0].figure(Metric.WEEKLY_ACTIVE_TEAMS).value == 1.0


def test_golden_path_adoption_of_workloads_requests_and_unused_golden_paths() -> None:
    observed = world(
        envs=[env("alpha-dev", "alpha", DAY), env("beta-dev", "beta", DAY)],
        requests=[req("db", "alpha-dev", DAY), req("q", "beta-dev", DAY, golden_path="queue")],
        gps=[gp("tiny"), gp("queue"), gp("lonely")],
        workloads=[
            workload("alpha-dev", request="db"),  # made by the tiny request db
            workload("alpha-dev"),  # made by hand
            workload("beta-dev", "CronJob", request="q"),
            workload("beta-dev", request="nope"),  # names no request: not made by a golden path
            workload("elsewhere", request="db"),  # not an environment's namespace
            workload("alpha-dev", "Deployment", ownerReferences=[{"kind": "Rollout", "controller": True}]),
        ],
    )
    scorecard, _ = card(observed)
    figure = scorecard.figure(Metric.GOLDEN_PATH_ADOPTION)
    assert figure.value == 0.5
    assert figure.met is False
    assert scorecard.workloads == (
        ("alpha", NO_GOLDEN_PATH, 1),
        ("alpha", "tiny", 1),
        ("beta", NO_GOLDEN_PATH, 1),
        ("beta", "queue", 1),
    )
    shares = {(e.dimension, e.key): e.value for e in figure.breakdown}
    assert shares[("goldenPath", "tiny")] == 0.5
    assert shares[("goldenPath", "lonely")] == 0.0
    assert shares[("team", "beta")] == 0.5
    assert ("unusedGoldenPath", "lonely") in shares
    assert dict(scorecard.golden_paths_unused) == {"tiny": False, "queue": False, "lonely": True}
    assert figure.summary.endswith("unused golden paths: lonely")


def test_a_golden_path_is_unused_30_days_after_its_last_request_went() -> None:
    _, ledger = card(world(requests=[], gps=[gp("tiny")], envs=[env("a", "alpha", DAY)]))
    in_use = world(envs=[env("a", "alpha", DAY)], requests=[req("db", "a", DAY)])
    _, ledger = card(in_use, ledger)
    assert ledger.golden_paths[0].in_use
    scorecard, ledger = card(world(envs=[env("a", "alpha", DAY)]), ledger)  # the request is gone
    assert ledger.golden_paths[0].last_used_time == format_time(NOW)
    assert dict(scorecard.golden_paths_unused)["tiny"] is False  # used minutes ago
    aged = ledger.model_copy(
        update={"golden_paths": [ledger.golden_paths[0].model_copy(update={"last_used_time": ago(31 * DAY)})]}
    )
    assert dict(card(world(envs=[env("a", "alpha", DAY)]), aged)[0].golden_paths_unused)["tiny"] is True


# -- self-service, changes, trouble ----------------------------------------------------------------------------


def steps(*kinds: HumanStepKind) -> list[HumanStep]:
    return [HumanStep(kind=k, time=ago(HOUR), generation=1) for k in kinds]


def test_self_service_rate_counts_human_steps_and_trouble() -> None:
    observed = world(
        envs=[env("a", "alpha", 10 * DAY)],
        requests=[
            req("fine", "a", DAY, ready=DAY - 60),
            req("flaky", "a", DAY, ready=DAY - 600, history=RequestHistory(episodes=[episode(DAY - 30, 570)])),
            req("fixed", "a", DAY, ready=HOUR, history=RequestHistory(human_steps=steps(HumanStepKind.MANUAL_RETRY))),
            req("ops", "a", DAY, ready=HOUR, history=RequestHistory(human_steps=steps(HumanStepKind.PLATFORM_EDIT))),
            req("stuck", "a", DAY, history=RequestHistory(trouble=episode(DAY - 30, None))),
            req("new", "a", 60),  # still on its first attempt: too early to say
            req("old", "a", 40 * DAY, ready=40 * DAY),  # outside the 30 days
        ],
    )
    figure = card(observed)[0].figure(Metric.SELF_SERVICE_RATE)
    assert figure.value == 2 / 5  # fine and flaky (it recovered by itself) of fine, flaky, fixed, ops, stuck
    assert figure.summary == "2 of 5 request(s) self-served; 2 needed a human step, 1 in trouble"
    assert figure.met is False


def test_change_lead_time_and_frequency() -> None:
    db = RequestHistory(
        generation=3, changes=[change(1, 9 * DAY, 30), change(2, DAY, 10 * MIN), change(3, HOUR, 20 * MIN)]
    )
    # q's generation 3 is pending for two hours; its generation 2 is older than the 30 days.
    q = RequestHistory(
        generation=3, changed_at=ago(2 * HOUR), changes=[change(1, 8 * DAY, 30), change(2, 40 * DAY, MIN)]
    )
    noop = RequestHistory(generation=1, changes=[change(1, DAY, 30, applied=False)])
    observed = world(
        envs=[env("a", "alpha", 10 * DAY), env("b", "beta", 10 * DAY)],
        requests=[
            req("db", "a", 9 * DAY, history=db),
            req("q", "b", 9 * DAY, golden_path="queue", history=q),
            req("noop", "b", 2 * DAY, history=noop),
        ],
        gps=[gp("tiny"), gp("queue")],
    )
    scorecard, _ = card(observed)
    lead = scorecard.figure(Metric.CHANGE_LEAD_TIME)
    assert lead.value == 2 * HOUR  # q's generation 3 is pending for two hours: the slowest of three
    assert lead.summary == "3 change(s) in the last 30 days, 1 pending"
    assert {e.key: e.value for e in lead.breakdown} == {"tiny": 20 * MIN, "queue": 2 * HOUR}
    frequency = scorecard.figure(Metric.CHANGE_FREQUENCY)
    assert frequency.value == 2  # db's generations 2 and 3 (within 7 days, applied); not noop's empty plan
    assert (frequency.met, frequency.reason, frequency.target_display) == (None, "NoTarget", "-")
    assert {(e.dimension, e.key): e.value for e in frequency.breakdown} == {
        ("team", "alpha"): 2,
        ("goldenPath", "tiny"): 2,
    }


def test_a_request_that_failed_three_times_then_recovered() -> None:
    flaky = RequestHistory(
        generation=1,
        changes=[change(1, HOUR - 90, 100)],
        episodes=[episode(HOUR, 90).model_copy(update={"failures": 3})],
    )
    observed = world(envs=[env("a", "alpha", DAY)], requests=[req("db", "a", HOUR, ready=HOUR - 90, history=flaky)])
    scorecard, _ = card(observed)
    recovery = scorecard.figure(Metric.TIME_TO_RECOVERY)
    assert (recovery.value, recovery.display, recovery.met) == (90, "1m 30s", True)
    trouble = scorecard.figure(Metric.WEEKLY_TROUBLE)
    assert trouble.value == 1  # one episode, however many attempts failed
    assert (trouble.met, trouble.target_display) == (False, "0 (none the 7 days before)")  # up from none
    assert [(e.key, e.value) for e in trouble.breakdown] == [("PlanFailed", 1)]
    assert scorecard.figure(Metric.SELF_SERVICE_RATE).value == 1.0


def test_trouble_is_measured_against_the_week_before_or_a_maximum() -> None:
    history = RequestHistory(
        episodes=[episode(8 * DAY, 60), episode(9 * DAY, 60, "StateLocked"), episode(DAY, 120)],
        trouble=episode(5 * HOUR, None, "ProviderError"),
    )
    observed = world(envs=[env("a", "alpha", 20 * DAY)], requests=[req("db", "a", 20 * DAY, history=history)])
    scorecard, _ = card(observed)
    trouble = scorecard.figure(Metric.WEEKLY_TROUBLE)
    assert (trouble.value, trouble.target, trouble.target_display) == (2, 2, "< 2 (the 7 days before)")
    assert trouble.met is False  # 2, as many as the week before: not decreasing
    assert card(observed, targets={Metric.WEEKLY_TROUBLE: "3"})[0].figure(Metric.WEEKLY_TROUBLE).met is True
    recovery = scorecard.figure(Metric.TIME_TO_RECOVERY)
    assert recovery.value == 5 * HOUR  # the open one counts with its time so far
    assert recovery.met is False
    assert {e.key: e.value for e in recovery.breakdown} == {
        "PlanFailed": 120,
        "StateLocked": 60,
        "ProviderError": 5 * HOUR,
    }


def test_a_deleted_request_keeps_counting_while_its_facts_are_in_a_window() -> None:
    failed = RequestHistory(trouble=episode(2 * HOUR, None, "ApplyFailed"))
    before = world(envs=[env("a", "alpha", DAY)], requests=[req("db", "a", 3 * HOUR, history=failed, deleting=HOUR)])
    scorecard, ledger = card(before)
    (retired,) = ledger.retired_requests
    assert (retired.deleted_at, retired.team) == (ago(HOUR), "alpha")
    after, ledger = card(world(envs=[env("a", "alpha", DAY)]), ledger)  # the request is gone
    for metric in (Metric.WEEKLY_TROUBLE, Metric.TIME_TO_RECOVERY, Metric.SELF_SERVICE_RATE):
        assert after.figure(metric) == scorecard.figure(metric)
    assert after.figure(Metric.TIME_TO_RECOVERY).value == HOUR  # from the first failure to the deletion
    assert after.figure(Metric.SELF_SERVICE_RATE).value == 0.0  # it never got Ready


# -- satisfaction ----------------------------------------------------------------------------------------------


def test_net_promoter_score_per_quarter_and_golden_path() -> None:
    observed = world(
        envs=[env("a", "alpha", 200 * DAY)],
        feedback=[
            feedback("a", 10, DAY, "tiny"),
            feedback("a", 9, DAY, "tiny"),
            feedback("a", 8, DAY),
            feedback("a", 3, DAY),
            feedback("a", 0, 100 * DAY),  # last quarter (2025-Q4)
            feedback("nowhere", 0, DAY),  # not in an environment's namespace: not counted
        ],
    )
    scorecard, _ = card(observed)
    figure = scorecard.figure(Metric.DEVELOPER_SATISFACTION)
    assert (figure.value, figure.display, figure.window) == (25, "+25", "2026-Q1")  # (2 - 1) / 4
    assert figure.met is False
    assert {(e.dimension, e.key): e.value for e in figure.breakdown} == {
        ("goldenPath", "tiny"): 100,
        ("goldenPath", PLATFORM): -50,
        ("quarter", "2025-Q4"): -100,
        ("quarter", "2026-Q1"): 25,
    }
    assert dict(((g, c), n) for g, c, n in scorecard.feedback) == {
        ("tiny", "Promoter"): 2,
        (PLATFORM, "Passive"): 1,
        (PLATFORM, "Detractor"): 1,
    }


def test_no_data_is_no_verdict() -> None:
    scorecard, _ = card(world(gps=[]))
    for metric in Metric:
        figure = scorecard.figure(metric)
        if metric in (Metric.CHANGE_FREQUENCY, Metric.WEEKLY_TROUBLE):
            continue  # counts: zero is a figure
        assert (figure.value, figure.met, figure.reason, figure.display) == (None, None, "NoData", "-"), metric
    assert scorecard.figure(Metric.WEEKLY_TROUBLE).met is True  # no trouble at all


# -- targets, statistics, restart --------------------------------------------------------------------------------


def test_targets_parse_and_change_the_verdict() -> None:
    assert parse_target(Metric.TEAM_ONBOARDING, None).value == 1800
    assert parse_target(Metric.SELF_SERVICE_RATE, "95.5%").value == pytest.approx(0.955)
    assert parse_target(Metric.DEVELOPER_SATISFACTION, "-10").value == -10
    for metric, bad in [
        (Metric.TEAM_ONBOARDING, "90%"),
        (Metric.SELF_SERVICE_RATE, "0.9"),
        (Metric.CHANGE_FREQUENCY, "5"),
        (Metric.WEEKLY_TROUBLE, "fewer"),
    ]:
        with pytest.raises(InvalidTargetError):
            parse_target(metric, bad)
    quick = world(envs=[env("a", "alpha", 2 * HOUR)], requests=[req("db", "a", 2 * HOUR, ready=2 * HOUR - 12 * MIN)])
    strict = card(quick, targets={Metric.TEAM_ONBOARDING: "10m"})[0].figure(Metric.TEAM_ONBOARDING)
    assert (strict.met, strict.target_display, strict.reason) == (False, "< 10m", "TargetMissed")
    broken = card(quick, targets={Metric.TEAM_ONBOARDING: "soon"})[0].figure(Metric.TEAM_ONBOARDING)
    assert (broken.reason, broken.met) == ("InvalidTarget", None)


def test_statistics_and_formatting() -> None:
    assert p90([]) is None
    assert p90([5, 1, 3]) == 5
    assert p90(range(1, 101)) == 90
    assert nps([10, 9, 8, 3]) == 25
    assert nps([]) is None
    assert [human_duration(s) for s in (0, 59, 61, 3600, 3660, 90000)] == ["0s", "59s", "1m 1s", "1h", "1h 1m", "1d 1h"]


def _busy_world(extra_requests: int) -> Observed:
    history = RequestHistory(
        generation=2,
        changes=[change(1, 3 * DAY, 50), change(2, DAY, 300)],
        episodes=[episode(2 * DAY, 400)],
        human_steps=steps(HumanStepKind.APPROVAL),
    )
    requests = [
        req(f"r{i}", "a", 4 * DAY, ready=3 * DAY, history=history if i % 2 else None) for i in range(extra_requests)
    ]
    requests.append(req("gone", "b", DAY, deleting=HOUR, history=RequestHistory(trouble=episode(3 * HOUR, None))))
    return world(
        envs=[env("a", "alpha", 5 * DAY), env("b", "beta", 2 * DAY)],
        requests=requests,
        gps=[gp("tiny"), gp("lonely")],
        feedback=[feedback("a", s, DAY) for s in (10, 6, 9)],
        workloads=[workload("a", request="r0"), workload("b")],
        known=["alpha", "beta", "gamma"],
    )


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 12))
def test_a_restart_computes_the_same_scorecard(extra_requests: int) -> None:
    """The ledger goes to a ConfigMap and comes back; folding the same cluster again changes nothing."""
    observed = _busy_world(extra_requests)
    first, ledger = card(observed)
    stored = ScorecardLedger.model_validate_json(ledger.model_dump_json(by_alias=True))
    assert stored == ledger
    again, folded = card(observed, stored)
    assert folded == ledger
    assert again == first


def test_every_label_of_the_exported_numbers_is_bounded() -> None:
    scorecard, _ = card(_busy_world(6))
    teams = {"alpha", "beta", "gamma"}
    assert {t for t, _, _ in scorecard.team_onboarding} <= teams
    assert {t for t, _ in scorecard.team_activity} == teams
    assert {gp for _, gp, _ in scorecard.workloads} <= {"tiny", NO_GOLDEN_PATH}
    assert {o for _, o, _ in scorecard.self_service} <= {"self_served", "human_step", "in_trouble"}
    assert {gp for gp, _ in scorecard.golden_paths_unused} == {"tiny", "lonely"}
