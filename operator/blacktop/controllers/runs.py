"""One run of OpenTofu on a request: the protocol provisioning, destroy and drift checks share.

    async with runs.attempt(ctx, inputs, tracker, "apply", progress=Progress(Stage.PLANNING, "planning tiny")) as run:
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
reason (:class:`RunFailed`). Anything else that goes wrong inside (the API server timing out, a full
disk under the workspace, a bug) ends the run the same way, classified by
:func:`blacktop.controllers.failures.classify`. However the block ends, the runner is closed and the
lock is released (kept only when a shutdown leaves the runner working on: its successor waits for
it) and ``lastRun`` says how the run ended.

What a failed run means is the caller's decision. :func:`attempt` (apply, destroy) counts it as a
failed attempt (:func:`failed_attempt`): ``failures`` and ``nextRetryTime`` in status, the reason
in Ready (or, for the re-verification of a Ready request, in Reconciling: re-verifying never turns
Ready False), a Warning Event, and a :class:`~blacktop.controllers.failures.Failure` with the
backoff delay: capped exponential backoff, Stalled once retries are exhausted; failures of the
operator's own infrastructure (ApiUnavailable, WorkspaceError) back off briefly and never stall, so
requests recover within seconds of the fix. A drift check catches :class:`RunFailed` and reports it
in its own condition.

How runs share the slots is decided here as well (:class:`RunSlot`): a run takes one slot of the
cluster-wide limit, at most the team's share, granted fairly between the teams that wait
(:mod:`blacktop.controllers.slots`), and keeps it to its end. A provisioning run that must wait says
so in status (stage Queued, ``queue``, Reconciling with reason Queued) and says "planning ..." once
its first operation holds its slot.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from blacktop.api.common import format_time
from blacktop.api.conditions import INFRASTRUCTURE, ConditionType, Reason, get_condition
from blacktop.api.servicerequest import QueueInfo, RunInfo, ServiceRequestStatus, Stage
from blacktop.builders.retry import next_retry
from blacktop.controllers import statelock
from blacktop.controllers.context import Context
from blacktop.controllers.failures import Failure, classify
from blacktop.controllers.inputs import Inputs
from blacktop.controllers.tracker import StatusTracker
from blacktop.kube import events
from blacktop.kube.errors import KubeApiError
from blacktop.kube.resources import SERVICEREQUESTS
from blacktop.terraform.module import ModuleRefused
from blacktop.terraform.runner import Announce, Ending, RunIdentity, Runner, RunnerBusyError, RunResult
from blacktop.terraform.state import new_lock_id

logger = logging.getLogger(__name__)

R = TypeVar("R", bound=RunResult)
SUCCEEDED, FAILED = "Succeeded", "Failed"
WAITING = "AwaitingApproval"  # the run planned, and its plan waits for a human: neither success nor failure
Tracker = StatusTracker[ServiceRequestStatus]


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

    @classmethod
    def of_exception(cls, exc: BaseException) -> RunFailed:
        """An error that is not a tool's result, classified (see failures.classify)."""
        found = classify(exc)
        return cls(found.step, found.reason, found.detail)


@dataclass(frozen=True)
class Progress:
    """What status says while a run works: its stage and words. ``keep_ready``: the request is Ready
    and stays so (a re-verification): progress shows in Reconciling only."""

    stage: Stage
    what: str
    keep_ready: bool = False


class Run:
    """A run in progress: its ``lastRun`` record and its runner."""

    def __init__(
        self, ctx: Context, tracker: Tracker, info: RunInfo, runner: Runner, progress: Progress | None
    ) -> None:
        self.info = info
        self.runner = runner
        self._ctx = ctx
        self._tracker = tracker
        self._progress = progress

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
        """Say in status what the run does now (Reconciling; Ready=False unless the request stays
        Ready), e.g. ``applying tiny``."""
        keep = self._progress.keep_ready if self._progress else False
        _show(self._tracker, Progress(stage, what, keep), self.info)
        await self._tracker.write(self._ctx.client, SERVICEREQUESTS)


def _show(tracker: Tracker, progress: Progress, info: RunInfo) -> None:
    message = f"{progress.what} (run {info.id})"
    tracker.status.queue = None
    if progress.keep_ready:
        tracker.set(ConditionType.RECONCILING, True, Reason.PROGRESSING, message)
        return
    tracker.status.stage = progress.stage
    tracker.not_ready(Reason.PROGRESSING, message, stalled=False)


