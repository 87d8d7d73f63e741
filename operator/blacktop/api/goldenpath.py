"""GoldenPath: a catalog entry of the platform team — a module, its parameter schema, outputs, cost.

The module comes from a folder under the operator's modules root or from a git repository at a ref.
Every change of what runs (the module's source, its resolved commit and files, the parameter schema,
the outputs) becomes an immutable GoldenPathRevision; ``rollout`` says how a new revision reaches the
requests already using the golden path.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field

from blacktop.api.common import (
    CURRENCY,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    DURATION,
    MONEY,
    ConditionedStatus,
    Money,
    SpecModel,
    StatusModel,
    Tier,
    cel,
)

MODULE_PATH = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"
# http(s) or git://, a host with no user:password@ (credentials belong in a Secret), then a path.
GIT_URL = r"^(https?|git)://[^@/\s]+(/[^\s]*)?$"
# A tag, a branch or a full commit: the characters git allows in ref names, no leading '-' or '/'.
GIT_REF = r"^[A-Za-z0-9_][A-Za-z0-9_./+-]*$"


class DriftPolicy(StrEnum):
    """What to do when the real infrastructure no longer matches the module."""

    REPORT = "Report"
    CORRECT = "Correct"


class OutputMapping(SpecModel):
    """A module output copied into the request's connection Secret."""

    name: str = Field(max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$", description="Name of the module output.")
    key: str | None = Field(
        None, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key in the Secret (default: the output name)."
    )


class CostModel(SpecModel):
    """Monthly price of a request: a base amount, or a price by the value of one parameter."""

    currency: str = Field("USD", pattern=CURRENCY, description="ISO 4217 currency code.")
    monthly: str = Field("0", pattern=MONEY, max_length=16, description="Monthly price when no table entry applies.")
    parameter: str | None = Field(
        None, max_length=128, description="Parameter whose value selects the price, e.g. size."
    )
    table: dict[str, Money] = Field(
        default_factory=dict,
        max_length=64,
        description="Monthly price by the parameter's value, e.g. {small: '10', large: '80'}.",
    )


class SecretRef(SpecModel):
    """A Secret the operator reads; it never reaches users' namespaces."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="Secret name.")
    namespace: str = Field(pattern=DNS_LABEL, max_length=63, description="Secret namespace (usually the operator's).")


class GitSource(SpecModel):
    """Where a module lives in git; Blacktop resolves ``ref`` to a commit and runs exactly that commit."""

    url: str = Field(
        max_length=2048,
        pattern=GIT_URL,
        description="Repository URL: https://, http:// or git:// (SSH is not supported); no credentials in it.",
    )
    ref: str = Field(
        max_length=255,
        pattern=GIT_REF,
        description="A tag (v1.2.0), a branch (it makes a new revision whenever it moves) or a full 40-hex commit.",
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!self.contains('..') && !self.endsWith('/') && !self.endsWith('.lock')", "not a valid git ref")
            ]
        },
    )
    secret_ref: SecretRef | None = Field(
        None,
        description="Secret with `username` and `password` for HTTP basic auth (an access token goes in `password`).",
    )


class RolloutStrategy(StrEnum):
    """How a new revision reaches the requests already using a golden path."""

    MANUAL = "Manual"
    AUTOMATIC = "Automatic"


class Rollout(SpecModel):
    """How revisions reach existing requests. New requests always start on the rollout's revision."""

    strategy: RolloutStrategy = Field(
        RolloutStrategy.MANUAL,
        description=(
            "Manual: a request moves when its owner sets its spec.revision. Automatic: tier by tier (dev, staging, "
            "prod), in batches, each request planned first; a failed or denied plan halts the rollout."
        ),
    )
    batch_size: int = Field(1, ge=1, le=100, description="Requests planned, then applied, together (Automatic).")
    revision: int | None = Field(
        None, ge=1, description="Revision to roll out (default: the latest). An older one rolls back the same way."
    )


class AlertRule(SpecModel):
    """A Prometheus alert created for each request of this golden path."""

    alert: str = Field(max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Alert name.")
    expr: str = Field(max_length=4096, description="PromQL; {{namespace}} and {{name}} are replaced by the request's.")
    for_: str | None = Field(
        None, alias="for", pattern=DURATION, max_length=32, description="How long before it fires."
    )
    severity: str = Field("warning", max_length=32, description="Severity label.")
    summary: str = Field(max_length=1024, description="One-line summary annotation.")
    description: str | None = Field(None, max_length=4096, description="Longer description annotation.")


class PodMetrics(SpecModel):
    """Scrape the pods a request's module runs: those labelled ``platform.blacktop.dev/service-request: <name>``."""

    port: str = Field(
        max_length=15, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="Name of the container port to scrape."
    )
    path: str = Field("/metrics", max_length=1024, pattern=r"^/[^\s]*$", description="HTTP path of the metrics.")
    interval: str = Field("30s", pattern=DURATION, max_length=32, description="How often to scrape.")


class Monitoring(SpecModel):
    """Monitoring wired for every request of this golden path."""

    rules: list[AlertRule] = Field(default_factory=list, max_length=64, description="Alert rules (a PrometheusRule).")
    pod_monitor: PodMetrics | None = Field(None, description="A PodMonitor for the pods each request runs.")
    dashboard: str | None = Field(
        None, max_length=262144, description="Grafana dashboard JSON (a ConfigMap for the sidecar)."
    )


class GoldenPathSpec(SpecModel):
    """A self-service offering: what a ServiceRequest naming this golden path gets."""

    description: str = Field(max_length=1024, description="What developers get, in one or two sentences.")
    module: str = Field(
        max_length=253,
        pattern=MODULE_PATH,
        description=(
            "Folder of the OpenTofu/Terraform module: under the operator's modules root (e.g. postgres-database), "
            "or in the repository when `git` is set."
        ),
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!self.contains('..') && !self.contains('://')", "module must be a folder, not a URL or '..'")
            ]
        },
    )
    git: GitSource | None = Field(None, description="Take the module from this git repository and ref.")
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object"},
        description="JSON Schema of the ServiceRequest's parameters; defaults in it are applied.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    outputs: list[OutputMapping] = Field(
        default_factory=list, max_length=64, description="Module outputs delivered in the connection Secret."
    )
    cost: CostModel | None = Field(None, description="Monthly cost model, used for budgets.")
    tiers: list[Tier] = Field(default_factory=list, max_length=3, description="Tiers it may be used in (empty: all).")
    credentials_secret_ref: SecretRef | None = Field(
        None, description="Secret whose keys are passed to the module as environment variables (provider credentials)."
    )
    drift_policy: DriftPolicy = Field(DriftPolicy.REPORT, description="Report drift, or Correct it by applying again.")
    drift_check_interval: str = Field(
        "10m", pattern=DURATION, max_length=32, description="How often to check for drift."
    )
    monitoring: Monitoring | None = Field(None, description="Alerts and dashboard for each request.")
    rollout: Rollout = Field(default_factory=Rollout, description="How a new revision reaches existing requests.")
    revision_history_limit: int = Field(
        10, ge=1, le=50, description="Revisions kept (besides any a request still runs or pins)."
    )


