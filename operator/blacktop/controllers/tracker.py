"""One reconcile's view of an object's status: start from what it says, set conditions, write.

Every controller follows the same rhythm: decode the current status, decide conditions, write the
status only if something changed, and post an Event when Ready changes. This class is that rhythm,
and the only way Blacktop writes a status:

- :meth:`write` patches the status if it differs from what was last written (or read), then makes
  what it wrote the new baseline, so a reconcile that reports progress midway (Planning, Applying)
  writes each step once and posts each Ready change once.
- ``observedGeneration`` moves to the object's generation only when this reconcile judged it (set or
  cleared a condition): a write that merely records something (a cost, a violation) never claims a
  spec was reconciled.
- :meth:`announce` posts the Ready Event on the next write even if Ready's status and reason are
  unchanged (a successful apply says so every time).
- The Event is Normal for success and routine progress (planning, queued, deleting: reasons in
  :data:`blacktop.api.conditions.ROUTINE`) and Warning only for what someone may have to look at,
  so alerting on Warning Events never pages for routine work.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from blacktop.api.common import Condition, ConditionedStatus, format_time
from blacktop.api.conditions import ROUTINE, ConditionType, get_condition, remove_condition, set_condition
from blacktop.kube import events
from blacktop.kube.client import Client
from blacktop.kube.resources import Resource
from blacktop.kube.status import write_status

S = TypeVar("S", bound=ConditionedStatus)


def _summary(condition: Condition | None) -> tuple[str, str] | None:
    return None if condition is None else (condition.status, condition.reason)


class StatusTracker(Generic[S]):
    """Accumulates the status of one reconcile of ``body``, at the moment ``now``."""

    def __init__(self, body: dict[str, Any], model: type[S], *, now: datetime) -> None:
        self.body = body
        self.generation = int(body["metadata"].get("generation", 1))
        self._written: S = model.model_validate(body.get("status") or {})
        self.status: S = self._written.model_copy(deep=True)
        self.now = now
        self._judged = False
        self._announce = False

    def set(self, ctype: str, ok: bool | None, reason: str, message: str) -> None:
        """Set a condition (True/False/Unknown) for the current generation."""
        status = "Unknown" if ok is None else ("True" if ok else "False")
        condition = Condition(
            type=ctype,
            status=status,
            reason=reason,
            message=message,
            observed_generation=self.generation,
            last_transition_time=format_time(self.now),
        )
        self.status.conditions = set_condition(self.status.conditions, condition)
        self._judged = True

    def clear(self, *ctypes: str) -> None:
        """Remove conditions (kstatus' abnormal-true ones are absent when false)."""
        for ctype in ctypes:
            self.status.conditions = remove_condition(self.status.conditions, ctype)
        self._judged = True

    def ready(self, message: str, reason: str) -> None:
        """Ready=True; no longer Reconciling or Stalled."""
        self.clear(ConditionType.RECONCILING, ConditionType.STALLED)
        self.set(ConditionType.READY, True, reason, message)

    def not_ready(self, reason: str, message: str, *, stalled: bool) -> None:
        """Ready=False, and either Stalled (needs a human) or Reconciling (will retry by itself)."""
        self.set(ConditionType.READY, False, reason, message)
        if stalled:
            self.clear(ConditionType.RECONCILING)
            self.set(ConditionType.STALLED, True, reason, message)
        else:
            self.clear(ConditionType.STALLED)
            self.set(ConditionType.RECONCILING, True, reason, message)

    @property
    def unchanged(self) -> S:
        """The status as it was read, for a reconcile that found nothing to do (and wrote nothing)."""
        return self._written

    def announce(self) -> None:
        """Post the Ready Event on the next write, even if Ready did not change."""
        self._announce = True

    def ready_changed(self) -> bool:
        """Whether Ready's status or reason differs from the last write (an Event is worth posting)."""
        before = get_condition(self._written.conditions, ConditionType.READY)
        after = get_condition(self.status.conditions, ConditionType.READY)
        return _summary(before) != _summary(after)

    async def write(self, client: Client, resource: Resource) -> S:
        """Write the status if it changed, post an Event if Ready changed (or was announced), and make
        what was written the baseline of the next write."""
        if self._judged:
            self.status.observed_generation = self.generation
        meta = self.body["metadata"]
        if self.status != self._written:
            await write_status(client, resource, meta["name"], self.status, meta.get("namespace"))
        if self.ready_changed() or self._announce:
            ready = get_condition(self.status.conditions, ConditionType.READY)
            if ready is not None:
                routine = ready.status == "True" or ready.reason in ROUTINE
                event_type = events.NORMAL if routine else events.WARNING
                await events.post_event(client, self.body, event_type, ready.reason, ready.message)
        self._written = self.status.model_copy(deep=True)
        self._announce = False
        return self.status
