"""The admission webhook: an HTTPS server answering the validating reviews (one per kind;
Environments' and ServiceRequests' also on DELETE) and the one mutating review (a ServiceRequest's
requested-by/approved-by stamps), on every replica.

Admission needs no leader: every replica serves it from start-up until the very end of its
shutdown, whether it leads or stands by, so the Service of the Helm chart can send reviews to any
ready replica. The server is Kopf's ``WebhookServer`` (TLS, listening, the client config) run on
its own, outside Kopf's operator, with Blacktop's own dispatcher: the URL path (``validate-
environment``, ``mutate-servicerequest``, ...) names the kind, a denial is ``allowed: false`` with
the message kubectl prints, Warn-mode violations are admission warnings (kubectl prints them as
``Warning: ...``), the stamps are a JSONPatch.

In front of the dispatcher (:class:`_Server`):

- With ``webhook_client_ca`` set it accepts only TLS clients holding a certificate of that CA with
  one of ``webhook_client_names`` (the apiserver's, configured by its ``--admission-control-config-file``);
  anyone else is refused before a byte of their review is read.
- A review larger than ``webhook_max_body_bytes``, nested deeper than Blacktop ever needs, not JSON,
  or that fails inside the dispatcher is answered with a readable refusal (an AdmissionReview with
  ``allowed: false`` and a message kubectl prints) and one log line, never a raw HTTP error or a
  traceback.

It runs in a thread of its own, with its own event loop and Context (sharing the API client, the
settings, the metrics and the module cache; its guardrail worker processes are its own): a
reconcile loop busy with thousands of objects (a GitOps sync creating them) does not queue the
reviews behind its work, and Kopf's shutdown, which cancels whatever runs on its loop, never cuts a
review short.

In local mode (``webhook_manage_config``) the Validating- and MutatingWebhookConfiguration are
applied once the server listens and removed at shutdown *before* the server stops
(:meth:`AdmissionServer.stop`): with failurePolicy Fail, a configuration pointing at a server that
is gone would refuse every write of Blacktop's kinds, including the operator's own last patches.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import json
import logging
import re
import shutil
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import aiohttp.web
import kopf

from blacktop.api.kinds import ENVIRONMENT, FEEDBACK, GOLDEN_PATH, GUARDRAIL_POLICY, SERVICE_REQUEST, KindInfo
from blacktop.controllers import admission as controller
from blacktop.controllers import webhook
from blacktop.controllers.context import Context
from blacktop.localcluster.webhookcert import ServingCert, serving_cert

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
    """Kopf's server (TLS, listening, the client config) that authenticates and bounds every review
    before the dispatcher (:func:`answer`) sees it."""

    def __init__(self, *, client_names: tuple[str, ...] | None, max_body: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client_names = client_names  # None: clients are not authenticated
        self._max_body = max_body

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


JSON = dict[str, Any]
# What a review needs: the context, the object, its old version on update, who asks, whether it is a
# dry run, and the operation (CREATE, UPDATE, DELETE).
_Review = Callable[[Context, JSON, JSON | None, Mapping[str, Any], bool, str], Awaitable[controller.Review]]


async def _policy(
    ctx: Context, body: JSON, old: JSON | None, _: Mapping[str, Any], __: bool, ___: str
) -> controller.Review:
    return controller.review_policy(ctx, body, old)


async def _golden_path(
    ctx: Context, body: JSON, old: JSON | None, _: Mapping[str, Any], __: bool, ___: str
) -> controller.Review:
    return await controller.review_golden_path(ctx, body, old)


async def _environment(  # noqa: PLR0917 (the shape every review has, see _Review)
    ctx: Context, body: JSON, old: JSON | None, userinfo: Mapping[str, Any], dryrun: bool, operation: str
) -> controller.Review:
    return await controller.review_environment(ctx, body, old, userinfo, dryrun=dryrun, operation=operation)


async def _feedback(
    ctx: Context, body: JSON, old: JSON | None, _: Mapping[str, Any], __: bool, ___: str
) -> controller.Review:
    return await controller.review_feedback(ctx, body, old)


async def _service_request(  # noqa: PLR0917 (the shape every review has, see _Review)
    ctx: Context, body: JSON, old: JSON | None, userinfo: Mapping[str, Any], dryrun: bool, operation: str
) -> controller.Review:
    if operation == "DELETE":  # body is the object being deleted: refused while others consume it
        return await controller.review_service_request_deletion(ctx, body)
    return await controller.review_service_request(ctx, body, old, userinfo, dryrun=dryrun)


# URL path (the webhook ids of builders/webhook.py) -> kind, review.
REVIEWS: dict[str, tuple[KindInfo, _Review]] = {
    f"validate-{kind.singular}": (kind, review)
    for kind, review in (
        (ENVIRONMENT, _environment),
        (SERVICE_REQUEST, _service_request),
        (GUARDRAIL_POLICY, _policy),
        (GOLDEN_PATH, _golden_path),
        (FEEDBACK, _feedback),
    )
}
MUTATE_SERVICE_REQUEST = "mutate-servicerequest"


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def stamp_patch(body: JSON, stamps: Mapping[str, str | None]) -> list[JSON]:
    """The JSONPatch setting (or, for None, removing) the annotations ``stamps`` of ``body``."""
    annotations = (body.get("metadata") or {}).get("annotations")
    ops: list[JSON] = []
    if annotations is None and any(v is not None for v in stamps.values()):
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {}})
        annotations = {}
    for key, value in stamps.items():
        path = f"/metadata/annotations/{_pointer(key)}"
        if value is None:
            if annotations and key in annotations:
                ops.append({"op": "remove", "path": path})
        else:
            ops.append({"op": "add", "path": path, "value": value})
    return ops


def _mutation(review: JSON) -> JSON:
    """Stamp who last changed the spec and who approved (any hand-made value is put back)."""
    request = review.get("request") or {}
    body, old = request.get("object") or {}, request.get("oldObject") or None
    patch = stamp_patch(body, controller.stamp_service_request(body, old, request.get("userInfo") or {}))
    answer = response(review)
    if patch:
        answer["response"]["patchType"] = "JSONPatch"
        answer["response"]["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return answer


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
    if webhook_id == MUTATE_SERVICE_REQUEST:
        return _mutation(review)
    found = REVIEWS.get(webhook_id or "")
    if found is None:
        return response(review, denial=f"no webhook {webhook_id!r} here", code=404)
    kind, reviewer = found
    request = review.get("request") or {}
    started = time.monotonic()
    operation = str(request.get("operation") or "CREATE")
    body, old = request.get("object") or {}, request.get("oldObject") or None
    if operation == "DELETE":  # the object being deleted is the old one
        body, old = old or {}, None
    try:
        result = await reviewer(ctx, body, old, request.get("userInfo") or {}, bool(request.get("dryRun")), operation)
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
        if settings.webhook_cert_dir is None:
            # The generated pair's temp folder is served for the life of the process, then removed
            # (atexit: also when start-up fails).
            atexit.register(shutil.rmtree, cert.keyfile.parent, True)
        client_auth: dict[str, Any] = {}
        if settings.webhook_client_ca is not None:
            client_auth = {"verify_mode": ssl.CERT_REQUIRED, "verify_cafile": str(settings.webhook_client_ca)}
            names = ", ".join(settings.webhook_client_names) or "any name"
            logger.info(
                "admission webhook: only clients with a certificate of %s (%s)", settings.webhook_client_ca, names
            )
        else:
            logger.warning(
                "admission webhook: BLACKTOP_WEBHOOK_CLIENT_CA is not set, so any client can post admission "
                "reviews; give the API server a client certificate for webhooks and set it (README: Security)"
            )
        server = _Server(
            # Local mode listens where the apiserver calls; in a cluster the Service reaches any interface.
            addr=host if settings.webhook_manage_config else "0.0.0.0",  # noqa: S104
            port=settings.webhook_port or None,
            host=host,
            certfile=str(cert.certfile),
            pkeyfile=str(cert.keyfile),
            cadata=cert.ca_pem,
            client_names=settings.webhook_client_names if settings.webhook_client_ca is not None else None,
            max_body=settings.webhook_max_body_bytes,
            **client_auth,
        )
        await self.ctx.evaluator.start()  # this loop's guardrail worker processes
        serving = asyncio.create_task(self._serve(server, cert), name="admission webhook server")
        try:
            await self._stop.wait()
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            await self.ctx.evaluator.close()

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
