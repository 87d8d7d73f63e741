"""What a ServiceRequest's ``status.history`` becomes, given the request as it is now. Pure.

The recorder (:mod:`blacktop.controllers.history`) calls :func:`next_history` on every watch event
of a request and writes the result when it differs. The derivation is *level-based*: it reads the
request's own timestamps (creation, managedFields, condition transition times, the last run's end)
rather than the clock of whoever watches, so an operator that restarts and sees the same request
again records the same history. What it records:

- **Changes.** A new ``metadata.generation`` is a change, made when the managedFields entry owning
  ``spec`` was last written (the creation for generation 1). Once Ready on that generation (Ready
  True, not Reconciling, ``observedGeneration`` current), a :class:`ChangeRecord` keeps its lead time
  and whether the apply changed anything (the plan was not empty).
- **Trouble.** Ready False for any reason but progress or deletion (a failed run, a guardrail
  denial, a missing golden path...), or consecutive failures, opens an episode at the first
  failure (the failed run's end, else Ready's transition time), classed by that Ready reason; the
  next Ready closes it with its time to recovery. One episode however many attempts fail.
- **Human steps.** A spec change while in trouble is a manual retry; a platform admin's create or
  change is a platform edit (admission tells the recorder, see :class:`PlatformEdits`); a plan
  approved by a person (``status.approval`` of operation ``apply`` in state ``Approved``, written by
  approvals) is an approval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from blacktop.api.common import format_time, parse_time
from blacktop.api.conditions import RUN_FAILURES, ConditionType, Reason
from blacktop.api.history import (
    MAX_CHANGES,
    MAX_EPISODES,
    MAX_HUMAN_STEPS,
    ChangeRecord,
    HumanStep,
    HumanStepKind,
    RequestHistory,
    TroubleEpisode,
)

JSON = dict[str, Any]

# The Ready reasons a request in trouble can have: the failure classes of trouble (a bounded label set).
TROUBLE_CLASSES = (
    Reason.ENVIRONMENT_NOT_FOUND,
    Reason.GOLDEN_PATH_NOT_FOUND,
    Reason.GOLDEN_PATH_NOT_READY,
    Reason.TIER_NOT_ALLOWED,
    Reason.INVALID_SPEC,
    Reason.INVALID_PARAMETERS,
    Reason.POLICY_DENIED,
    *RUN_FAILURES,
)
OTHER = "Other"  # a reason not in TROUBLE_CLASSES (a newer operator's): still trouble, bounded label
# Ready False for these is work in progress, not trouble.
IN_PROGRESS = (Reason.PROGRESSING, Reason.DELETING)


def failure_class(reason: str | None) -> str:
    """The bounded failure class of a Ready reason."""
    return reason if reason in TROUBLE_CLASSES else OTHER


def _condition(status: JSON, ctype: str) -> JSON | None:
    for cond in status.get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == ctype:
            return cond
    return None


def _time(text: object) -> datetime | None:
    try:
        return parse_time(str(text)) if text else None
    except ValueError:
        return None


def _owns_spec(entry: JSON) -> bool:
    fields = entry.get("fieldsV1")
    return isinstance(fields, dict) and "f:spec" in fields and entry.get("subresource") in (None, "")


def spec_written_at(metadata: JSON) -> datetime | None:
    """When the spec was last written: the newest managedFields entry that owns ``spec`` (never a
    status write), or None when no entry says."""
    times = [_time(e.get("time")) for e in metadata.get("managedFields") or [] if _owns_spec(e)]
    known = [t for t in times if t is not None]
    return max(known) if known else None


def spec_changed_at(metadata: JSON) -> datetime | None:
    """:func:`spec_written_at`, else the creation time."""
    return spec_written_at(metadata) or _time(metadata.get("creationTimestamp"))


def last_change_time(metadata: JSON) -> datetime | None:
    """The last time a person (or their GitOps tool) created, changed or deleted the object."""
    moments = [spec_changed_at(metadata), _time(metadata.get("creationTimestamp"))]
    moments.append(_time(metadata.get("deletionTimestamp")))
    known = [t for t in moments if t is not None]
    return max(known) if known else None


def _add_step(history: RequestHistory, kind: HumanStepKind, at: str, generation: int) -> None:
    if any(s.kind == kind and s.generation == generation for s in history.human_steps):
        return
    history.human_steps = [*history.human_steps, HumanStep(kind=kind, time=at, generation=generation)][
        -MAX_HUMAN_STEPS:
    ]


def _ready_at(status: JSON, ready: JSON, changed_at: datetime | None, now: datetime) -> datetime:
    """When the request turned Ready on its current generation: the successful apply's end, else
    Ready's transition time; never before the change itself (then the recorder's own clock)."""
    run = status.get("lastRun") or {}
    candidates = []
    if run.get("operation") == "apply" and str(run.get("result") or "").lower() == "succeeded":
        candidates.append(_time(run.get("finishedAt")))
    candidates.append(_time(ready.get("lastTransitionTime")))
    for moment in candidates:
        if moment is not None and (changed_at is None or moment >= changed_at):
            return moment
    return now


def _plan_changed_something(status: JSON) -> bool:
    plan = status.get("plan") or {}
    return any(int(plan.get(k) or 0) > 0 for k in ("add", "change", "destroy"))


def _seconds(start: datetime | None, end: datetime) -> int:
    return max(0, round((end - start).total_seconds())) if start is not None else 0


def _trouble_since(status: JSON, ready: JSON | None, now: datetime) -> datetime:
    run = status.get("lastRun") or {}
    if str(run.get("result") or "").lower() == "failed" and (finished := _time(run.get("finishedAt"))):
        return min(finished, now)
    if ready is not None and (moment := _time(ready.get("lastTransitionTime"))):
        return min(moment, now)
    return now


def in_trouble(status: JSON) -> tuple[bool, str | None]:
    """Whether the request is in trouble now, and the Ready reason that says why."""
    ready = _condition(status, ConditionType.READY)
    if ready is not None and ready.get("status") == "True":
        return False, None
    reason = str(ready["reason"]) if ready and ready.get("reason") else None
    if ready is not None and ready.get("status") == "False" and reason not in IN_PROGRESS:
        return True, reason
    return int(status.get("failures") or 0) > 0, None


def next_history(body: JSON, *, now: datetime, platform_edits: Mapping[int, str] | None = None) -> RequestHistory:
    """The history of ``body`` after what its current state shows (``body``'s own history is the start).

    ``platform_edits``: generation -> when a platform admin created or changed it (from admission).
    """
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    history = RequestHistory.model_validate(status.get("history") or {})
    generation = int(meta.get("generation") or 1)

    if generation > history.generation:
        # Generation 1 is the creation; a later one is the spec's last write, or (when the object
        # does not say) the first time the recorder sees it.
        changed = _time(meta.get("creationTimestamp")) if generation == 1 else spec_written_at(meta)
        changed_at = format_time(changed or now)
        # A change while in trouble is someone retrying by hand (not on the first sighting: then
        # nothing is known of how the generation came about).
        if history.trouble is not None and history.generation:
            _add_step(history, HumanStepKind.MANUAL_RETRY, changed_at, generation)
        history.generation, history.changed_at = generation, changed_at
    for edited, at in sorted((platform_edits or {}).items()):
        _add_step(history, HumanStepKind.PLATFORM_EDIT, at, edited)
    # A plan a person approved before it was applied (status.approval, written by approvals). A drift
    # correction's approval is not counted: the request was Ready without it.
    approval = status.get("approval")
    if isinstance(approval, dict) and approval.get("operation") == "apply" and approval.get("state") == "Approved":
        at = str(approval.get("approvedAt") or format_time(now))
        _add_step(history, HumanStepKind.APPROVAL, at, generation)

    ready = _condition(status, ConditionType.READY)
    reconciling = _condition(status, ConditionType.RECONCILING)
    current = status.get("observedGeneration") == generation
    if (
        ready is not None
        and ready.get("status") == "True"
        and current
        and not (reconciling and reconciling.get("status") == "True")
    ):
        _record_ready(history, status, ready, generation, now)
        return history
    trouble, reason = in_trouble(status)
    if trouble:
        failures = max(1, int(status.get("failures") or 0))
        if history.trouble is None:
            since = _trouble_since(status, ready, now)
            history.trouble = TroubleEpisode(failure_class=failure_class(reason), since=format_time(since))
        history.trouble.failures = max(history.trouble.failures, failures)
    return history


def _record_ready(history: RequestHistory, status: JSON, ready: JSON, generation: int, now: datetime) -> None:
    changed_at = _time(history.changed_at)
    ready_at = _ready_at(status, ready, changed_at, now)
    if history.trouble is not None:
        episode = history.trouble.model_copy(
            update={
                "recovered_at": format_time(ready_at),
                "recovery_seconds": _seconds(_time(history.trouble.since), ready_at),
            }
        )
        history.episodes = [*history.episodes, episode][-MAX_EPISODES:]
        history.trouble = None
    if not any(c.generation == generation for c in history.changes):
        change = ChangeRecord(
            generation=generation,
            changed_at=history.changed_at or format_time(ready_at),
            ready_at=format_time(ready_at),
            lead_time_seconds=_seconds(changed_at, ready_at),
            applied=_plan_changed_something(status),
        )
        history.changes = [*history.changes, change][-MAX_CHANGES:]


class PlatformEdits:
    """Generations of requests that a platform admin created or changed, noted by admission until the
    recorder writes them into the request's history.

    Admission is the only place that knows *who* made a change; this table carries that from the
    webhook to the recorder (same process, usually milliseconds apart). Bounded in size and age: an
    entry nobody collects (a create the apiserver then refused) expires. Thread-safe.
    """

    MAX_ENTRIES = 10000
    MAX_AGE_SECONDS = 3600.0

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._marks: dict[tuple[str, str, int], tuple[str, float]] = {}

    def note(self, namespace: str, name: str, generation: int, at: str) -> None:
        """A platform admin made ``generation`` of ``namespace/name`` at ``at`` (RFC 3339)."""
        with self._lock:
            self._expire()
            if len(self._marks) >= self.MAX_ENTRIES:
                self._marks.pop(next(iter(self._marks)))
            self._marks[(namespace, name, generation)] = (at, self._clock())

    def pending(self, namespace: str, name: str, up_to: int) -> dict[int, str]:
        """The noted generations of ``namespace/name`` up to generation ``up_to``: generation -> time."""
        with self._lock:
            self._expire()
            return {
                g: at for (ns, n, g), (at, _) in self._marks.items() if ns == namespace and n == name and g <= up_to
            }

    def forget(self, namespace: str, name: str, generations: list[int]) -> None:
        """Drop marks once they are in the request's history."""
        with self._lock:
            for generation in generations:
                self._marks.pop((namespace, name, generation), None)

    def _expire(self) -> None:
        oldest = self._clock() - self.MAX_AGE_SECONDS
        for key in [k for k, (_, noted) in self._marks.items() if noted < oldest]:
            del self._marks[key]
