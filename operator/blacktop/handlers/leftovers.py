"""Kopf wiring of what requests leave behind: the leftover sweeper, and an admin's abandon annotation.

The sweeper (controllers/leftovers.py) runs beside the handlers from start-up to clean-up, and is
woken as soon as a ServiceRequest disappears. A request being deleted that a platform admin has
annotated ``platform.blacktop.dev/abandon`` is let go at once, even while a failing destroy waits
for its next retry (unless a run of it is in flight: then its delete handler sees the annotation).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import kopf

from blacktop.builders import naming
from blacktop.controllers import leftovers
from blacktop.handlers.wiring import context_of, started_context

GROUP, VERSION, PLURAL = "platform.blacktop.dev", "v1alpha1", "servicerequests"


@kopf.on.startup()
async def start_sweeper(memo: kopf.Memo, **_: Any) -> None:
    if (ctx := started_context(memo)) is None:
        return
    memo.leftover_sweeper = sweeper = leftovers.Sweeper(ctx)
    memo.leftover_task = asyncio.get_running_loop().create_task(sweeper.run_forever())


@kopf.on.cleanup()
async def stop_sweeper(memo: kopf.Memo, **_: Any) -> None:
    task = getattr(memo, "leftover_task", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@kopf.on.event(GROUP, VERSION, PLURAL, id="leftovers-watch")
async def request_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    meta = body.get("metadata") or {}
    sweeper = getattr(memo, "leftover_sweeper", None)
    if type == "DELETED" and sweeper is not None:
        sweeper.wake()  # it went: with a destroy (its state is gone) or without one (its state is left)
        return
    deleting = meta.get("deletionTimestamp") and naming.FINALIZER in (meta.get("finalizers") or [])
    if not deleting or naming.ABANDON_ANNOTATION not in (meta.get("annotations") or {}):
        return
    ctx = context_of(memo)
    lock = ctx.lock(f"ServiceRequest/{meta.get('namespace')}/{meta.get('name')}")
    if lock.locked():
        return  # a run of it is in flight; its delete handler abandons it when it is next called
    async with lock:
        await leftovers.abandon_and_release(ctx, dict(body))
