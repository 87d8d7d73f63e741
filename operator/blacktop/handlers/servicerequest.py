"""Kopf wiring of the ServiceRequest reconciler: provision on change, destroy on delete, retry with backoff,
and the periodic drift check."""

from __future__ import annotations

from typing import Any

import kopf

from blacktop.api.kinds import GROUP, SERVICE_REQUEST, VERSION
from blacktop.controllers import drift
from blacktop.controllers import servicerequest as controller
from blacktop.handlers.wiring import context_of, reconciling, settings

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


@kopf.timer(GROUP, VERSION, PLURAL, interval=_SETTINGS.drift_check_seconds, initial_delay=_SETTINGS.drift_check_seconds)
async def service_request_drift(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    ctx = context_of(memo)
    lock = ctx.lock(_lock_key(namespace, name))
    if lock.locked():
        return  # provisioning or deletion is running: check next time
    async with lock:
        await drift.check_drift(ctx, namespace or "", name)
