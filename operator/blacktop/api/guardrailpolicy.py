"""GuardrailPolicy: CEL rules over requests, environments, users, cost and plans."""

from __future__ import annotations

from enum import StrEnum

from pydantic import ConfigDict, Field

from blacktop.api.common import (
    DNS_LABEL,
    ConditionedStatus,
    DnsLabel,
    ShortName,
    SpecModel,
    StatusModel,
    Subject,
    Tier,
    cel,
)


class Mode(StrEnum):
    """What a violation does."""

    ENFORCE = "Enforce"
    WARN = "Warn"
    AUDIT = "Audit"


class RuleStage(StrEnum):
    """When a rule is evaluated."""

    ADMISSION = "Admission"
    PLAN = "Plan"


class MatchKind(StrEnum):
    """Kinds a policy can apply to."""

    ENVIRONMENT = "Environment"
    SERVICE_REQUEST = "ServiceRequest"


class Match(SpecModel):
    """Which requests a policy applies to; an empty list matches everything."""

    tiers: list[Tier] = Field(default_factory=list, max_length=3, description="Environment tiers.")
    teams: list[DnsLabel] = Field(default_factory=list, max_length=256, description="Teams.")
    golden_paths: list[ShortName] = Field(default_factory=list, max_length=256, description="Golden path names.")
    kinds: list[MatchKind] = Field(default_factory=list, max_length=2, description="Environment and/or ServiceRequest.")


class ApprovalRequirement(SpecModel):
    """Instead of denying: stop after the plan until someone named here approves that very plan."""

    approvers: list[Subject] = Field(
        default_factory=list,
        max_length=32,
        description="Who may approve (users or groups); empty: the Environment's owners, or its team's group "
        "when it names none. Platform admins may always approve.",
    )
    allow_self_approval: bool = Field(
        False, description="Whether the user who made the change may approve it themselves (default: no)."
    )


class Rule(SpecModel):
    """A CEL expression that must evaluate to true for the request to pass."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.requireApproval) || self.stage == 'Plan'",
                    "requireApproval needs stage: Plan (the request stops after its plan to wait for approval)",
                )
            ]
        }
    )

    name: str = Field(pattern=DNS_LABEL, max_length=63, description="Rule name, shown in denials.")
    expression: str = Field(
        max_length=4096,
        description="CEL over object, environment, goldenPath, user, cost (and plan at the Plan stage); true passes.",
    )
    message: str = Field(
        max_length=1024, description="Shown when the rule fails; {{ <cel expression> }} placeholders are interpolated."
    )
    stage: RuleStage = Field(RuleStage.ADMISSION, description="Admission (at kubectl apply) or Plan (before apply).")
    require_approval: ApprovalRequirement | None = Field(
        None,
        description="When the rule fails in an Enforce policy, wait for approval of the plan instead of denying "
        "(Plan stage only; plans without changes never wait). Warn and Audit policies only warn and record.",
    )


class GuardrailPolicySpec(SpecModel):
    """A named set of rules and what a violation does."""

    mode: Mode = Field(
        Mode.ENFORCE, description="Enforce denies, Warn admits with a warning, Audit admits and records."
    )
    description: str | None = Field(None, max_length=1024, description="What the policy protects.")
    match: Match = Field(default_factory=Match, description="Which requests it applies to.")
    rules: list[Rule] = Field(
        min_length=1,
        max_length=64,
        description="The rules.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class Violation(StatusModel):
    """A recorded violation (Audit mode)."""

    time: str = Field(description="When (RFC 3339).")
    kind: str = Field(description="Kind of the object.")
    namespace: str | None = Field(None, description="Its namespace.")
    name: str = Field(description="Its name.")
    rule: str = Field(description="The rule.")
    message: str = Field(description="The rule's message.")


class GuardrailPolicyStatus(ConditionedStatus):
    """Whether the policy is active, and what it has seen."""

    violation_count: int = Field(0, description="Violations seen (Audit and Warn).")
    violations: list[Violation] = Field(default_factory=list, description="The last 20 violations.")
