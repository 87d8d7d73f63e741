"""Kopf wiring of the ServiceRequest reconciler: provision on change, destroy on delete, retry with backoff,
and the periodic drift check."""

from __future__ import annotations

from typing import Any

import kopf

from blacktop.config import Settings
from blacktop.controllers import drift
from blacktop.controllers import servicerequest as controller
from blacktop.handlers.startup import context_of

GROUP, VERSION, PLURAL = "platform.blacktop.dev", "v1alpha1", "servicerequests"
# Timer intervals are fixed when the handlers are registered, so read them from the environment here.
_SETTINGS = Settings.from_env()


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def service_request_changed(body: kopf.Body, namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    ctx = context_of(memo)
    async with ctx.lock(f"ServiceRequest/{namespace}/{name}"):
        try:
            await controller.reconcile_service_request(ctx, dict(body))
        except controller.RetryLater as retry:
            raise kopf.TemporaryError(str(retry), delay=retry.delay) from None


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def service_request_deleted(body: kopf.Body, namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    ctx = context_of(memo)
    async with ctx.lock(f"ServiceRequest/{namespace}/{name}"):
        try:
            await controller.finalize_service_request(ctx, dict(body))
        except controller.RetryLater as retry:
            raise kopf.TemporaryError(str(retry), delay=retry.delay) from None
    ctx.forget(f"ServiceRequest/{namespace}/{name}")


@kopf.timer(GROUP, VERSION, PLURAL, interval=_SETTINGS.drift_check_seconds, initial_delay=_SETTINGS.drift_check_seconds)
async def service_request_drift(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    ctx = context_of(memo)
    lock = ctx.lock(f"ServiceRequest/{namespace}/{name}")
    if lock.locked():
        return  # provisioning or deletion is running: check next time
    async with lock:
        await drift.check_drift(ctx, namespace or "", name)
