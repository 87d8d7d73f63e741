"""Policies in, a decision out: compile GuardrailPolicies, match them, evaluate their rules. Pure.

A rule's expression must hold; when it does not (false, an evaluation error, or not a bool), the
rule is violated and its message, with ``{{ expression }}`` placeholders filled in, says why. What a
violation does depends on the policy's mode: Enforce denies, Warn admits with a warning, Audit admits
and records. A rule that cannot be evaluated counts as violated, so a broken rule fails closed.

With a cost limit, compiling also prices every expression (:mod:`blacktop.guardrails.cost`) and
refuses one whose worst case is over the limit, naming the rule and the estimate. Decisions travel
as JSON (:func:`decision_to_json`) between the operator and the process that evaluates them
(controllers/evaluation.py), which reports each rule it starts through ``progress``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import ValidationError

from blacktop.api.guardrailpolicy import ApprovalRequirement, GuardrailPolicySpec, Match, Mode, RuleStage
from blacktop.guardrails import cel, cost

PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
MAX_MESSAGE = 1024


class PolicyCompileError(ValueError):
    """A policy with rules that do not compile; ``problems`` lists each rule's compiler message."""

    def __init__(self, policy: str, problems: list[str]) -> None:
        super().__init__(f"GuardrailPolicy {policy} does not compile: " + "; ".join(problems))
        self.policy = policy
        self.problems = problems


@dataclass(frozen=True)
class CompiledRule:
    """A rule ready to evaluate: its condition and the pieces of its message."""

    name: str
    stage: RuleStage
    condition: cel.Program
    # Literal text and compiled placeholders, in order.
    message: tuple[str | cel.Program, ...]
    approval: ApprovalRequirement | None = None  # a failure asks for approval instead of denying


@dataclass(frozen=True)
class CompiledPolicy:
    """A policy ready to evaluate."""

    name: str
    mode: Mode
    match: Match
    rules: tuple[CompiledRule, ...]
    source: str = ""  # the spec as JSON: what another process compiles the same policy from


def _compile_message(template: str) -> tuple[str | cel.Program, ...]:
    parts: list[str | cel.Program] = []
    position = 0
    for found in PLACEHOLDER.finditer(template):
        parts.append(template[position : found.start()])
        source = found.group(1).strip()
        if not source:
            raise cel.CelCompileError("empty {{ }} placeholder in the message")
        parts.append(cel.compile_expression(source))
        position = found.end()
    parts.append(template[position:])
    return tuple(p for p in parts if p != "")


def _over_limit(rule: CompiledRule, limit: float) -> str | None:
    """Why the rule is too expensive to admit (its condition and message placeholders together), or None."""
    programs = [rule.condition, *(p for p in rule.message if isinstance(p, cel.Program))]
    estimated = sum(cost.estimate(p.expression.serialize()) for p in programs)
    if estimated <= limit:
        return None
    return (
        f"rule {rule.name}: estimated worst-case cost {estimated:,} exceeds the limit of {limit:,.0f} "
        f"(strings are assumed up to {cost.MAX_STRING:,} characters and lists up to {cost.MAX_ITEMS:,} "
        "elements; nested all()/exists()/map() over split() or unbounded lists multiply): simplify the expression"
    )


def compile_policy(name: str, spec: GuardrailPolicySpec, *, cost_limit: float | None = None) -> CompiledPolicy:
    """Compile every rule and message placeholder; raises PolicyCompileError listing every problem
    (with ``cost_limit``, also every rule whose estimated cost is over it)."""
    problems: list[str] = []
    rules: list[CompiledRule] = []
    for rule in spec.rules:
        try:
            condition = cel.compile_condition(rule.expression)
        except cel.CelCompileError as exc:
            problems.append(f"rule {rule.name}: expression: {exc}")
            continue
        try:
            message = _compile_message(rule.message)
        except cel.CelCompileError as exc:
            problems.append(f"rule {rule.name}: message: {exc}")
            continue
        if rule.require_approval is not None and rule.stage is not RuleStage.PLAN:
            problems.append(f"rule {rule.name}: requireApproval needs stage: Plan (the request stops after its plan)")
            continue
        compiled = CompiledRule(rule.name, rule.stage, condition, message, rule.require_approval)
        if cost_limit is not None and (expensive := _over_limit(compiled, cost_limit)):
            problems.append(expensive)
            continue
        rules.append(compiled)
    if problems:
        raise PolicyCompileError(name, problems)
    source = spec.model_dump_json(by_alias=True)
    return CompiledPolicy(name=name, mode=spec.mode, match=spec.match, rules=tuple(rules), source=source)


def compile_body(body: Mapping[str, Any], *, cost_limit: float | None = None) -> CompiledPolicy:
    """Compile a GuardrailPolicy object body; a spec that does not validate is a PolicyCompileError too."""
    name = str((body.get("metadata") or {}).get("name") or "unnamed")
    try:
        spec = GuardrailPolicySpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        raise PolicyCompileError(name, [f"spec.{where}: {first['msg']}"]) from None
    return compile_policy(name, spec, cost_limit=cost_limit)


