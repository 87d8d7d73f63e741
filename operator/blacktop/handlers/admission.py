"""Kopf wiring of admission: the HTTPS webhook server, the validating handlers (one per kind;
ServiceRequests' also on DELETE) and the one mutating handler (a ServiceRequest's requested-by/approved-by
stamps).

Handler ids are the webhook URL paths (`validate-environment`, ...). A denial is a
``kopf.AdmissionError`` (kubectl prints its message); Warn-mode violations become admission
warnings (kubectl prints them as ``Warning: ...``). In local mode (webhook_manage_config) the
Validating- and MutatingWebhookConfiguration are applied once the server listens, and removed on a
clean stop.
"""

from __future__ import annotations

import asyncio
import atexit
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Literal

import kopf

from blacktop.api.kinds import (
    ENVIRONMENT,
    FEEDBACK,
    GOLDEN_PATH,
    GROUP,
    GUARDRAIL_POLICY,
    SERVICE_REQUEST,
    VERSION,
    KindInfo,
)
from blacktop.config import Settings
from blacktop.controllers import admission as controller
from blacktop.controllers import webhook
from blacktop.controllers.context import Context
from blacktop.handlers.wiring import context_of
from blacktop.kube.client import KubeClient
from blacktop.localcluster.webhookcert import serving_cert


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
    config: Settings = memo.settings
    host = config.webhook_host
    cert = await asyncio.to_thread(serving_cert, config.webhook_cert_dir, (host, "localhost", "127.0.0.1"))
    if config.webhook_cert_dir is None:
        # The generated pair's temp folder is served for the life of the process, then removed
        # (atexit: also when start-up fails and Kopf runs no cleanup handlers).
        atexit.register(shutil.rmtree, cert.keyfile.parent, True)
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
    if url is None or not memo.settings.webhook_manage_config:
        return
    # Our own client: the shared one may already be closed by the other cleanup handler.
    client = await asyncio.to_thread(KubeClient.from_kubeconfig)
    try:
        await webhook.remove_configuration(client, url=url)
    finally:
        client.close()


# What a review needs: the context, the object, its old version on update, who asks, whether it is a dry run.
_Review = Callable[
    [Context, dict[str, Any], dict[str, Any] | None, Mapping[str, Any], bool], Awaitable[controller.Review]
]


async def _policy(
    _: Context, body: dict[str, Any], old: dict[str, Any] | None, __: Mapping[str, Any], ___: bool
) -> controller.Review:
    return controller.review_policy(body, old)


async def _golden_path(
    ctx: Context, body: dict[str, Any], old: dict[str, Any] | None, _: Mapping[str, Any], __: bool
) -> controller.Review:
    return await controller.review_golden_path(ctx, body, old)


async def _environment(
    ctx: Context, body: dict[str, Any], old: dict[str, Any] | None, userinfo: Mapping[str, Any], dryrun: bool
) -> controller.Review:
    return await controller.review_environment(ctx, body, old, userinfo, dryrun=dryrun)


async def _feedback(
    ctx: Context, body: dict[str, Any], old: dict[str, Any] | None, _: Mapping[str, Any], __: bool
) -> controller.Review:
    return await controller.review_feedback(ctx, body, old)


async def _service_request(
    ctx: Context, body: dict[str, Any], old: dict[str, Any] | None, userinfo: Mapping[str, Any], dryrun: bool
) -> controller.Review:
    return await controller.review_service_request(ctx, body, old, userinfo, dryrun=dryrun)


Operation = Literal["CREATE", "UPDATE", "DELETE"]


def _register(kind: KindInfo, review: _Review, operations: tuple[Operation, ...] = ("CREATE", "UPDATE")) -> None:
    """The validating handler of ``kind`` at the webhook path ``validate-<kind>``: a denial is an
    AdmissionError (kubectl prints it), warnings are admission warnings, each review is timed."""

    @kopf.on.validate(GROUP, VERSION, kind.plural, id=f"validate-{kind.singular}", operations=list(operations))
    async def validate(
        *,
        body: kopf.Body,
        userinfo: Mapping[str, Any],
        warnings: list[str],
        dryrun: bool,
        memo: kopf.Memo,
        **kwargs: Any,
    ) -> None:
        started, old, ctx = time.monotonic(), kwargs.get("old"), context_of(memo)
        if kwargs.get("operation") == "DELETE":  # ServiceRequests only; body is the object being deleted
            answer = await controller.review_service_request_deletion(ctx, dict(body))
        else:
            answer = await review(ctx, dict(body), dict(old) if old else None, userinfo, dryrun)
        ctx.metrics.observe_admission_review(kind.kind, answer.denial is None, time.monotonic() - started)
        warnings.extend(answer.warnings)
        if answer.denial:
            raise kopf.AdmissionError(answer.denial, code=403)


_register(ENVIRONMENT, _environment)
# A ServiceRequest others consume is refused deletion, naming them (controllers.admission).
_register(SERVICE_REQUEST, _service_request, ("CREATE", "UPDATE", "DELETE"))
_register(GUARDRAIL_POLICY, _policy)
_register(GOLDEN_PATH, _golden_path)
_register(FEEDBACK, _feedback)


@kopf.on.mutate(GROUP, VERSION, SERVICE_REQUEST.plural, id="mutate-servicerequest", operations=["CREATE", "UPDATE"])
async def mutate_service_request(
    *, body: kopf.Body, userinfo: Mapping[str, Any], patch: kopf.Patch, **kwargs: Any
) -> None:
    """Stamp who last changed the spec and who approved (any hand-made value is put back)."""
    old = kwargs.get("old")
    for key, value in controller.stamp_service_request(dict(body), dict(old) if old else None, userinfo).items():
        patch.metadata.annotations[key] = value
