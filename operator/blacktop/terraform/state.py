"""A request's state in the ``kubernetes`` backend: where it lives, its lock in the backend's own
format, and whose lock it is (pure).

Each request's state is a Secret ``tfstate-default-<uid>`` in the operator's namespace
(:class:`StateRef`). OpenTofu's kubernetes backend locks a state with a Lease named ``lock-tfstate-<workspace>-<suffix>``:
``spec.holderIdentity`` is the lock ID and the annotation ``app.terraform.io/lock-info`` holds the
lock's JSON (ID, Operation, Info, Who, Version, Created, Path). Unlocking clears both. A lock
outlives a process killed mid-run: that is by design, so nobody writes a state whose last writer
may not have finished.

Blacktop takes this lock itself, in exactly that format, *before* a run starts, with an ID it has
already recorded in the request's status (``status.lastRun.lockId``), and runs the tool with
``-lock=false`` under it. So after a crash the leftover lock is recognisably its own and can be
released safely, while a lock taken by anyone else (a person running ``tofu apply`` by hand, another
tool) looks foreign and is only reported. This module decides; ``controllers/statelock.py`` acts.
"""

from __future__ import annotations

import base64
import gzip
import json
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

LOCK_INFO_ANNOTATION = "app.terraform.io/lock-info"
# The labels the backend puts on its Lease; `tofu` refuses to delete a Lease without `tfstate=true`.
_BACKEND_LABELS = {"tfstate": "true", "tfstateWorkspace": "default", "app.kubernetes.io/managed-by": "blacktop"}
_MARKER = "blacktop request "

JSON = dict[str, Any]


@dataclass(frozen=True)
class StateRef:
    """Where one request's state lives: the backend's Secret and lock Lease, keyed by the request's uid
    (so a re-created request never inherits state)."""

    namespace: str
    suffix: str

    @property
    def state_secret(self) -> str:
        """The Secret the kubernetes backend keeps the state in (default workspace)."""
        return f"tfstate-default-{self.suffix}"

    @property
    def lock_lease(self) -> str:
        """The Lease the kubernetes backend locks the state with."""
        return f"lock-tfstate-default-{self.suffix}"


def state_of(namespace: str, request_uid: str) -> StateRef:
    """The state of the request with ``request_uid``, kept in the operator's ``namespace``."""
    return StateRef(namespace=namespace, suffix=request_uid)


@dataclass(frozen=True)
class LockInfo:
    """One lock, as the backend stores it."""

    id: str
    operation: str
    who: str
    info: str
    created: str

    def to_json(self) -> str:
        """The annotation value (the field names the backend's LockInfo marshals to)."""
        return json.dumps(
            {
                "ID": self.id,
                "Operation": self.operation,
                "Info": self.info,
                "Who": self.who,
                "Version": "",
                "Created": self.created,
                "Path": "",
            }
        )


def new_lock_id() -> str:
    """A fresh lock ID (a UUID, like the tool's own)."""
    return str(uuid.uuid4())


def lock_for(lock_id: str, operation: str, request_uid: str, run_id: str, now: datetime | None = None) -> LockInfo:
    """The lock a Blacktop run of ``operation`` takes for the request with ``request_uid``, taken at ``now``."""
    return LockInfo(
        id=lock_id,
        operation=f"OperationType{operation.capitalize()}",
        who=f"blacktop@{socket.gethostname()}",
        info=f"{_MARKER}{request_uid} run {run_id}",
        created=(now or datetime.now(UTC)).isoformat(),
    )


def holder_of(lease: JSON | None) -> LockInfo | None:
    """The lock a Lease holds, or None when the state is unlocked."""
    if lease is None:
        return None
    holder = (lease.get("spec") or {}).get("holderIdentity")
    if not holder:
        return None
    raw = ((lease.get("metadata") or {}).get("annotations") or {}).get(LOCK_INFO_ANNOTATION) or "{}"
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    return LockInfo(
        id=str(holder),
        operation=str(data.get("Operation") or ""),
        who=str(data.get("Who") or "unknown"),
        info=str(data.get("Info") or ""),
        created=str(data.get("Created") or ""),
    )


