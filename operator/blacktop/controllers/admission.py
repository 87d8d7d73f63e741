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
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from blacktop.api.common import format_time
from blacktop.api.feedback import FeedbackSpec
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
        if denial:
            return Review(denial=denial)
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
    decision = engine.evaluate(policies, context.request_subject(body, env), variables, RuleStage.ADMISSION)
    review = _answer(decision, ctx, body, dryrun)
    if review.denial is None and not dryrun:
        note_platform_edit(ctx, body, old, userinfo)
    return review


def note_platform_edit(ctx: Context, body: JSON, old: JSON | None, userinfo: Mapping[str, Any] | None) -> None:
    """A platform admin creating or changing a request's spec is a human step the request needed
    (it was not self-service). Only admission knows who did it, so it tells the history recorder."""
    groups = {str(g) for g in (userinfo or {}).get("groups") or []}
    if not groups & set(ctx.settings.platform_admin_groups):
        return
    meta = body.get("metadata") or {}
    # The apiserver has set the new generation before validating admission runs.
    previous = int((old or {}).get("metadata", {}).get("generation") or 0)
    generation = int(meta.get("generation") or previous + 1)
    at = format_time(datetime.now(UTC))
    ctx.metrics.scorecard.platform_edits.note(str(meta.get("namespace")), str(meta.get("name")), generation, at)


async def review_feedback(ctx: Context, body: JSON, old: JSON | None) -> Review:
    """A rating names a golden path of the catalog, or none (the platform as a whole)."""
    if spec_unchanged(body, old):
        return Review()
    try:
        spec = FeedbackSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return Review()  # the CRD schema answers for the shape
    if spec.golden_path is None:
        return Review()
    golden_paths = sorted(gp["metadata"]["name"] for gp in await ctx.client.list(GOLDENPATHS))
    if spec.golden_path in golden_paths:
        return Review()
    offered = ", ".join(golden_paths[:20]) or "none yet"
    return Review(
        denial=f"golden path {spec.golden_path!r} is not in the catalog (kubectl get goldenpaths: {offered}); "
        "rate one of those, or leave goldenPath out to rate the platform as a whole"
    )


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
    path, and the GoldenPath's status says what is wrong with it.
    """
    if spec_unchanged(body, old):
        return Review()
    try:
        spec = GoldenPathSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return Review()  # the CRD schema answers for the shape
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
