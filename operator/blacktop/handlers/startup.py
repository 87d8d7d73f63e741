"""Operator start-up: Kopf settings under our own prefix, the shared context, the thread pool."""

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
from blacktop.kube.client import KubeClient
from blacktop.kube.errors import KubeApiError


@kopf.on.startup()
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
    memo.kube = KubeClient.from_kubeconfig()
    ctx = Context(client=memo.kube, settings=config)
    try:
        # Who we are to the apiserver: our own changes pass the team boundary (controllers/admission.py).
        ctx.username = await memo.kube.whoami()
    except KubeApiError as exc:
        raise kopf.TemporaryError(f"cannot tell who the operator is (SelfSubjectReview): {exc}", delay=2) from exc
    logging.getLogger(__name__).info("operating as %s", ctx.username)
    await ctx.evaluator.start()  # guardrail worker processes, started before the first review needs one
    memo.ctx = ctx


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    ctx = getattr(memo, "ctx", None)
    if ctx is not None:
        await ctx.evaluator.close()
    client = getattr(memo, "kube", None)
    if client is not None:
        client.close()