def compile_active(bodies: Iterable[Mapping[str, Any]]) -> list[CompiledPolicy]:
    """The policies among ``bodies`` that apply: not being deleted, and compiling.

    One that does not compile is left out: its own status says CompileError, and it could only
    have got in while no webhook ran.
    """
    policies = []
    for body in bodies:
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            continue
        try:
            policies.append(compile_body(body))
        except PolicyCompileError:
            continue
    return policies


@dataclass(frozen=True)
class Subject:
    """What a policy's match looks at."""

    kind: str
    tier: str | None = None
    team: str | None = None
    golden_path: str | None = None


def matches(match: Match, subject: Subject) -> bool:
    """Whether a policy applies; each non-empty list must contain the subject's value."""
    if match.kinds and subject.kind not in {k.value for k in match.kinds}:
        return False
    if match.tiers and subject.tier not in {t.value for t in match.tiers}:
        return False
    if match.teams and subject.team not in match.teams:
        return False
    # A golden-path match only ever selects ServiceRequests of those golden paths.
    return not match.golden_paths or subject.golden_path in match.golden_paths


def rules_for(policies: Iterable[CompiledPolicy], subject: Subject, stage: RuleStage) -> list[CompiledRule]:
    """The rules of ``stage`` of the policies matching ``subject``: what an evaluation would run."""
    return [r for p in policies if matches(p.match, subject) for r in p.rules if r.stage is stage]


def mentions(rules: Iterable[CompiledRule], word: str) -> bool:
    """Whether any of ``rules`` (its condition or a message placeholder) refers to ``word``, e.g.
    ``environmentMonthly``: a review computes costly variables only for rules that read them."""
    return any(
        word in rule.condition.source or any(not isinstance(p, str) and word in p.source for p in rule.message)
        for rule in rules
    )


@dataclass(frozen=True)
class Violation:
    """One failed rule."""

    policy: str
    rule: str
    mode: Mode
    stage: RuleStage
    message: str
    # At the Plan stage: the addresses of the resource changes that violate the rule on their own.
    resources: tuple[str, ...] = ()
    approval: ApprovalRequirement | None = None  # set when the violation asks for approval (Enforce)

    @property
    def text(self) -> str:
        """The one line users read: which policy, which rule, why (and which resources, on a plan)."""
        where = f" [resources: {', '.join(self.resources)}]" if self.resources else ""
        if self.approval is not None:
            return f"approval required by GuardrailPolicy {self.policy}/{self.rule}: {self.message}{where}"
        if self.mode is Mode.ENFORCE:
            return f"denied by GuardrailPolicy {self.policy}/{self.rule}: {self.message}{where}"
        return f"GuardrailPolicy {self.policy}/{self.rule} ({self.mode.value}): {self.message}{where}"


@dataclass
class Decision:
    """What the policies say about one request at one stage."""

    denials: list[Violation] = field(default_factory=list)
    warnings: list[Violation] = field(default_factory=list)
    audits: list[Violation] = field(default_factory=list)
    approvals: list[Violation] = field(default_factory=list)  # Enforce rules that ask for approval instead
    passed: list[tuple[str, str, Mode]] = field(default_factory=list)  # (policy, rule, mode) that held
    evaluated: int = 0  # rules evaluated (for metrics and benchmarks)

    @property
    def allowed(self) -> bool:
        return not self.denials

    @property
    def recorded(self) -> list[Violation]:
        """Violations to record in their policies' status (Warn and Audit)."""
        return self.warnings + self.audits

    def outcomes(self) -> Iterator[tuple[str, str, Mode, str]]:
        """(policy, rule, mode, outcome) of every evaluated rule: allowed, denied, warned or audited."""
        for policy, rule, mode in self.passed:
            yield policy, rule, mode, "allowed"
        for violations, outcome in (
            (self.denials, "denied"),
            (self.warnings, "warned"),
            (self.audits, "audited"),
            (self.approvals, "approval"),
        ):
            for v in violations:
                yield v.policy, v.rule, v.mode, outcome

    def denial_text(self) -> str:
        """All denials, one per line (the first is what kubectl shows most prominently)."""
        return "\n".join(v.text for v in self.denials)


def _message(rule: CompiledRule, bindings: cel.Bindings, note: str | None) -> str:
    parts = []
    for part in rule.message:
        if isinstance(part, str):
            parts.append(part)
            continue
        try:
            parts.append(cel.render(bindings.evaluate(part)))
        except cel.CelEvaluationError:
            parts.append("<?>")
    text = "".join(parts).strip() or f"rule {rule.name} does not hold"
    if note:
        text += f" ({note})"
    return text[:MAX_MESSAGE]


def _check(rule: CompiledRule, bindings: cel.Bindings) -> str | None:
    """None when the rule holds, else a note ("" for plain false, else why it could not be evaluated)."""
    try:
        result = bindings.evaluate(rule.condition)
    except cel.CelEvaluationError as exc:
        return f"the rule could not be evaluated: {exc}; guard optional fields with has()"
    if result is True:
        return None
    if result is False:
        return ""
    return f"the rule returned {cel.render(result)!r}, not a bool"


