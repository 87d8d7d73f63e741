"""Summaries of a plan, as status shows them: from a saved plan (``show -json``), or from the
machine-readable stream of ``plan -json`` (which also carries the diagnostics, rendered here as the
tool would print them, so failure classes and messages read as without ``-json``). Pure."""

from __future__ import annotations

import json
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


# planned_change actions of the machine-readable UI, as counted by summarise().
_ADD, _CHANGE, _DESTROY = {"create", "replace"}, {"update"}, {"delete", "replace"}


def summarise_stream(stdout: str) -> tuple[PlanSummary, str]:
    """(summary, what the tool said in words) of ``plan -json``'s output: one JSON message a line."""
    summary, words = PlanSummary(), []
    for line in stdout.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            words.append(line)
            continue
        if not isinstance(message, dict):
            continue
        kind = message.get("type")
        if kind == "planned_change":
            change = message.get("change") or {}
            action = change.get("action")
            summary.add += action in _ADD
            summary.change += action in _CHANGE
            summary.destroy += action in _DESTROY
            address = (change.get("resource") or {}).get("addr")
            if address and action not in {"noop", "read"} and len(summary.resources) < MAX_ADDRESSES:
                summary.resources.append(str(address))
        elif kind == "change_summary":
            changes = message.get("changes") or {}
            # The tool's own count wins over ours (it knows imports, forgets, ...).
            summary.add, summary.change = int(changes.get("add", 0)), int(changes.get("change", 0))
            summary.destroy = int(changes.get("remove", 0))
        elif kind == "diagnostic":
            diagnostic = message.get("diagnostic") or {}
            severity = "Error" if diagnostic.get("severity") == "error" else "Warning"
            words.append(f"{severity}: {diagnostic.get('summary', '')}")
            if diagnostic.get("detail"):
                words.append(str(diagnostic["detail"]))
        elif message.get("@level") == "error":
            words.append(str(message.get("@message", "")))
    return summary, "\n".join(words)