class RolloutPhase(StrEnum):
    """Where the rollout of the target revision is."""

    COMPLETE = "Complete"
    PROGRESSING = "Progressing"
    HALTED = "Halted"
    WAITING = "WaitingForOwners"  # Manual: requests move when their owners ask


class RolloutHalt(StatusModel):
    """Why an Automatic rollout stopped: the request whose upgrade failed or was denied."""

    request: str = Field(description="namespace/name of the request.")
    revision: int = Field(description="The revision it failed to move to.")
    tier: str = Field(description="Its environment's tier; later tiers wait.")
    reason: str = Field(description="PlanFailed, PolicyDenied, ApplyFailed, ...")
    message: str = Field(description="What went wrong (redacted tool output).")
    generation: int = Field(0, description="The request's generation when it failed (a changed request is retried).")
    time: str = Field(description="When (RFC 3339).")


class TierProgress(StatusModel):
    """How many requests of one tier run the rollout's revision."""

    tier: str = Field(description="dev, staging or prod.")
    updated: int = Field(0, description="Requests on the revision.")
    total: int = Field(0, description="Requests that follow rollouts (pinned ones are not counted).")


class RolloutStatus(StatusModel):
    """Progress of the current rollout."""

    revision: int = Field(description="The revision being rolled out.")
    phase: RolloutPhase = Field(description="Complete, Progressing, Halted or WaitingForOwners.")
    tier: str | None = Field(None, description="The tier being rolled out now.")
    progress: str = Field("", description="Per tier, requests on the revision: dev 2/2, staging 1/3, prod 0/4.")
    tiers: list[TierProgress] = Field(default_factory=list, max_length=3, description="Progress by tier.")
    batch: list[str] = Field(
        default_factory=list, max_length=100, description="namespace/name of the requests being applied now."
    )
    pinned: int = Field(0, description="Requests pinned to a revision (never moved).")
    halted: RolloutHalt | None = Field(None, description="Why the rollout stopped, when it did.")


class GoldenPathStatus(ConditionedStatus):
    """Whether the golden path can be used, which revision it is at, and how the rollout goes."""

    module_digest: str | None = Field(None, description="sha256 of the module's files.")
    providers: list[str] = Field(default_factory=list, description="Providers the module uses.")
    requests: int = Field(0, description="How many ServiceRequests use it (adoption).")
    latest_revision: int | None = Field(None, description="The newest GoldenPathRevision (kubectl get gprev).")
    commit: str | None = Field(None, description="The commit the git ref resolved to (git sources).")
    rollout: RolloutStatus | None = Field(None, description="The rollout of the target revision.")
