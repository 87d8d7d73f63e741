"""Kopf wiring of the ServiceRequest reconciler: provision on change, destroy on delete, retry with backoff."""

from __future__ import annotations

from typing import Any

import kopf

from blacktop.controllers import servicerequest as controller
from blacktop.handlers.startup import context_of

GROUP, VERSION, PLURAL = "platform.blacktop.dev", "v1alpha1", "servicerequests"


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
