"""Kopf wiring of the developer portal: serve it from start-up, and feed it every watch event.

The portal renders from the operator's own view of the cluster: these event handlers ride on the
watches Kopf already runs for the reconcilers (no extra API calls) and keep
:class:`~blacktop.portal.state.ClusterState` current, so a golden path added to the cluster shows
in the catalog at once, without a restart. With ``BLACKTOP_PORTAL_PORT`` unset (0) nothing is
served and nothing is kept.
"""

from __future__ import annotations

from typing import Any

import kopf

from blacktop.handlers.startup import context_of
from blacktop.portal import server
from blacktop.portal.access import Access
from blacktop.portal.state import ENVIRONMENT, GOLDEN_PATH, GUARDRAIL_POLICY, SERVICE_REQUEST, ClusterState

GROUP, VERSION = "platform.blacktop.dev", "v1alpha1"


@kopf.on.startup()
async def serve_portal(memo: kopf.Memo, **_: Any) -> None:
    if getattr(memo, "ctx", None) is None:
        # Start-up handlers run in registration order; the context comes from handlers.startup.
        raise kopf.TemporaryError("waiting for the operator context", delay=0.2)
    ctx = context_of(memo)
    settings = ctx.settings
    memo.portal_state = None
    memo.portal_server = None
    if not settings.portal_port:
        return
    state = ClusterState()
    access = Access.through(ctx.client) if settings.portal_auth == "token" else None
    memo.portal_server = await server.start(server.Portal(settings, state, ctx.metrics.registry, access))
    memo.portal_state = state


@kopf.on.cleanup()
async def stop_portal(memo: kopf.Memo, **_: Any) -> None:
    running = getattr(memo, "portal_server", None)
    if running is not None:
        await running.stop()


def _observe(kind: str, plural: str) -> None:
    @kopf.on.event(GROUP, VERSION, plural, id=f"portal-{plural}")
    async def observed(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
        state = getattr(memo, "portal_state", None)
        if state is not None:
            state.observe(kind, dict(body), deleted=type == "DELETED")


for _kind, _plural in (
    (ENVIRONMENT, "environments"),
    (GOLDEN_PATH, "goldenpaths"),
    (SERVICE_REQUEST, "servicerequests"),
    (GUARDRAIL_POLICY, "guardrailpolicies"),
):
    _observe(_kind, _plural)
