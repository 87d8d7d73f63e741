"""The history recorder on synthetic request histories: changes, trouble, human steps; level-based and bounded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blacktop.api.common import format_time
from blacktop.api.history import MAX_CHANGES, MAX_EPISODES, MAX_HUMAN_STEPS, HumanStepKind, RequestHistory
from blacktop.builders.history import (
    OTHER,
    PlatformEdits,
    failure_class,
    last_change_time,
    next_history,
    spec_changed_at,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    return format_time(T0 + timedelta(seconds=seconds))


def request(
    *,
    generation: int = 1,
    observed: int | None = None,
    ready: tuple[str, str, float] | None = None,  # status, reason, transition time (s after T0)
    failures: int = 0,
    run: tuple[str, str | None, float] | None = None,  # operation, result, finished (s after T0)
    plan: int = 1,
    spec_written: float | None = None,  # managedFields time of the spec's last write
    reconciling: bool = False,
    approved: tuple[str, float] | None = None,  # the approval's operation (apply, drift), approval time
    history: RequestHistory | None = None,
) -> dict[str, Any]:
    """A ServiceRequest body in the shape the reconciler writes it."""
    conditions = []
    if ready is not None:
        conditions.append({"type": "Ready", "status": ready[0], "reason": ready[1], "lastTransitionTime": at(ready[2])})
    if reconciling:
        conditions.append({"type": "Reconciling", "status": "True", "reason": "Progressing"})
    status: dict[str, Any] = {
        "observedGeneration": observed if observed is not None else generation,
        "conditions": conditions,
        "failures": failures,
        "plan": {"add": plan, "change": 0, "destroy": 0},
    }
    if approved is not None:
        status["approval"] = {
            "operation": approved[0],
            "state": "Approved",
            "planDigest": "sha256:p",
            "requestedAt": at(0),
            "approvedBy": "bob",
            "approvedAt": at(approved[1]),
        }
    if run is not None:
        status["lastRun"] = {"id": "r", "operation": run[0], "result": run[1], "finishedAt": at(run[2])}
    if history is not None:
        status["history"] = history.model_dump(by_alias=True, mode="json")
    managed = [{"manager": "kubectl", "operation": "Update", "time": at(spec_written or 0), "fieldsV1": {"f:spec": {}}}]
    status_write = {"manager": "blacktop", "subresource": "status", "time": at(9999), "fieldsV1": {"f:status": {}}}
    managed.append(status_write)
    meta = {"name": "db", "namespace": "e1", "uid": "u1", "generation": generation, "creationTimestamp": at(0)}
    meta["managedFields"] = managed
    return {"metadata": meta, "spec": {"goldenPath": "tiny"}, "status": status}


class Recorder:
    """Feeds a request's successive states to the recorder the way the watch does, keeping the history."""

    def __init__(self) -> None:
        self.history: RequestHistory | None = None

    def see(self, now: float, edits: dict[int, str] | None = None, **state: Any) -> RequestHistory:
        body = request(history=self.history, **state)
        self.history = next_history(body, now=T0 + timedelta(seconds=now), platform_edits=edits)
        # What was written is a fixed point: seeing the same request again records nothing new.
        again = request(history=self.history, **state)
        assert next_history(again, now=T0 + timedelta(seconds=now + 1), platform_edits=edits) == self.history
        return self.history


def test_a_request_that_provisions_first_time_is_one_change_and_no_trouble() -> None:
    rec = Recorder()
    rec.see(1, ready=("False", "Progressing", 1), reconciling=True)
    history = rec.see(31, ready=("True", "Provisioned", 31), run=("apply", "Succeeded", 30))
    assert history.trouble is None
    assert history.episodes == []
    assert history.human_steps == []
    (change,) = history.changes
    assert (change.generation, change.lead_time_seconds, change.applied) == (1, 30, True)
    assert change.changed_at == at(0)  # generation 1 is the creation


