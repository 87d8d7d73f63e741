"""Admission reviews: what Blacktop answers when an object is created or changed.

Each review gathers what the decision needs (active policies, the request's environment and golden
path, its siblings for the budget) and lets the pure deciders in :mod:`blacktop.guardrails` decide.
A ServiceRequest's parameters are checked against its golden path's JSON Schema here too, with the
message the controller would write, so a typo is refused at ``kubectl apply``.
The answer is a :class:`Review`: a denial line (or none) and warnings. An update that leaves the
spec alone (Kopf adding its finalizer, a label) is always admitted: a policy added later must not
stop the operator from finishing or deleting what already exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from blacktop.api.common import format_time
from blacktop.api.feedback import FeedbackSpec
from blacktop.api.goldenpath import GoldenPathSpec
from blacktop.api.guardrailpolicy import RuleStage
from blacktop.builders import composition, parameters
from blacktop.config import Settings
from blacktop.controllers import lookup
from blacktop.controllers.context import Context
from blacktop.controllers.goldenpath import schema_problem
from blacktop.controllers.guardrailpolicy import active_policies, record_in_background
from blacktop.guardrails import approvals, boundaries, context, engine
from blacktop.kube.resources import GOLDENPATHS, SERVICEREQUESTS, resource_for
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
    return Verdict(decision=decision).review


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
    """An approval (who may approve which plan), then for a spec change: the team boundary within the
    environment, the golden path's parameter schema, the inputs (sources, outputs, cycles), the
    Admission-stage rules (budget included)."""
    if denial := approvals.approval_denial(body, old, userinfo, ctx.settings.platform_admin_groups):
        return Review(denial=denial)
    if spec_unchanged(body, old):
        return Review()
    namespace = str(body.get("metadata", {}).get("namespace") or "")
    env, golden_paths, siblings, policies = await asyncio.gather(
        lookup.environment_of(ctx, namespace),
        ctx.client.list(GOLDENPATHS),
        ctx.client.list(SERVICEREQUESTS, namespace),
        active_policies(ctx),
    )
    by_name = {gp["metadata"]["name"]: gp for gp in golden_paths}
    golden = by_name.get(str((body.get("spec") or {}).get("goldenPath")))
    inputs = await _review_inputs(ctx, body, siblings, by_name, golden)
    verdict = decide_service_request(
        ctx.settings,
        body,
        old,
        userinfo,
        env=env,
        golden_paths=golden_paths,
        siblings=siblings,
        policies=policies,
        inputs=inputs,
    )
    if verdict.decision is None:
        return Review(denial=verdict.denial)
    review = _answer(verdict.decision, ctx, body, dryrun)
    review.warnings = inputs.warnings + review.warnings
    if review.denial is None and not dryrun:
        note_platform_edit(ctx, body, old, userinfo)
    return review


@dataclass
class Verdict:
    """What admission decides about a ServiceRequest: a refusal before the policies
    (``denial``), or the policies' ``decision``."""

    denial: str | None = None
    decision: engine.Decision | None = None

    @property
    def review(self) -> Review:
        """The answer, without recording anything (metrics, policy status)."""
        if self.decision is None:
            return Review(denial=self.denial)
        denial = self.decision.denial_text() if self.decision.denials else None
        return Review(denial=denial, warnings=[v.text for v in self.decision.warnings])


def decide_service_request(
    settings: Settings,
    body: JSON,
    old: JSON | None,
    userinfo: Mapping[str, Any] | None,
    *,
    env: JSON | None,
    golden_paths: Iterable[JSON],
    siblings: Iterable[JSON],
    policies: Iterable[engine.CompiledPolicy],
    check_team_boundary: bool = True,
    inputs: composition.InputReview | None = None,
) -> Verdict:
    """The admission decision from the objects it depends on, with no I/O and no side effect.

    The webhook calls it with what it just read; the portal's request builder calls it with the
    operator's cached view, so a form shows the very refusal ``kubectl apply`` would get. Without
    an identity (``check_team_boundary`` False) the team boundary is left to ``kubectl apply``.
    ``inputs`` is the review of the request's inputs (its sources' outputs; read by the caller, as
    it reads modules), refused after the parameters.
    """
    if env is not None and check_team_boundary:
        team = str((env.get("spec") or {}).get("team") or "")
        denial = boundaries.request_denial(userinfo, env, settings.team_group(team), settings.platform_admin_groups)
        if denial:
            return Verdict(denial=denial)
    by_name = {gp["metadata"]["name"]: gp for gp in golden_paths}
    golden = by_name.get(str((body.get("spec") or {}).get("goldenPath")))
    if golden is not None and (denial := parameters_denial(golden, body)):
        return Verdict(denial=denial)
    if inputs is not None and inputs.denials:
        return Verdict(denial="\n".join(f"denied: {d}" for d in inputs.denials))
    variables = context.request_variables(
        body,
        old,
        env,
        golden,
        userinfo,
        siblings=[(s, by_name.get(str((s.get("spec") or {}).get("goldenPath")))) for s in siblings],
    )
    return Verdict(
        decision=engine.evaluate(policies, context.request_subject(body, env), variables, RuleStage.ADMISSION)
    )