class RunSlot:
    """How runs share the tool: one slot of the cluster-wide limit (settings.max_concurrent_runs),
    at most settings.team_run_limit per team, granted fairly between the teams that wait
    (:class:`~blacktop.controllers.slots.FairSlots`: fewest held first, then the team served longest
    ago; within a team, the oldest run). The run's first operation waits for it (the ``queued``
    stage) and the run keeps it to its end: a run that started is never overtaken halfway, and in pod
    mode there are never more runner pods than slots. ``on_first`` runs once the slot is held (status
    says the queued run works now). Each operation is timed as its stage."""

    def __init__(self, ctx: Context, team: str, *, on_first: Coroutine[Any, Any, None] | None = None) -> None:
        self._ctx = ctx
        self._team = team
        self._number = ctx.runs.new_run()
        self._on_first = on_first
        self._held = False

    @asynccontextmanager
    async def __call__(self, stage: str) -> AsyncIterator[None]:
        if not self._held:
            async with self._ctx.metrics.queued():
                await self._ctx.runs.acquire(self._team, self._number)
            self._held = True
            self._ctx.metrics.slot_taken()
            if self._on_first is not None:
                first, self._on_first = self._on_first, None
                await first
        started = time.monotonic()
        try:
            yield
        finally:
            self._ctx.metrics.observe_stage(stage, time.monotonic() - started)

    def release(self) -> None:
        if self._on_first is not None:  # a run that never reached its first operation
            self._on_first.close()
            self._on_first = None
        if self._held:
            self._held = False
            self._ctx.metrics.slot_released()
            self._ctx.runs.release(self._team)


def _show_queued(ctx: Context, tracker: Tracker, progress: Progress, info: RunInfo, team: str) -> bool:
    """If the run must wait for a slot, say where it stands; whether it must."""
    standing = ctx.runs.standing(team)
    if not standing.waits:
        return False
    tracker.status.queue = QueueInfo(
        position=standing.position, ahead=standing.ahead, team=team or "(none)", since=format_time(ctx.now())
    )
    message = (
        f"waiting for a run slot: {standing.ahead} run(s) ahead, position {standing.position} "
        f"in team {team or '(none)'}'s queue (run {info.id})"
    )
    if progress.keep_ready:
        tracker.set(ConditionType.RECONCILING, True, Reason.QUEUED, message)
    else:
        tracker.status.stage = Stage.QUEUED
        tracker.not_ready(Reason.QUEUED, message, stalled=False)
    return True


def _finish(ctx: Context, info: RunInfo, *, failed: bool) -> None:
    info.finished_at = format_time(ctx.now())
    info.result = FAILED if failed or info.result == FAILED else (WAITING if info.result == WAITING else SUCCEEDED)


@asynccontextmanager
async def run(
    ctx: Context, inputs: Inputs, tracker: Tracker, operation: str, *, progress: Progress | None = None
) -> AsyncIterator[Run]:
    """A run of ``operation`` (apply, destroy, drift) under the request's state lock; raises RunFailed.
    ``progress``: what to show in status while it runs (none: status is left alone)."""
    status = tracker.status
    recorded = statelock.recorded_lock_ids(status.last_run)
    info = RunInfo(
        id=secrets.token_hex(6), operation=operation, started_at=format_time(ctx.now()), lock_id=new_lock_id()
    )
    status.last_run = info
    team = inputs.environment.team or ""
    queued = False
    if progress is not None:
        _show(tracker, progress, info)
        queued = _show_queued(ctx, tracker, progress, info, team)
    await tracker.write(ctx.client, SERVICEREQUESTS)  # the lock ID is on record before the lock is taken
    # Made only now: a coroutine made before a write that fails would never be awaited.
    started = _started(ctx, tracker, progress, info) if queued and progress is not None else None
    slot = RunSlot(ctx, team, on_first=started)
    try:
        # A runner an earlier operator process left working on this state finishes first: never two writers.
        await ctx.runners.settle(inputs.target, _announcer(ctx, tracker, info, progress))
        async with statelock.held(ctx, inputs.request, inputs.target.state, info, recorded) as lock:
            identity = RunIdentity(id=info.id, lock_id=info.lock_id or "", operation=operation)
            async with _opened(ctx, inputs, slot, identity, lock, info) as runner:
                yield Run(ctx, tracker, info, runner, progress)
    except statelock.StateLockedError as locked:
        _finish(ctx, info, failed=True)
        raise RunFailed("locking the state", Reason.STATE_LOCKED, locked.detail) from None
    except RunnerBusyError as busy:  # an earlier process's runner still writes the state
        _finish(ctx, info, failed=True)
        raise RunFailed("waiting for an earlier runner", Reason.STATE_LOCKED, busy.detail) from None
    except RunFailed:
        _finish(ctx, info, failed=True)
        raise
    except Failure:
        _finish(ctx, info, failed=True)
        raise
    except asyncio.CancelledError:
        if ctx.interruption is not None:  # leadership lost: the next reconcile says so before retrying
            ctx.interrupted[f"{inputs.request.namespace}/{inputs.request.name}"] = ctx.interruption
        raise
    except Exception as exc:  # the API server, the disk, a bug: the same failure path as a tool's
        _finish(ctx, info, failed=True)
        raise RunFailed.of_exception(exc) from None
    finally:
        slot.release()  # also closes ``started`` when the run ended before its first operation
    _finish(ctx, info, failed=False)


