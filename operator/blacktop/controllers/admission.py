"""Admission reviews: what Blacktop answers when an object is created or changed.

Each review gathers what the decision needs (active policies, the request's environment and golden
path, its siblings for the budget) and lets the pure deciders in :mod:`blacktop.guardrails` decide.
The answer is a :class:`Review`: a denial line (or none) and warnings. An update that leaves the
spec alone (Kopf adding its finalizer, a label) is always admitted: a policy added later must not
stop the operator from finishing or deleting what already exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from blacktop.api.goldenpath import GoldenPathSpec
from blacktop.api.guardrailpolicy import RuleStage
from blacktop.controllers import lookup
from blacktop.controllers.context import Context
from blacktop.controllers.guardrailpolicy import active_policies, record_in_background
from blacktop.guardrails import boundaries, context, engine
from blacktop.kube.resources import GOLDENPATHS, SERVICEREQUESTS
from blacktop.terraform import module as modules
from blacktop.terraform.findings import disallowed_providers

JSON = dict[str, Any]


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


async def review_environment(
    ctx: Context, body: JSON, old: JSON | None, userinfo: Mapping[str, Any] | None, *, dryrun: bool
) -> Review:
    """Team boundary, then the Admission-stage rules of the policies matching the environment."""
    if spec_unchanged(body, old):
        return Review()
    team = str((body.get("spec") or {}).get("team") or "")
    settings = ctx.settings
    denial = boundaries.environment_denial(userinfo, team, settings.team_group(team), settings.platform_admin_groups)
    if denial:
        return Review(denial=denial)
    policies = await active_policies(ctx)
    variables = context.environment_variables(body, old, userinfo)
    decision = engine.evaluate(policies, context.environment_subject(body), variables, RuleStage.ADMISSION)
    return _answer(decision, ctx, body, dryrun)


async def review_service_request(
    ctx: Context, body: JSON, old: JSON | None, userinfo: Mapping[str, Any] | None, *, dryrun: bool
) -> Review:
    """Team boundary within the environment, then the Admission-stage rules (budget included)."""
    if spec_unchanged(body, old):
        return Review()
    namespace = str(body.get("metadata", {}).get("namespace") or "")
    cached_paths = lookup.cached_list(ctx, "golden_paths")
    env, golden_paths, policies = await asyncio.gather(
        lookup.environment_of(ctx, namespace),
        _known(cached_paths) if cached_paths is not None else ctx.client.list(GOLDENPATHS),
        active_policies(ctx),
    )
    if env is not None:
        team = str((env.get("spec") or {}).get("team") or "")
        settings = ctx.settings
        denial = boundaries.request_denial(userinfo, env, settings.team_group(team), settings.platform_admin_groups)
        if denial:
            return Review(denial=denial)
    subject = context.request_subject(body, env)
    rules = engine.rules_for(policies, subject, RuleStage.ADMISSION)
    if not rules:
        return Review()  # no rule to evaluate: no variables to build
    siblings: list[JSON] = []
    if engine.mentions(rules, "environmentMonthly"):  # only a budget rule needs the namespace's requests
        cached = lookup.cached_list(ctx, "requests", namespace)
        siblings = cached if cached is not None else await ctx.client.list(SERVICEREQUESTS, namespace)
    by_name = {gp["metadata"]["name"]: gp for gp in golden_paths}
    golden = by_name.get(str((body.get("spec") or {}).get("goldenPath")))
    variables = context.request_variables(
        body,
        old,
        env,
        golden,
        userinfo,
        siblings=[(s, by_name.get(str((s.get("spec") or {}).get("goldenPath")))) for s in siblings],
    )
    decision = engine.evaluate(policies, subject, variables, RuleStage.ADMISSION)
    return _answer(decision, ctx, body, dryrun)


async def _known(objects: list[JSON]) -> list[JSON]:
    return objects


def review_policy(body: JSON, old: JSON | None) -> Review:
    """A policy must compile; the denial carries the compiler's message."""
    if spec_unchanged(body, old):
        return Review()  # e.g. Kopf's annotations on a policy that got in while no webhook ran
    try:
        engine.compile_body(body)
    except engine.PolicyCompileError as exc:
        return Review(denial=str(exc))
    return Review()


async def review_golden_path(ctx: Context, body: JSON, old: JSON | None) -> Review:
    """Built-in protections: no local-exec/remote-exec/external, only allowed providers.

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
    if spec.git is not None:
        return Review()
    try:
        info = await asyncio.to_thread(ctx.modules.inspect, spec.module)
    except modules.ModuleError:
        return Review()
    problems = list(info.findings.violations)
    if bad := disallowed_providers(info.findings.providers, ctx.settings.allowed_providers):
        allowed = ", ".join(ctx.settings.allowed_providers)
        problems.append(f"provider(s) {', '.join(bad)} not allowed (allowed: {allowed})")
    if problems:
        name = body.get("metadata", {}).get("name")
        return Review(
            denial=f"denied by built-in protection: GoldenPath {name}, module {spec.module!r}: " + "; ".join(problems)
        )
    return Review()
