"""Holding a request's state lock around its OpenTofu runs, and recovering what a dead run left.

Each run records its lock ID in status first, then takes the backend's Lease with that ID, runs the
tool with ``-lock=false`` under it and releases it at the end, also on failure and cancellation. If
the operator is killed mid-run the Lease stays locked; the next run of the same request finds the
ID its status recorded (or our marker for this request), sees that no run of this process holds it
(``ctx.held_locks``), and takes the lock over in one atomic update, with an Event saying so.
Anyone else's lock is reported as ``StateLocked`` with its holder and ID and left alone. The rules
(whose lock it is, the backend's format) are in :mod:`blacktop.terraform.state`; this module acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from blacktop.api.conditions import Reason
from blacktop.api.servicerequest import RunInfo
from blacktop.controllers.context import Context
from blacktop.controllers.views import RequestView
from blacktop.kube import events
from blacktop.kube.errors import ConflictError, KubeApiError
from blacktop.kube.resources import resource_for
from blacktop.terraform import state as states
from blacktop.terraform.state import StateRef

logger = logging.getLogger(__name__)

LEASE = resource_for("coordination.k8s.io/v1", "Lease")
SECRET = resource_for("v1", "Secret")


class StateLockedError(Exception):
    """The state is locked by someone else (or, briefly, by another run of this process)."""

    def __init__(self, holder: states.LockInfo) -> None:
        super().__init__(f"state locked by {holder.who} (lock ID {holder.id})")
        self.holder = holder

    @property
    def detail(self) -> str:
        """The refusal in words: whose lock, since when, and how its owner releases it."""
        held = self.holder
        since = f", since {held.created}" if held.created else ""
        return (
            f"the state is locked by {held.who} (lock ID {held.id}); {held.operation or 'an operation'}{since}; "
            "Blacktop never breaks a lock it did not take: once nothing runs any more, release it with "
            f"`tofu force-unlock {held.id}`"
        )


def recorded_lock_ids(*runs: RunInfo | None) -> set[str]:
    """The lock IDs that status says runs of this request took."""
    return {run.lock_id for run in runs if run is not None and run.lock_id}


async def state_exists(ctx: Context, state: StateRef) -> bool:
    """Whether the request has a state (anything was ever applied, or a run began)."""
    return await ctx.client.get(SECRET, state.state_secret, state.namespace) is not None


async def acquire(ctx: Context, request: RequestView, state: StateRef, run: RunInfo, recorded: set[str]) -> None:
    """Take the lock for ``run`` (whose ``lock_id`` is already in status); raises StateLockedError."""
    assert run.lock_id is not None
    info = states.lock_for(run.lock_id, run.operation, request.uid, run.id, ctx.now())
    holder: states.LockInfo | None = None
    for _ in range(ctx.settings.state_lock_attempts):
        lease = await ctx.client.get(LEASE, state.lock_lease, state.namespace)
        holder = states.holder_of(lease)
        verdict = states.judge(
            lease, lock_id=run.lock_id, recorded=recorded, request_uid=request.uid, in_flight=ctx.held_locks
        )
        if verdict == states.Verdict.HELD_BY_US:
            return
        if verdict in {states.Verdict.FOREIGN, states.Verdict.BUSY}:
            assert holder is not None
            raise StateLockedError(holder)
        try:
            if lease is None:
                await ctx.client.create(states.new_lease(state, info))
            else:
                # resourceVersion travels with the body: if anyone moved the lock since we read it,
                # this fails with a conflict and we judge again.
                await ctx.client.replace(states.locked(lease, info))
        except ConflictError:
            continue
        await _seed_state(ctx, state)
        if verdict == states.Verdict.ORPHANED:
            assert holder is not None
            message = (
                f"released state lock {holder.id} left by an earlier run that did not finish "
                f"({holder.operation or 'unknown operation'}, started {holder.created or 'at an unknown time'}); "
                f"run {run.id} holds it now"
            )
            logger.warning("%s/%s: %s", request.namespace, request.name, message)
            await events.post_event(ctx.client, request.body, events.WARNING, Reason.STATE_LOCK_RECOVERED, message)
        return
    raise StateLockedError(holder or info)


async def _seed_state(ctx: Context, state: StateRef) -> None:
    """Write an empty state if there is none (see terraform.state.empty_state_secret)."""
    if not await state_exists(ctx, state):
        with contextlib.suppress(ConflictError):  # written meanwhile: fine, it exists
            await ctx.client.create(states.empty_state_secret(state))


async def release(ctx: Context, state: StateRef, lock_id: str) -> None:
    """Release our lock; a failure is logged (the next run recovers the lock as its own)."""
    try:
        lease = await ctx.client.get(LEASE, state.lock_lease, state.namespace)
        held = states.holder_of(lease)
        if lease is not None and held is not None and held.id == lock_id:
            await ctx.client.replace(states.unlocked(lease))
    except KubeApiError as exc:
        logger.warning("could not release state lock %s (%s); the next run will recover it", lock_id, exc)


class Held:
    """A lock held for a block. :meth:`keep` leaves it locked when the block ends: work goes on
    without this process (a runner pod the shutting-down operator leaves running), and the next run
    must find the lock taken until it has waited for that work (then it is taken over as orphaned)."""

    def __init__(self) -> None:
        self.kept = False

    def keep(self) -> None:
        self.kept = True


@asynccontextmanager
async def held(
    ctx: Context, request: RequestView, state: StateRef, run: RunInfo, recorded: set[str]
) -> AsyncIterator[Held]:
    """The lock for the duration of the block; released however the block ends, unless kept."""
    assert run.lock_id is not None
    await acquire(ctx, request, state, run, recorded)
    ctx.held_locks.add(run.lock_id)
    handle = Held()
    try:
        yield handle
    finally:
        ctx.held_locks.discard(run.lock_id)
        if handle.kept:
            logger.warning(
                "%s/%s: state lock %s stays held: its runner works on; the next run waits for it, then takes the lock over",
                request.namespace,
                request.name,
                run.lock_id,
            )
        else:
            # Shielded: on operator shutdown the release still reaches the API server.
            await asyncio.shield(release(ctx, state, run.lock_id))


async def forget(ctx: Context, request: RequestView, state: StateRef, recorded: set[str]) -> None:
    """Delete the state and its lock's Lease (after a destroy: nothing is left), unless someone else
    holds the lock: their lock is theirs to release."""
    await ctx.client.delete(SECRET, state.state_secret, state.namespace)
    lease = await ctx.client.get(LEASE, state.lock_lease, state.namespace)
    verdict = states.judge(lease, lock_id="", recorded=recorded, request_uid=request.uid, in_flight=ctx.held_locks)
    if lease is not None and verdict in {states.Verdict.FREE, states.Verdict.ORPHANED}:
        await ctx.client.delete(LEASE, state.lock_lease, state.namespace)
