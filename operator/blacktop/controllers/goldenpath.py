"""The GoldenPath reconciler: is this catalog entry usable, and if not, why not; which revision is it at.

It finds the module (under the operator's modules root, or in git at the commit its ref resolves to),
parses every file OpenTofu would read (nested local modules included), refuses forbidden constructs,
remote module sources, symlinks out of the modules root and providers outside the allow-list, checks
the parameter schema is a valid JSON Schema that declares none of the identity variables Blacktop
sets itself, that declared outputs exist, that the cost model names a real parameter and that the
credentials Secret is in the operator's namespace (the only one whose Secrets it may read), and
counts its requests. A module that passes becomes a new GoldenPathRevision when what runs changed
(controllers.revisions); one that fails never does, so nothing ever runs it. A git server that
cannot be reached leaves a Ready golden path Ready on its last revision (Validated Unknown says
why): re-checking never takes a working catalog entry away.
"""

from __future__ import annotations

import logging
from typing import Any

from jsonschema import SchemaError
from jsonschema.validators import validator_for
from pydantic import ValidationError

from blacktop.api.conditions import ConditionType, Reason, is_true
from blacktop.api.goldenpath import GoldenPathSpec, GoldenPathStatus
from blacktop.builders.parameters import identity_problem
from blacktop.controllers import lookup, modulesource, revisions
from blacktop.controllers.context import Context
from blacktop.controllers.tracker import StatusTracker
from blacktop.kube.resources import GOLDENPATHS
from blacktop.terraform import module as modules
from blacktop.terraform.findings import disallowed_providers
from blacktop.terraform.sources import SourceError

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


def credentials_problem(spec: GoldenPathSpec, operator_namespace: str) -> str | None:
    """Why the credentials Secret cannot be used: it must be in the operator's namespace. Pure."""
    ref = spec.credentials_secret_ref
    if not operator_namespace or ref is None or ref.namespace == operator_namespace:
        return None
    return (
        f"credentialsSecretRef must name a Secret in the operator's namespace {operator_namespace!r} "
        f"(not {ref.namespace!r}): it is the only namespace whose Secrets Blacktop reads"
    )


def spec_problems(spec: GoldenPathSpec, outputs: set[str], operator_namespace: str = "") -> list[str]:
    """Inconsistencies between the spec and its module or schema. Pure."""
    problems = [
        f"output {o.name!r} is not an output of module {spec.module!r}" for o in spec.outputs if o.name not in outputs
    ]
    properties = spec.parameters.get("properties", {})
    if isinstance(properties, dict) and (problem := identity_problem(properties)):
        problems.append(f"the parameters schema declares a parameter Blacktop sets itself: {problem}")
    if problem := credentials_problem(spec, operator_namespace):
        problems.append(problem)
    if spec.cost and spec.cost.parameter:
        if spec.cost.parameter not in properties:
            problems.append(f"cost.parameter {spec.cost.parameter!r} is not a parameter in the schema")
        else:
            allowed = properties[spec.cost.parameter].get("enum")
            missing = sorted(set(allowed or []) - set(spec.cost.table)) if allowed else []
            if missing:
                problems.append(f"cost.table has no price for {spec.cost.parameter} = {', '.join(map(str, missing))}")
    return problems


async def requests_of(ctx: Context, name: str) -> list[JSON]:
    """The ServiceRequests naming this golden path, in every namespace (the informer's copies once
    it has synced: read-only)."""
    requests = await lookup.listed(ctx, "requests")
    return [r for r in requests if (r.get("spec") or {}).get("goldenPath") == name]


def _source_words(spec: GoldenPathSpec) -> str:
    return f"module {spec.module}" + (f" at {spec.git.ref} of {spec.git.url}" if spec.git else "")


