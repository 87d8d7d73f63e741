"""Running the operator: Kopf's main loop with all Blacktop handlers registered."""

from __future__ import annotations

import kopf

import blacktop.handlers  # noqa: F401  (registers every handler)
from blacktop.config import Settings


def run_operator(settings: Settings, *, verbose: bool = False) -> None:
    """Run until SIGINT/SIGTERM; Kopf then finishes handlers in flight and returns."""
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    kopf.configure(verbose=verbose)
    kopf.run(
        clusterwide=True,
        # One replica by default; peering (leader election between replicas) is opt-in via the chart.
        standalone=True,
        liveness_endpoint=liveness,
    )
