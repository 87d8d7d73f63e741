"""Lint of what ships for the platform team: the Grafana dashboard and the rules use real metrics only."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from blacktop.metrics.registry import create_metrics
from helpers import REPO

pytestmark = pytest.mark.unit

FILES = REPO / "charts" / "blacktop" / "files"
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def exported_series() -> set[str]:
    """Every series name a scrape of the registry can show (histogram and counter suffixes included)."""
    names: set[str] = set()
    for family in create_metrics().registry.collect():
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_count", f"{family.name}_sum"}
        elif family.type == "counter":
            names.add(f"{family.name}_total")
        else:
            names.add(family.name)
    return names


def rules() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((FILES / "prometheus-rules.yaml").read_text())
    return data


def recorded() -> set[str]:
    return {rule["record"] for group in rules()["groups"] for rule in group["rules"] if "record" in rule}


def referenced(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that name Blacktop series."""
    return {token for token in _NAME.findall(expr) if "blacktop_" in token}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FILES / "dashboard.json").read_text())
    return data


def test_dashboard_panels_are_well_formed() -> None:
    board = dashboard()
    assert board["title"]
    assert board["uid"] == "blacktop-platform"
    panels = board["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["title"], panel
        pos = panel["gridPos"]
        assert pos["x"] >= 0, f"panel {panel['title']} starts left of the grid"
        assert pos["x"] + pos["w"] <= 24, f"panel {panel['title']} is wider than the grid"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"panel {panel['title']} overlaps another"
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", "panels use the dashboard's datasource variable"
        assert panel["targets"], f"panel {panel['title']} has no query"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))


def test_dashboard_queries_use_existing_metrics() -> None:
    known = exported_series() | recorded()
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            names = referenced(target["expr"])
            assert names, f"panel {panel['title']!r}: {target['expr']!r} names no Blacktop metric"
            unknown = names - known
            assert not unknown, f"panel {panel['title']!r} queries unknown metrics {sorted(unknown)}"


def test_dashboard_covers_what_the_platform_team_asks_for() -> None:
    queries = " ".join(t["expr"] for p in dashboard()["panels"] for t in p.get("targets", []))
    for needed in (
        "blacktop_provisioning_lead_time_seconds",  # lead time
        'blacktop_runs_total{result="failed"}',  # failure rate by class
        "failure_class",
        "blacktop_service_requests",  # adoption
        "blacktop_team_monthly_cost",  # cost by team
        'blacktop_guardrail_decisions_total{outcome="denied"}',  # guardrail denials
        # The scorecard: every figure against its target, and each figure's breakdown.
        "blacktop_scorecard_target_met",
        'blacktop_scorecard_value{metric=~"team-onboarding|environment-onboarding"}',
        "blacktop_team_onboarding_seconds",
        "blacktop_teams_active_weekly:ratio",
        "blacktop_workloads_golden_path:ratio",
        "golden_path:blacktop_service_requests:share",
        "blacktop_golden_path_unused",
        "golden_path:blacktop_self_service_requests:ratio",
        "golden_path:blacktop_change_lead_time_seconds:p90_rate1d",
        "team_golden_path:blacktop_changes:increase1w",
        "failure_class:blacktop_trouble:increase1w",
        "failure_class:blacktop_time_to_recovery_seconds:p90_rate1d",
        "golden_path:blacktop_nps:quarter",
    ):
        assert needed in queries, f"the dashboard shows nothing of {needed}"


def test_rules_use_existing_metrics() -> None:
    known = exported_series() | recorded()
    alerts = set()
    for group in rules()["groups"]:
        for rule in group["rules"]:
            unknown = referenced(rule["expr"]) - known
            assert not unknown, f"rule {rule.get('record') or rule.get('alert')} uses unknown metrics {sorted(unknown)}"
            if "alert" in rule:
                alerts.add(rule["alert"])
                assert rule["labels"]["severity"] in {"warning", "critical"}
                assert rule["annotations"]["summary"]
    assert alerts == {
        "BlacktopProvisioningFailureRatioHigh",
        "BlacktopProvisioningLeadTimeHigh",
        "BlacktopDeletionStuck",
        "BlacktopTeamBudgetNearlySpent",
        "BlacktopEnvironmentPastTTL",
        "BlacktopNotificationsFailing",
        "BlacktopTeamWaitingToOnboard",
        "BlacktopTeamOnboardingSlow",
        "BlacktopEnvironmentOnboardingSlow",
        "BlacktopWeeklyActiveTeamsLow",
        "BlacktopGoldenPathAdoptionLow",
        "BlacktopSelfServiceRateLow",
        "BlacktopChangeLeadTimeHigh",
        "BlacktopTroubleIncreasing",
        "BlacktopTimeToRecoveryHigh",
        "BlacktopDeveloperSatisfactionLow",
    }


def test_readme_lists_every_metric() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    for family in create_metrics().registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        assert f"`{name}`" in section, f"README's Metrics section does not describe {name}"


def test_every_scorecard_metric_has_an_alert_and_a_panel() -> None:
    """A figure with a target alerts when it is missed; every figure is on the dashboard."""
    from blacktop.api.scorecard import Metric
    from blacktop.metrics.scorecard import DEFAULT_TARGETS

    alerted = " ".join(r["expr"] for g in rules()["groups"] for r in g["rules"] if "alert" in r)
    queries = " ".join(t["expr"] for p in dashboard()["panels"] for t in p.get("targets", []))
    for metric in Metric:
        if DEFAULT_TARGETS[metric] is not None:
            assert f'metric="{metric.value}"' in alerted, f"no alert for {metric.value}"
    assert "blacktop_scorecard_target_met" in queries  # one panel shows every figure's verdict
    for recorded_rule in recorded():
        if recorded_rule.endswith(("increase1w", "quarter", "share")) or "scorecard" in recorded_rule:
            assert recorded_rule in queries, f"{recorded_rule} is recorded but not shown"
