"""One reconcile's view of an object's status: start from what it says, set conditions, write once.

Every controller follows the same rhythm: decode the current status, decide conditions, write the
status only if something changed, and post an Event when Ready changes. This class is that rhythm.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from blacktop.api.common import Condition, ConditionedStatus, format_time
from blacktop.api.conditions import ConditionType, get_condition, remove_condition, set_condition
from blacktop.kube import events
from blacktop.kube.client import KubeClient
from blacktop.kube.resources import Resource
from blacktop.kube.status import write_status

S = TypeVar("S", bound=ConditionedStatus)


def _summary(condition: Condition | None) -> tuple[str, str] | None:
    return None if condition is None else (condition.status, condition.reason)


class StatusTracker(Generic[S]):
    """Accumulates the conditions of one reconcile of ``body``."""

    def __init__(self, body: dict[str, Any], model: type[S]) -> None:
        self.body = body
        self.generation = int(body["metadata"].get("generation", 1))
        self.previous: S = model.model_validate(body.get("status") or {})
        self.status: S = self.previous.model_copy(deep=True)
        self.now = datetime.now(UTC)

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

    def clear(self, *ctypes: str) -> None:
        """Remove conditions (kstatus' abnormal-true ones are absent when false)."""
        for ctype in ctypes:
            self.status.conditions = remove_condition(self.status.conditions, ctype)

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

    def ready_changed(self) -> bool:
        """Whether Ready's status or reason differs from before (an Event is worth posting)."""
        before = get_condition(self.previous.conditions, ConditionType.READY)
        after = get_condition(self.status.conditions, ConditionType.READY)
        return _summary(before) != _summary(after)

    async def write(self, client: KubeClient, resource: Resource) -> S:
        """Write the status if it changed, then post an Event if Ready changed."""
        self.status.observed_generation = self.generation
        meta = self.body["metadata"]
        if self.status != self.previous:
            await write_status(client, resource, meta["name"], self.status, meta.get("namespace"))
        if self.ready_changed():
            ready = get_condition(self.status.conditions, ConditionType.READY)
            assert ready is not None
            event_type = events.NORMAL if ready.status == "True" else events.WARNING
            await events.post_event(client, self.body, event_type, ready.reason, ready.message)
        return self.status
