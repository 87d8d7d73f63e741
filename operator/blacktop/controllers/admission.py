"""Admission reviews: what Blacktop answers when an object is created, changed or deleted.

Each review gathers what the decision needs (active policies, the request's environment and golden
path, its siblings for the budget) and lets the pure deciders in :mod:`blacktop.guardrails` decide;
the rules themselves run in worker processes under a deadline (controllers/evaluation.py). The
answer is a :class:`Review`: a denial line (or none) and warnings.

What is checked before any policy:

- Environments: reserved names on create; the team boundary on every operation, metadata-only
  changes and deletions included (the operator's own changes, such as its finalizer, pass).
- ServiceRequests: the bounds of the parameters and the identity variables they may not set; the
  connection Secret, which must not be someone else's; the abandon annotation, which only a
  platform admin may set.
- GuardrailPolicies must compile and stay under the estimated cost limit.
- GoldenPaths: the module's built-in protections (every file tofu reads, nested local modules,
  no remote sources, nothing pointing outside the modules root).

An update that leaves the spec alone (Kopf adding its finalizer, a label) is admitted once those
checks pass: a policy added later must not stop the operator from finishing or deleting what
already exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from blacktop.api.goldenpath import GoldenPathSpec
from blacktop.api.guardrailpolicy import RuleStage
from blacktop.builders import naming, parameters
from blacktop.builders.servicerequest import connection_secret_name
from blacktop.controllers import lookup
from blacktop.controllers.context import Context
from blacktop.controllers.environment import reserved_denial
from blacktop.controllers.guardrailpolicy import active_policies, record_in_background
from blacktop.guardrails import boundaries, context, engine
from blacktop.kube.errors import KubeApiError
from blacktop.kube.resources import GOLDENPATHS, SERVICEREQUESTS, resource_for
from blacktop.terraform import module as modules
from blacktop.terraform.findings import disallowed_providers

JSON = dict[str, Any]
SECRET = resource_for("v1", "Secret")


@dataclass
class Review:
    """The answer to one admission request."""

    denial: str | None = None
    warnings: list[str] = field(default_factory=list)


def spec_unchanged(body: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """An update that does not touch the spec (metadata, finalizers) needs no guardrail."""
    return old is not None and (old.get("spec") or {}) == (body.get("spec") or {})


def observe(ctx: Context, decision: engine.Decision) -> None:
    """Count each evaluated rule's outcome (dry runs too: they are decisions users see)."""
    for policy, rule, mode, outcome in decision.outcomes():
        ctx.metrics.observe_guardrail_decision(policy, rule, mode.value, outcome)


def _answer(decision: engine.Decision, ctx: Context, body: JSON, dryrun: bool) -> Review:
    observe(ctx, decision)
    if not dryrun:
        record_in_background(ctx, decision.recorded, body)
    review = Review(warnings=[v.text for v in decision.warnings])
    if decision.denials:
        review.denial = decision.denial_text()
    return review


def _by_operator(ctx: Context, userinfo: Mapping[str, Any] | None) -> bool:
    """Whether Blacktop itself asks (its finalizer, Kopf's annotations, a TTL deletion)."""
    return bool(ctx.username) and str((userinfo or {}).get("username") or "") == ctx.username