class Verdict(StrEnum):
    """What a run finds when it wants the lock."""

    FREE = "Free"  # take it
    HELD_BY_US = "HeldByUs"  # this very run already holds it (a retried acquire)
    ORPHANED = "Orphaned"  # left by a run of ours that is no longer running: release and take it
    BUSY = "Busy"  # a run of ours in this process holds it: wait
    FOREIGN = "Foreign"  # someone else's: report, never break


def judge(lease: JSON | None, *, lock_id: str, recorded: set[str], request_uid: str, in_flight: set[str]) -> Verdict:
    """Whose lock it is. ``recorded``: lock IDs this request's status says its runs took;
    ``in_flight``: lock IDs runs of this process hold right now."""
    held = holder_of(lease)
    if held is None:
        return Verdict.FREE
    if held.id == lock_id:
        return Verdict.HELD_BY_US
    if held.id in in_flight:
        return Verdict.BUSY
    # Ours if our status recorded it, or if it carries our marker for this very request (a run that
    # died between recording its ID and taking the lock leaves the previous run's ID recorded).
    if held.id in recorded or held.info.startswith(f"{_MARKER}{request_uid} "):
        return Verdict.ORPHANED
    return Verdict.FOREIGN


def new_lease(state: StateRef, info: LockInfo) -> JSON:
    """The lock Lease of ``state`` holding ``info``, labelled like the backend's own."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": state.lock_lease,
            "namespace": state.namespace,
            "labels": {**_BACKEND_LABELS, "tfstateSecretSuffix": state.suffix},
            "annotations": {LOCK_INFO_ANNOTATION: info.to_json()},
        },
        "spec": {"holderIdentity": info.id},
    }


def locked(lease: JSON, info: LockInfo) -> JSON:
    """``lease`` (with its resourceVersion, for an atomic update) now holding ``info``."""
    meta = dict(lease.get("metadata") or {})
    meta["annotations"] = {**(meta.get("annotations") or {}), LOCK_INFO_ANNOTATION: info.to_json()}
    return {**lease, "metadata": meta, "spec": {**(lease.get("spec") or {}), "holderIdentity": info.id}}


def unlocked(lease: JSON) -> JSON:
    """``lease`` released, exactly as the backend's Unlock leaves it."""
    meta = dict(lease.get("metadata") or {})
    meta["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items() if k != LOCK_INFO_ANNOTATION}
    spec = {k: v for k, v in (lease.get("spec") or {}).items() if k != "holderIdentity"}
    return {**lease, "metadata": meta, "spec": spec}


def state_resources(secret: JSON) -> list[str]:
    """The addresses of the managed resources a state Secret holds (``random_password.role``,
    ``module.db.postgresql_role.app``); empty for an empty or unreadable state."""
    try:
        raw = base64.b64decode((secret.get("data") or {}).get("tfstate") or "")
        if ((secret.get("metadata") or {}).get("annotations") or {}).get("encoding") == "gzip" or raw[
            :2
        ] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        state = json.loads(raw or b"{}")
    except (ValueError, OSError, EOFError):
        return []
    found = []
    for resource in state.get("resources") or [] if isinstance(state, dict) else []:
        if not isinstance(resource, dict) or resource.get("mode") != "managed" or not resource.get("instances"):
            continue
        module = f"{resource['module']}." if resource.get("module") else ""
        found.append(f"{module}{resource.get('type')}.{resource.get('name')}")
    return found


def empty_state_secret(state: StateRef) -> JSON:
    """The backend's state Secret of ``state`` holding an empty state.

    When no state exists yet, the backend takes its *own* lock to write an empty one, whatever
    ``-lock=false`` says, and would find ours. So under our lock Blacktop writes that empty state
    first, in the backend's format: gzip, labels that ``tofu`` recognises.
    """
    empty = {
        "version": 4,
        "terraform_version": "1.6.0",
        "serial": 0,
        "lineage": str(uuid.uuid4()),
        "outputs": {},
        "resources": [],
        "check_results": None,
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": state.state_secret,
            "namespace": state.namespace,
            "labels": {**_BACKEND_LABELS, "tfstateSecretSuffix": state.suffix},
            "annotations": {"encoding": "gzip"},
        },
        "type": "Opaque",
        "data": {"tfstate": base64.b64encode(gzip.compress(json.dumps(empty).encode())).decode()},
    }
