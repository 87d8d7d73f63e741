"""Delivering what a run produced: the request's connection Secret, from the module's outputs.

Provisioning delivers after every apply; a drift correction delivers again, since a re-created
resource may have new outputs (a new password).
"""

from __future__ import annotations

from typing import Any

from blacktop.builders import servicerequest as builders
from blacktop.controllers.context import Context
from blacktop.controllers.inputs import Inputs

JSON = dict[str, Any]


async def deliver(ctx: Context, inputs: Inputs, outputs: dict[str, tuple[Any, bool]]) -> JSON:
    """Apply the connection Secret with the outputs the golden path delivers; returns it."""
    golden = inputs.golden_path
    secret = builders.build_connection_secret(inputs.request.body, golden.name, golden.spec, outputs)
    await ctx.client.apply(secret)
    return secret
