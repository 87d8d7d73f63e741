"""The GoldenPath reconciler: is this catalog entry usable, and if not, why not.

It resolves the module under the operator's modules root, parses it, refuses forbidden constructs
and providers outside the allow-list, checks the parameter schema is a valid JSON Schema, that
declared outputs exist and that the cost model names a real parameter, and counts its requests.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from jsonschema import SchemaError
from jsonschema.validators import validator_for
from pydantic import ValidationError

from blacktop.api.conditions import ConditionType, Reason
from blacktop.api.goldenpath import GoldenPathSpec, GoldenPathStatus
from blacktop.controllers import lookup
from blacktop.controllers.context import Context
from blacktop.controllers.tracker import StatusTracker
from blacktop.kube.resources import GOLDENPATHS, SERVICEREQUESTS
from blacktop.terraform import module as modules
from blacktop.terraform.findings import disallowed_providers

logger = logging.getLogger(__name__)

JSON = dict[str, Any]


def schema_problem(schema: JSON) -> str | None:
    """Why a parameter schema is unusable, or None. Pure."""
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        return f"parameters is not a valid JSON Schema at {where}: {exc.message}"
    if schema.get("type", "object") != "object":
        return "parameters must describe an object (type: object), since parameters are named"
    return None


def spec_problems(spec: GoldenPathSpec, outputs: set[str]) -> list[str]:
    """Inconsistencies between the spec and its module or schema. Pure."""
    problems = [
        f"output {o.name!r} is not an output of module {spec.module!r}" for o in spec.outputs if o.name not in outputs
    ]
    properties = spec.parameters.get("properties", {})
    if spec.cost and spec.cost.parameter:
        if spec.cost.parameter not in properties:
            problems.append(f"cost.parameter {spec.cost.parameter!r} is not a parameter in the schema")
        else:
            allowed = properties[spec.cost.parameter].get("enum")
            missing = sorted(set(allowed or []) - set(spec.cost.table)) if allowed else []
            if missing:
                problems.append(f"cost.table has no price for {spec.cost.parameter} = {', '.join(map(str, missing))}")
    return problems


async def _request_count(ctx: Context, name: str) -> int:
    requests = lookup.cached_list(ctx, "requests")
    if requests is None:
        requests = await ctx.client.list(SERVICEREQUESTS)
    return sum(1 for r in requests if (r.get("spec") or {}).get("goldenPath") == name)


async def reconcile_golden_path(ctx: Context, body: JSON) -> GoldenPathStatus:
    """Validate one GoldenPath and write its status. Safe to call any time."""
    tracker = StatusTracker(body, GoldenPathStatus, now=ctx.now())
    name = body["metadata"]["name"]
    try:
        spec = GoldenPathSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        tracker.not_ready(Reason.INVALID_SPEC, f"spec is invalid: {exc.errors()[0]['msg']}", stalled=True)
        return await tracker.write(ctx.client, GOLDENPATHS)

    tracker.status.requests = await _request_count(ctx, name)
    try:
        # Hashing files (and parsing HCL when they changed) is blocking work: keep it off the event loop.
        info = await asyncio.to_thread(ctx.modules.inspect, spec.module)
    except modules.ModuleError as exc:
        tracker.status.module_digest = None
        tracker.status.providers = []
        tracker.set(ConditionType.VALIDATED, False, Reason.MODULE_NOT_FOUND, str(exc))
        tracker.not_ready(Reason.MODULE_NOT_FOUND, str(exc), stalled=True)
        return await tracker.write(ctx.client, GOLDENPATHS)

    tracker.status.module_digest = info.digest
    tracker.status.providers = sorted(info.findings.providers)
    failures: list[tuple[str, str]] = []
    if info.findings.violations:
        failures.append((Reason.FORBIDDEN_PROVISIONER, "; ".join(info.findings.violations)))
    if bad := disallowed_providers(info.findings.providers, ctx.settings.allowed_providers):
        allowed = ", ".join(ctx.settings.allowed_providers)
        failures.append((Reason.PROVIDER_NOT_ALLOWED, f"provider(s) {', '.join(bad)} not allowed (allowed: {allowed})"))
    if problem := schema_problem(spec.parameters):
        failures.append((Reason.INVALID_SCHEMA, problem))
    if problems := spec_problems(spec, info.findings.outputs):
        failures.append((Reason.INVALID_SPEC, "; ".join(problems)))

    if failures:
        reason, message = failures[0]
        message = "; ".join(m for _, m in failures)
        tracker.set(ConditionType.VALIDATED, False, reason, message)
        tracker.not_ready(reason, message, stalled=True)
    else:
        providers = ", ".join(tracker.status.providers) or "no providers"
        tracker.set(ConditionType.VALIDATED, True, Reason.RECONCILED, f"module {spec.module} ({providers}) is valid")
        tracker.ready(
            f"available: module {spec.module} ({providers}), {tracker.status.requests} request(s)", Reason.RECONCILED
        )
    return await tracker.write(ctx.client, GOLDENPATHS)
