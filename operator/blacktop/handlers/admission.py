"""Kopf wiring of admission: the HTTPS webhook server, the validating handlers (one per kind;
Environments' and ServiceRequests' also on DELETE) and the one mutating handler (a ServiceRequest's
requested-by/approved-by stamps).

Handler ids are the webhook URL paths (`validate-environment`, ...). A denial is a
``kopf.AdmissionError`` (kubectl prints its message); Warn-mode violations become admission
warnings (kubectl prints them as ``Warning: ...``). In local mode (webhook_manage_config) the
Validating- and MutatingWebhookConfiguration are applied once the server listens, and removed on a
clean stop.

The server in front of Kopf's handling of a review (:class:`_Server`):

- With ``webhook_client_ca`` set it accepts only TLS clients holding a certificate of that CA with
  one of ``webhook_client_names`` (the apiserver's, configured by its ``--admission-control-config-file``);
  anyone else is refused before a byte of their review is read.
- A review larger than ``webhook_max_body_bytes``, nested deeper than Blacktop ever needs, not JSON,
  or that fails inside Kopf is answered with a readable refusal (an AdmissionReview with
  ``allowed: false`` and a message kubectl prints) and one log line, never a raw HTTP error or a
  traceback.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import re
import shutil
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Literal, cast

import aiohttp.web
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
from blacktop.builders.webhook import operations_of
from blacktop.config import Settings
from blacktop.controllers import admission as controller
from blacktop.controllers import webhook
from blacktop.controllers.context import Context
from blacktop.handlers.wiring import context_of
from blacktop.kube.client import KubeClient
from blacktop.localcluster.webhookcert import serving_cert

logger = logging.getLogger(__name__)

# Far deeper than any object Blacktop accepts (parameters: 16 levels), far shallower than what breaks
# a recursive walk (Python's default limit is 1000 frames).
MAX_BODY_DEPTH = 100
_UID = re.compile(rb'"uid"\s*:\s*"([^"]{1,64})"')


def _depth(value: Any) -> int:
    """How deeply a JSON value nests (iteratively: the value may be deeper than the recursion limit)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
    return deepest


def _refusal(uid: str, code: int, message: str) -> aiohttp.web.Response:
    """An AdmissionReview that denies with ``message``: what kubectl shows the user."""
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": False, "status": {"code": code, "message": message}},
    }
    return aiohttp.web.json_response(review)


def _peer_names(peer: Mapping[str, Any] | None) -> set[str]:
    """Common name and DNS names of a verified TLS client certificate (``ssl.getpeercert()``)."""
    names: set[str] = set()
    for rdn in (peer or {}).get("subject") or ():
        names.update(value for key, value in rdn if key == "commonName")
    names.update(value for kind, value in (peer or {}).get("subjectAltName") or () if kind == "DNS")
    return names


