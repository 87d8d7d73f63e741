"""The admission webhook: an HTTPS server answering the four validating reviews, on every replica.

Admission needs no leader: every replica serves it from start-up until the very end of its
shutdown, whether it leads or stands by, so the Service of the Helm chart can send reviews to any
ready replica. The server is Kopf's ``WebhookServer`` (TLS, listening, the client config) run on
its own, outside Kopf's operator, with Blacktop's own dispatcher: the URL path (``validate-
environment``, ...) names the kind, a denial is ``allowed: false`` with the message kubectl prints,
Warn-mode violations are admission warnings (kubectl prints them as ``Warning: ...``).

It runs in a thread of its own, with its own event loop and Context (sharing the API client, the
settings, the metrics and the module cache): a reconcile loop busy with thousands of objects (a
GitOps sync creating them) does not queue the reviews behind its work, and Kopf's shutdown, which
cancels whatever runs on its loop, never cuts a review short.

In local mode (``webhook_manage_config``) the ValidatingWebhookConfiguration is applied once the
server listens and removed at shutdown *before* the server stops (:meth:`AdmissionServer.stop`):
with failurePolicy Fail, a configuration pointing at a server that is gone would refuse every
write of Blacktop's kinds, including the operator's own last patches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import kopf

from blacktop.api.kinds import ENVIRONMENT, GOLDEN_PATH, GUARDRAIL_POLICY, SERVICE_REQUEST, KindInfo
from blacktop.controllers import admission as controller
from blacktop.controllers import webhook
from blacktop.controllers.context import Context
from blacktop.localcluster.webhookcert import ServingCert, serving_cert

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
# What a review needs: the context, the object, its old version on update, who asks, whether it is a dry run.
_Review = Callable[[Context, JSON, JSON | None, Mapping[str, Any], bool], Awaitable[controller.Review]]


async def _policy(_: Context, body: JSON, old: JSON | None, __: Mapping[str, Any], ___: bool) -> controller.Review:
    return controller.review_policy(body, old)


async def _golden_path(ctx: Context, body: JSON, old: JSON | None, _: Mapping[str, Any], __: bool) -> controller.Review:
    return await controller.review_golden_path(ctx, body, old)


async def _environment(
    ctx: Context, body: JSON, old: JSON | None, userinfo: Mapping[str, Any], dryrun: bool
) -> controller.Review:
    return await controller.review_environment(ctx, body, old, userinfo, dryrun=dryrun)


async def _service_request(
    ctx: Context, body: JSON, old: JSON | None, userinfo: Mapping[str, Any], dryrun: bool
) -> controller.Review:
    return await controller.review_service_request(ctx, body, old, userinfo, dryrun=dryrun)


# URL path (the webhook ids of builders/webhook.py) -> kind, review.
REVIEWS: dict[str, tuple[KindInfo, _Review]] = {
    f"validate-{kind.singular}": (kind, review)
    for kind, review in (
        (ENVIRONMENT, _environment),
        (SERVICE_REQUEST, _service_request),
        (GUARDRAIL_POLICY, _policy),
        (GOLDEN_PATH, _golden_path),
    )
}


def response(review: JSON, *, denial: str | None = None, warnings: list[str] | None = None, code: int = 403) -> JSON:
    """The AdmissionReview answering ``review``: allowed unless ``denial`` (shown to the user)."""
    answer: JSON = {"uid": (review.get("request") or {}).get("uid", ""), "allowed": denial is None}
    if warnings:
        answer["warnings"] = list(warnings)
    if denial is not None:
        answer["status"] = {"message": denial, "code": code}
    return {
        "apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
        "kind": review.get("kind", "AdmissionReview"),
        "response": answer,
    }


async def answer(ctx: Context, webhook_id: str | None, review: JSON) -> JSON:
    """Answer one AdmissionReview sent to the path ``webhook_id``."""
    found = REVIEWS.get(webhook_id or "")
    if found is None:
        return response(review, denial=f"no webhook {webhook_id!r} here", code=404)
    kind, reviewer = found
    request = review.get("request") or {}
    started = time.monotonic()
    body, old = request.get("object") or {}, request.get("oldObject") or None
    try:
        result = await reviewer(ctx, body, old, request.get("userInfo") or {}, bool(request.get("dryRun")))
    except Exception as exc:  # failurePolicy Fail: say why the review could not be made
        logger.warning("admission review of %s failed: %s", kind.kind, exc)
        return response(review, denial=f"Blacktop could not review this {kind.kind}: {exc}", code=500)
    ctx.metrics.observe_admission_review(kind.kind, result.denial is None, time.monotonic() - started)
    if result.denial is not None:  # the webhook doing its job: in the log (who, what, why), not an error
        meta = body.get("metadata") or {}
        who = (request.get("userInfo") or {}).get("username")
        logger.info(
            "denied %s %s/%s for %s: %s", kind.kind, meta.get("namespace") or "", meta.get("name"), who, result.denial
        )
    return response(review, denial=result.denial, warnings=result.warnings)


class AdmissionServer:
    """The webhook server of this replica, in its own thread (see the module docstring)."""

    def __init__(self, ctx: Context, *, threads: int = 8) -> None:
        self.ctx = ctx
        self.url: str | None = None
        self.listening = threading.Event()
        # Its own pool for the reviews' API reads: a reconcile burst holding every thread of the
        # operator's pool does not make admission wait, and the loop's end shuts only this one down.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="admission")
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._failed: BaseException | None = None

    async def start(self) -> None:
        """Start serving; returns once the server listens (and, in local mode, is configured)."""
        self._thread = threading.Thread(target=self._main, name="admission", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self.listening.wait)
        if self._failed is not None:
            raise self._failed

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported to start() and logged; the thread just ends
            self._failed = exc
            logger.exception("the admission webhook server stopped")
        finally:
            self.listening.set()  # never leave start() waiting

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_default_executor(self._executor)
        self._stop = asyncio.Event()
        settings = self.ctx.settings
        host = settings.webhook_host
        cert = await asyncio.to_thread(serving_cert, settings.webhook_cert_dir, (host, "localhost", "127.0.0.1"))
        server = kopf.WebhookServer(
            # Local mode listens where the apiserver calls; in a cluster the Service reaches any interface.
            addr=host if settings.webhook_manage_config else "0.0.0.0",  # noqa: S104
            port=settings.webhook_port or None,
            host=host,
            certfile=str(cert.certfile),
            pkeyfile=str(cert.keyfile),
            cadata=cert.ca_pem,
        )
        serving = asyncio.create_task(self._serve(server, cert), name="admission webhook server")
        await self._stop.wait()
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)

    async def _serve(self, server: kopf.WebhookServer, cert: ServingCert) -> None:
        async def serve(review: Any, *, webhook: str | None = None, **_: Any) -> Any:
            return await answer(self.ctx, webhook, dict(review))

        fn = cast(kopf.WebhookFn, serve)  # Kopf's typed review in, a plain AdmissionReview dict out
        async for client_config in server(fn):
            self.url = str(client_config["url"])
            if self.ctx.settings.webhook_manage_config:
                await webhook.apply_configuration(
                    self.ctx.client,
                    operator_namespace=self.ctx.settings.namespace,
                    url=self.url,
                    ca_bundle=cert.ca_bundle,
                )
            logger.info("admission webhook listening at %s", self.url)
            self.listening.set()

    async def stop(self) -> None:
        """Remove the configuration (local mode), then stop serving: in that order."""
        if self.url is not None and self.ctx.settings.webhook_manage_config:
            try:
                await webhook.remove_configuration(self.ctx.client, url=self.url)
            except Exception as exc:  # the next start replaces it; say so
                logger.warning("could not remove the admission webhook configuration: %s", exc)
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