def test_a_request_that_failed_three_times_then_recovered_is_one_episode_and_self_service() -> None:
    rec = Recorder()
    rec.see(1, ready=("False", "Progressing", 1), reconciling=True)
    for attempt, finished in enumerate((10, 30, 70), start=1):
        rec.see(finished, ready=("False", "PlanFailed", 1), failures=attempt, run=("apply", "Failed", finished))
        rec.see(finished + 5, ready=("False", "Progressing", 1), failures=attempt, run=("apply", None, finished))
    history = rec.see(100, ready=("True", "Provisioned", 100), run=("apply", "Succeeded", 100))
    (episode,) = history.episodes
    assert episode.failure_class == "PlanFailed"
    assert episode.since == at(10)  # the first failed run's end
    assert episode.failures == 3
    assert (episode.recovered_at, episode.recovery_seconds) == (at(100), 90)
    assert history.trouble is None
    assert history.human_steps == []  # recovered by the operator's own retries


def test_a_fix_while_failing_is_a_manual_retry_and_a_change() -> None:
    rec = Recorder()
    rec.see(10, ready=("False", "ApplyFailed", 1), failures=1, run=("apply", "Failed", 10))
    # The developer edits the spec at +50 s: generation 2, status still about generation 1.
    mid = rec.see(51, generation=2, observed=1, spec_written=50, ready=("False", "ApplyFailed", 1), failures=1)
    assert mid.trouble is not None
    (step,) = mid.human_steps
    assert (step.kind, step.generation, step.time) == (HumanStepKind.MANUAL_RETRY, 2, at(50))
    history = rec.see(
        62, generation=2, spec_written=50, ready=("True", "Provisioned", 62), run=("apply", "Succeeded", 61)
    )
    (episode,) = history.episodes
    assert episode.recovery_seconds == 51
    (change,) = history.changes
    assert (change.generation, change.changed_at, change.lead_time_seconds) == (2, at(50), 11)


def test_a_change_of_a_ready_request_has_its_lead_time_and_no_human_step() -> None:
    rec = Recorder()
    rec.see(20, ready=("True", "Provisioned", 20), run=("apply", "Succeeded", 20))
    rec.see(601, generation=2, observed=2, spec_written=600, ready=("False", "Progressing", 601), reconciling=True)
    history = rec.see(
        640, generation=2, spec_written=600, ready=("True", "Provisioned", 640), run=("apply", "Succeeded", 639)
    )
    assert [(c.generation, c.lead_time_seconds) for c in history.changes] == [(1, 20), (2, 39)]
    assert history.human_steps == []


def test_an_apply_with_an_empty_plan_is_no_change_of_anything() -> None:
    history = Recorder().see(5, ready=("True", "Provisioned", 5), run=("apply", "Succeeded", 5), plan=0)
    assert not history.changes[0].applied


def test_ready_of_an_older_generation_or_while_reconciling_is_not_a_delivered_change() -> None:
    rec = Recorder()
    rec.see(20, ready=("True", "Provisioned", 20), run=("apply", "Succeeded", 20))
    pending = rec.see(601, generation=2, observed=1, spec_written=600, ready=("True", "Provisioned", 20))
    assert [c.generation for c in pending.changes] == [1]
    assert (pending.generation, pending.changed_at) == (2, at(600))
    still = rec.see(602, generation=2, spec_written=600, ready=("True", "Provisioned", 20), reconciling=True)
    assert [c.generation for c in still.changes] == [1]


def test_every_non_progress_reason_is_trouble_with_a_bounded_class() -> None:
    history = Recorder().see(3, ready=("False", "GoldenPathNotFound", 2))
    assert history.trouble is not None
    assert (history.trouble.failure_class, history.trouble.since) == ("GoldenPathNotFound", at(2))
    assert failure_class("SomethingNew") == OTHER
    assert Recorder().see(3, ready=("False", "Progressing", 2)).trouble is None
    assert Recorder().see(3, ready=("False", "Deleting", 2)).trouble is None