@asynccontextmanager
async def _opened(  # noqa: PLR0917 (the parts of one run, each named)
    ctx: Context, inputs: Inputs, slot: RunSlot, identity: RunIdentity, lock: statelock.Held, info: RunInfo
) -> AsyncIterator[Runner]:
    """The run's runner, closed however the block ends (the lock kept when the runner works on)."""
    try:
        runner = await ctx.runners.open(inputs.target, slot, identity)
    except ModuleRefused as refused:
        detail = f"refused before any tofu command ran: {refused.message}"
        raise RunFailed("checking the module", refused.reason, detail) from None
    ending: Ending = "failed"
    try:
        yield runner
        ending = "failed" if info.result == FAILED else "succeeded"
    except asyncio.CancelledError:
        ending = "cancelled"
        raise
    finally:
        # Shielded: on shutdown the runner is still told (and a pod left running keeps the lock).
        if await asyncio.shield(runner.close(ending)):
            lock.keep()


async def _started(ctx: Context, tracker: Tracker, progress: Progress, info: RunInfo) -> None:
    """The first operation of a queued run holds its slot: say it is working now."""
    _show(tracker, progress, info)
    await tracker.write(ctx.client, SERVICEREQUESTS)


def _announcer(ctx: Context, tracker: Tracker, info: RunInfo, progress: Progress | None) -> Announce:
    """What a run says when it must first wait for a runner an earlier operator process started: an
    Event (RunnerAdopted), and the words in status while it waits."""

    async def announce(words: str) -> None:
        request = tracker.body
        logger.warning("%s/%s: %s", request["metadata"].get("namespace"), request["metadata"]["name"], words)
        await events.post_event(ctx.client, request, events.NORMAL, Reason.RUNNER_ADOPTED, words)
        if progress is not None:
            _show(tracker, Progress(progress.stage, words, progress.keep_ready), info)
            await tracker.write(ctx.client, SERVICEREQUESTS)

    return announce


@asynccontextmanager
async def attempt(
    ctx: Context, inputs: Inputs, tracker: Tracker, operation: str, *, progress: Progress | None = None
) -> AsyncIterator[Run]:
    """A run whose failure is a failed attempt: recorded in status, then raised as a Failure that says
    when to retry (see :func:`failed_attempt`)."""
    try:
        async with run(ctx, inputs, tracker, operation, progress=progress) as handle:
            yield handle
    except RunFailed as failed:
        keep = progress.keep_ready if progress else False
        raise await failed_attempt(ctx, tracker, failed, keep_ready=keep) from None


async def record_interruption(ctx: Context, tracker: Tracker, key: str, *, keep_ready: bool) -> None:
    """A run of this request was stopped when this replica lost its lease (an API server outage):
    say so now, as a failed attempt retried soon (raises its Failure)."""
    interrupted = ctx.interrupted.pop(key, None)
    if isinstance(interrupted, RunFailed):
        raise await failed_attempt(ctx, tracker, interrupted, keep_ready=keep_ready)


async def failed_attempt(ctx: Context, tracker: Tracker, failed: RunFailed, *, keep_ready: bool = False) -> Failure:
    """Record a failed attempt in status (reason, redacted detail, when it is retried) with a Warning
    Event, and return the Failure to raise. ``keep_ready``: a Ready request's re-verification failed:
    the reason goes into Reconciling (or Stalled), Ready stays as it is."""
    status, settings = tracker.status, ctx.settings
    status.failures += 1
    infrastructure = failed.reason in INFRASTRUCTURE
    retry = next_retry(
        status.failures,
        base=settings.infrastructure_backoff_base_seconds if infrastructure else settings.backoff_base_seconds,
        cap=settings.infrastructure_backoff_cap_seconds if infrastructure else settings.backoff_cap_seconds,
        # The operator's own outage or disk is not the request's fault: retried soon, never Stalled.
        stalled_after=None if infrastructure else settings.max_failures_before_stalled,
        stalled_delay=settings.stalled_retry_seconds,
        rng=ctx.rng,
    )
    status.next_retry_time = format_time(tracker.now + timedelta(seconds=retry.delay))
    status.queue = None
    message = (
        f"{failed.step} failed ({failed.reason}, attempt {status.failures}, "
        f"next retry in {retry.delay:.0f}s): {failed.detail}"
    )
    said = get_condition(
        tracker.status.conditions, ConditionType.STALLED if retry.stalled else ConditionType.RECONCILING
    )
    if not keep_ready:
        status.stage = Stage.FAILED
        tracker.not_ready(failed.reason, message, stalled=retry.stalled)
    elif retry.stalled:
        tracker.clear(ConditionType.RECONCILING)
    else:
        tracker.set(ConditionType.RECONCILING, True, failed.reason, message)
    if retry.stalled:
        tracker.set(ConditionType.STALLED, True, Reason.RETRIES_EXHAUSTED, message)
    try:
        await tracker.write(ctx.client, SERVICEREQUESTS)
        if keep_ready and (said is None or said.reason != failed.reason):  # Ready did not change: say it here
            await events.post_event(ctx.client, tracker.body, events.WARNING, failed.reason, message)
    except KubeApiError as exc:
        # The API server is down too (an outage): nothing can be recorded now; the retry will be.
        logger.warning("could not record the failed attempt (%s): %s", failed.reason, exc)
        cause = classify(exc).reason
        return Failure(cause, message, delay=min(retry.delay, settings.infrastructure_backoff_cap_seconds))
    return Failure(failed.reason, message, delay=retry.delay)
