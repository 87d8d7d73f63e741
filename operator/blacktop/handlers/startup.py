"""Operator start-up: Kopf settings under our own prefix, the shared context, the thread pool, and
Kopf's login (the same cluster as the context's client, resolved by kube.client at call time)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

import kopf

from blacktop.builders import naming
from blacktop.config import Settings
from blacktop.controllers.context import Context
from blacktop.handlers import logfilters
from blacktop.handlers.wiring import started_context
from blacktop.kube.client import ClusterConfigError, KubeClient
from blacktop.kube.errors import KubeApiError
from blacktop.runners import runners_for


# Nothing here is transient (no API calls): a failure is final, and the operator stops with it.
@kopf.on.startup(errors=kopf.ErrorsMode.PERMANENT)
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: Settings = memo.settings  # the CLI's, put into the memo by run_operator
    logfilters.install()
    # Kopf's own marks carry our prefix, so `kubectl get -o yaml` shows whose they are.
    settings.persistence.finalizer = naming.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=naming.DOMAIN)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=naming.DOMAIN, key="last-handled-configuration"
    )
    # We post our own, meaningful Events; Kopf's would repeat them as "Handler ... succeeded".
    settings.posting.level = logging.WARNING
    # Watches that go quiet behind a broken connection are restarted instead of hanging forever.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 10
    # Timers (TTL expiry) may be mid-call when their object is deleted; poll their exit every couple
    # of seconds instead of Kopf's default minute, so deletion is not held up by the finalizer.
    settings.background.instant_exit_timeout = 1.0
    settings.background.cancellation_polling = 2.0
    # Blocking work (the Kubernetes client's HTTP calls) runs in this many threads; sized on purpose
    # rather than left to the default of min(32, cpus + 4).
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=config.worker_threads, thread_name_prefix="blacktop-io"
    )
    settings.execution.executor = executor
    asyncio.get_running_loop().set_default_executor(executor)
    try:
        client = KubeClient.from_kubeconfig()
    except ClusterConfigError as exc:
        # A missing configuration does not fix itself: fail once, clearly, instead of retrying forever.
        raise kopf.PermanentError(str(exc)) from exc
    memo.kube = client
    # OpenTofu's state backend reaches the same cluster as this client (its kubeconfig; None: in-cluster).
    runners = runners_for(config, client, kubeconfig=client.kubeconfig)  # settings.runner: local or pod
    memo.ctx = Context(client=client, settings=config, runners=runners)


# Registered after `configure`, so it runs next; its one API call may fail for a while (Kopf retries).
@kopf.on.startup()
async def identify(memo: kopf.Memo, **_: Any) -> None:
    """Who the operator is to the apiserver (its own changes pass the team boundary, see
    controllers/admission.py), and the guardrail worker processes, before the first review."""
    ctx = started_context(memo)
    if ctx is None:
        return
    try:
        ctx.username = await memo.kube.whoami()
    except KubeApiError as exc:
        raise kopf.TemporaryError(f"cannot tell who the operator is (SelfSubjectReview): {exc}", delay=2) from exc
    logging.getLogger(__name__).info("operating as %s", ctx.username)
    await ctx.evaluator.start()


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """Kopf's own watches and patches go to the cluster our client resolves (Kopf's built-in login
    would read the kubernetes package's import-time default instead)."""
    try:
        client = KubeClient.from_kubeconfig()
    except ClusterConfigError as exc:
        raise kopf.PermanentError(str(exc)) from exc
    try:
        conn = client.connection()
    finally:
        client.close()
    return kopf.ConnectionInfo(
        server=conn.server,
        ca_path=conn.ca_file,
        insecure=not conn.verify,
        certificate_path=conn.cert_file,
        private_key_path=conn.key_file,
        scheme=conn.scheme,
        token=conn.token,
    )


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    ctx = getattr(memo, "ctx", None)
    if ctx is not None:
        await ctx.evaluator.close()
    client = getattr(memo, "kube", None)
    if client is not None:
        client.close()