def test_platform_edits_and_approvals_are_human_steps() -> None:
    rec = Recorder()
    edited = rec.see(2, edits={1: at(0)}, ready=("False", "Progressing", 1))
    assert [(s.kind, s.generation) for s in edited.human_steps] == [(HumanStepKind.PLATFORM_EDIT, 1)]
    approved = rec.see(5, approved=("apply", 4), ready=("False", "Progressing", 1))
    assert [s.kind for s in approved.human_steps] == [HumanStepKind.PLATFORM_EDIT, HumanStepKind.APPROVAL]
    assert approved.human_steps[1].time == at(4)
    # A drift correction's approval came after the request was Ready: no step on its way there.
    drift = Recorder().see(5, approved=("drift", 4), ready=("False", "Progressing", 1))
    assert drift.human_steps == []


def test_the_first_sighting_of_a_failing_new_generation_is_no_manual_retry() -> None:
    """An operator that starts on a request it never saw cannot know how generation 3 came about."""
    history = Recorder().see(5, generation=3, ready=("False", "PlanFailed", 2), failures=2, run=("apply", "Failed", 4))
    assert history.human_steps == []
    assert history.trouble is not None
    assert history.trouble.since == at(4)


def test_spec_time_comes_from_the_managed_fields_that_own_the_spec() -> None:
    meta = request(spec_written=300)["metadata"]
    meta["managedFields"].append(
        {"manager": "kubectl-label", "operation": "Update", "time": at(900), "fieldsV1": {"f:metadata": {}}}
    )
    assert spec_changed_at(meta) == T0 + timedelta(seconds=300)  # not the label, not the status
    meta["deletionTimestamp"] = at(1200)
    assert last_change_time(meta) == T0 + timedelta(seconds=1200)
    assert spec_changed_at({"creationTimestamp": at(7)}) == T0 + timedelta(seconds=7)


def test_platform_edits_are_bounded_and_collected_once() -> None:
    clock = [0.0]
    edits = PlatformEdits(clock=lambda: clock[0])
    edits.note("e1", "db", 1, at(0))
    edits.note("e1", "db", 3, at(5))
    assert edits.pending("e1", "db", up_to=2) == {1: at(0)}
    edits.forget("e1", "db", [1])
    assert edits.pending("e1", "db", up_to=5) == {3: at(5)}
    clock[0] = PlatformEdits.MAX_AGE_SECONDS + 1
    assert edits.pending("e1", "db", up_to=5) == {}


_READY = st.sampled_from(["True", "False"])
_REASON = st.sampled_from(["Progressing", "PlanFailed", "ApplyFailed", "PolicyDenied", "Provisioned"])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),  # generation increments
            _READY,
            _REASON,
            st.integers(0, 6),  # failures
            st.booleans(),  # observed current
            st.booleans(),  # a platform edit
        ),
        min_size=1,
        max_size=40,
    )
)
def test_any_sequence_keeps_the_history_bounded_consistent_and_a_fixed_point(steps: list[Any]) -> None:
    rec, generation, moment = Recorder(), 1, 0.0
    for bump, ready, reason, failures, current, edit in steps:
        generation += bump
        moment += 30
        history = rec.see(
            moment,
            edits={generation: at(moment)} if edit else None,
            generation=generation,
            observed=generation if current else generation - 1,
            spec_written=moment - 10,
            ready=(ready, reason, moment - 5),
            failures=failures,
            run=("apply", "Failed" if failures else "Succeeded", moment - 5),
        )
        assert len(history.changes) <= MAX_CHANGES
        assert len(history.episodes) <= MAX_EPISODES
        assert len(history.human_steps) <= MAX_HUMAN_STEPS
        assert len({c.generation for c in history.changes}) == len(history.changes)
        assert all(c.lead_time_seconds >= 0 for c in history.changes)
        assert all(e.recovery_seconds is not None and e.recovery_seconds >= 0 for e in history.episodes)
        assert history.generation == generation
        if ready == "True" and current:
            assert history.trouble is None  # Ready on the current generation ends any trouble
            assert generation in {c.generation for c in history.changes}
