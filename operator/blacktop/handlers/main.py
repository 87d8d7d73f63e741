"""Running the operator: every replica serves admission, metrics and health; the leader runs Kopf.

    start     the Context (settings, API client, runners), the thread pool, /metrics, /healthz,
              /readyz and the admission webhook: on every replica, leader or not
    elect     wait for the leader Lease (controllers/leadership); a standby only answers admission
    lead      Kopf's operator with every handler, while the Lease is renewed
    stop      (SIGTERM/SIGINT, or Kopf ending) Kopf first, its handlers finishing or their tools
              stopped within the run grace; then the Lease released (a standby takes over at once);
              then the webhook configuration removed (local mode) while the server still answers;
              then the servers; the API client last
    lost      (the Lease could not be renewed in time: a partition, or the API server down) every
              tool in flight is stopped within settings.leader_stop_grace_seconds, before the lease
              can pass, then Kopf; the replica stands by again. If nobody took the lease meanwhile
              (the API server was down for everyone), it leads again as soon as the API server
              answers, and the runs it stopped report ApiUnavailable before they are retried

Kopf has no leader election; running it only on the leader is what keeps two replicas from
reconciling the same object twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
import sys
import threading

import kopf

from blacktop import handlers
from blacktop.api.conditions import Reason
from blacktop.builders import naming
from blacktop.config import Settings
from blacktop.controllers.context import Context
from blacktop.controllers.leadership import Elector, label_own_pod
from blacktop.controllers.runs import RunFailed
from blacktop.handlers import logfilters
from blacktop.handlers.admission import AdmissionServer
from blacktop.kube.client import ClusterConfigError, KubeClient
from blacktop.kube.errors import KubeApiError
from blacktop.kube.informer import ClusterCache
from blacktop.metrics import server
from blacktop.runners import runners_for

logger = logging.getLogger(__name__)


class OperatorStartError(RuntimeError):
    """A start-up step failed for good (no cluster, bad settings); the message says which and why."""


def run_operator(settings: Settings, *, verbose: bool = False, ready: threading.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM. ``ready`` is set once this replica's Kopf operator has started
    (the moment it starts watching; a standby never sets it).

    ``settings`` (the CLI read them once) are the only ones: the handlers register with them, and
    they travel in the Context that Kopf finds in its memo.
    """
    handlers.register(settings)
    kopf.configure(verbose=verbose)
    try:
        code = asyncio.run(operate(settings, ready=ready))
    except Exception as exc:
        # Kopf's start-up failure wraps the handler's PermanentError; Kopf has logged it already, and a
        # traceback through Kopf's internals would bury that one clear line.
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, kopf.PermanentError | ClusterConfigError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise OperatorStartError(f"the operator did not start: {cause}") from exc
    if code:
        sys.exit(code)  # reserved: operate() ends cleanly on every path today


