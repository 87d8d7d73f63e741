"""Running the operator: Kopf's main loop with all Blacktop handlers registered."""

from __future__ import annotations

import kopf

from blacktop import handlers
from blacktop.config import Settings


def run_operator(settings: Settings, *, verbose: bool = False) -> None:
    """Run until SIGINT/SIGTERM; Kopf then finishes handlers in flight and returns.

    ``settings`` (the CLI read them once) are the only ones: the handlers register with them, and
    start-up finds them in Kopf's memo to build the Context.
    """
    handlers.register(settings)
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    kopf.configure(verbose=verbose)
    kopf.run(
        clusterwide=True,
        # One replica by default; peering (leader election between replicas) is opt-in via the chart.
        standalone=True,
        liveness_endpoint=liveness,
        memo=kopf.Memo(settings=settings),
    )
