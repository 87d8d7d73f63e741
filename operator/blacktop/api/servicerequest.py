"""ServiceRequest: "give me this golden path with these parameters", in an environment's namespace."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field

from blacktop.api.common import (
    DNS_SUBDOMAIN,
    ConditionedStatus,
    SpecModel,
    StatusModel,
    cel,
    immutable,
)


class Stage(StrEnum):
    """Where a request is, in one word (the conditions carry the detail)."""

    PENDING = "Pending"
    QUEUED = "Queued"
    VALIDATING = "Validating"
    PLANNING = "Planning"
    APPLYING = "Applying"
    READY = "Ready"
    DELETING = "Deleting"
    FAILED = "Failed"


class ServiceRequestSpec(SpecModel):
    """What the developer asks for."""

    golden_path: str = Field(
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Name of the GoldenPath (see `kubectl get goldenpaths`).",
        json_schema_extra=immutable("goldenPath", "delete the request and create a new one"),
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Parameters, validated against the golden path's schema (`kubectl get goldenpath <name> -o yaml`).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    connection_secret_name: str | None = Field(
        None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Secret that receives the connection details (default: <name>-connection). Immutable once set.",
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "connectionSecretName is immutable")]},
    )
    revision: int | None = Field(
        None,
        ge=1,
        description=(
            "Pin the request to this revision of its golden path (kubectl get goldenpathrevisions): rollouts never "
            "move it. Changing it moves the request (an upgrade or a rollback). Unset: follow the golden path's rollouts."
        ),
    )


class PlanSummary(StatusModel):
    """What the last plan would change."""

    add: int = Field(0, description="Resources to create.")
    change: int = Field(0, description="Resources to update in place.")
    destroy: int = Field(0, description="Resources to destroy.")
    resources: list[str] = Field(default_factory=list, description="Addresses of the changed resources (at most 50).")

    @property
    def empty(self) -> bool:
        """Whether the plan changes nothing."""
        return self.add == self.change == self.destroy == 0

    def counts(self) -> str:
        """``1 to add, 0 to change, 0 to destroy``: the plan in words, as the tool says it."""
        return f"{self.add} to add, {self.change} to change, {self.destroy} to destroy"


class RunInfo(StatusModel):
    """The last OpenTofu run."""

    id: str = Field(description="Run ID.")
    operation: str = Field(description="plan, apply, destroy or drift.")
    started_at: str | None = Field(None, description="Start (RFC 3339).")
    finished_at: str | None = Field(None, description="End (RFC 3339).")
    result: str | None = Field(None, description="Succeeded, Failed, or empty while running.")
    lock_id: str | None = Field(None, description="State lock ID taken by the run.")


class QueueInfo(StatusModel):
    """Where a run waiting for a run slot stands (see the operator's fair queue)."""

    position: int = Field(description="1: the next run of its team to start; runs of other teams are interleaved.")
    ahead: int = Field(description="Runs waiting before this one, all teams counted.")
    team: str = Field(description="The team whose share of run slots it waits for.")
    since: str = Field(description="When it started waiting (RFC 3339).")


class ServiceRequestStatus(ConditionedStatus):
    """Progress and result of the request."""

    stage: Stage | None = Field(
        None, description="Pending, Queued, Validating, Planning, Applying, Ready, Deleting or Failed."
    )
    environment: str | None = Field(None, description="The Environment the request belongs to.")
    connection_secret: str | None = Field(None, description="Name of the Secret with the connection details.")
    plan: PlanSummary | None = Field(None, description="Summary of the last plan.")
    lead_time_seconds: int | None = Field(None, description="Seconds from creation to the first Ready.")
    first_ready_time: str | None = Field(None, description="When the request first became Ready (RFC 3339).")
    last_run: RunInfo | None = Field(None, description="The last OpenTofu run.")
    failures: int = Field(0, description="Consecutive failed attempts.")
    next_retry_time: str | None = Field(None, description="When the next attempt is due after a failure.")
    monthly_cost: str | None = Field(None, description="Monthly cost by the golden path's cost model.")
    outputs: list[str] = Field(default_factory=list, description="Names (never values) of the outputs in the Secret.")
    last_drift_check_time: str | None = Field(None, description="When drift was last checked (RFC 3339).")
    applied_digest: str | None = Field(
        None,
        description="Digest of everything the last successful apply depended on (spec generation, golden path "
        "generation and module digest, parameters after defaults, the module's variables, the credentials "
        "Secret's resourceVersion): while it matches, a Ready request needs no run.",
    )
    queue: QueueInfo | None = Field(None, description="Set while the request's run waits for a run slot.")
    revision: int | None = Field(None, description="The golden path revision the request was last applied with.")
    commit: str | None = Field(None, description="The module commit of that revision (git sources).")
