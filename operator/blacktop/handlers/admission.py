"""Kopf wiring of admission: the HTTPS webhook server and the validating handlers, one per kind.

Handler ids are the webhook URL paths (`validate-environment`, ...). A denial is a
``kopf.AdmissionError`` (kubectl prints its message); Warn-mode violations become admission
warnings (kubectl prints them as ``Warning: ...``). In local mode (webhook_manage_config) the
ValidatingWebhookConfiguration is applied once the server listens, and removed on a clean stop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import kopf

from blacktop.config import Settings
from blacktop.controllers import admission as controller
from blacktop.controllers import webhook
from blacktop.handlers.startup import context_of
from blacktop.kube.client import KubeClient
from blacktop.localcluster.webhookcert import serving_cert

GROUP, VERSION = "platform.blacktop.dev", "v1alpha1"


class _Server(kopf.WebhookServer):
    """Kopf's server, calling ``on_listening`` with each client config once the socket accepts."""

    def __init__(self, *, on_listening: Callable[[dict[str, Any]], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_listening = on_listening

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async for client_config in super().__call__(fn):
            await self._on_listening(dict(client_config))
            yield client_config


@kopf.on.startup()
async def configure_admission(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = Settings.from_env()
    host = config.webhook_host
    cert = await asyncio.to_thread(serving_cert, config.webhook_cert_dir, (host, "localhost", "127.0.0.1"))
    memo.webhook_url = None

    async def on_listening(client_config: dict[str, Any]) -> None:
        memo.webhook_url = client_config["url"]
        if config.webhook_manage_config:
            await webhook.apply_configuration(
                context_of(memo).client,
                operator_namespace=config.namespace,
                url=client_config["url"],
                ca_bundle=cert.ca_bundle,
            )

    settings.admission.server = _Server(
        # Local mode listens where the apiserver calls; in a cluster the Service reaches any interface.
        addr=host if config.webhook_manage_config else "0.0.0.0",  # noqa: S104
        port=config.webhook_port or None,
        host=host,
        certfile=str(cert.certfile),
        pkeyfile=str(cert.keyfile),
        cadata=cert.ca_pem,
        on_listening=on_listening,
    )
    settings.admission.managed = None  # Blacktop applies its own configuration (builders/webhook.py)


@kopf.on.cleanup()
async def release_webhook(memo: kopf.Memo, **_: Any) -> None:
    url = getattr(memo, "webhook_url", None)
    if url is None or not Settings.from_env().webhook_manage_config:
        return
    # Our own client: the shared one may already be closed by the other cleanup handler.
    client = await asyncio.to_thread(KubeClient.from_kubeconfig)
    try:
        await webhook.remove_configuration(client, url=url)
    finally:
        client.close()


def _verdict(memo: kopf.Memo, kind: str, started: float, review: controller.Review, warnings: list[str]) -> None:
    context_of(memo).metrics.observe_admission_review(kind, review.denial is None, time.monotonic() - started)
    warnings.extend(review.warnings)
    if review.denial:
        raise kopf.AdmissionError(review.denial, code=403)


@kopf.on.validate(GROUP, VERSION, "environments", id="validate-environment", operations=["CREATE", "UPDATE"])
async def validate_environment(
    *,
    body: kopf.Body,
    userinfo: Mapping[str, Any],
    warnings: list[str],
    dryrun: bool,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    started, old = time.monotonic(), kwargs.get("old")
    review = await controller.review_environment(
        context_of(memo), dict(body), dict(old) if old else None, userinfo, dryrun=dryrun
    )
    _verdict(memo, "Environment", started, review, warnings)


@kopf.on.validate(GROUP, VERSION, "servicerequests", id="validate-servicerequest", operations=["CREATE", "UPDATE"])
async def validate_service_request(
    *,
    body: kopf.Body,
    userinfo: Mapping[str, Any],
    warnings: list[str],
    dryrun: bool,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    started, old = time.monotonic(), kwargs.get("old")
    review = await controller.review_service_request(
        context_of(memo), dict(body), dict(old) if old else None, userinfo, dryrun=dryrun
    )
    _verdict(memo, "ServiceRequest", started, review, warnings)


@kopf.on.validate(GROUP, VERSION, "guardrailpolicies", id="validate-guardrailpolicy", operations=["CREATE", "UPDATE"])
async def validate_guardrail_policy(*, body: kopf.Body, warnings: list[str], memo: kopf.Memo, **kwargs: Any) -> None:
    started, old = time.monotonic(), kwargs.get("old")
    review = controller.review_policy(dict(body), dict(old) if old else None)
    _verdict(memo, "GuardrailPolicy", started, review, warnings)


@kopf.on.validate(GROUP, VERSION, "goldenpaths", id="validate-goldenpath", operations=["CREATE", "UPDATE"])
async def validate_golden_path(*, body: kopf.Body, warnings: list[str], memo: kopf.Memo, **kwargs: Any) -> None:
    started, old = time.monotonic(), kwargs.get("old")
    review = await controller.review_golden_path(context_of(memo), dict(body), dict(old) if old else None)
    _verdict(memo, "GoldenPath", started, review, warnings)


@kopf.on.validate(GROUP, VERSION, "feedbacks", id="validate-feedback", operations=["CREATE", "UPDATE"])
async def validate_feedback(*, body: kopf.Body, warnings: list[str], memo: kopf.Memo, **kwargs: Any) -> None:
    started, old = time.monotonic(), kwargs.get("old")
    review = await controller.review_feedback(context_of(memo), dict(body), dict(old) if old else None)
    _verdict(memo, "Feedback", started, review, warnings)
