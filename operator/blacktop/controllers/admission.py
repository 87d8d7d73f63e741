"""Admission reviews: what Blacktop answers when an object is created, changed or deleted.

Each review gathers what the decision needs (active policies, the request's environment and golden
path, its siblings for the budget) and lets the pure deciders in :mod:`blacktop.guardrails` decide;
the rules themselves run in worker processes under a deadline (controllers/evaluation.py). The
answer is a :class:`Review`: a denial line (or none) and warnings.

What is checked before any policy:

- Environments: reserved names on create; the team boundary on every operation, metadata-only
  changes and deletions included (the operator's own changes, such as its finalizer, pass).
- ServiceRequests: the abandon annotation, which only a platform admin may set; an approval (who may
  approve which plan); the bounds of the parameters and the identity variables they may not set;
  the connection Secret, which must not be someone else's; the golden path's parameter schema,
  with the message the controller would write, so a typo is refused at ``kubectl apply``; the
  inputs (their sources, outputs and cycles). A request whose outputs others consume is refused
  deletion.
- GuardrailPolicies must compile and stay under the estimated cost limit.
- GoldenPaths: the module's built-in protections (every file tofu reads, nested local modules,
  no remote sources, nothing pointing outside the modules root).

An update that leaves the spec alone (Kopf adding its finalizer, a label) is admitted once those
checks pass: a policy added later must not stop the operator from finishing or deleting what
already exists.
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
from blacktop.builders import composition, naming, parameters
from blacktop.builders.servicerequest import connection_secret_name
from blacktop.config import Settings
from blacktop.controllers import lookup
from blacktop.controllers.context import Context
from blacktop.controllers.environment import reserved_denial
from blacktop.controllers.goldenpath import schema_problem
from blacktop.controllers.guardrailpolicy import active_policies, record_in_background
from blacktop.guardrails import approvals, boundaries, context, engine
from blacktop.kube.client import gather
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
    return Verdict(decision=decision).review


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
    """The abandon annotation and an approval (who may approve which plan); then, for a spec change,
    what :func:`prepare_service_request` checks (parameter bounds and identity, the team boundary
    within the environment, the golden path's parameter schema), the connection Secret, the inputs
    (sources, outputs, cycles) and the Admission-stage rules (budget included)."""
    if denial := _abandon_denial(ctx, body, old, userinfo) or approvals.approval_denial(
        body, old, userinfo, ctx.settings.platform_admin_groups
    ):
        return Review(denial=denial)
    if spec_unchanged(body, old):
        return Review()
    namespace = str(body.get("metadata", {}).get("namespace") or "")
    # The informer cache's copies when it has synced (admission stays fast under a GitOps burst).
    env, golden_paths, siblings, policies = await gather(
        lookup.environment_of(ctx, namespace),
        lookup.listed(ctx, "golden_paths"),
        lookup.listed(ctx, "requests", namespace),
        active_policies(ctx),
    )
    verdict = prepare_service_request(
        ctx.settings, body, old, userinfo, env=env, golden_paths=golden_paths, siblings=siblings
    )
    if verdict.denial is not None:
        return Review(denial=verdict.denial)
    # Only once the team boundary passed: whether a Secret exists is the team's business.
    if env is not None and (denial := await _secret_denial(ctx, body)):
        return Review(denial=denial)
    by_name = {gp["metadata"]["name"]: gp for gp in golden_paths}
    golden = by_name.get(str(_spec(body).get("goldenPath")))
    inputs = await _review_inputs(ctx, body, siblings, by_name, golden)
    if inputs.denials:
        return Review(denial="\n".join(f"denied: {d}" for d in inputs.denials))
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
    review = _answer(decision, ctx, body, dryrun)
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


def prepare_service_request(
    settings: Settings,
    body: JSON,
    old: JSON | None,
    userinfo: Mapping[str, Any] | None,
    *,
    env: JSON | None,
    golden_paths: Iterable[JSON],
    siblings: Iterable[JSON],
    check_team_boundary: bool = True,
) -> Verdict:
    """What refuses a request before any policy, with no I/O: parameters beyond their bounds or
    naming an identity variable, the team boundary (without an identity, ``check_team_boundary``
    False, it is left to ``kubectl apply``), parameters that do not match the golden path's schema.
    None of them: a Verdict with neither denial nor decision."""
    name = str((body.get("metadata") or {}).get("name") or "")
    params = _spec(body).get("parameters")
    if problem := parameters.bounds_problem(params if params is not None else {}) or parameters.identity_problem(
        params if isinstance(params, Mapping) else ()
    ):
        return Verdict(denial=f"denied: ServiceRequest {name}: {problem}")
    if env is not None and check_team_boundary:
        team = str((env.get("spec") or {}).get("team") or "")
        denial = boundaries.request_denial(userinfo, env, settings.team_group(team), settings.platform_admin_groups)
        if denial:
            return Verdict(denial=denial)
    golden = next((gp for gp in golden_paths if gp["metadata"]["name"] == _spec(body).get("goldenPath")), None)
    if golden is not None and (denial := parameters_denial(golden, body)):
        return Verdict(denial=denial)
    return Verdict()


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
) -> Verdict:
    """The admission decision from the objects it depends on, with no I/O and no side effect, the
    rules evaluated in this process.

    The portal's request builder calls it with the operator's cached view, so a form shows the
    refusal ``kubectl apply`` would get (the webhook adds what needs reads: the connection Secret,
    the inputs, and runs the rules in its worker processes under a deadline).
    """
    golden_paths, siblings = list(golden_paths), list(siblings)
    verdict = prepare_service_request(
        settings,
        body,
        old,
        userinfo,
        env=env,
        golden_paths=golden_paths,
        siblings=siblings,
        check_team_boundary=check_team_boundary,
    )
    if verdict.denial is not None:
        return verdict
    by_name = {gp["metadata"]["name"]: gp for gp in golden_paths}
    variables = context.request_variables(
        body,
        old,
        env,
        by_name.get(str(_spec(body).get("goldenPath"))),
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
