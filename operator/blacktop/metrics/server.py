"""The operator's own endpoints: /metrics with the event-loop lag probe, and /healthz and /readyz.

The metrics endpoint is prometheus-client's own HTTP server (a daemon thread) over Blacktop's
explicit registry, so a scrape never waits for the event loop and never blocks it. The lag probe is
the one metric that must run *on* the loop: it measures how late the loop wakes up. The health
endpoints, on the other hand, are served *by* the event loop (aiohttp): a loop that is stuck does
not answer /healthz, which is what a liveness probe must notice. /readyz answers 200 once the
replica serves admission reviews; both answer on a standby replica too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

import prometheus_client
from aiohttp import web

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


# Every this many probes, memory the process freed is handed back to the system (glibc keeps it
# otherwise: after a burst of thousands of watch events, RSS would stay at its peak).
TRIM_EVERY = 120
_LIBC = ctypes.CDLL(None) if sys.platform == "linux" else None


def trim_memory() -> None:
    """Return the free memory of the C heap to the system (malloc_trim; no-op elsewhere)."""
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


async def probe_event_loop_lag(metrics: Metrics, interval: float = LAG_PROBE_SECONDS) -> None:
    """Forever: sleep ``interval`` and record how much later than asked the loop woke up; now and
    then, trim the heap."""
    loop = asyncio.get_running_loop()
    for probe in itertools.count(1):
        started = loop.time()
        await asyncio.sleep(interval)
        metrics.event_loop_lag.set(max(0.0, loop.time() - started - interval))
        if probe % TRIM_EVERY == 0:
            trim_memory()


def start(metrics: Metrics, port: int, address: str = "0.0.0.0") -> MetricsServer:  # noqa: S104 (scraped from outside the pod)
    """Serve ``metrics.registry`` at ``http://<address>:<port>/metrics`` (no endpoint when port is 0)."""
    # The *_created series double every counter's series for little use; dashboards use rate().
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    server, thread = None, None
    if port:
        server, thread = prometheus_client.start_http_server(port, addr=address, registry=metrics.registry)
    return MetricsServer(server, thread, asyncio.get_running_loop().create_task(probe_event_loop_lag(metrics)))


@dataclass
class HealthServer:
    """The running /healthz and /readyz endpoints; :meth:`stop` ends them."""

    runner: web.AppRunner | None

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def serve_health(port: int, ready: Callable[[], bool], describe: Callable[[], str]) -> HealthServer:
    """Serve /healthz (the loop answers) and /readyz (``ready()``) on ``port`` (none when 0);
    ``describe()`` says what the replica does now (leading, standing by)."""
    if not port:
        return HealthServer(None)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text=f"ok: {describe()}\n")

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(status=200 if ready() else 503, text=f"{describe()}\n")

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz)])
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()  # noqa: S104 (probed from outside the pod)
    return HealthServer(runner)