MAX_RESOURCES = 20


def offending_resources(rule: CompiledRule, variables: Mapping[str, Any]) -> tuple[str, ...]:
    """The plan's resource changes that violate ``rule`` when the plan holds only that change.

    CEL cannot say which element made ``all()`` false; evaluating the rule once per change can.
    A rule that fails even for a plan without changes is not about resources (cost, names), and a
    rule about the plan as a whole (counts, sums) may name no single resource: both name none.
    """
    plan = variables.get("plan")
    if not isinstance(plan, Mapping):
        return ()
    changes = plan.get("resource_changes")
    if not isinstance(changes, list) or not changes:
        return ()
    if _check(rule, cel.Bindings({**variables, "plan": {**plan, "resource_changes": []}})) is not None:
        return ()
    found = []
    for change in changes:
        if not isinstance(change, Mapping):
            continue
        single = {**variables, "plan": {**plan, "resource_changes": [change]}}
        if _check(rule, cel.Bindings(single)) is not None:
            found.append(str(change.get("address") or "?"))
            if len(found) >= MAX_RESOURCES:
                break
    return tuple(found)


def relevant(policies: Iterable[CompiledPolicy], subject: Subject, stage: RuleStage) -> list[CompiledPolicy]:
    """The policies that match ``subject`` and have rules of ``stage`` (the only ones evaluate looks at)."""
    return [p for p in policies if matches(p.match, subject) and any(r.stage is stage for r in p.rules)]


def evaluate(
    policies: Iterable[CompiledPolicy],
    subject: Subject,
    variables: Mapping[str, Any],
    stage: RuleStage,
    *,
    progress: Callable[[str, str], None] | None = None,
) -> Decision:
    """Evaluate the matching policies' rules of ``stage`` against ``variables``; ``progress(policy, rule)``
    is called as each rule starts."""
    decision = Decision()
    bindings: cel.Bindings | None = None
    for policy in sorted(policies, key=lambda p: p.name):
        if not matches(policy.match, subject):
            continue
        for rule in policy.rules:
            if rule.stage is not stage:
                continue
            if progress is not None:
                progress(policy.name, rule.name)
            if bindings is None:  # converted once per request, and only if some rule needs it
                bindings = cel.Bindings(dict(variables))
            decision.evaluated += 1
            note = _check(rule, bindings)
            if note is None:
                decision.passed.append((policy.name, rule.name, policy.mode))
                continue
            resources = offending_resources(rule, variables) if stage is RuleStage.PLAN else ()
            message = _message(rule, bindings, note or None)
            asks = rule.approval if policy.mode is Mode.ENFORCE else None
            violation = Violation(policy.name, rule.name, policy.mode, stage, message, resources, asks)
            if asks is not None:
                decision.approvals.append(violation)
                continue
            {Mode.ENFORCE: decision.denials, Mode.WARN: decision.warnings, Mode.AUDIT: decision.audits}[
                policy.mode
            ].append(violation)
    return decision


# -- decisions as JSON (between the operator and its evaluation process) ------------------------------


def _violation_json(violation: Violation) -> dict[str, Any]:
    data = asdict(violation)
    # The approval a rule asks for is a model: as JSON, so the other side gets the same requirement.
    data["approval"] = violation.approval.model_dump(mode="json") if violation.approval is not None else None
    return data


def decision_to_json(decision: Decision) -> str:
    """A decision as one line of JSON."""
    data = asdict(decision)
    for kind in ("denials", "warnings", "audits", "approvals"):
        data[kind] = [_violation_json(v) for v in getattr(decision, kind)]
    return json.dumps(data, default=str)


def _violation(data: Mapping[str, Any]) -> Violation:
    approval = data.get("approval")
    return Violation(
        policy=str(data["policy"]),
        rule=str(data["rule"]),
        mode=Mode(data["mode"]),
        stage=RuleStage(data["stage"]),
        message=str(data["message"]),
        resources=tuple(str(r) for r in data.get("resources") or ()),
        approval=ApprovalRequirement.model_validate(approval) if isinstance(approval, dict) else None,
    )


def decision_from_json(text: str) -> Decision:
    """The decision :func:`decision_to_json` wrote."""
    data = json.loads(text)
    return Decision(
        denials=[_violation(v) for v in data["denials"]],
        warnings=[_violation(v) for v in data["warnings"]],
        audits=[_violation(v) for v in data["audits"]],
        approvals=[_violation(v) for v in data.get("approvals") or []],
        passed=[(str(p), str(r), Mode(m)) for p, r, m in data["passed"]],
        evaluated=int(data["evaluated"]),
    )


def unfinished(policy: str, rule: str, stage: RuleStage, why: str) -> Decision:
    """The decision when evaluation could not finish: denied, naming the rule that was running (fail closed)."""
    message = (
        f"{why}; a guardrail that cannot be evaluated denies (fail closed): simplify the rule or ask the platform team"
    )
    return Decision(denials=[Violation(policy, rule, Mode.ENFORCE, stage, message[:MAX_MESSAGE])], evaluated=1)
