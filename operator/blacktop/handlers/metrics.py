"""Kopf wiring of the metrics: serve /metrics from start-up, and feed every watch event to the inventory.

Kopf already watches Environments, GoldenPaths and ServiceRequests for the reconcilers; these event
handlers ride on the same watches (no extra API calls) so the metrics see exactly what the operator
sees: status transitions give lead times, run results and drift; the views give the gauges.
"""

from __future__ import annotations

from typing import Any

import kopf

from blacktop.api import kinds
from blacktop.api.kinds import GROUP, VERSION
from blacktop.handlers.wiring import context_of, started_context
from blacktop.metrics import server


@kopf.on.startup()
async def serve_metrics(memo: kopf.Memo, **_: Any) -> None:
    ctx = started_context(memo)
    if ctx is None:
        return
    memo.metrics_server = server.start(ctx.metrics, ctx.settings.metrics_port)


@kopf.on.cleanup()
async def stop_metrics(memo: kopf.Memo, **_: Any) -> None:
    running = getattr(memo, "metrics_server", None)
    if running is not None:
        await running.stop()


def _observe(kind: str, plural: str) -> None:
    @kopf.on.event(GROUP, VERSION, plural, id=f"metrics-{plural}")
    async def observed(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
        context_of(memo).metrics.observe_object(kind, dict(body), deleted=type == "DELETED")


for _kind in (kinds.ENVIRONMENT, kinds.GOLDEN_PATH, kinds.SERVICE_REQUEST):
    _observe(_kind.kind, _kind.plural)
