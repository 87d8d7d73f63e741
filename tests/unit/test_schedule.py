"""The drift schedule: fed by watch events, it knows when each Ready request is due, forgets the ones
that are not Ready, follows interval changes, and its loop starts due checks only (no timer per
request, no API reads of its own)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from blacktop.api.common import format_time
from blacktop.controllers.schedule import DriftSchedule
from fakes import Clock

pytestmark = pytest.mark.unit


def golden(interval: str = "10m") -> dict[str, Any]:
    return {"metadata": {"name": "tiny"}, "spec": {"driftCheckInterval": interval}}


def request(name: str, clock: Clock, *, ready: bool = True, checked_ago: float | None = 0) -> dict[str, Any]:
    status: dict[str, Any] = {
        "stage": "Ready" if ready else "Planning",
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if checked_ago is not None:
        status["lastDriftCheckTime"] = format_time(clock.now - timedelta(seconds=checked_ago))
    return {
        "metadata": {"name": name, "namespace": "team-dev", "generation": 1},
        "spec": {"goldenPath": "tiny"},
        "status": status,
    }


def test_due_times_follow_the_last_check_and_the_interval() -> None:
    clock = Clock()
    schedule = DriftSchedule(clock)
    schedule.request(request("a", clock, checked_ago=60))
    assert schedule.due_at(("team-dev", "a")) is None  # its golden path's interval is not known yet
    schedule.golden_path(golden("10m"))
    assert schedule.due_at(("team-dev", "a")) == clock.now + timedelta(minutes=9)
    schedule.request(request("never", clock, checked_ago=None))
    assert schedule.due_at(("team-dev", "never")) == clock.now  # never checked: due now
    schedule.request(request("busy", clock, ready=False))
    assert schedule.due_at(("team-dev", "busy")) is None  # provisioning owns it
    schedule.golden_path(golden("1h"))
    assert schedule.due_at(("team-dev", "a")) == clock.now + timedelta(minutes=59)
    assert schedule.pop_due() == [("team-dev", "never")]
    assert schedule.pop_due() == []
    clock.advance(59 * 60)
    assert schedule.pop_due() == [("team-dev", "a")]
    schedule.request(request("a", clock), deleted=True)
    assert len(schedule) == 0


def test_the_loop_runs_due_checks_only_and_retries_later() -> None:
    clock = Clock()
    schedule = DriftSchedule(clock)
    schedule.golden_path(golden("10m"))
    checked: list[str] = []

    async def check(namespace: str, name: str) -> float | None:
        checked.append(name)
        return 30.0  # e.g. the request was busy: look again in 30 s

    async def scenario() -> None:
        for i in range(1000):  # a thousand requests, all checked a minute ago: none is due
            schedule.request(request(f"r{i}", clock, checked_ago=60))
        schedule.request(request("due", clock, checked_ago=601))
        loop = asyncio.create_task(schedule.run(check, concurrency=2, retry_seconds=5))
        for _ in range(20):
            await asyncio.sleep(0)
        loop.cancel()

    asyncio.run(scenario())
    assert checked == ["due"]
    assert schedule.due_at(("team-dev", "due")) == clock.now + timedelta(seconds=30)
