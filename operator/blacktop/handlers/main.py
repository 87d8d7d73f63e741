"""Running the operator: Kopf's main loop with all Blacktop handlers registered."""

from __future__ import annotations

import threading

import kopf

from blacktop import handlers
from blacktop.config import Settings


class OperatorStartError(RuntimeError):
    """A start-up handler failed for good (no cluster, bad settings); the message says which and why."""


def run_operator(settings: Settings, *, verbose: bool = False, ready: threading.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM; Kopf then finishes handlers in flight and returns. ``ready`` is set
    once the start-up handlers succeeded (the moment the operator starts watching).

    ``settings`` (the CLI read them once) are the only ones: the handlers register with them, and
    start-up finds them in Kopf's memo to build the Context.
    """
    handlers.register(settings)
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    kopf.configure(verbose=verbose)
    try:
        kopf.run(
            clusterwide=True,
            # One replica by default; peering (leader election between replicas) is opt-in via the chart.
            standalone=True,
            liveness_endpoint=liveness,
            memo=kopf.Memo(settings=settings),
            ready_flag=ready,
        )
    except Exception as exc:
        # Kopf's start-up failure wraps the handler's PermanentError; Kopf has logged it already, and a
        # traceback through Kopf's internals would bury that one clear line.
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, kopf.PermanentError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise OperatorStartError(f"the operator did not start: {cause}") from exc
