"""Summaries of a saved plan (``show -json``): what would change. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_ADDRESSES = 50


@dataclass
class PlanSummary:
    """Counts and addresses of a plan's resource changes."""

    add: int = 0
    change: int = 0
    destroy: int = 0
    addresses: list[str] = field(default_factory=list)
    types: set[str] = field(default_factory=set)

    @property
    def empty(self) -> bool:
        return self.add == self.change == self.destroy == 0


def summarise(plan: dict[str, Any]) -> PlanSummary:
    """Count creates, updates and deletes (a replacement counts as one add and one destroy)."""
    summary = PlanSummary()
    for change in plan.get("resource_changes", []) or []:
        actions = set((change.get("change") or {}).get("actions", []))
        if actions <= {"no-op", "read"}:
            continue
        if "create" in actions:
            summary.add += 1
        if "delete" in actions:
            summary.destroy += 1
        if "update" in actions:
            summary.change += 1
        summary.types.add(str(change.get("type")))
        if len(summary.addresses) < MAX_ADDRESSES:
            summary.addresses.append(str(change.get("address")))
    return summary
