"""Serving the metrics: the /metrics endpoint and the event-loop lag probe, started with the operator.

The endpoint is prometheus-client's own HTTP server (a daemon thread) over Blacktop's explicit
registry, so a scrape never waits for the event loop and never blocks it. The lag probe is the one
metric that must run *on* the loop: it measures how late the loop wakes up.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

import prometheus_client

from blacktop.metrics.registry import Metrics

LAG_PROBE_SECONDS = 0.5


@dataclass
class MetricsServer:
    """The running endpoint and lag probe; :meth:`stop` ends both."""

    server: WSGIServer | None
    thread: Thread | None
    lag_probe: asyncio.Task[None]

    async def stop(self) -> None:
        self.lag_probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.lag_probe
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


async def probe_event_loop_lag(metrics: Metrics, interval: float = LAG_PROBE_SECONDS) -> None:
    """Forever: sleep ``interval`` and record how much later than asked the loop woke up."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval)
        metrics.event_loop_lag.set(max(0.0, loop.time() - started - interval))


def start(metrics: Metrics, port: int, address: str = "0.0.0.0") -> MetricsServer:  # noqa: S104 (scraped from outside the pod)
    """Serve ``metrics.registry`` at ``http://<address>:<port>/metrics`` (no endpoint when port is 0)."""
    # The *_created series double every counter's series for little use; dashboards use rate().
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    server, thread = None, None
    if port:
        server, thread = prometheus_client.start_http_server(port, addr=address, registry=metrics.registry)
    return MetricsServer(server, thread, asyncio.get_running_loop().create_task(probe_event_loop_lag(metrics)))
