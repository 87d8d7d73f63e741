"""Which Environment a namespace belongs to: the label Blacktop puts on the namespaces it creates.

Provisioning, drift checks, admission reviews and the cost refresh all start from a namespace.
"""

from __future__ import annotations

from typing import Any

from blacktop.builders import naming
from blacktop.controllers.context import Context
from blacktop.kube.resources import ENVIRONMENTS, resource_for

JSON = dict[str, Any]
NAMESPACE = resource_for("v1", "Namespace")


async def environment_name_of(ctx: Context, namespace: str) -> str | None:
    """The name of the Environment owning ``namespace``, if it is one of ours."""
    ns = await ctx.client.get(NAMESPACE, namespace)
    name = ((ns or {}).get("metadata", {}).get("labels") or {}).get(naming.LABEL_ENVIRONMENT)
    return str(name) if name else None


async def environment_of(ctx: Context, namespace: str) -> JSON | None:
    """The Environment owning ``namespace`` (None: not an environment's namespace, or gone)."""
    name = await environment_name_of(ctx, namespace)
    return await ctx.client.get(ENVIRONMENTS, name) if name else None
