"""The Environment reconciler: namespace, quota, limits, network policy and RBAC, kept converged.

Level-based and idempotent: every call computes the desired children from the spec, server-side
applies them under one field manager, removes what must not exist, and writes a status that says in
plain words what happened. It is called on create, update, resume, a periodic resync, and whenever a
child is edited or deleted behind our back.

An Environment with a reserved name (the operator's or the monitoring namespace, Kubernetes' own,
the platform team's list) gets nothing at all, even if it got past admission (ReservedName). The
operator's rights inside the namespace come from a RoleBinding it makes there right after the
namespace (builders/rbac.py, operator_environment_cluster_role); the children after it wait until
the binding is in force, instead of failing once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from blacktop.api.common import format_time, parse_time
from blacktop.api.conditions import ConditionType, Reason
from blacktop.api.environment import (
    EXPIRING_WITHIN,
    EnvironmentCost,
    EnvironmentSpec,
    EnvironmentStatus,
    parse_duration,
)
from blacktop.builders import cost as cost_model
from blacktop.builders import environment as builders
from blacktop.builders import naming
from blacktop.controllers import lookup, monitoring, notifications
from blacktop.controllers.context import Context
from blacktop.controllers.failures import Failure
from blacktop.controllers.tracker import StatusTracker
from blacktop.guardrails import boundaries
from blacktop.kube import events
from blacktop.kube.errors import ForbiddenError, KubeApiError
from blacktop.kube.resources import ENVIRONMENTS, SERVICEREQUESTS, resource_for

logger = logging.getLogger(__name__)

JSON = dict[str, Any]


def expires_at(env: JSON, spec: EnvironmentSpec) -> datetime | None:
    """When an environment's TTL runs out (creation time + ttl), or None without a TTL."""
    if not spec.ttl:
        return None
    created = parse_time(env["metadata"]["creationTimestamp"])
    return created + parse_duration(spec.ttl)


def is_expired(env: JSON, spec: EnvironmentSpec, now: datetime) -> bool:
    """Whether the TTL has run out at ``now``."""
    deadline = expires_at(env, spec)
    return deadline is not None and now >= deadline


def _tracker(ctx: Context, env: JSON) -> StatusTracker[EnvironmentStatus]:
    return StatusTracker(env, EnvironmentStatus, now=ctx.now())


async def _namespace_conflict(ctx: Context, env: JSON) -> str | None:
    """A namespace of that name that we do not own must never be adopted (it may hold someone's data)."""
    ns_name = builders.namespace_name(env)
    existing = await ctx.client.get(resource_for("v1", "Namespace"), ns_name)
    if existing is None or naming.is_owned_by(existing, env["metadata"]["uid"]):
        return None
    return (
        f"namespace {ns_name!r} already exists and is not managed by this Environment; "
        "choose another Environment name or delete that namespace"
    )


ACCESS_SECONDS = 15.0


async def _await_access(ctx: Context, child: JSON) -> None:
    """Wait (with a deadline) until the API server lets the operator create ``child``: a RoleBinding
    just made takes a moment to reach the authorizer."""
    meta = child["metadata"]
    resource = resource_for(child["apiVersion"], child["kind"])
    group = child["apiVersion"].rpartition("/")[0]
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {
            "resourceAttributes": {
                "namespace": meta.get("namespace"),
                "verb": "patch",
                "group": group,
                "resource": resource.plural,
                "name": meta["name"],
            }
        },
    }
    deadline = time.monotonic() + ACCESS_SECONDS
    while time.monotonic() < deadline:
        answer = await ctx.client.create(review)
        if (answer.get("status") or {}).get("allowed"):
            return
        await asyncio.sleep(0.2)


async def _apply_child(ctx: Context, child: JSON) -> None:
    try:
        await ctx.client.apply(child)
    except ForbiddenError:
        await _await_access(ctx, child)  # our RoleBinding in the namespace may not be in force yet
        await ctx.client.apply(child)


def reserved_denial(ctx: Context, name: str) -> str | None:
    """Why no Environment may have this name (the settings' reserved names), or None."""
    settings = ctx.settings
    reserved = boundaries.reserved_names(
        settings.namespace, settings.monitoring_namespace, settings.reserved_namespaces
    )
    return boundaries.reserved_denial(name, reserved)