async def reconcile_golden_path(ctx: Context, body: JSON) -> GoldenPathStatus:
    """Validate one GoldenPath, publish a revision when what runs changed, write its status."""
    # Fresh, not Kopf's copy: the rollout writes this status too (status.rollout), under the same lock.
    body = await ctx.client.get(GOLDENPATHS, body["metadata"]["name"]) or body
    tracker = StatusTracker(body, GoldenPathStatus, now=ctx.now())
    name = body["metadata"]["name"]
    try:
        spec = GoldenPathSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        tracker.not_ready(Reason.INVALID_SPEC, f"spec is invalid: {exc.errors()[0]['msg']}", stalled=True)
        return await tracker.write(ctx.client, GOLDENPATHS)

    requests = await requests_of(ctx, name)
    tracker.status.requests = len(requests)
    try:
        found = await modulesource.inspect(ctx, spec)
    except modules.ModuleError as exc:
        return await _unavailable(ctx, tracker, spec, exc)

    tracker.status.module_digest = found.info.digest
    tracker.status.providers = sorted(found.info.findings.providers)
    failures = _failures(ctx, spec, found)
    if failures:
        reason, message = failures[0]
        message = "; ".join(m for _, m in failures)
        tracker.set(ConditionType.VALIDATED, False, reason, message)
        tracker.not_ready(reason, message, stalled=True)
        return await tracker.write(ctx.client, GOLDENPATHS)

    latest, known = await revisions.publish(ctx, body, spec, found, requests)
    tracker.status.latest_revision = latest.revision
    tracker.status.commit = found.commit
    providers = ", ".join(tracker.status.providers) or "no providers"
    source = _source_words(spec) + (f" (commit {found.commit[:12]})" if found.commit else "")
    tracker.set(ConditionType.VALIDATED, True, Reason.RECONCILED, f"{source} ({providers}) is valid")
    target = revisions.target_of(spec, known)
    if target not in {r.revision for r in known}:
        kept = ", ".join(str(r.revision) for r in known)
        message = f"spec.rollout.revision {target} does not exist (revisions kept: {kept}); name one of them"
        tracker.not_ready(Reason.REVISION_NOT_FOUND, message, stalled=True)
        return await tracker.write(ctx.client, GOLDENPATHS)
    tracker.ready(
        f"available: {source} ({providers}), revision {latest.revision}, {tracker.status.requests} request(s)",
        Reason.RECONCILED,
    )
    return await tracker.write(ctx.client, GOLDENPATHS)


def _failures(ctx: Context, spec: GoldenPathSpec, found: modulesource.Found) -> list[tuple[str, str]]:
    """Why this module may not be published, as (reason, message) pairs; empty when it may."""
    info = found.info
    failures: list[tuple[str, str]] = []
    if info.findings.violations:
        failures.append((Reason.FORBIDDEN_PROVISIONER, "; ".join(info.findings.violations)))
    if bad := disallowed_providers(info.findings.providers, ctx.settings.allowed_providers):
        allowed = ", ".join(ctx.settings.allowed_providers)
        failures.append((Reason.PROVIDER_NOT_ALLOWED, f"provider(s) {', '.join(bad)} not allowed (allowed: {allowed})"))
    if problem := schema_problem(spec.parameters):
        failures.append((Reason.INVALID_SCHEMA, problem))
    if problems := spec_problems(spec, info.findings.outputs, ctx.settings.namespace):
        failures.append((Reason.INVALID_SPEC, "; ".join(problems)))
    return failures


async def _unavailable(
    ctx: Context, tracker: StatusTracker[GoldenPathStatus], spec: GoldenPathSpec, exc: modules.ModuleError
) -> GoldenPathStatus:
    """The module cannot be read. A git source whose latest revision is still what the spec names
    stays Ready on it (the server may be down for a while); anything else is not Ready."""
    if isinstance(exc, SourceError):
        known = await revisions.history(ctx, tracker.body)
        latest = known[-1] if known else None
        same = (
            latest is not None
            and latest.git is not None
            and spec.git is not None
            and (latest.git.url, latest.git.ref, latest.module) == (spec.git.url, spec.git.ref, spec.module)
        )
        was_ready = is_true(tracker.status.conditions, ConditionType.READY)
        if same and was_ready and latest is not None:
            tracker.set(
                ConditionType.VALIDATED,
                None,
                Reason.SOURCE_UNAVAILABLE,
                f"{exc}; still serving revision {latest.revision}",
            )
            return await tracker.write(ctx.client, GOLDENPATHS)
        tracker.set(ConditionType.VALIDATED, False, Reason.SOURCE_UNAVAILABLE, str(exc))
        tracker.not_ready(Reason.SOURCE_UNAVAILABLE, str(exc), stalled=False)  # retried at the next resync
        return await tracker.write(ctx.client, GOLDENPATHS)
    tracker.status.module_digest = None
    tracker.status.providers = []
    reason = Reason.MODULE_OUTSIDE_ROOT if isinstance(exc, modules.ModuleEscapeError) else Reason.MODULE_NOT_FOUND
    tracker.set(ConditionType.VALIDATED, False, reason, str(exc))
    tracker.not_ready(reason, str(exc), stalled=True)
    return await tracker.write(ctx.client, GOLDENPATHS)
