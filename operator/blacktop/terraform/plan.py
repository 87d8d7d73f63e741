"""Summaries of a saved plan (``show -json``): what would change, as status shows it. Pure."""

from __future__ import annotations

from typing import Any

from blacktop.api.servicerequest import PlanSummary

MAX_ADDRESSES = 50


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
        if len(summary.resources) < MAX_ADDRESSES:
            summary.resources.append(str(change.get("address")))
    return summary
