"""Holding a request's state lock around its OpenTofu runs, and recovering what a dead run left.

Each run records its lock ID in status first, then takes the backend's Lease with that ID, runs the
tool with ``-lock=false`` under it and releases it at the end, also on failure and cancellation. If
the operator is killed mid-run the Lease stays locked; the next run of the same request finds the
ID its status recorded (or our marker for this request), sees that no run of this process holds it,
and takes the lock over in one atomic update, with an Event saying so. Anyone else's lock is
reported as ``StateLocked`` with its holder and ID and left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from blacktop.api.conditions import Reason
from blacktop.api.servicerequest import RunInfo
from blacktop.controllers.context import Context
from blacktop.kube import events
from blacktop.kube.errors import ConflictError, KubeApiError
from blacktop.kube.resources import resource_for
from blacktop.terraform import locks
from blacktop.terraform.errors import Classification
from blacktop.terraform.runner import RunResult
from blacktop.terraform.workspace import Backend

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
LEASE = resource_for("coordination.k8s.io/v1", "Lease")
SECRET = resource_for("v1", "Secret")
_ATTEMPTS = 3
# Lock IDs held by runs of this process right now: such a lock is busy, never an orphan.
_IN_FLIGHT: set[str] = set()


class StateLockedError(Exception):
    """The state is locked by someone else (or, briefly, by another run of this process)."""

    def __init__(self, holder: locks.LockInfo) -> None:
        super().__init__(f"state locked by {holder.who} (lock ID {holder.id})")
        self.holder = holder

    def result(self) -> RunResult:
        """The refusal as a failed run, so it is reported and retried like any other failure."""
        held = self.holder
        since = f", since {held.created}" if held.created else ""
        detail = (
            f"{held.operation or 'an operation'}{since}; Blacktop never breaks a lock it did not take: "
            f"once nothing runs any more, release it with `tofu force-unlock {held.id}`"
        )
        return RunResult(
            operation="lock",
            exit_code=1,
            stdout="",
            stderr=detail,
            seconds=0.0,
            classification=Classification(Reason.STATE_LOCKED, held.id, held.who),
        )


def recorded_lock_ids(*runs: RunInfo | None) -> set[str]:
    """The lock IDs that status says runs of this request took."""
    return {run.lock_id for run in runs if run is not None and run.lock_id}


async def _put(ctx: Context, lease: JSON) -> JSON:
    meta = lease["metadata"]
    return await ctx.client.request("PUT", LEASE.path(meta["namespace"], meta["name"]), body=lease)


async def acquire(ctx: Context, body: JSON, backend: Backend, run: RunInfo, recorded: set[str]) -> None:
    """Take the lock for ``run`` (whose ``lock_id`` is already in status); raises StateLockedError."""
    assert run.lock_id is not None
    info = locks.lock_for(run.lock_id, run.operation, body["metadata"]["uid"], run.id)
    holder: locks.LockInfo | None = None
    for _ in range(_ATTEMPTS):
        lease = await ctx.client.get(LEASE, backend.lock_lease, backend.namespace)
        holder = locks.holder_of(lease)
        verdict = locks.judge(
            lease, lock_id=run.lock_id, recorded=recorded, request_uid=body["metadata"]["uid"], in_flight=_IN_FLIGHT
        )
        if verdict == locks.Verdict.HELD_BY_US:
            return
        if verdict in {locks.Verdict.FOREIGN, locks.Verdict.BUSY}:
            assert holder is not None
            raise StateLockedError(holder)
        try:
            if lease is None:
                await ctx.client.create(locks.new_lease(backend.lock_lease, backend.namespace, backend.suffix, info))
            else:
                # resourceVersion travels with the body: if anyone moved the lock since we read it,
                # this fails with a conflict and we judge again.
                await _put(ctx, locks.locked(lease, info))
        except ConflictError:
            continue
        await _seed_state(ctx, backend)
        if verdict == locks.Verdict.ORPHANED:
            assert holder is not None
            message = (
                f"released state lock {holder.id} left by an earlier run that did not finish "
                f"({holder.operation or 'unknown operation'}, started {holder.created or 'at an unknown time'}); "
                f"run {run.id} holds it now"
            )
            logger.warning("%s/%s: %s", body["metadata"]["namespace"], body["metadata"]["name"], message)
            await events.post_event(ctx.client, body, events.WARNING, Reason.STATE_LOCK_RECOVERED, message)
        return
    raise StateLockedError(holder or info)


async def _seed_state(ctx: Context, backend: Backend) -> None:
    """Write an empty state if there is none (see terraform.locks.empty_state_secret)."""
    if await ctx.client.get(SECRET, backend.state_secret, backend.namespace) is None:
        with contextlib.suppress(ConflictError):  # written meanwhile: fine, it exists
            await ctx.client.create(locks.empty_state_secret(backend.state_secret, backend.namespace, backend.suffix))


async def release(ctx: Context, backend: Backend, lock_id: str) -> None:
    """Release our lock; a failure is logged (the next run recovers the lock as its own)."""
    try:
        lease = await ctx.client.get(LEASE, backend.lock_lease, backend.namespace)
        held = locks.holder_of(lease)
        if lease is not None and held is not None and held.id == lock_id:
            await _put(ctx, locks.unlocked(lease))
    except KubeApiError as exc:
        logger.warning("could not release state lock %s (%s); the next run will recover it", lock_id, exc)


@asynccontextmanager
async def held(ctx: Context, body: JSON, backend: Backend, run: RunInfo, recorded: set[str]) -> AsyncIterator[None]:
    """The lock for the duration of the block; released however the block ends."""
    assert run.lock_id is not None
    await acquire(ctx, body, backend, run, recorded)
    _IN_FLIGHT.add(run.lock_id)
    try:
        yield
    finally:
        _IN_FLIGHT.discard(run.lock_id)
        # Shielded: on operator shutdown the release still reaches the API server.
        await asyncio.shield(release(ctx, backend, run.lock_id))


async def forget(ctx: Context, body: JSON, backend: Backend, recorded: set[str]) -> None:
    """Delete the lock's Lease with the state (after a destroy: nothing is left), unless someone
    else holds it: their lock is theirs to release."""
    lease = await ctx.client.get(LEASE, backend.lock_lease, backend.namespace)
    verdict = locks.judge(
        lease, lock_id="", recorded=recorded, request_uid=body["metadata"]["uid"], in_flight=_IN_FLIGHT
    )
    if lease is not None and verdict in {locks.Verdict.FREE, locks.Verdict.ORPHANED}:
        await ctx.client.delete(LEASE, backend.lock_lease, backend.namespace)
