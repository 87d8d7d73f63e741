"""Kopf wiring of the GoldenPath reconciler (changes, a periodic re-check of the module on disk or in
git) and of its rollouts (a timer that advances each golden path's rollout by at most one batch)."""

from __future__ import annotations

from typing import Any

import kopf

from blacktop.api.kinds import GOLDEN_PATH, GROUP, VERSION
from blacktop.controllers import rollout
from blacktop.controllers.goldenpath import reconcile_golden_path
from blacktop.controllers.upgrades import ProvisioningUpgrader
from blacktop.handlers.wiring import reconciling, settings

PLURAL = GOLDEN_PATH.plural
# Timer intervals are fixed when the handlers are registered.
_SETTINGS = settings()


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def golden_path_changed(body: kopf.Body, name: str, memo: kopf.Memo, **_: Any) -> None:
    async with reconciling(memo, f"GoldenPath/{name}") as ctx:
        await reconcile_golden_path(ctx, dict(body))


# Modules are files the platform team ships with the operator: re-check them (and the adoption
# count) periodically, so a fixed module turns its golden path Ready without touching the object.
@kopf.timer(GROUP, VERSION, PLURAL, interval=_SETTINGS.resync_seconds, initial_delay=_SETTINGS.resync_seconds)
async def golden_path_resync(body: kopf.Body, name: str, memo: kopf.Memo, **_: Any) -> None:
    async with reconciling(memo, f"GoldenPath/{name}") as ctx:
        await reconcile_golden_path(ctx, dict(body))


_UPGRADER = ProvisioningUpgrader()


# Rollouts move requests in batches (plans, then applies); each look does one batch at most and
# leaves the golden path's lock in between, so its spec changes are never kept waiting long.
@kopf.timer(
    GROUP, VERSION, PLURAL, interval=_SETTINGS.rollout_check_seconds, initial_delay=_SETTINGS.rollout_check_seconds
)
async def golden_path_rollout(name: str, memo: kopf.Memo, **_: Any) -> None:
    async with reconciling(memo, f"GoldenPath/{name}") as ctx:
        await rollout.advance(ctx, name, _UPGRADER)
