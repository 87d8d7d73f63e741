"""Kopf wiring of the environment cost refresh: a ServiceRequest's price changed, so did its environment's."""

from __future__ import annotations

from typing import Any

import kopf

from blacktop.controllers.budget import price_changed, refresh_environment_cost
from blacktop.handlers.startup import context_of

GROUP, VERSION = "platform.blacktop.dev", "v1alpha1"


@kopf.on.event(GROUP, VERSION, "servicerequests", id="environment-cost")
async def service_request_priced(
    body: kopf.Body, namespace: str | None, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    if namespace and price_changed(dict(body), deleted=type == "DELETED"):
        await refresh_environment_cost(context_of(memo), namespace)
