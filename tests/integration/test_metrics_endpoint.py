"""The session operator serves /metrics on BLACKTOP_METRICS_PORT, and a real scrape passes `promtool check metrics`."""

from __future__ import annotations

import subprocess

import pytest

from blacktop.toolbox import find_tool
from helpers import OperatorProcess, scrape_metrics, wait_for

pytestmark = pytest.mark.integration


def test_scrape_passes_promtool(operator: OperatorProcess) -> None:
    # The lag probe runs on the event loop from start-up; its gauge proves the loop-side wiring too.
    text = wait_for(
        lambda: (t := scrape_metrics(operator)) and "blacktop_resources{" in t and t,
        timeout=30,
        what="the inventory gauges on /metrics",
    )
    for family in (
        "blacktop_provisioning_lead_time_seconds",
        "blacktop_stage_duration_seconds",
        "blacktop_runs_total",
        "blacktop_guardrail_decisions_total",
        "blacktop_admission_review_duration_seconds",
        "blacktop_event_loop_lag_seconds",
        "blacktop_runs_in_flight",
        "blacktop_runs_queued",
        "blacktop_reconciles_total",
        "blacktop_active_teams",
    ):
        assert f"# TYPE {family.removesuffix('_total')}" in text, f"{family} is not exported"
    assert "_created" not in text
    assert "python_gc" not in text, "only Blacktop's explicit registry is served, not the global one"
    result = subprocess.run(
        [str(find_tool("promtool")), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"promtool check metrics:\n{result.stdout}{result.stderr}"
    assert not result.stdout.strip(), result.stdout  # promtool prints lint problems even on success
    assert not result.stderr.strip(), result.stderr