async def _cost(ctx: Context, spec: EnvironmentSpec, namespace: str) -> EnvironmentCost:
    """The environment's cost: its requests (the informer cache's copies when it has synced) and what
    requests that went without a destroy left behind."""
    try:
        requests = await lookup.listed(ctx, "requests", namespace)
    except KubeApiError:
        requests = []  # the cost is refreshed on the next reconcile; children and Ready matter more
    return cost_model.environment_cost(spec, requests, ctx.metrics.inventory.leftover_cents(namespace))


async def reconcile_environment(ctx: Context, env: JSON) -> EnvironmentStatus:
    """Converge one Environment (an object body) and write its status. Safe to call any time."""
    meta = env["metadata"]
    name = meta["name"]
    tracker = _tracker(ctx, env)
    if meta.get("deletionTimestamp"):
        return tracker.status  # the finalizer owns a deleting environment

    try:
        spec = EnvironmentSpec.model_validate(env.get("spec") or {})
    except ValidationError as exc:
        # The CRD schema should have caught this; say so rather than failing silently.
        message = f"spec is invalid: {exc.errors()[0]['msg']} at {'.'.join(map(str, exc.errors()[0]['loc']))}"
        tracker.not_ready(Reason.INVALID_SPEC, message, stalled=True)
        return await _finish(ctx, tracker)

    if reserved := reserved_denial(ctx, name):
        tracker.set(ConditionType.NAMESPACE_READY, False, Reason.RESERVED_NAME, reserved)
        tracker.not_ready(Reason.RESERVED_NAME, reserved, stalled=True)
        return await _finish(ctx, tracker)

    tracker.status.namespace = builders.namespace_name(env)
    deadline = expires_at(env, spec)
    tracker.status.expires_at = format_time(deadline) if deadline else None
    if deadline and deadline - tracker.now <= EXPIRING_WITHIN:
        # Checked on every reconcile (and resync), so it turns True within a resync of the 24 h mark.
        tracker.set(
            ConditionType.EXPIRING,
            True,
            Reason.EXPIRING_SOON,
            f"the TTL runs out at {format_time(deadline)}, within 24 hours: the environment, its service "
            "requests and what they provisioned will then be deleted; raise spec.ttl to keep it longer",
        )
    else:
        tracker.clear(ConditionType.EXPIRING)

    conflict = await _namespace_conflict(ctx, env)
    if conflict:
        tracker.set(ConditionType.NAMESPACE_READY, False, Reason.NAMESPACE_CONFLICT, conflict)
        tracker.not_ready(Reason.NAMESPACE_CONFLICT, conflict, stalled=True)
        return await _finish(ctx, tracker)

    children = builders.build_children(
        env,
        spec,
        team_group=ctx.settings.team_group(spec.team),
        monitoring_namespace=ctx.settings.monitoring_namespace,
        operator_username=ctx.username,
    )
    for child in children.present:
        kind, child_name = child["kind"], child["metadata"]["name"]
        try:
            await _apply_child(ctx, child)
        except KubeApiError as exc:
            message = f"could not apply {kind} {child_name!r}: {exc.message}"
            logger.warning("environment %s: %s", name, message)
            tracker.not_ready(Reason.APPLY_CHILD_FAILED, message, stalled=False)
            await _finish(ctx, tracker)
            raise Failure(Reason.APPLY_CHILD_FAILED, message, delay=ctx.settings.blocked_retry_seconds) from exc
    for ref in children.absent:
        await ctx.client.delete(resource_for(ref.api_version, ref.kind), ref.name, ref.namespace)
    await monitoring.configure_environment(ctx, env, tracker)
    await _check_notifications(ctx, tracker, spec)

    tracker.status.cost = await _cost(ctx, spec, tracker.status.namespace)

    ns = tracker.status.namespace
    tracker.set(ConditionType.NAMESPACE_READY, True, Reason.RECONCILED, f"namespace {ns} exists")
    summary = (
        f"namespace {ns} is ready for team {spec.team} ({spec.tier.value}): quota cpu {spec.quota.cpu}, "
        f"memory {spec.quota.memory}, {spec.quota.pods} pods"
    )
    if deadline:
        summary += f"; expires at {format_time(deadline)}"
    tracker.ready(summary, Reason.RECONCILED)
    return await _finish(ctx, tracker)


