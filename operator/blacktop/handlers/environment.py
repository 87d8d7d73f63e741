"""Kopf wiring of the Environment reconciler: changes, resync, TTL expiry, deletion, child watches."""

from __future__ import annotations

from typing import Any

import kopf

from blacktop.api.kinds import ENVIRONMENT, GROUP, VERSION
from blacktop.builders import naming
from blacktop.controllers import environment as controller
from blacktop.handlers.wiring import context_of, reconciling, retrying, settings

PLURAL = ENVIRONMENT.plural
# Timer intervals are fixed when the handlers are registered.
_SETTINGS = settings()


def _lock_key(name: str) -> str:
    return f"Environment/{name}"


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def environment_changed(body: kopf.Body, name: str, memo: kopf.Memo, **_: Any) -> None:
    async with reconciling(memo, _lock_key(name)) as ctx:
        await controller.reconcile_environment(ctx, dict(body))


@kopf.timer(GROUP, VERSION, PLURAL, interval=_SETTINGS.resync_seconds, initial_delay=_SETTINGS.resync_seconds)
async def environment_resync(body: kopf.Body, name: str, memo: kopf.Memo, **_: Any) -> None:
    async with reconciling(memo, _lock_key(name)) as ctx:
        await controller.reconcile_environment(ctx, dict(body))


@kopf.timer(GROUP, VERSION, PLURAL, interval=_SETTINGS.ttl_check_seconds, field="spec.ttl", value=kopf.PRESENT)
async def environment_ttl(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await controller.expire_if_due(context_of(memo), dict(body))


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def environment_deleted(body: kopf.Body, name: str, memo: kopf.Memo, **_: Any) -> None:
    async with reconciling(memo, _lock_key(name)) as ctx:
        await controller.finalize_environment(ctx, dict(body))
    ctx.forget(_lock_key(name))


_CHILD_KINDS = [
    ("v1", "namespaces"),
    ("v1", "resourcequotas"),
    ("v1", "limitranges"),
    ("networking.k8s.io/v1", "networkpolicies"),
    ("rbac.authorization.k8s.io/v1", "rolebindings"),
]


def _register_child_watch(api_version: str, plural: str) -> None:
    group, _, version = api_version.rpartition("/")

    @kopf.on.event(
        group, version, plural, id=f"environment-child-{plural}", labels={naming.LABEL_ENVIRONMENT: kopf.PRESENT}
    )
    async def child_changed(body: kopf.Body, labels: kopf.Labels, type: str | None, memo: kopf.Memo, **_: Any) -> None:
        # Someone edited or deleted one of our children: converge the owner again right away
        # instead of waiting for the periodic resync. Our own no-op applies cause no events.
        if type in ("MODIFIED", "DELETED"):
            async with retrying():
                await controller.reconcile_environment_by_name(context_of(memo), labels[naming.LABEL_ENVIRONMENT])


for _api_version, _plural in _CHILD_KINDS:
    _register_child_watch(_api_version, _plural)
