"""Kopf wiring of the environment cost refresh: a ServiceRequest's price changed, so did its environment's."""

from __future__ import annotations

from typing import Any

import kopf

from blacktop.api.kinds import GROUP, SERVICE_REQUEST, VERSION
from blacktop.controllers.budget import price_changed, refresh_environment_cost
from blacktop.handlers.wiring import context_of


@kopf.on.event(GROUP, VERSION, SERVICE_REQUEST.plural, id="environment-cost")
async def service_request_priced(
    body: kopf.Body, namespace: str | None, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    ctx = context_of(memo)
    if namespace and price_changed(ctx, dict(body), deleted=type == "DELETED"):
        await refresh_environment_cost(ctx, namespace, dict(body), deleted=type == "DELETED")
