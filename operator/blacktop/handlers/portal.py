"""Kopf wiring of the developer portal: serve it from start-up, and feed it every watch event.

The portal renders from the operator's own view of the cluster: these event handlers ride on the
watches Kopf already runs for the reconcilers (no extra API calls) and keep
:class:`~blacktop.portal.state.ClusterState` current, so a golden path added to the cluster shows
in the catalog at once, without a restart. With ``BLACKTOP_PORTAL_PORT`` unset (0) none of these
handlers is registered: nothing is served and nothing is kept.
"""

from __future__ import annotations

from typing import Any

import kopf

from blacktop.api import kinds
from blacktop.api.kinds import GROUP, VERSION
from blacktop.handlers.wiring import settings, started_context
from blacktop.portal import server
from blacktop.portal.access import Access
from blacktop.portal.state import ClusterState


async def serve_portal(memo: kopf.Memo, **_: Any) -> None:
    ctx = started_context(memo)
    if ctx is None:
        return
    access = Access.through(ctx.client) if ctx.settings.portal_auth == "token" else None
    # The state is in the memo before the server starts: the first watch events may come at once.
    memo.portal_state = ClusterState()
    memo.portal_server = await server.start(
        server.Portal(ctx.settings, memo.portal_state, ctx.metrics.registry, access, ctx.metrics.scorecard)
    )


async def stop_portal(memo: kopf.Memo, **_: Any) -> None:
    running = getattr(memo, "portal_server", None)
    if running is not None:
        await running.stop()


def _observe(kind: str, plural: str) -> None:
    @kopf.on.event(GROUP, VERSION, plural, id=f"portal-{plural}")
    async def observed(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
        state: ClusterState | None = getattr(memo, "portal_state", None)
        if state is not None:  # None only until start-up has run
            state.observe(kind, dict(body), deleted=type == "DELETED")


if settings().portal_port:
    kopf.on.startup()(serve_portal)
    kopf.on.cleanup()(stop_portal)
    for _kind in kinds.ALL_KINDS:
        _observe(_kind.kind, _kind.plural)
