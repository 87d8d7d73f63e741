"""Kopf's settings for Blacktop, at Kopf's start-up (on the leader): our own prefix for its marks,
our Events instead of its own, bounded watches and API calls, the operator's thread pool; and
Kopf's login (the same cluster as the Context's client, resolved by kube.client at call time).

The Context (settings, API client, runners, the operator's identity, ...) exists before Kopf starts
(:mod:`blacktop.handlers.main`): admission and leader election need it on every replica.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from blacktop.builders import naming
from blacktop.handlers.wiring import context_of
from blacktop.kube.client import ClusterConfigError, KubeClient


# Nothing here is transient (no API calls): a failure is final, and the operator stops with it.
@kopf.on.startup(errors=kopf.ErrorsMode.PERMANENT)
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    ctx = context_of(memo)
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
    # Kopf's own calls (finalizers, progress) are bounded like ours, and retried soon after an
    # outage: requests recover within seconds of the API server's return.
    settings.networking.request_timeout = ctx.settings.api_timeout_seconds
    settings.networking.connect_timeout = 5
    settings.networking.error_backoffs = (0.5, 1, 1, 2, 2, 3, 5, 5, 5, 5, 5, 5, 5, 5)
    # An unexpected error in a handler is retried after this long, not Kopf's default minute.
    settings.execution.default_backoff = ctx.settings.infrastructure_backoff_cap_seconds
    # Timers (TTL expiry) may be mid-call when their object is deleted; poll their exit every couple
    # of seconds instead of Kopf's default minute, so deletion is not held up by the finalizer.
    settings.background.instant_exit_timeout = 1.0
    settings.background.cancellation_polling = 2.0
    # Blocking work (the Kubernetes client's HTTP calls) runs in the operator's own pool, sized on
    # purpose (settings.worker_threads) rather than left to the default of min(32, cpus + 4).
    executor = getattr(memo, "executor", None)
    if executor is not None:
        settings.execution.executor = executor
    take_signals = getattr(memo, "take_signals", None)
    if take_signals is not None:
        take_signals()  # SIGTERM stops the replica in its order, not Kopf alone (handlers.main)


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