async def _check_notifications(ctx: Context, tracker: StatusTracker[EnvironmentStatus], spec: EnvironmentSpec) -> None:
    """NotificationsConfigured says whether each channel's Secret is usable (never Ready's business: a
    missing chat hook must not make an environment unusable). Absent without channels."""
    if not spec.notifications:
        tracker.clear(ConditionType.NOTIFICATIONS_CONFIGURED)
        return
    try:
        problems = await notifications.team_channel_problems(ctx, tracker.status.namespace or "", spec)
    except KubeApiError as exc:
        problems = [f"the channels' Secrets could not be read: {exc.message}"]
    if problems:
        tracker.set(
            ConditionType.NOTIFICATIONS_CONFIGURED,
            False,
            Reason.NOTIFICATION_CHANNEL_INVALID,
            "; ".join(problems) + " (see the README, Notifications)",
        )
    else:
        names = ", ".join(c.name for c in spec.notifications)
        tracker.set(ConditionType.NOTIFICATIONS_CONFIGURED, True, Reason.RECONCILED, f"channels ready: {names}")


async def _finish(ctx: Context, tracker: StatusTracker[EnvironmentStatus]) -> EnvironmentStatus:
    return await tracker.write(ctx.client, ENVIRONMENTS)


async def reconcile_environment_by_name(ctx: Context, name: str) -> None:
    """Re-converge an environment after one of its children changed (no-op if it is gone)."""
    env = await ctx.client.get(ENVIRONMENTS, name)
    if env is None:
        return
    async with ctx.lock(f"Environment/{name}"):
        await reconcile_environment(ctx, env)


async def expire_if_due(ctx: Context, env: JSON) -> bool:
    """Delete an environment whose TTL has run out; True if it did. Its ServiceRequests go first,
    through the finalizer, so the infrastructure they made is destroyed, not orphaned."""
    if env["metadata"].get("deletionTimestamp"):
        return False
    try:
        spec = EnvironmentSpec.model_validate(env.get("spec") or {})
    except ValidationError:
        return False
    now = ctx.now()
    if not is_expired(env, spec, now):
        return False
    deadline = expires_at(env, spec)
    message = (
        f"TTL {spec.ttl} ran out at {format_time(deadline or now)}; deleting the environment, "
        "its service requests first"
    )
    logger.info("environment %s: %s", env["metadata"]["name"], message)
    await events.post_event(ctx.client, env, events.NORMAL, Reason.EXPIRED, message)
    await ctx.client.delete(ENVIRONMENTS, env["metadata"]["name"])
    return True


async def finalize_environment(ctx: Context, env: JSON) -> None:
    """Deletion: destroy the namespace's ServiceRequests first, then release the namespace.

    Returns when the finalizer may go; raises Failure while ServiceRequests are still being
    destroyed (the status says which ones it waits for).
    """
    ns = builders.namespace_name(env)
    namespace = await ctx.client.get(resource_for("v1", "Namespace"), ns)
    owned = namespace is not None and naming.is_owned_by(namespace, env["metadata"]["uid"])
    remaining: list[JSON] = await ctx.client.list(SERVICEREQUESTS, ns) if owned else []
    if remaining:
        for request in remaining:
            if not request["metadata"].get("deletionTimestamp"):
                await ctx.client.delete(SERVICEREQUESTS, request["metadata"]["name"], ns)
        names = ", ".join(sorted(r["metadata"]["name"] for r in remaining))
        tracker = _tracker(ctx, env)
        message = f"deleting: waiting for {len(remaining)} service request(s) to be destroyed: {names}"
        tracker.set(ConditionType.READY, False, Reason.WAITING_FOR_SERVICE_REQUESTS, message)
        tracker.set(ConditionType.RECONCILING, True, Reason.DELETING, message)
        await tracker.write(ctx.client, ENVIRONMENTS)
        raise Failure(Reason.WAITING_FOR_SERVICE_REQUESTS, message, delay=ctx.settings.deletion_poll_seconds)
    # The namespace is owned by the Environment: garbage collection deletes it once the Environment is
    # gone, so the operator needs no right to delete namespaces (it could otherwise delete any).
