"""The PlatformScorecard objects on the real apiserver and the session operator: one per metric, kept
current, targets validated by the CRD and followed within seconds. (The figures themselves are checked
against a history the test makes in tests/e2e/test_scorecard_history.py, on a control plane of their own.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from blacktop.api.scorecard import Metric
from helpers import Kubectl, OperatorProcess, condition, event_reasons, get, make_environment, unique, wait_for

pytestmark = pytest.mark.integration


def scorecard(kubectl: Kubectl, metric: str) -> dict[str, Any] | None:
    return get(kubectl, "platformscorecard", metric)


def verdict(kubectl: Kubectl, metric: str) -> dict[str, Any] | None:
    return condition(scorecard(kubectl, metric), "TargetMet")


def set_target(kubectl: Kubectl, metric: str, target: str | None) -> None:
    kubectl("patch", "platformscorecard", metric, "--type=merge", "-p", json.dumps({"spec": {"target": target}}))


def test_the_operator_keeps_one_object_per_metric(kubectl: Kubectl, operator: OperatorProcess) -> None:
    def all_computed() -> list[dict[str, Any]] | None:
        items = json.loads(kubectl("get", "platformscorecards", "-o", "json").stdout)["items"]
        names = {i["metadata"]["name"] for i in items}
        ready = all((condition(i) or {}).get("status") == "True" for i in items)
        return items if names == {m.value for m in Metric} and ready else None

    items = wait_for(all_computed, timeout=60, what="the ten scorecard objects to be computed")
    for item in items:
        status = item["status"]
        assert status["description"]
        assert status["target"]
        assert status["window"]
        assert status["unit"] in {"seconds", "ratio", "count", "nps"}
        assert condition(item, "TargetMet") is not None
    table = kubectl("get", "platformscorecards").stdout.splitlines()
    assert table[0].split() == ["NAME", "VALUE", "TARGET", "MET", "WINDOW"]
    assert len(table) == 1 + len(Metric)
    assert "SUMMARY" in kubectl("get", "platformscorecards", "-o", "wide").stdout
    # The short name works too, and the kinds are in the blacktop category.
    assert kubectl("get", "scorecard", "change-frequency").returncode == 0
    assert "platformscorecard.platform.blacktop.dev/" in kubectl("get", "blacktop", "-o", "name").stdout


@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        ("onboarding", {}, "a PlatformScorecard is named after its metric: team-onboarding"),
        ("team-onboarding", {"target": "90%"}, "is a duration such as 30m"),
        ("self-service-rate", {"target": "0.9"}, "is a percentage such as 90%"),
        ("self-service-rate", {"target": "101%"}, "is a percentage such as 90%"),
        ("developer-satisfaction", {"target": "200"}, "an NPS from -100 to 100"),
        ("weekly-trouble", {"target": "less"}, "`decreasing` (fewer than the week before) or a maximum count"),
        ("change-frequency", {"target": "5"}, "change-frequency is informational and takes no target"),
        ("team-onboarding", {"knownTeams": ["payments"]}, "knownTeams belongs on weekly-active-teams"),
    ],
)
def test_the_crd_refuses_what_is_no_metric_or_no_target_of_it(
    kubectl: Kubectl, installed: object, name: str, spec: dict[str, Any], message: str
) -> None:
    body = {"apiVersion": "platform.blacktop.dev/v1alpha1", "kind": "PlatformScorecard", "metadata": {"name": name}}
    body["spec"] = spec
    result = kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(body), check=False)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.fixture
def waiting_team(kubectl: Kubectl, operator: OperatorProcess) -> Iterator[str]:
    """A team with an environment and no ServiceRequest: it is waiting to onboard."""
    team = unique("waiting")
    env = make_environment(kubectl, f"{team}-dev", team)
    yield team
    set_target(kubectl, Metric.TEAM_ONBOARDING.value, None)
    kubectl("delete", "environment", env, "--wait=false")


def test_a_new_target_changes_the_verdict_within_seconds(kubectl: Kubectl, waiting_team: str) -> None:
    metric = Metric.TEAM_ONBOARDING.value
    wait_for(
        lambda: any(
            e["key"] == waiting_team and e["display"].startswith("waiting")
            for e in (scorecard(kubectl, metric) or {}).get("status", {}).get("breakdown", [])
        ),
        timeout=60,
        what=f"team {waiting_team} to show as waiting to onboard",
    )
    set_target(kubectl, metric, "1s")  # a waiting team has waited longer than that by now
    missed = wait_for(
        lambda: (c := verdict(kubectl, metric)) and c["status"] == "False" and c,
        timeout=15,
        what="the verdict to follow the stricter target",
    )
    assert missed["reason"] == "TargetMissed"
    assert "misses the target < 1s" in missed["message"]
    assert (scorecard(kubectl, metric) or {})["status"]["target"] == "< 1s"
    assert "TargetMissed" in event_reasons(kubectl, metric, "default")
    set_target(kubectl, metric, "8760h")
    met = wait_for(
        lambda: (c := verdict(kubectl, metric)) and c["status"] == "True" and c,
        timeout=15,
        what="the verdict to follow the looser target",
    )
    assert met["reason"] == "TargetMet"
    set_target(kubectl, metric, None)  # back to the default
    wait_for(
        lambda: (scorecard(kubectl, metric) or {}).get("status", {}).get("target") == "< 30m",
        timeout=15,
        what="the default target to be back",
    )


def test_a_deleted_metric_object_comes_back(kubectl: Kubectl, operator: OperatorProcess) -> None:
    metric = Metric.CHANGE_FREQUENCY.value
    wait_for(lambda: scorecard(kubectl, metric), timeout=60, what=f"{metric} to exist")
    uid = (scorecard(kubectl, metric) or {})["metadata"]["uid"]
    kubectl("delete", "platformscorecard", metric)
    back = wait_for(
        lambda: (obj := scorecard(kubectl, metric)) and obj["metadata"]["uid"] != uid and obj.get("status") and obj,
        timeout=30,
        what=f"{metric} to be re-created and computed",
    )
    assert back["status"]["target"] == "-"
    assert (condition(back, "TargetMet") or {}).get("reason") == "NoTarget"