class _Server(kopf.WebhookServer):
    """Kopf's server: calls ``on_listening`` with each client config once the socket accepts, and
    authenticates and bounds every review before Kopf sees it."""

    def __init__(
        self,
        *,
        on_listening: Callable[[dict[str, Any]], Awaitable[None]],
        client_names: tuple[str, ...] | None,
        max_body: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._on_listening = on_listening
        self._client_names = client_names  # None: clients are not authenticated
        self._max_body = max_body

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async for client_config in super().__call__(fn):
            await self._on_listening(dict(client_config))
            yield client_config

    async def _read(self, request: aiohttp.web.Request) -> tuple[bytes, bool]:
        """(the body, or its first chunk when it is too large; whether it fit)."""
        chunks, total = [], 0
        while chunk := await request.content.read(256 * 1024):
            total += len(chunk)
            chunks.append(chunk)
            if total > self._max_body:
                return chunks[0], False
        return b"".join(chunks), True

    async def _serve(self, fn: Any, request: aiohttp.web.Request) -> aiohttp.web.Response:  # type: ignore[override]
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        if self._client_names is not None:
            names = _peer_names(peer)
            if not names or (self._client_names and not names & set(self._client_names)):
                logger.warning(
                    "admission webhook: refused a review from %s: client certificate %s is not the API server's",
                    request.remote,
                    ", ".join(sorted(names)) or "(none)",
                )
                raise aiohttp.web.HTTPForbidden(reason="only the API server may send admission reviews")
        raw, whole = await self._read(request)
        found = _UID.search(raw[:65536])
        uid = found.group(1).decode() if found else ""
        hook = request.match_info.get("id")
        if not whole:
            logger.warning("admission webhook %s: refused a review larger than %d bytes", hook, self._max_body)
            limit = f"{self._max_body // (1024 * 1024)} MiB"
            return _refusal(uid, 413, f"denied: the object is too large for Blacktop to review (over {limit})")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            logger.warning("admission webhook %s: refused a review that is not JSON: %s", hook, str(exc)[:200])
            return _refusal(uid, 400, "denied: Blacktop could not read the admission review (not JSON)")
        if (depth := _depth(data)) > MAX_BODY_DEPTH:
            logger.warning("admission webhook %s: refused a review nested %d levels deep", hook, depth)
            return _refusal(
                uid, 422, f"denied: the object is nested {depth} levels deep; Blacktop reviews at most {MAX_BODY_DEPTH}"
            )
        try:
            response = await fn(data, webhook=hook, sslpeer=peer, headers=dict(request.headers))
        except Exception as exc:  # a review Kopf cannot take (unknown resource, missing fields, a bug)
            text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            logger.error("admission webhook %s: could not review (uid %s): %s", hook, uid or "?", text)
            return _refusal(uid, 500, f"denied: Blacktop could not review this request ({text}); try again")
        return aiohttp.web.json_response(response)


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

    client_auth: dict[str, Any] = {}
    if config.webhook_client_ca is not None:
        client_auth = {"verify_mode": ssl.CERT_REQUIRED, "verify_cafile": str(config.webhook_client_ca)}
        names = ", ".join(config.webhook_client_names) or "any name"
        logger.info("admission webhook: only clients with a certificate of %s (%s)", config.webhook_client_ca, names)
    else:
        logger.warning(
            "admission webhook: BLACKTOP_WEBHOOK_CLIENT_CA is not set, so any client can post admission reviews; "
            "give the API server a client certificate for webhooks and set it (README: Security)"
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
        client_names=config.webhook_client_names if config.webhook_client_ca is not None else None,
        max_body=config.webhook_max_body_bytes,
        **client_auth,
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


# What a review needs: the context, the object, its old version on update, who asks, whether it is a dry
# run, and the operation (CREATE, UPDATE, DELETE).
Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]
_Review = Callable[
    [Context, dict[str, Any], dict[str, Any] | None, Mapping[str, Any], bool, str], Awaitable[controller.Review]
]


async def _policy(
    ctx: Context, body: dict[str, Any], old: dict[str, Any] | None, _: Mapping[str, Any], __: bool, ___: str
) -> controller.Review:
    return controller.review_policy(ctx, body, old)


async def _golden_path(
    ctx: Context, body: dict[str, Any], old: dict[str, Any] | None, _: Mapping[str, Any], __: bool, ___: str
) -> controller.Review:
    return await controller.review_golden_path(ctx, body, old)


async def _environment(  # noqa: PLR0917 (the shape every review has, see _Review)
    ctx: Context,
    body: dict[str, Any],
    old: dict[str, Any] | None,
    userinfo: Mapping[str, Any],
    dryrun: bool,
    operation: str,
) -> controller.Review:
    return await controller.review_environment(ctx, body, old, userinfo, dryrun=dryrun, operation=operation)


async def _feedback(
    ctx: Context, body: dict[str, Any], old: dict[str, Any] | None, _: Mapping[str, Any], __: bool, ___: str
) -> controller.Review:
    return await controller.review_feedback(ctx, body, old)


async def _service_request(  # noqa: PLR0917 (the shape every review has, see _Review)
    ctx: Context,
    body: dict[str, Any],
    old: dict[str, Any] | None,
    userinfo: Mapping[str, Any],
    dryrun: bool,
    operation: str,
) -> controller.Review:
    if operation == "DELETE":  # body is the object being deleted: refused while others consume it
        return await controller.review_service_request_deletion(ctx, body)
    return await controller.review_service_request(ctx, body, old, userinfo, dryrun=dryrun)


def _register(kind: KindInfo, review: _Review) -> None:
    """The validating handler of ``kind`` at the webhook path ``validate-<kind>``: a denial is an
    AdmissionError (kubectl prints it), warnings are admission warnings, each review is timed."""

    # Environments and ServiceRequests are reviewed on deletion too (builders/webhook.py says so, for both).
    operations = cast("list[Operation]", operations_of(kind.plural))

    @kopf.on.validate(GROUP, VERSION, kind.plural, id=f"validate-{kind.singular}", operations=operations)
    async def validate(
        *,
        body: kopf.Body,
        userinfo: Mapping[str, Any],
        warnings: list[str],
        dryrun: bool,
        memo: kopf.Memo,
        operation: str | None = None,
        **kwargs: Any,
    ) -> None:
        started, old, ctx = time.monotonic(), kwargs.get("old"), context_of(memo)
        answer = await review(ctx, dict(body), dict(old) if old else None, userinfo, dryrun, operation or "CREATE")
        ctx.metrics.observe_admission_review(kind.kind, answer.denial is None, time.monotonic() - started)
        warnings.extend(answer.warnings)
        if answer.denial:
            raise kopf.AdmissionError(answer.denial, code=403)


_register(ENVIRONMENT, _environment)
_register(SERVICE_REQUEST, _service_request)
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
