"""Kopf wiring of the ServiceRequest reconciler: provision on change and resume (and on an approval),
destroy on delete, retry with backoff, the inputs check; the watch events feed the drift schedule,
and one task runs the checks it finds due (see :mod:`blacktop.controllers.schedule`; no timer per
object)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import kopf

from blacktop.api.kinds import GOLDEN_PATH, GROUP, SERVICE_REQUEST, VERSION
from blacktop.builders import naming
from blacktop.controllers import drift
from blacktop.controllers import servicerequest as controller
from blacktop.handlers.wiring import context_of, reconciling, retrying, settings

PLURAL = SERVICE_REQUEST.plural
# Timer intervals are fixed when the handlers are registered.
_SETTINGS = settings()


def _lock_key(namespace: str | None, name: str) -> str:
    return f"ServiceRequest/{namespace}/{name}"


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def service_request_changed(body: kopf.Body, namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    async with reconciling(memo, _lock_key(namespace, name)) as ctx:
        await controller.reconcile_service_request(ctx, dict(body))


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def service_request_deleted(body: kopf.Body, namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    async with reconciling(memo, _lock_key(namespace, name)) as ctx:
        await controller.finalize_service_request(ctx, dict(body))
    ctx.forget(_lock_key(namespace, name))


@kopf.on.event(GROUP, VERSION, PLURAL, id="drift-schedule")
async def service_request_seen(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    context_of(memo).drift.request(dict(body), deleted=type == "DELETED")


@kopf.on.event(GROUP, VERSION, GOLDEN_PATH.plural, id="drift-schedule-intervals")
async def golden_path_seen(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    context_of(memo).drift.golden_path(dict(body), deleted=type == "DELETED")


@kopf.on.startup()
async def start_drift_checks(memo: kopf.Memo, **_: Any) -> None:
    ctx = context_of(memo)
    settings = ctx.settings
    memo.drift_task = asyncio.get_running_loop().create_task(
        ctx.drift.run(
            lambda namespace, name: drift.scheduled_check(ctx, namespace, name),
            concurrency=2 * settings.max_concurrent_runs,
            retry_seconds=settings.drift_check_seconds,
        ),
        name="drift checks",
    )


@kopf.on.cleanup()
async def stop_drift_checks(memo: kopf.Memo, **_: Any) -> None:
    task = getattr(memo, "drift_task", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@kopf.on.update(GROUP, VERSION, PLURAL, field=("metadata", "annotations", naming.APPROVE))
async def service_request_approved(
    body: kopf.Body, namespace: str | None, name: str, memo: kopf.Memo, new: Any, **_: Any
) -> None:
    """An approval was given (admission checked who and which plan): run what waits for it now,
    the provisioning apply or the drift correction."""
    if not new:
        return  # an approval removed: nothing to do
    pending = (body.get("status") or {}).get("approval") or {}
    async with reconciling(memo, _lock_key(namespace, name)) as ctx:
        if pending.get("operation") == "drift":
            await drift.check_drift(ctx, namespace or "", name, force=True)
        else:
            await controller.reconcile_service_request(ctx, dict(body))


@kopf.timer(
    GROUP,
    VERSION,
    PLURAL,
    interval=_SETTINGS.inputs_check_seconds,
    initial_delay=_SETTINGS.inputs_check_seconds,
    when=lambda spec, **_: bool(spec.get("inputs")),
)
async def service_request_inputs(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    """A Ready request with inputs is applied again when a source's outputs changed."""
    ctx = context_of(memo)
    lock = ctx.lock(_lock_key(namespace, name))
    if lock.locked():
        return  # provisioning or deletion is running: look next time
    async with retrying(), lock:
        await controller.reapply_for_inputs(ctx, namespace or "", name)
