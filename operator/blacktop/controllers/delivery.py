"""Delivering a request's connection Secret, without ever taking over a Secret that is not the request's.

Server-side apply with force would overwrite any Secret of that name and make the request its
controller owner, so the user's Secret would be garbage-collected with the request, and two
requests naming one Secret would overwrite each other. Admission refuses a connectionSecretName
naming an existing Secret the request does not own; this is the same rule at delivery time, for a
Secret that appeared after admission: a conflict, reported in status (SecretConflict), and the
Secret left untouched.
"""

from __future__ import annotations

from typing import Any

from blacktop.builders import naming
from blacktop.controllers.context import Context
from blacktop.kube.resources import resource_for

JSON = dict[str, Any]
SECRET = resource_for("v1", "Secret")


async def conflict(ctx: Context, secret: JSON, owner_uid: str) -> str | None:
    """Why ``secret`` may not be written (a Secret of that name exists and is not the owner's), or None."""
    meta = secret["metadata"]
    existing = await ctx.client.get(SECRET, meta["name"], meta["namespace"])
    if existing is None or naming.is_owned_by(existing, owner_uid):
        return None
    return (
        f"Secret {meta['name']} already exists in namespace {meta['namespace']} and does not belong to this "
        "ServiceRequest, so Blacktop left it untouched and delivered nothing: delete or rename that Secret (the "
        "request retries by itself), or recreate the request with another connectionSecretName"
    )


async def deliver(ctx: Context, secret: JSON, owner_uid: str) -> str | None:
    """Apply ``secret`` unless that would take over someone else's; the conflict, or None once delivered."""
    if problem := await conflict(ctx, secret, owner_uid):
        return problem
    await ctx.client.apply(secret)
    return None