def _spec(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    spec = (obj or {}).get("spec")
    return spec if isinstance(spec, Mapping) else {}


async def review_environment(
    ctx: Context,
    body: JSON,
    old: JSON | None,
    userinfo: Mapping[str, Any] | None,
    *,
    dryrun: bool,
    operation: str = "CREATE",
) -> Review:
    """Reserved names, the team boundary (every operation), then the Admission-stage rules of the
    policies matching the environment (on create and spec changes)."""
    settings = ctx.settings
    name = str((body.get("metadata") or {}).get("name") or "")
    if operation == "CREATE" and (denial := reserved_denial(ctx, name)):
        return Review(denial=denial)
    if not _by_operator(ctx, userinfo):
        # The team that owns it decides: the stored object's on change and deletion.
        teams = {str(_spec(obj).get("team") or "") for obj in (old, body) if obj is not None}
        for team in sorted(teams):
            group = settings.team_group(team)
            if denial := boundaries.environment_denial(
                userinfo, team, group, settings.platform_admin_groups, operation
            ):
                return Review(denial=denial)
    if operation == "DELETE" or spec_unchanged(body, old):
        return Review()
    policies = await active_policies(ctx)
    variables = context.environment_variables(body, old, userinfo)
    decision = await ctx.evaluator.evaluate(policies, context.environment_subject(body), variables, RuleStage.ADMISSION)
    return _answer(decision, ctx, body, dryrun)


def _abandon_denial(ctx: Context, body: JSON, old: JSON | None, userinfo: Mapping[str, Any] | None) -> str | None:
    """Only a platform admin may ask Blacktop to leave a request's infrastructure behind."""

    def value(obj: Mapping[str, Any] | None) -> object:
        return (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(naming.ABANDON_ANNOTATION)

    if value(body) in (None, value(old)) or _by_operator(ctx, userinfo):
        return None
    if boundaries.is_admin(userinfo, ctx.settings.platform_admin_groups):
        return None
    user = str((userinfo or {}).get("username") or "(unknown)")
    return (
        f"denied: only platform admins may set {naming.ABANDON_ANNOTATION} (it deletes the request without "
        f"destroying what it made); user {user} is not one. Delete the request to destroy its infrastructure"
    )


async def _secret_denial(ctx: Context, body: JSON) -> str | None:
    """The connection Secret must not exist already unless this very request owns it."""
    meta = body.get("metadata") or {}
    name, namespace = connection_secret_name(body), str(meta.get("namespace") or "")
    try:
        secret = await ctx.client.get(SECRET, name, namespace)
    except KubeApiError as exc:
        return f"denied: could not check whether Secret {namespace}/{name} exists ({exc.message}); try again"
    if secret is None or naming.is_owned_by(secret, str(meta.get("uid") or "")):
        return None
    return (
        f"denied: Secret {name} already exists in namespace {namespace} and does not belong to this "
        "ServiceRequest; Blacktop never overwrites a Secret it did not make: set spec.connectionSecretName to "
        "an unused name"
    )


async def review_service_request(
    ctx: Context, body: JSON, old: JSON | None, userinfo: Mapping[str, Any] | None, *, dryrun: bool
) -> Review:
    """The abandon annotation, the parameters' bounds, the team boundary within the environment, the
    connection Secret, then the Admission-stage rules (budget included)."""
    if denial := _abandon_denial(ctx, body, old, userinfo):
        return Review(denial=denial)
    if spec_unchanged(body, old):
        return Review()
    name = str((body.get("metadata") or {}).get("name") or "")
    params = _spec(body).get("parameters")
    if problem := parameters.bounds_problem(params if params is not None else {}) or parameters.identity_problem(
        params if isinstance(params, Mapping) else ()
    ):
        return Review(denial=f"denied: ServiceRequest {name}: {problem}")
    namespace = str(body.get("metadata", {}).get("namespace") or "")
    env, golden_paths, siblings, policies = await asyncio.gather(
        lookup.environment_of(ctx, namespace),
        ctx.client.list(GOLDENPATHS),
        ctx.client.list(SERVICEREQUESTS, namespace),
        active_policies(ctx),
    )
    if env is not None:
        team = str((env.get("spec") or {}).get("team") or "")
        settings = ctx.settings
        denial = boundaries.request_denial(userinfo, env, settings.team_group(team), settings.platform_admin_groups)
        if denial or (denial := await _secret_denial(ctx, body)):
            return Review(denial=denial)
    by_name = {gp["metadata"]["name"]: gp for gp in golden_paths}
    golden = by_name.get(str(_spec(body).get("goldenPath")))
    variables = context.request_variables(
        body,
        old,
        env,
        golden,
        userinfo,
        siblings=[(s, by_name.get(str((s.get("spec") or {}).get("goldenPath")))) for s in siblings],
        leftover_cents=ctx.metrics.inventory.leftover_cents(namespace),
    )
    decision = await ctx.evaluator.evaluate(
        policies, context.request_subject(body, env), variables, RuleStage.ADMISSION
    )
    return _answer(decision, ctx, body, dryrun)


def review_policy(ctx: Context, body: JSON, old: JSON | None) -> Review:
    """A policy must compile, and each rule's estimated worst-case cost stay under the limit; the
    denial carries the compiler's message or the estimate, naming the rule."""
    if spec_unchanged(body, old):
        return Review()  # e.g. Kopf's annotations on a policy that got in while no webhook ran
    try:
        engine.compile_body(body, cost_limit=ctx.settings.cel_cost_limit)
    except engine.PolicyCompileError as exc:
        return Review(denial=str(exc))
    return Review()


async def review_golden_path(ctx: Context, body: JSON, old: JSON | None) -> Review:
    """Built-in protections: no local-exec/remote-exec/external, only allowed providers, only local
    modules inside the module's folder, nothing pointing outside the modules root; and no parameter
    that would shadow an identity variable.

    A module that is missing or unreadable is not refused here: it may be shipped after its golden
    path, and the GoldenPath's status says what is wrong with it. Nor is a module in git: fetching
    it could outlast the webhook's timeout, so the reconciler applies the same checks to what it
    fetched, and a module that fails them never becomes a revision (nothing runs it).
    """
    if spec_unchanged(body, old):
        return Review()
    try:
        spec = GoldenPathSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return Review()  # the CRD schema answers for the shape
    name = body.get("metadata", {}).get("name")
    denied = f"denied by built-in protection: GoldenPath {name}, module {spec.module!r}: "
    problems = []
    properties = spec.parameters.get("properties")
    if problem := parameters.identity_problem(properties.keys() if isinstance(properties, dict) else ()):
        problems.append(problem)
    if spec.git is not None:
        # The schema is checked here all the same: it needs no fetch.
        return Review(denial=denied + "; ".join(problems)) if problems else Review()
    try:
        info = await asyncio.to_thread(ctx.modules.inspect, spec.module)
    except modules.ModuleEscapeError as exc:
        return Review(denial=denied + str(exc))
    except modules.ModuleError:
        return Review(denial=denied + "; ".join(problems)) if problems else Review()
    problems += info.findings.violations
    if bad := disallowed_providers(info.findings.providers, ctx.settings.allowed_providers):
        allowed = ", ".join(ctx.settings.allowed_providers)
        problems.append(f"provider(s) {', '.join(bad)} not allowed (allowed: {allowed})")
    return Review(denial=denied + "; ".join(problems)) if problems else Review()
