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
    Subject,
    cel,
    immutable,
)
from blacktop.api.history import RequestHistory

# The request's name reaches label values (at most 63 characters), Secret and ConfigMap names, the
# workspace folder and the names modules derive from it: a DNS label keeps all of them valid.
NAME_RULES = [
    cel(
        "self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
        "a ServiceRequest name must be a DNS label of at most 63 characters (lowercase letters, digits and '-'): "
        "it names the request's Secret, labels and the infrastructure made for it",
    ),
]


class Stage(StrEnum):
    """Where a request is, in one word (the conditions carry the detail)."""

    PENDING = "Pending"
    QUEUED = "Queued"
    VALIDATING = "Validating"
    PLANNING = "Planning"
    WAITING_FOR_INPUTS = "WaitingForInputs"  # composition: a source request is not Ready yet
    AWAITING_APPROVAL = "AwaitingApproval"  # a Plan-stage rule asks a human to approve this plan
    APPLYING = "Applying"
    READY = "Ready"
    DELETING = "Deleting"
    FAILED = "Failed"


class InputSource(SpecModel):
    """Where an input's value comes from: an output of another ServiceRequest in the same namespace."""

    service_request: str = Field(
        max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the ServiceRequest in this namespace."
    )
    output: str = Field(
        max_length=128,
        pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$",
        description="One of the outputs its golden path declares (`kubectl get goldenpath <name> -o yaml`).",
    )


class Input(SpecModel):
    """A module variable filled from another request's output (e.g. a service's database uri)."""

    variable: str = Field(
        max_length=128,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="The module variable of this request's golden path that receives the value.",
    )
    from_: InputSource = Field(alias="from", description="The source request and output.")


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
        description="Parameters, validated against the golden path's schema (`kubectl get goldenpath <name> -o yaml`). "
        "At most 256 of them, 32 KiB as JSON, nested at most 16 levels.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True, "maxProperties": 256},
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
    inputs: list[Input] = Field(
        default_factory=list,
        max_length=32,
        description="Module variables taken from other ServiceRequests' outputs in this namespace; the request "
        "waits until its sources are Ready and is applied again when their outputs change.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["variable"]},
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


class ApprovalState(StrEnum):
    """Where an approval stands."""

    PENDING = "Pending"  # the plan waits for a human
    APPROVED = "Approved"  # a human approved this plan; it was (or is being) applied


class ApprovalRule(StatusModel):
    """A rule that asked for approval."""

    policy: str = Field(description="The GuardrailPolicy.")
    rule: str = Field(description="The rule.")
    message: str = Field("", description="The rule's message.")


class Approval(StatusModel):
    """The human step of a request: which plan waits (or waited) for whom, and who approved it."""

    operation: str = Field(description="apply (provisioning) or drift (a drift correction).")
    state: ApprovalState = Field(description="Pending or Approved.")
    plan_digest: str = Field(description="Digest of the plan to approve: annotate blacktop.dev/approve=<it>.")
    plan: str = Field("", description="What the plan does, e.g. '1 to add, 0 to change, 0 to destroy'.")
    monthly_cost: str | None = Field(None, description="Monthly cost of the request with this plan.")
    rules: list[ApprovalRule] = Field(default_factory=list, description="The rules that asked for approval.")
    approvers: list[Subject] = Field(default_factory=list, description="Who may approve (platform admins too).")
    self_approval: bool = Field(False, description="Whether the requester may approve their own request.")
    requested_by: str | None = Field(None, description="Who made the change that needs approval.")
    requested_at: str = Field(description="When the plan started waiting (RFC 3339).")
    approved_by: str | None = Field(None, description="Who approved the plan.")
    approved_at: str | None = Field(None, description="When it was approved (RFC 3339).")
    waited_seconds: int | None = Field(None, description="Seconds the plan waited for its approval.")
    command: str = Field("", description="The kubectl command that approves this plan (or: blacktop approve).")


class InputStatus(StatusModel):
    """Where one input stands (never its value)."""

    variable: str = Field(description="The module variable.")
    service_request: str = Field(description="The source ServiceRequest.")
    output: str = Field(description="The source's output.")
    ready: bool = Field(False, description="Whether the source is Ready and delivers the output.")
    revision: str | None = Field(
        None, description="resourceVersion of the source's connection Secret the last apply used."
    )


class QueueInfo(StatusModel):
    """Where a run waiting for a run slot stands (see the operator's fair queue)."""

    position: int = Field(description="1: the next run of its team to start; runs of other teams are interleaved.")
    ahead: int = Field(description="Runs waiting before this one, all teams counted.")
    team: str = Field(description="The team whose share of run slots it waits for.")
    since: str = Field(description="When it started waiting (RFC 3339).")


class ServiceRequestStatus(ConditionedStatus):
    """Progress and result of the request."""

    stage: Stage | None = Field(
        None,
        description="Pending, Queued, Validating, WaitingForInputs, Planning, AwaitingApproval, Applying, Ready, "
        "Deleting or Failed.",
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
    approval: Approval | None = Field(
        None, description="The last approval this request needed (Pending: waiting; Approved: who and when)."
    )
    inputs: list[InputStatus] = Field(default_factory=list, description="The request's inputs and their sources.")


# The CRD's status schema: the reconciler's ServiceRequestStatus plus `history`. The history is
# written by the scorecard's history recorder alone (controllers/history.py); the reconciler decodes
# and writes ServiceRequestStatus, which leaves it out, so its merge patches never touch it.
class ServiceRequestStatusSchema(ServiceRequestStatus):
    """Progress and result of the request, and the history the platform scorecard is derived from."""

    history: RequestHistory | None = Field(
        None, description="What the platform scorecard needs from the request's past (changes, trouble, human steps)."
    )
