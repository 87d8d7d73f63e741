"""Kopf wiring of the scorecard: its refresh loop, the request history recorder, Feedback status, targets.

The loop starts with the operator and computes the scorecard every ``resync_seconds``. The history
recorder rides on the ServiceRequest watch Kopf already runs; Feedback and PlatformScorecard events
ask for an early refresh only when their spec changed (``generation`` ahead of what status
describes), never for the status writes of the scorecard itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import kopf

from blacktop.api.kinds import GROUP, VERSION
from blacktop.controllers.feedback import reconcile_feedback
from blacktop.controllers.history import record_history
from blacktop.controllers.scorecard import run_scorecard
from blacktop.handlers.wiring import context_of, started_context


def _spec_changed(body: kopf.Body) -> bool:
    return bool((body.get("status") or {}).get("observedGeneration") != body["metadata"].get("generation"))


@kopf.on.startup()
async def start_scorecard(memo: kopf.Memo, **_: Any) -> None:
    ctx = started_context(memo)
    if ctx is None:
        return
    memo.scorecard_task = asyncio.get_running_loop().create_task(run_scorecard(ctx, ctx.settings.resync_seconds))


@kopf.on.cleanup()
async def stop_scorecard(memo: kopf.Memo, **_: Any) -> None:
    task = getattr(memo, "scorecard_task", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@kopf.on.event(GROUP, VERSION, "servicerequests", id="scorecard-history")
async def request_history(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    await record_history(context_of(memo), dict(body), deleted=type == "DELETED")


@kopf.on.event(GROUP, VERSION, "feedbacks", id="scorecard-feedback")
async def feedback_counted(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    ctx = context_of(memo)
    if type == "DELETED":
        ctx.metrics.scorecard.poke()
        return
    if _spec_changed(body):
        await reconcile_feedback(ctx, dict(body))
        ctx.metrics.scorecard.poke()


@kopf.on.event(GROUP, VERSION, "platformscorecards", id="scorecard-targets")
async def target_changed(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED" or _spec_changed(body):
        context_of(memo).metrics.scorecard.poke()  # a new target shows in a second, a deleted object returns
