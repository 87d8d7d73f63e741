"""Classifying a failed OpenTofu/Terraform run into a reason users and dashboards can act on."""

from __future__ import annotations

import re
from dataclasses import dataclass

from blacktop.api.conditions import Reason

_LOCK_ID = re.compile(r"ID:\s+([0-9a-fA-F-]{8,})")
_LOCK_WHO = re.compile(r"Who:\s+(\S+)")
_PROVIDER = re.compile(
    r"(?i)(connection refused|dial tcp|no such host|i/o timeout|connection reset|could not connect|"
    r"failed to (?:connect|instantiate provider)|error configuring|provider produced|plugin did not respond|"
    r"the server is currently unable|tls handshake)"
)
_INVALID_VARS = re.compile(
    r"(?i)(invalid value for variable|no value for required variable|variable .* not declared|validation rule)"
)


@dataclass(frozen=True)
class Classification:
    """Why a run failed."""

    reason: str
    lock_id: str | None = None
    lock_holder: str | None = None


def classify(operation: str, stderr: str, *, timed_out: bool = False) -> Classification:
    """The reason for a failed ``operation`` (init, plan, apply, destroy) given its stderr."""
    if timed_out:
        return Classification(Reason.TIMEOUT)
    lowered = stderr.lower()
    # The second form: the kubernetes backend locking by itself to write a first, empty state.
    if ("state lock" in lowered and "acquir" in lowered) or "state is already locked" in lowered:
        lock = _LOCK_ID.search(stderr)
        who = _LOCK_WHO.search(stderr)
        return Classification(Reason.STATE_LOCKED, lock.group(1) if lock else None, who.group(1) if who else None)
    if _INVALID_VARS.search(stderr):
        return Classification(Reason.INVALID_PARAMETERS)
    if _PROVIDER.search(stderr):
        return Classification(Reason.PROVIDER_ERROR)
    by_operation = {"destroy": Reason.DESTROY_FAILED, "apply": Reason.APPLY_FAILED}
    return Classification(by_operation.get(operation, Reason.PLAN_FAILED))
