"""Kopf wiring of the ServiceRequest reconciler: provision on change (and on an approval), destroy on
delete, retry with backoff, the periodic drift check and the inputs check."""

from __future__ import annotations

from typing import Any

import kopf

from blacktop.api.kinds import GROUP, SERVICE_REQUEST, VERSION
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


@kopf.timer(GROUP, VERSION, PLURAL, interval=_SETTINGS.drift_check_seconds, initial_delay=_SETTINGS.drift_check_seconds)
async def service_request_drift(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    ctx = context_of(memo)
    lock = ctx.lock(_lock_key(namespace, name))
    if lock.locked():
        return  # provisioning or deletion is running: check next time
    async with lock:
        await drift.check_drift(ctx, namespace or "", name)


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
