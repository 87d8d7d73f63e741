"""One run of OpenTofu on a request: the protocol provisioning, destroy and drift checks share.

    async with runs.attempt(ctx, inputs, tracker, "apply", progress="planning tiny") as run:
        await run.step(run.runner.init())
        plan = await run.step(run.runner.plan())

Entering a run: a new ``lastRun`` with a fresh lock ID goes into status and is written before
anything else, so a crash leaves a lock this request recognises as its own; then the state lock is
taken (:mod:`blacktop.controllers.statelock`; a lock held by anyone else ends the run as
StateLocked), and a runner is opened on the request's inputs, each operation waiting for a run
slot. Before the lock, the runners settle the target: a runner pod that an earlier operator process
started is waited for (RunnerAdopted), never run beside. Opening checks the module the run is about
to run, as shipped and as copied: a refused one ends the run before any tool runs, with its reason.
Inside, :meth:`Run.step` checks an operation's result: a failed one ends the run with its classified
reason (:class:`RunFailed`). However the block ends, the runner is closed and the lock is released
(kept only when a shutdown leaves the runner working on: its successor waits for it) and
``lastRun`` says how the run ended.

What a failed run means is the caller's decision. :func:`attempt` (apply, destroy) counts it as a
failed attempt: ``failures`` and ``nextRetryTime`` in status, Ready=False with the reason (Stalled
once retries are exhausted), and a :class:`~blacktop.controllers.failures.Failure` with the backoff
delay. A drift check catches :class:`RunFailed` and reports it in its own condition. How runs share
the slots is decided here as well (:class:`RunSlot`): one cluster-wide and one per team, so a
fairer queue is a change of this module.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TypeVar

from blacktop.api.common import format_time
from blacktop.api.conditions import ConditionType, Reason
from blacktop.api.servicerequest import RunInfo, ServiceRequestStatus, Stage
from blacktop.builders.retry import next_retry
from blacktop.controllers import statelock
from blacktop.controllers.context import Context
from blacktop.controllers.failures import Failure
from blacktop.controllers.inputs import Inputs
from blacktop.controllers.tracker import StatusTracker
from blacktop.kube import events
from blacktop.kube.resources import SERVICEREQUESTS
from blacktop.terraform.module import ModuleRefused
from blacktop.terraform.runner import Announce, Ending, RunIdentity, Runner, RunnerBusyError, RunResult
from blacktop.terraform.state import new_lock_id

logger = logging.getLogger(__name__)

R = TypeVar("R", bound=RunResult)
SUCCEEDED, FAILED = "Succeeded", "Failed"
WAITING = "AwaitingApproval"  # the run planned, and its plan waits for a human: neither success nor failure


class RunFailed(Exception):  # noqa: N818 (reads as what happened: the run failed)
    """A run ended early: ``step`` (init, plan, ..., or "locking the state") failed with ``reason``."""

    def __init__(self, step: str, reason: str, detail: str) -> None:
        super().__init__(f"{step} failed ({reason}): {detail}")
        self.step = step
        self.reason = reason
        self.detail = detail

    @classmethod
    def of(cls, result: RunResult) -> RunFailed:
        """The failure of one operation's result."""
        return cls(result.operation, result.reason, result.detail)


class Run:
    """A run in progress: its ``lastRun`` record and its runner."""

    def __init__(
        self, ctx: Context, tracker: StatusTracker[ServiceRequestStatus], info: RunInfo, runner: Runner
    ) -> None:
        self.info = info
        self.runner = runner
        self._ctx = ctx
        self._tracker = tracker

    async def step(self, operation: Awaitable[R]) -> R:
        """The result of ``operation``; raises RunFailed when it failed."""
        result = await operation
        if not result.ok:
            raise RunFailed.of(result)
        return result

    def failed(self) -> None:
        """End the run as Failed without raising: a decision stopped it (a guardrail denied its plan),
        or a step's failure is reported by the caller itself."""
        self.info.result = FAILED

    def waiting(self) -> None:
        """End the run after its plan, which waits for approval (metrics count no result for it)."""
        self.info.result = WAITING

    async def progress(self, stage: Stage, what: str) -> None:
        """Say in status what the run does now (Ready=False, Reconciling), e.g. ``applying tiny``."""
        _progress(self._tracker, stage, what, self.info)
        await self._tracker.write(self._ctx.client, SERVICEREQUESTS)


def _progress(tracker: StatusTracker[ServiceRequestStatus], stage: Stage, what: str, info: RunInfo) -> None:
    tracker.status.stage = stage
    tracker.not_ready(Reason.PROGRESSING, f"{what} (run {info.id})", stalled=False)


class RunSlot:
    """How runs share the tool: a slot of the cluster-wide limit (settings.max_concurrent_runs) and
    one of the team's (settings.team_run_limit), first come first served. The run's first operation
    waits for them (the ``queued`` stage) and the run keeps them to its end: a run that started is
    never overtaken halfway, and in pod mode there are never more runner pods than slots. Each
    operation is timed as its stage."""

    def __init__(self, ctx: Context, team: str) -> None:
        self._ctx = ctx
        self._semaphores = (ctx.team_runs[team], ctx.runs)  # the team's first: never hold a global slot idle
        self._held = False

    @asynccontextmanager
    async def __call__(self, stage: str) -> AsyncIterator[None]:
        if not self._held:
            await self._ctx.metrics.wait_for_slot(*self._semaphores)
            self._held = True
        started = time.monotonic()
        try:
            yield
        finally:
            self._ctx.metrics.observe_stage(stage, time.monotonic() - started)

    def release(self) -> None:
        if self._held:
            self._held = False
            self._ctx.metrics.release_slot(*self._semaphores)