async def _identify(ctx: Context, client: KubeClient, stopping: asyncio.Event) -> bool:
    """Who the operator is to the apiserver (its own changes pass the team boundary, see
    controllers/admission.py); retried while the API server does not answer. False: stopped first."""
    while not stopping.is_set():
        try:
            ctx.username = await client.whoami()
        except KubeApiError as exc:
            logger.warning("cannot tell who the operator is (SelfSubjectReview), retrying: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=2.0)
            continue
        logger.info("operating as %s", ctx.username)
        return True
    return False


async def operate(settings: Settings, *, ready: threading.Event | None = None) -> int:
    """The whole life of one replica (see the module docstring); its exit status."""
    logfilters.install()
    loop = asyncio.get_running_loop()
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=settings.worker_threads, thread_name_prefix="blacktop-io"
    )
    loop.set_default_executor(executor)
    # The kubeconfig resolved now, as kubectl would (the CLI may have just set $KUBECONFIG for a
    # local cluster), else in-cluster; a missing one fails once, clearly (OperatorStartError).
    client = await asyncio.to_thread(KubeClient.from_kubeconfig, None, timeout=settings.api_timeout_seconds)
    # OpenTofu's state backend reaches the same cluster as this client (its kubeconfig; None: in-cluster).
    runners = runners_for(settings, client, kubeconfig=client.kubeconfig)  # settings.runner: local or pod
    ctx = Context(client=client, settings=settings, runners=runners)
    stopping = asyncio.Event()
    _on_signals(stopping)
    elector = Elector(client, settings)
    # Admission has a Context of its own (its own loop, its own locks and guardrail workers), sharing
    # what is thread-safe.
    admission = AdmissionServer(Context(client=client, settings=settings, runners=ctx.runners, metrics=ctx.metrics))
    admission.ctx.modules = ctx.modules
    ctx.cache = admission.ctx.cache = ClusterCache(client, naming.LABEL_ENVIRONMENT)
    ctx.cache.start()
    role = ["starting"]
    metrics = server.start(ctx.metrics, settings.metrics_port)
    health = await server.serve_health(settings.health_port, admission.listening.is_set, lambda: role[0])
    try:
        if not await _identify(ctx, client, stopping):
            return 0
        admission.ctx.username = ctx.username
        await ctx.evaluator.start()
        await admission.start()
        while not stopping.is_set():
            role[0] = "standing by"
            if settings.leader_election and not await elector.acquire(stopping):
                break
            if not elector.kept:  # another replica led meanwhile: what we stopped is its business now
                ctx.interrupted.clear()
            role[0] = "leading"
            await label_own_pod(client, settings, leading=True)
            lost = await _lead(ctx, elector, stopping, executor, ready)
            await label_own_pod(client, settings, leading=False)
            if not lost:
                break
    finally:
        role[0] = "stopping"
        await ctx.runners.stop(settings.run_grace_seconds)  # nothing may run once the lease is gone
        await elector.release()
        await admission.stop()  # the configuration goes before the server, never after
        logger.debug("admission webhook server stopped")
        await ctx.evaluator.close()
        await health.stop()
        await metrics.stop()
        ctx.cache.stop()
        client.close()
        executor.shutdown(wait=False, cancel_futures=True)
        logger.info("stopped")
    return 0


async def _lead(
    ctx: Context,
    elector: Elector,
    stopping: asyncio.Event,
    executor: concurrent.futures.Executor,
    ready: threading.Event | None = None,
) -> bool:
    """Kopf's operator while this replica leads; True when leadership was lost (not a stop)."""
    settings = ctx.settings
    kopf_stop = asyncio.Event()
    # Kopf takes SIGTERM/SIGINT over when it starts; its start-up hands them back (take_signals), so a
    # signal stops Kopf through kopf_stop like any other stop, in the order of the module docstring.
    memo = kopf.Memo(settings=settings, ctx=ctx, executor=executor, take_signals=lambda: _take_signals(stopping))
    operator = asyncio.create_task(
        kopf.operator(clusterwide=True, standalone=True, memo=memo, stop_flag=kopf_stop, ready_flag=ready),
        name="kopf",
    )
    waits = {operator, asyncio.create_task(stopping.wait(), name="stop signal")}
    keeper = asyncio.create_task(elector.keep(), name="leader lease") if settings.leader_election else None
    if keeper is not None:
        waits.add(keeper)
    lost = False
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if keeper is not None and keeper in done:
            # Partitioned or replaced: no tool may still run when another replica takes the lease.
            lost = True
            logger.error("stopping every run within %.0fs, then standing by", settings.leader_stop_grace_seconds)
            ctx.interruption = RunFailed(
                "talking to the API server",
                Reason.API_UNAVAILABLE,
                f"the operator could not reach the API server for {settings.leader_renew_deadline_seconds:.0f}s "
                "and stopped this run (another replica could have taken over); retrying",
            )
            await ctx.runners.stop(settings.leader_stop_grace_seconds)
    finally:
        kopf_stop.set()
        for task in waits - {operator}:
            task.cancel()
        try:
            await operator
        except asyncio.CancelledError:
            pass
        except Exception:
            if not lost and not stopping.is_set():
                raise  # Kopf failed by itself: the replica stops, loudly
            # We stopped Kopf (a stop, or the lease lost): what its last tasks raised must not end a
            # replica that is to stand by and lead again.
            logger.exception("Kopf ended with an error while stopping; carrying on")
        _on_signals(stopping)  # in case Kopf ended before its start-up handed them back
        ctx.interruption = None
    return lost


def _take_signals(stopping: asyncio.Event) -> None:
    # Kopf installs its handlers right after its start-up handlers' first step: take them back after.
    asyncio.get_running_loop().call_later(0.1, _on_signals, stopping)


def _on_signals(stopping: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
