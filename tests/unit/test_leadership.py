"""Leader election between replicas, on the fake client with clocks the test moves: one leader at a
time, a standby takes over only after a whole lease without renewal (by its own clock), a released
lease passes at once, and a leader that cannot renew gives up before its lease could pass."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from blacktop.config import Settings
from blacktop.controllers.leadership import LABEL_LEADER, LEASE, PODS, Elector, Observed, Verdict, decide, label_own_pod
from blacktop.kube.errors import UnavailableError
from fakes import Clock, FakeClient

pytestmark = pytest.mark.unit

SETTINGS = Settings(leader_lease_seconds=12, leader_renew_deadline_seconds=8, leader_retry_seconds=2)


class Monotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lease(holder: str | None, version: str = "1") -> dict[str, object]:
    return {
        "metadata": {"resourceVersion": version},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 12, "renewTime": "2026-03-01T09:00:00.000000Z"},
    }


def test_the_rule() -> None:
    seen = Observed("a", "1", at=100.0)
    assert decide(None, me="b", seen=None, now=0, lease_seconds=12) == Verdict.FREE
    assert decide(lease(None), me="b", seen=seen, now=0, lease_seconds=12) == Verdict.FREE
    assert decide(lease("b"), me="b", seen=seen, now=0, lease_seconds=12) == Verdict.OURS
    # Never judged by the holder's timestamps: only by how long *we* have seen it unchanged.
    assert decide(lease("a"), me="b", seen=None, now=10_000, lease_seconds=12) == Verdict.HELD
    assert decide(lease("a"), me="b", seen=seen, now=111.9, lease_seconds=12) == Verdict.HELD
    assert decide(lease("a"), me="b", seen=seen, now=112.0, lease_seconds=12) == Verdict.EXPIRED
    renewed = lease("a", "2")
    assert decide(renewed, me="b", seen=seen, now=500, lease_seconds=12) == Verdict.HELD  # it renewed meanwhile


def _pair() -> tuple[FakeClient, Monotonic, Elector, Elector]:
    client, clock = FakeClient(Clock()), Monotonic()
    wall = lambda: datetime(2026, 3, 1, 9, 0, tzinfo=UTC)  # noqa: E731
    first = Elector(client, SETTINGS, me="first", monotonic=clock, wall=wall)
    second = Elector(client, SETTINGS, me="second", monotonic=clock, wall=wall)
    return client, clock, first, second


def _holder(client: FakeClient) -> str | None:
    stored = client.stored(LEASE, SETTINGS.leader_lease_name, SETTINGS.namespace)
    return ((stored or {}).get("spec") or {}).get("holderIdentity")


def test_one_leader_and_a_standby_that_takes_over_after_a_whole_lease() -> None:
    client, clock, first, second = _pair()

    async def scenario() -> None:
        assert await first.try_lead()
        assert not await second.try_lead()
        assert _holder(client) == "first"
        # The leader dies: nobody renews. The standby waits a whole lease by its own clock.
        clock.now += 11.9
        assert not await second.try_lead()
        clock.now += 0.1
        assert await second.try_lead()
        assert _holder(client) == "second"
        stored = client.stored(LEASE, SETTINGS.leader_lease_name, SETTINGS.namespace)
        assert stored is not None
        assert stored["spec"]["leaseTransitions"] == 1
        # The old leader, back from the dead, finds it taken.
        assert not await first.try_lead()

    asyncio.run(scenario())


def test_a_renewing_leader_keeps_it_and_a_released_lease_passes_at_once() -> None:
    client, clock, first, second = _pair()

    async def scenario() -> None:
        assert await first.try_lead()
        assert not await second.try_lead()
        for _ in range(10):  # renewed every couple of seconds: never expires for the standby
            clock.now += 2
            assert await first.try_lead()
            assert not await second.try_lead()
        await first.release()
        assert _holder(client) is None
        assert await second.try_lead()  # no waiting for a lease that was given up

    asyncio.run(scenario())


def test_a_leader_that_cannot_renew_gives_up_before_its_lease_can_pass() -> None:
    client, clock = FakeClient(Clock()), Monotonic()

    async def sleep(seconds: float) -> None:  # the keeper's waits pass on the test's clock
        clock.now += seconds

    leader = Elector(client, SETTINGS, me="leader", monotonic=clock, sleep=sleep)

    async def scenario() -> float:
        assert await leader.try_lead()
        client.refuse("get", "Lease", UnavailableError(0, "Unavailable", "partitioned"))
        started = clock.now
        await leader.keep()
        return clock.now - started

    gave_up_after = asyncio.run(scenario())
    assert not leader.leading
    assert SETTINGS.leader_renew_deadline_seconds <= gave_up_after < SETTINGS.leader_lease_seconds
    # ... and its runs are stopped within the stop grace: before a standby could see the lease expire.
    assert gave_up_after + SETTINGS.leader_stop_grace_seconds < SETTINGS.leader_lease_seconds


def test_settings_refuse_a_renew_deadline_the_lease_would_outlive() -> None:
    with pytest.raises(ValueError, match="leader_renew_deadline_seconds"):
        Settings(leader_lease_seconds=5, leader_renew_deadline_seconds=8)


def test_the_leader_labels_its_own_pod_and_takes_the_label_off_when_it_stops_leading() -> None:
    client = FakeClient(Clock())
    settings = Settings(pod_name="blacktop-7d9-abc")
    client.put(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "blacktop-7d9-abc", "namespace": settings.namespace}}
    )

    def labels() -> dict[str, str]:
        stored = client.stored(PODS, "blacktop-7d9-abc", settings.namespace) or {}
        return dict((stored.get("metadata") or {}).get("labels") or {})

    asyncio.run(label_own_pod(client, settings, leading=True))
    assert labels() == {LABEL_LEADER: "true"}
    asyncio.run(label_own_pod(client, settings, leading=False))
    assert LABEL_LEADER not in labels()
    # Outside a cluster (no Pod name) nothing is asked; a Pod that is gone is no error either.
    before = len(client.calls)
    asyncio.run(label_own_pod(client, Settings(), leading=True))
    assert len(client.calls) == before
    asyncio.run(label_own_pod(client, Settings(pod_name="gone"), leading=True))
