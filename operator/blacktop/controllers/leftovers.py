"""What ServiceRequests leave behind when they go without a destroy, and how it is cleaned up or accounted for.

A request's finalizer is what makes Blacktop destroy its infrastructure before the request goes. A
tenant may remove it (they can patch their own requests), and a platform admin may deliberately
abandon a request whose infrastructure cannot be destroyed (annotation ``platform.blacktop.dev/abandon``).
Either way the request's state Secret stays in the operator's namespace, and with it the knowledge
of what exists:

- Before every provisioning run, :func:`record` writes onto the state Secret what a destroy needs
  later without the request: its namespace and name, golden path, team and environment, the module
  variables, the golden path revision it ran, and its monthly cost.
- A :class:`Sweeper` looks at the state Secrets every ``leftover_check_seconds`` (and at once when a
  request disappears). State whose request is gone is *orphaned*: it is destroyed with the recorded
  golden path and variables, exactly like a deletion would (same state lock, same module checks),
  at the recorded revision when it is still kept,
  then removed, with a ``LeftoverDestroyed`` Event. When that fails (the golden path is gone, the
  provider is down, the module is refused), a ``LeftoverNotDestroyed`` Warning Event says why, and
  it is retried with backoff. State abandoned by an admin is never destroyed.
- Until it is destroyed, what is left is reported by the gauge ``blacktop_leftover_states`` (by
  golden path and reason) and its cost still counts: in its team's ``blacktop_team_monthly_cost``,
  in its environment's ``status.cost`` and in budget guardrails. Stripping a finalizer is not a way
  around a budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from typing import Any

from blacktop.api.common import format_time, money_to_cents
from blacktop.api.conditions import Reason
from blacktop.api.kinds import API_VERSION
from blacktop.api.servicerequest import RunInfo
from blacktop.builders import naming
from blacktop.controllers import lookup, revisions, runs, statelock, views
from blacktop.controllers.budget import refresh_environment_cost
from blacktop.controllers.context import Context
from blacktop.controllers.failures import Failure
from blacktop.controllers.inputs import Inputs, resolve
from blacktop.kube import events
from blacktop.kube.errors import KubeApiError
from blacktop.kube.resources import SERVICEREQUESTS, resource_for
from blacktop.metrics.inventory import LeftoverView
from blacktop.terraform.module import ModuleRefused
from blacktop.terraform.redact import tail
from blacktop.terraform.runner import Ending, RunIdentity
from blacktop.terraform.state import StateRef, new_lock_id, state_of, state_resources

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
SECRET = resource_for("v1", "Secret")
NAMESPACE = resource_for("v1", "Namespace")
_P = f"{naming.DOMAIN}/"
REQUEST, GOLDEN_PATH, TEAM, ENVIRONMENT = f"{_P}request", f"{_P}golden-path", f"{_P}team", f"{_P}environment"
TIER, CREATED, REVISION = f"{_P}tier", f"{_P}created", f"{_P}revision"
COST, CURRENCY, VARIABLES, ABANDONED = f"{_P}monthly-cost", f"{_P}currency", f"{_P}variables", f"{_P}abandoned"
ORPHANED = "orphaned"
RETRY_CAP = 600.0
MAX_LISTED = 20


async def record(ctx: Context, inputs: Inputs, cost: str | None) -> None:
    """Write onto the request's state Secret what destroying it without the request needs. Called under
    the state lock before any tool runs (the backend rewrites the Secret, keeping annotations)."""
    request, env, golden = inputs.request, inputs.environment, inputs.golden_path
    annotations = {
        REQUEST: f"{request.namespace}/{request.name}",
        CREATED: format_time(request.created),
        GOLDEN_PATH: golden.name,
        TEAM: env.team or "",
        TIER: env.tier or "",
        ENVIRONMENT: env.name,
        COST: cost or "0",
        CURRENCY: golden.spec.cost.currency if golden.spec.cost else "USD",
        VARIABLES: json.dumps(dict(inputs.target.variables), sort_keys=True, separators=(",", ":")),
        REVISION: str(golden.revision.revision) if golden.revision else "",
    }
    state = inputs.target.state
    try:
        await ctx.client.merge_patch(
            SECRET, state.state_secret, {"metadata": {"annotations": annotations}}, state.namespace
        )
    except KubeApiError as exc:  # a missing record only matters if the finalizer is removed later: say so
        logger.warning("%s/%s: could not record the request on its state: %s", request.namespace, request.name, exc)


async def anything_applied(ctx: Context, state: StateRef) -> bool:
    """Whether the state holds anything a destroy would remove (no state, or the empty state seeded
    before a first run that never got further: nothing)."""
    secret = await ctx.client.get(SECRET, state.state_secret, state.namespace)
    return secret is not None and bool(state_resources(secret))


def _view(state: JSON) -> LeftoverView:
    annotations = (state.get("metadata") or {}).get("annotations") or {}
    try:
        cents = money_to_cents(str(annotations.get(COST) or "0"))
    except ValueError:
        cents = 0
    return LeftoverView(
        namespace=str(annotations.get(REQUEST) or "/").partition("/")[0],
        golden_path=str(annotations.get(GOLDEN_PATH) or "unknown"),
        team=str(annotations.get(TEAM) or "unknown"),
        currency=str(annotations.get(CURRENCY) or "USD"),
        monthly_cost_cents=cents,
        reason="abandoned" if annotations.get(ABANDONED) else ORPHANED,
    )


class _NotDestroyed(Exception):  # noqa: N818 (why a leftover is still there)
    pass


async def abandon(ctx: Context, body: JSON, *, by: str = "a platform admin") -> None:
    """Leave a request's infrastructure behind on an admin's word: record on its state what was left
    (kept for the platform team), and say so in an Event. The caller lets the request go."""
    meta = body["metadata"]
    ref = state_of(ctx.settings.namespace, meta["uid"])
    state = await ctx.client.get(SECRET, ref.state_secret, ref.namespace)
    left = state_resources(state) if state is not None else []
    if state is not None:
        stamp = {ABANDONED: f"{format_time(ctx.now())} by {by}: {', '.join(left[:MAX_LISTED])}"[:1024]}
        await ctx.client.merge_patch(SECRET, ref.state_secret, {"metadata": {"annotations": stamp}}, ref.namespace)
    listed = ", ".join(left[:MAX_LISTED]) + (f" and {len(left) - MAX_LISTED} more" if len(left) > MAX_LISTED else "")
    where = f"; its state stays in Secret {ref.namespace}/{ref.state_secret}" if state is not None else ""
    message = (
        f"abandoned ({naming.ABANDON_ANNOTATION}) by {by}: nothing was destroyed; left behind: "
        f"{listed or 'nothing (nothing was ever applied)'}{where}"
    )
    logger.warning("%s/%s: %s", meta["namespace"], meta["name"], message)
    await events.post_event(ctx.client, body, events.WARNING, Reason.ABANDONED, message)


async def abandon_and_release(ctx: Context, body: JSON) -> bool:
    """Abandon a request that is being deleted and remove Blacktop's finalizer, so it goes at once
    (even while a failing destroy waits for its next retry). False if the request changed meanwhile."""
    meta = body["metadata"]
    finalizers = list(meta.get("finalizers") or [])
    if naming.FINALIZER not in finalizers:
        return False
    await abandon(ctx, body)
    patch = {
        "metadata": {
            "resourceVersion": meta["resourceVersion"],  # only the version we judged
            "finalizers": [f for f in finalizers if f != naming.FINALIZER],
        }
    }
    try:
        await ctx.client.merge_patch(SERVICEREQUESTS, meta["name"], patch, meta["namespace"])
    except KubeApiError as exc:
        logger.info("%s/%s: finalizer not released yet (%s); next event", meta["namespace"], meta["name"], exc)
        return False
    return True


def _suffix(state: JSON) -> str:
    """The request UID a state Secret belongs to ("" for a state not made by Blacktop)."""
    return str(((state.get("metadata") or {}).get("labels") or {}).get("tfstateSecretSuffix") or "")


async def _alive(ctx: Context, wanted: set[str]) -> set[str]:
    """The UIDs of the requests that exist, at least those of ``wanted`` that do. From the informer
    cache when it knows every one of them (an idle operator lists no ServiceRequests: a full list of
    5,000 is 30 MB to parse every minute); from the API server when it misses one, which is then a
    request either a moment old or really gone, and only the API server can tell which."""
    cached = lookup.cached_list(ctx, "requests")
    if cached is not None:
        alive = {str(r["metadata"].get("uid")) for r in cached}
        if wanted <= alive:
            return alive
    return {str(r["metadata"]["uid"]) for r in await ctx.client.list(SERVICEREQUESTS)}


class Sweeper:
    """Finds leftover state, destroys what it can, reports the rest (see the module docstring)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._wake = asyncio.Event()
        self._attempts: dict[str, tuple[int, float, str]] = {}  # uid -> (failures, next try, last message)

    def wake(self) -> None:
        """Look now (a request just disappeared)."""
        self._wake.set()

    async def run_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # the next look retries; a broken sweep must not end the loop
                logger.warning("looking for leftover state failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.ctx.settings.leftover_check_seconds)
            self._wake.clear()

    async def sweep(self) -> dict[str, LeftoverView]:
        """One look at every state Secret; returns what is still left (also given to the metrics)."""
        ctx = self.ctx
        # States first, then requests: a state is written only while its request exists, so a state
        # whose request is missing from the later list really has lost it.
        states = await ctx.client.list(SECRET, ctx.settings.namespace, label_selector="tfstate=true")
        alive = await _alive(ctx, {_suffix(state) for state in states} - {""})
        left: dict[str, LeftoverView] = {}
        for state in states:
            uid = _suffix(state)
            if not uid or uid in alive:
                continue
            view = _view(state)
            if view.reason == ORPHANED and self._due(uid) and await self._clean(uid, state):
                continue
            left[uid] = view
        before = dict(ctx.metrics.inventory.leftovers)
        ctx.metrics.inventory.set_leftovers(left)
        changed = {v.namespace for uid, v in (before | left).items() if before.get(uid) != left.get(uid)}
        for namespace in sorted(n for n in changed if n):
            await refresh_environment_cost(ctx, namespace)  # the leftover's cost joins or leaves its budget
        return left

    def _due(self, uid: str) -> bool:
        return self._attempts.get(uid, (0, 0.0, ""))[1] <= time.monotonic()

    async def _clean(self, uid: str, state: JSON) -> bool:
        """Destroy an orphaned state; True once it is gone."""
        request = _subject(state, uid)
        try:
            seconds = await self._destroy(uid, state, request)
        except _NotDestroyed as why:
            await self._failed(uid, request, str(why))
            return False
        self._attempts.pop(uid, None)
        message = (
            f"destroyed what ServiceRequest {request['metadata']['namespace']}/{request['metadata']['name']} left "
            f"behind when it went without a destroy ({request['spec']['goldenPath']}, {seconds:.1f}s)"
        )
        logger.info("%s", message)
        await events.post_event(
            self.ctx.client, await self._about(request, state), events.NORMAL, Reason.LEFTOVER_DESTROYED, message
        )
        return True

    async def _failed(self, uid: str, request: JSON, why: str) -> None:
        failures, _, last = self._attempts.get(uid, (0, 0.0, ""))
        delay = min(RETRY_CAP, self.ctx.settings.leftover_check_seconds * 2**failures)
        self._attempts[uid] = (failures + 1, time.monotonic() + delay, why)
        if why == last:
            return  # said once; the gauge keeps counting it
        meta = request["metadata"]
        message = (
            f"what ServiceRequest {meta['namespace']}/{meta['name']} left behind (it went without a destroy) could "
            f"not be destroyed: {why}; retrying in {delay:.0f}s, its cost still counts"
        )
        logger.warning("%s", message)
        state = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"tfstate-default-{uid}", "namespace": self.ctx.settings.namespace},
        }
        await events.post_event(
            self.ctx.client, await self._about(request, state), events.WARNING, Reason.LEFTOVER_NOT_DESTROYED, message
        )

    async def _about(self, request: JSON, state: JSON) -> JSON:
        """What an Event is about: the request, in its namespace if that still exists, else its state Secret."""
        namespace = request["metadata"]["namespace"]
        if namespace and await self.ctx.client.get(NAMESPACE, namespace) is not None:
            return request
        return {"apiVersion": "v1", "kind": "Secret", "metadata": dict(state.get("metadata") or {})}

    async def _destroy(self, uid: str, state: JSON, request: JSON) -> float:
        """Run destroy for the orphaned state as a deletion of its request would; the seconds it took."""
        ctx = self.ctx
        view = views.request_view(request)
        ref = state_of(ctx.settings.namespace, uid)
        started = time.monotonic()
        if state_resources(state):
            inputs = await self._inputs(view, request, state)
            run = RunInfo(id=secrets.token_hex(6), operation="destroy", lock_id=new_lock_id())
            try:
                async with ctx.lock(f"leftover/{uid}"), statelock.held(ctx, view, ref, run, set()):
                    # The run slots every run shares (the team's and the cluster's), held to the end.
                    slot = runs.RunSlot(ctx, inputs.environment.team or "")
                    try:
                        identity = RunIdentity(id=run.id, lock_id=run.lock_id or "", operation="destroy")
                        runner = await ctx.runners.open(inputs.target, slot, identity)
                        ending: Ending = "failed"
                        try:
                            init = await runner.init()
                            done = init if not init.ok else await runner.destroy()
                            ending = "succeeded" if done.ok else "failed"
                        finally:
                            await asyncio.shield(runner.close(ending))
                    finally:
                        slot.release()
            except statelock.StateLockedError as locked:
                raise _NotDestroyed(locked.detail) from None
            except ModuleRefused as refused:
                raise _NotDestroyed(f"{refused.reason}: {refused.message}") from None
            if not done.ok:
                raise _NotDestroyed(tail(done.detail, lines=4, limit=600))
        await statelock.forget(ctx, view, ref, set())
        await ctx.runners.discard(view.key)
        return time.monotonic() - started

    async def _inputs(self, view: views.RequestView, request: JSON, state: JSON) -> Inputs:
        """What its runs worked on, from the record on its state: the golden path (it must still exist)
        at the revision it ran (today's if that is no longer kept, as a deletion does), the environment
        as it was, the module variables as they were."""
        annotations = (state.get("metadata") or {}).get("annotations") or {}
        if view.spec.golden_path == "unknown":
            raise _NotDestroyed("its state carries no record of its golden path; destroy it by hand")
        exists, golden = await lookup.golden_path(self.ctx, view.spec.golden_path)
        if golden is None:
            words = "cannot be read" if exists else "no longer exists"
            raise _NotDestroyed(f"golden path {view.spec.golden_path!r} {words}; re-create it so its module can run")
        with contextlib.suppress(Failure):
            golden = await revisions.at_revision(self.ctx, request, golden)
        env = views.EnvironmentRef(
            body={"metadata": {"name": annotations.get(ENVIRONMENT, "")}, "spec": {}},
            name=str(annotations.get(ENVIRONMENT) or ""),
            team=annotations.get(TEAM) or None,
            tier=annotations.get(TIER) or None,
        )
        # The recorded variables as parameters: the standard ones (name, uid, ...) are rebuilt the same.
        recorded = json.loads(annotations.get(VARIABLES) or "{}")
        try:
            return await resolve(self.ctx, view, env, golden, recorded)
        except Failure as missing:  # the module or the credentials Secret is gone
            raise _NotDestroyed(missing.message) from None


def _subject(state: JSON, uid: str) -> JSON:
    """The request a state belonged to, rebuilt from what :func:`record` wrote on it."""
    annotations = (state.get("metadata") or {}).get("annotations") or {}
    namespace, _, name = str(annotations.get(REQUEST) or "/").partition("/")
    return {
        "apiVersion": API_VERSION,
        "kind": "ServiceRequest",
        "metadata": {
            "name": name or f"unknown-{uid[:8]}",
            "namespace": namespace,
            "uid": uid,
            "creationTimestamp": str(annotations.get(CREATED) or "1970-01-01T00:00:00Z"),
        },
        "spec": {"goldenPath": str(annotations.get(GOLDEN_PATH) or "unknown")},
        "status": {"revision": int(revision)} if (revision := str(annotations.get(REVISION) or "")).isdigit() else {},
    }
