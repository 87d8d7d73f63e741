"""An Environment's monthly cost, kept current as its ServiceRequests come, change price and go.

The Environment reconciler computes the same sum on every reconcile (and its periodic resync);
this refresh runs when a ServiceRequest's ``status.monthlyCost`` changes (or what requests that went
without a destroy left behind does), so budgets in status and in guardrail policies never lag a
resync behind. It writes only ``status.cost``, under the
environment's lock, and only when the sum changed.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from blacktop.api.environment import EnvironmentCost, EnvironmentSpec, EnvironmentStatus
from blacktop.builders import cost as cost_model
from blacktop.controllers import lookup
from blacktop.controllers.context import Context
from blacktop.controllers.tracker import StatusTracker
from blacktop.kube.resources import ENVIRONMENTS, SERVICEREQUESTS

JSON = dict[str, Any]


def price_changed(ctx: Context, request: JSON, *, deleted: bool) -> bool:
    """Whether this request event may change its environment's cost (remembering, in ``ctx.prices``,
    the last price seen per request: most request events are progress in status and change none)."""
    uid = str(request.get("metadata", {}).get("uid"))
    seen = ctx.prices
    if deleted:
        seen.pop(uid, None)
        return True
    cost = (request.get("status") or {}).get("monthlyCost")
    if uid in seen and seen[uid] == cost:
        return False
    seen[uid] = cost
    return True


async def refresh_environment_cost(
    ctx: Context, namespace: str, changed: JSON | None = None, *, deleted: bool = False
) -> EnvironmentCost | None:
    """Recompute the cost of the Environment owning ``namespace`` and write it if it changed.
    ``changed``: the request whose event asked for it (as the event saw it, so a cache a few
    milliseconds behind still sums its new price)."""
    env_name = await lookup.environment_name_of(ctx, namespace)
    if not env_name:
        return None
    async with ctx.lock(f"Environment/{env_name}"):
        env = await ctx.client.get(ENVIRONMENTS, env_name)
        if env is None or env["metadata"].get("deletionTimestamp"):
            return None
        try:
            spec = EnvironmentSpec.model_validate(env.get("spec") or {})
        except ValidationError:
            return None
        requests = lookup.cached_list(ctx, "requests", namespace)
        if requests is None:
            requests = await ctx.client.list(SERVICEREQUESTS, namespace)
        elif changed is not None:
            uid = (changed.get("metadata") or {}).get("uid")
            requests = [r for r in requests if (r.get("metadata") or {}).get("uid") != uid]
            requests += [] if deleted else [changed]
        cost = cost_model.environment_cost(spec, requests, ctx.metrics.inventory.leftover_cents(namespace))
        tracker = StatusTracker(env, EnvironmentStatus, now=ctx.now())
        tracker.status.cost = cost  # no condition is judged: observedGeneration stays the reconciler's
        await tracker.write(ctx.client, ENVIRONMENTS)
        return cost
