"""Finding what an object refers to: the Environment a namespace belongs to (the label Blacktop puts
on the namespaces it creates), and a request's GoldenPath, decoded into views.

Provisioning, drift checks, admission reviews and the cost refresh all start from a namespace.
Reads come from the replica's informer cache (``ctx.cache``, :mod:`blacktop.kube.informer`) once it
has synced, and from the API server before that, or when the cache does not know the object (it may
be milliseconds old).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from blacktop.builders import naming
from blacktop.controllers import views
from blacktop.controllers.context import Context
from blacktop.kube.resources import (
    ENVIRONMENTS,
    GOLDENPATHS,
    GUARDRAILPOLICIES,
    SERVICEREQUESTS,
    Resource,
    resource_for,
)

JSON = dict[str, Any]
NAMESPACE = resource_for("v1", "Namespace")
# The informer cache's kinds (ClusterCache attributes) and what the API server lists instead.
_LISTED: dict[str, Resource] = {
    "golden_paths": GOLDENPATHS,
    "policies": GUARDRAILPOLICIES,
    "environments": ENVIRONMENTS,
    "requests": SERVICEREQUESTS,
}


async def environment_name_of(ctx: Context, namespace: str) -> str | None:
    """The name of the Environment owning ``namespace``, if it is one of ours."""
    if ctx.cache is not None and ctx.cache.namespaces.synced.is_set():
        cached = ctx.cache.environment_name_of(namespace)
        if cached:
            return cached
    ns = await ctx.client.get(NAMESPACE, namespace)
    name = ((ns or {}).get("metadata", {}).get("labels") or {}).get(naming.LABEL_ENVIRONMENT)
    return str(name) if name else None


async def environment_of(ctx: Context, namespace: str) -> JSON | None:
    """The Environment owning ``namespace`` (None: not an environment's namespace, or gone)."""
    name = await environment_name_of(ctx, namespace)
    if not name:
        return None
    return _cached(ctx, "environments", name) or await ctx.client.get(ENVIRONMENTS, name)


async def environment_ref(ctx: Context, namespace: str) -> views.EnvironmentRef | None:
    """The Environment owning ``namespace``, as a request sees it."""
    env = await environment_of(ctx, namespace)
    return views.environment_ref(env) if env is not None else None


async def golden_path(ctx: Context, name: str) -> tuple[bool, views.GoldenPathView | None]:
    """(whether the GoldenPath exists, its view; None when missing or its spec does not decode: its
    own status says what is wrong with it)."""
    body = _cached(ctx, "golden_paths", name) or await ctx.client.get(GOLDENPATHS, name)
    if body is None:
        return False, None
    try:
        return True, views.golden_path_view(body)
    except ValidationError:
        return True, None


def _cached(ctx: Context, kind: str, name: str) -> JSON | None:
    """The informer cache's copy of a cluster-scoped object (read-only), if it has one."""
    informer = getattr(ctx.cache, kind, None) if ctx.cache is not None else None
    if informer is None or not informer.synced.is_set():
        return None
    found: JSON | None = informer.get(name)
    return found


def cached_list(ctx: Context, kind: str, namespace: str | None = None) -> list[JSON] | None:
    """The informer cache's copies of every object of ``kind`` (read-only), None until it has synced."""
    informer = getattr(ctx.cache, kind, None) if ctx.cache is not None else None
    if informer is None or not informer.synced.is_set():
        return None
    found: list[JSON] = informer.objects(namespace)
    return found


async def listed(ctx: Context, kind: str, namespace: str | None = None) -> list[JSON]:
    """Every object of ``kind`` (of ``namespace``): the informer cache's copies (read-only) once it has
    synced, else one list from the API server."""
    cached = cached_list(ctx, kind, namespace)
    if cached is not None:
        return cached
    return await ctx.client.list(_LISTED[kind], namespace)
