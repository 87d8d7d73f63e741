"""Delivering what a run produced: the request's connection Secret, from the module's outputs.

Provisioning delivers after every apply; a drift correction delivers again, since a re-created
resource may have new outputs (a new password).

A Secret of that name that is not the request's is never touched. Server-side apply with force would
overwrite it and make the request its controller owner, so the user's Secret would be
garbage-collected with the request, and two requests naming one Secret would overwrite each other.
Admission refuses a connectionSecretName naming an existing Secret the request does not own; this
is the same rule at delivery time, for a Secret that appeared after admission: :class:`SecretTaken`,
which the caller reports in status (SecretConflict).
"""

from __future__ import annotations

from typing import Any

from blacktop.builders import naming
from blacktop.builders import servicerequest as builders
from blacktop.controllers.context import Context
from blacktop.controllers.inputs import Inputs
from blacktop.kube.resources import resource_for

JSON = dict[str, Any]
SECRET = resource_for("v1", "Secret")


class SecretTaken(Exception):  # noqa: N818 (what happened: the name is taken)
    """The connection Secret's name belongs to a Secret that is not the request's; the message says so."""


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


async def deliver(ctx: Context, inputs: Inputs, outputs: dict[str, tuple[Any, bool]]) -> JSON:
    """Apply the connection Secret with the outputs the golden path delivers; returns it. Raises
    SecretTaken, writing nothing, when a Secret of that name is someone else's."""
    golden = inputs.golden_path
    secret = builders.build_connection_secret(inputs.request.body, golden.name, golden.spec, outputs)
    if problem := await conflict(ctx, secret, inputs.request.uid):
        raise SecretTaken(problem)
    await ctx.client.apply(secret)
    return secret