def _finish(ctx: Context, info: RunInfo, *, failed: bool) -> None:
    info.finished_at = format_time(ctx.now())
    info.result = FAILED if failed or info.result == FAILED else (WAITING if info.result == WAITING else SUCCEEDED)


@asynccontextmanager
async def run(
    ctx: Context,
    inputs: Inputs,
    tracker: StatusTracker[ServiceRequestStatus],
    operation: str,
    *,
    progress: tuple[Stage, str] | None = None,
) -> AsyncIterator[Run]:
    """A run of ``operation`` (apply, destroy, drift) under the request's state lock; raises RunFailed.
    ``progress``: the stage and words to show in status while it runs (none: status is left alone)."""
    status = tracker.status
    recorded = statelock.recorded_lock_ids(status.last_run)
    info = RunInfo(
        id=secrets.token_hex(6), operation=operation, started_at=format_time(ctx.now()), lock_id=new_lock_id()
    )
    status.last_run = info
    if progress is not None:
        _progress(tracker, *progress, info)
    await tracker.write(ctx.client, SERVICEREQUESTS)  # the lock ID is on record before the lock is taken
    slot = RunSlot(ctx, inputs.environment.team or "")
    try:
        # A runner an earlier operator process left working on this state finishes first: never two writers.
        await ctx.runners.settle(inputs.target, _announcer(ctx, tracker, info, progress))
        async with statelock.held(ctx, inputs.request, inputs.target.state, info, recorded) as lock:
            identity = RunIdentity(id=info.id, lock_id=info.lock_id or "", operation=operation)
            try:
                runner = await ctx.runners.open(inputs.target, slot, identity)
            except ModuleRefused as refused:
                detail = f"refused before any tofu command ran: {refused.message}"
                raise RunFailed("checking the module", refused.reason, detail) from None
            ending: Ending = "failed"
            try:
                yield Run(ctx, tracker, info, runner)
                ending = "failed" if info.result == FAILED else "succeeded"
            except asyncio.CancelledError:
                ending = "cancelled"
                raise
            finally:
                # Shielded: on shutdown the runner is still told (and a pod left running keeps the lock).
                if await asyncio.shield(runner.close(ending)):
                    lock.keep()
    except statelock.StateLockedError as locked:
        _finish(ctx, info, failed=True)
        raise RunFailed("locking the state", Reason.STATE_LOCKED, locked.detail) from None
    except RunnerBusyError as busy:  # an earlier process's runner still writes the state
        _finish(ctx, info, failed=True)
        raise RunFailed("waiting for an earlier runner", Reason.STATE_LOCKED, busy.detail) from None
    except RunFailed:
        _finish(ctx, info, failed=True)
        raise
    finally:
        slot.release()
    _finish(ctx, info, failed=False)


def _announcer(
    ctx: Context, tracker: StatusTracker[ServiceRequestStatus], info: RunInfo, progress: tuple[Stage, str] | None
) -> Announce:
    """What a run says when it must first wait for a runner an earlier operator process started: an
    Event (RunnerAdopted), and the words in status while it waits."""

    async def announce(words: str) -> None:
        request = tracker.body
        logger.warning("%s/%s: %s", request["metadata"].get("namespace"), request["metadata"]["name"], words)
        await events.post_event(ctx.client, request, events.NORMAL, Reason.RUNNER_ADOPTED, words)
        if progress is not None:
            tracker.not_ready(Reason.PROGRESSING, f"{words} (run {info.id})", stalled=False)
            await tracker.write(ctx.client, SERVICEREQUESTS)

    return announce


@asynccontextmanager
async def attempt(
    ctx: Context,
    inputs: Inputs,
    tracker: StatusTracker[ServiceRequestStatus],
    operation: str,
    *,
    progress: tuple[Stage, str] | None = None,
) -> AsyncIterator[Run]:
    """A run whose failure is a failed attempt: recorded in status, then raised as a Failure that says
    when to retry (capped exponential backoff; Stalled after settings.max_failures_before_stalled)."""
    try:
        async with run(ctx, inputs, tracker, operation, progress=progress) as handle:
            yield handle
    except RunFailed as failed:
        raise await _failed_attempt(ctx, tracker, failed) from None


async def _failed_attempt(ctx: Context, tracker: StatusTracker[ServiceRequestStatus], failed: RunFailed) -> Failure:
    """Record a failed attempt in status (reason, redacted detail, when it is retried)."""
    status, settings = tracker.status, ctx.settings
    status.failures += 1
    retry = next_retry(
        status.failures,
        base=settings.backoff_base_seconds,
        cap=settings.backoff_cap_seconds,
        stalled_after=settings.max_failures_before_stalled,
        stalled_delay=settings.stalled_retry_seconds,
        rng=ctx.rng,
    )
    status.next_retry_time = format_time(tracker.now + timedelta(seconds=retry.delay))
    status.stage = Stage.FAILED
    message = (
        f"{failed.step} failed ({failed.reason}, attempt {status.failures}, "
        f"next retry in {retry.delay:.0f}s): {failed.detail}"
    )
    tracker.not_ready(failed.reason, message, stalled=retry.stalled)
    if retry.stalled:
        tracker.set(ConditionType.STALLED, True, Reason.RETRIES_EXHAUSTED, message)
    await tracker.write(ctx.client, SERVICEREQUESTS)
    return Failure(failed.reason, message, delay=retry.delay)
