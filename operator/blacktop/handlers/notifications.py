"""Kopf wiring of notifications: start the dispatcher, and feed it every ServiceRequest and Environment
watch event.

These event handlers ride on the watches Kopf already keeps for the reconcilers (no extra API
calls). They only compare the new status with the last one seen and put a notice on a queue, so
they cost a reconcile nothing: the delivery (reading the channels' Secrets, the HTTP POSTs, retries)
happens in the dispatcher's own tasks.
"""

from __future__ import annotations

from typing import Any

import kopf

from blacktop.controllers import notifications
from blacktop.handlers.wiring import context_of, started_context
from blacktop.notifications.notices import ENVIRONMENT, SERVICE_REQUEST

GROUP, VERSION = "platform.blacktop.dev", "v1alpha1"


@kopf.on.startup()
async def start_notifications(memo: kopf.Memo, **_: Any) -> None:
    if (ctx := started_context(memo)) is not None:
        notifications.start(ctx)


@kopf.on.cleanup()
async def stop_notifications(memo: kopf.Memo, **_: Any) -> None:
    ctx = getattr(memo, "ctx", None)
    if ctx is not None and ctx.notifier is not None:
        await ctx.notifier.stop()


@kopf.on.event(GROUP, VERSION, "servicerequests", id="notifications-servicerequests")
async def service_request_seen(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    notifications.observe(context_of(memo), SERVICE_REQUEST, dict(body), deleted=type == "DELETED")


@kopf.on.event(GROUP, VERSION, "environments", id="notifications-environments")
async def environment_seen(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    notifications.observe(context_of(memo), ENVIRONMENT, dict(body), deleted=type == "DELETED")