def parameters_denial(golden_path: JSON, body: JSON) -> str | None:
    """Why the request's parameters do not match the golden path's schema (None: they do).

    A golden path whose own spec or schema is broken refuses nothing here: its status says what is
    wrong, and the request waits for it to be fixed (GoldenPathNotReady).
    """
    try:
        schema = GoldenPathSpec.model_validate(golden_path.get("spec") or {}).parameters
    except ValidationError:
        return None
    if schema_problem(schema) is not None:
        return None
    given = (body.get("spec") or {}).get("parameters")
    _, errors = parameters.validate(schema, given if isinstance(given, dict) else {})
    return parameters.refusal(errors) if errors else None


def _spec_of(golden_path: JSON | None) -> GoldenPathSpec | None:
    try:
        return GoldenPathSpec.model_validate((golden_path or {}).get("spec") or {}) if golden_path else None
    except ValidationError:
        return None


async def _module_findings(ctx: Context, spec: GoldenPathSpec | None) -> tuple[set[str], set[str]] | None:
    """(variables, outputs) of a golden path's module, or None when it cannot be read here."""
    if spec is None:
        return None
    try:
        info = await asyncio.to_thread(modules.inspect, ctx.settings.modules_root, spec.module)
    except modules.ModuleError:
        return None
    return set(info.findings.variables), set(info.findings.outputs)


async def _review_inputs(
    ctx: Context, body: JSON, siblings: list[JSON], golden_paths: dict[str, JSON], golden: JSON | None
) -> composition.InputReview:
    """The request's inputs against its namespace; modules are read only for requests that have inputs."""
    if not composition.inputs_of(body):
        return composition.InputReview()
    specs = {name: spec for name, gp in golden_paths.items() if (spec := _spec_of(gp)) is not None}
    consumer = await _module_findings(ctx, _spec_of(golden))
    sources = {str((s.get("spec") or {}).get("goldenPath") or "") for s in siblings}
    outputs: dict[str, set[str] | None] = {}
    for name in sources & set(specs):
        found = None if specs[name].outputs else await _module_findings(ctx, specs[name])
        outputs[name] = composition.delivered_outputs(specs[name], found[1] if found else None)
    return composition.review_inputs(
        body,
        siblings,
        specs,
        outputs_of=outputs.get,
        variables=consumer[0] if consumer else None,
    )


async def review_service_request_deletion(ctx: Context, body: JSON) -> Review:
    """A request whose outputs others consume is not deleted while they exist, unless its whole
    environment or namespace goes (then its finalizer waits for them: consumers are destroyed first)."""
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    siblings = await ctx.client.list(SERVICEREQUESTS, namespace)
    denial = composition.deletion_denial(name, siblings)
    if denial is None:
        return Review()
    ns = await ctx.client.get(resource_for("v1", "Namespace"), namespace)
    if ((ns or {}).get("status") or {}).get("phase") == "Terminating" or (ns or {}).get("metadata", {}).get(
        "deletionTimestamp"
    ):
        return Review()
    env = await lookup.environment_of(ctx, namespace)
    if env is not None and env["metadata"].get("deletionTimestamp"):
        return Review()
    return Review(denial=denial)


def stamp_service_request(body: JSON, old: JSON | None, userinfo: Mapping[str, Any] | None) -> dict[str, str | None]:
    """The annotations the mutating webhook sets on a request (see guardrails.approvals.stamps)."""
    return approvals.stamps(body, old, userinfo)


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
