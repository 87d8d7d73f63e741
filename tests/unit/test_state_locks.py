"""Whose state lock it is: the pure rules that decide between taking, recovering and reporting a lock."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from blacktop.api.servicerequest import RunInfo, ServiceRequestStatus
from blacktop.controllers.drift import is_due
from blacktop.controllers.runs import RunFailed
from blacktop.controllers.statelock import StateLockedError, recorded_lock_ids
from blacktop.terraform import state as locks

pytestmark = pytest.mark.unit

UID = "0c3c9a57-1111-2222-3333-444455556666"


def lease_held_by(info: locks.LockInfo) -> dict[str, object]:
    lease = locks.new_lease(locks.state_of("blacktop-system", UID), info)
    assert lease["metadata"]["name"] == "lock-tfstate-default-" + UID
    return lease


def judge(lease: dict[str, object] | None, **overrides: object) -> locks.Verdict:
    args: dict[str, object] = {"lock_id": "new", "recorded": set(), "request_uid": UID, "in_flight": set()}
    args.update(overrides)
    return locks.judge(lease, **args)  # type: ignore[arg-type]


def test_lease_has_the_backends_format() -> None:
    info = locks.lock_for("abc-123", "apply", UID, "run1")
    lease = lease_held_by(info)
    assert lease["spec"] == {"holderIdentity": "abc-123"}
    meta = lease["metadata"]
    assert isinstance(meta, dict)
    assert meta["labels"]["tfstate"] == "true"  # tofu refuses to delete a Lease without it
    data = json.loads(meta["annotations"][locks.LOCK_INFO_ANNOTATION])
    assert set(data) == {"ID", "Operation", "Info", "Who", "Version", "Created", "Path"}
    assert data["ID"] == "abc-123"
    assert data["Operation"] == "OperationTypeApply"
    assert locks.holder_of(lease) == info


def test_unlocked_clears_holder_and_info_only() -> None:
    lease = lease_held_by(locks.lock_for("abc", "apply", UID, "r"))
    lease["metadata"]["annotations"]["other"] = "kept"  # type: ignore[index]
    lease["metadata"]["resourceVersion"] = "42"  # type: ignore[index]
    free = locks.unlocked(lease)
    assert locks.holder_of(free) is None
    assert free["metadata"]["annotations"] == {"other": "kept"}
    assert free["metadata"]["resourceVersion"] == "42"  # the update stays atomic
    assert locks.holder_of(locks.locked(free, locks.lock_for("x", "destroy", UID, "r2"))) is not None


def test_free_and_own_locks() -> None:
    assert judge(None) == locks.Verdict.FREE
    assert judge(locks.unlocked(lease_held_by(locks.lock_for("a", "apply", UID, "r")))) == locks.Verdict.FREE
    assert judge(lease_held_by(locks.lock_for("new", "apply", UID, "r"))) == locks.Verdict.HELD_BY_US


def test_a_recorded_lock_of_a_dead_run_is_an_orphan() -> None:
    old = lease_held_by(locks.lock_for("old", "apply", UID, "r0"))
    assert judge(old, recorded={"old"}) == locks.Verdict.ORPHANED
    # ...unless a run of this very process holds it right now.
    assert judge(old, recorded={"old"}, in_flight={"old"}) == locks.Verdict.BUSY


def test_our_marker_for_this_request_counts_as_ours_even_when_unrecorded() -> None:
    old = lease_held_by(locks.lock_for("older", "apply", UID, "r0"))
    assert judge(old, recorded={"something-else"}) == locks.Verdict.ORPHANED
    other_request = lease_held_by(locks.lock_for("older", "apply", "another-uid", "r0"))
    assert judge(other_request) == locks.Verdict.FOREIGN


def test_someone_elses_lock_is_foreign() -> None:
    by_hand = {
        "metadata": {
            "annotations": {
                locks.LOCK_INFO_ANNOTATION: json.dumps({"ID": "f00", "Who": "alice@laptop", "Operation": "apply"})
            }
        },
        "spec": {"holderIdentity": "f00"},
    }
    assert judge(by_hand) == locks.Verdict.FOREIGN
    held = locks.holder_of(by_hand)
    assert held is not None
    assert held.who == "alice@laptop"
    refused = StateLockedError(held)
    assert refused.holder.id == "f00"
    assert refused.holder.who == "alice@laptop"
    assert "force-unlock f00" in refused.detail
    assert "the state is locked by alice@laptop (lock ID f00)" in refused.detail
    # A run reports it like any failed step: StateLocked, with the same words.
    failed = RunFailed("locking the state", "StateLocked", refused.detail)
    assert failed.reason == "StateLocked"
    assert "force-unlock f00" in failed.detail


def test_garbage_lock_info_is_still_a_lock() -> None:
    lease = {"metadata": {"annotations": {locks.LOCK_INFO_ANNOTATION: "not json"}}, "spec": {"holderIdentity": "z"}}
    assert judge(lease) == locks.Verdict.FOREIGN


def test_recorded_lock_ids() -> None:
    assert recorded_lock_ids(None, RunInfo(id="a", operation="apply", lock_id="L"), RunInfo(id="b", operation="x")) == {
        "L"
    }


def test_drift_check_is_due_after_the_interval() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    fresh = ServiceRequestStatus()
    assert is_due(fresh, timedelta(minutes=10), now)
    applied = ServiceRequestStatus(
        last_run=RunInfo(id="a", operation="apply", finished_at="2026-01-01T11:55:00Z"),
    )
    assert not is_due(applied, timedelta(minutes=10), now)
    assert is_due(applied, timedelta(minutes=5), now)
    checked = applied.model_copy(update={"last_drift_check_time": "2026-01-01T11:59:00Z"})
    assert not is_due(checked, timedelta(minutes=5), now)


def test_the_backends_own_init_lock_is_classified_as_state_locked() -> None:
    from blacktop.terraform.errors import classify

    found = classify("init", "Error loading state: the state is already locked by another tofu client")
    assert found.reason == "StateLocked"
