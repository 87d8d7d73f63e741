"""Every condition type and reason Blacktop writes, as constants, and pure helpers to set them.

Reasons are CamelCase and stable: alerts, dashboards (failure rate by class) and users' scripts
depend on them. Add, never rename.
"""

from __future__ import annotations

from blacktop.api.common import Condition


class ConditionType:
    """Condition types."""

    READY = "Ready"
    RECONCILING = "Reconciling"  # kstatus: abnormal-true while work is in progress
    STALLED = "Stalled"  # kstatus: abnormal-true when progress needs a human
    NAMESPACE_READY = "NamespaceReady"
    EXPIRING = "Expiring"
    VALIDATED = "Validated"
    PARAMETERS_VALID = "ParametersValid"
    POLICY_COMPLIANT = "PolicyCompliant"
    PLANNED = "Planned"
    APPLIED = "Applied"
    DRIFTED = "Drifted"
    MONITORING_CONFIGURED = "MonitoringConfigured"
    DELETING = "Deleting"
    UPGRADE_AVAILABLE = "UpgradeAvailable"  # ServiceRequest: a different revision is due for it
    ROLLED_OUT = "RolledOut"  # GoldenPath: every request that follows rollouts runs the target revision
    NOTIFICATIONS_CONFIGURED = "NotificationsConfigured"
    TARGET_MET = "TargetMet"  # a PlatformScorecard's figure meets its target


class Reason:
    """Condition reasons (and Event reasons)."""

    RECONCILED = "Reconciled"
    PROGRESSING = "Progressing"
    QUEUED = "Queued"  # waiting for a run slot (its position is in the message and status.queue)
    NAMESPACE_CONFLICT = "NamespaceConflict"
    INVALID_SPEC = "InvalidSpec"
    APPLY_CHILD_FAILED = "ApplyChildFailed"
    EXPIRED = "Expired"
    DELETING = "Deleting"
    DESTROYED = "Destroyed"
    WAITING_FOR_SERVICE_REQUESTS = "WaitingForServiceRequests"
    MODULE_NOT_FOUND = "ModuleNotFound"
    INVALID_SCHEMA = "InvalidSchema"
    FORBIDDEN_PROVISIONER = "ForbiddenProvisioner"
    PROVIDER_NOT_ALLOWED = "ProviderNotAllowed"
    GOLDEN_PATH_NOT_FOUND = "GoldenPathNotFound"
    GOLDEN_PATH_NOT_READY = "GoldenPathNotReady"
    CREDENTIALS_NOT_FOUND = "CredentialsNotFound"
    ENVIRONMENT_NOT_FOUND = "EnvironmentNotFound"
    TIER_NOT_ALLOWED = "TierNotAllowed"
    INVALID_PARAMETERS = "InvalidParameters"
    POLICY_DENIED = "PolicyDenied"
    POLICY_WARNED = "PolicyWarned"
    PLAN_FAILED = "PlanFailed"
    APPLY_FAILED = "ApplyFailed"
    DESTROY_FAILED = "DestroyFailed"
    STATE_LOCKED = "StateLocked"
    STATE_LOCK_RECOVERED = "StateLockRecovered"
    PROVIDER_ERROR = "ProviderError"
    TIMEOUT = "Timeout"
    # Pod mode (BLACKTOP_RUNNER=pod): the runner pod, not the tool, is why a run failed or waited.
    RUNNER_FAILED = "RunnerFailed"  # it could not start (image, scheduling) or died without answering
    RUNNER_EVICTED = "RunnerEvicted"  # it was evicted or deleted while it ran
    RUNNER_OUT_OF_MEMORY = "RunnerOutOfMemory"  # it was OOM-killed: its memory limit is too small
    RUNNER_ADOPTED = "RunnerAdopted"  # a runner an earlier operator process started was waited for
    # Failures of the operator's own infrastructure, not of the request: retried soon, never Stalled.
    API_UNAVAILABLE = "ApiUnavailable"  # the API server could not be reached or did not answer in time
    WORKSPACE_ERROR = "WorkspaceError"  # the operator's disk: no space left, read-only, tool not startable
    # The API server refused one of the operator's own calls (RBAC, validation): needs the platform team.
    API_REJECTED = "ApiRejected"
    MODULE_UNAVAILABLE = "ModuleUnavailable"  # the golden path's module cannot be read on this operator
    INTERNAL_ERROR = "InternalError"  # a bug: the message names the exception, the log has the traceback
    PROVISIONED = "Provisioned"
    NO_CHANGES = "NoChanges"
    DRIFT_DETECTED = "DriftDetected"
    DRIFT_CORRECTED = "DriftCorrected"
    MONITORING_UNAVAILABLE = "MonitoringUnavailable"
    MONITORING_CONFIGURED = "MonitoringConfigured"
    BACKOFF_RETRYING = "BackoffRetrying"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    COMPILE_ERROR = "CompileError"
    ACTIVE = "Active"
    COST_LIMIT_EXCEEDED = "CostLimitExceeded"
    RESERVED_NAME = "ReservedName"
    MODULE_OUTSIDE_ROOT = "ModuleOutsideRoot"
    SECRET_CONFLICT = "SecretConflict"  # noqa: S105 (a reason, not a password)
    ABANDONED = "Abandoned"
    LEFTOVER_DESTROYED = "LeftoverDestroyed"
    LEFTOVER_NOT_DESTROYED = "LeftoverNotDestroyed"
    REVISION_CREATED = "RevisionCreated"
    REVISION_NOT_FOUND = "RevisionNotFound"
    SOURCE_UNAVAILABLE = "SourceUnavailable"
    UP_TO_DATE = "UpToDate"
    PINNED = "Pinned"
    MANUAL_UPGRADE = "ManualUpgrade"
    ROLLOUT_PENDING = "RolloutPending"
    ROLLOUT_PROGRESSING = "RolloutProgressing"
    ROLLOUT_HALTED = "RolloutHalted"
    ROLLOUT_COMPLETE = "RolloutComplete"
    ROLLOUT_WAITING = "WaitingForOwners"
    UPGRADED = "Upgraded"
    EXPIRING_SOON = "ExpiringSoon"  # Environment: the TTL runs out within 24 hours
    NOTIFICATION_CHANNEL_INVALID = "NotificationChannelInvalid"  # a channel's Secret is missing or incomplete
    NOTIFICATION_FAILED = "NotificationFailed"  # Event: a message could not be delivered (after its retries)
    AWAITING_APPROVAL = "AwaitingApproval"  # a plan waits for a human's approval
    APPROVED = "Approved"  # Event: a plan was approved (by whom, after how long)
    APPROVAL_SUPERSEDED = "ApprovalSuperseded"  # Event: an approval names an earlier plan than the one waiting
    WAITING_FOR_INPUTS = "WaitingForInputs"  # composition: a source request is not Ready (or lacks the output)
    INPUTS_CHANGED = "InputsChanged"  # Event: a source's outputs changed, so the consumer is applied again
    WAITING_FOR_DEPENDENTS = "WaitingForDependents"  # deleting: requests that consume its outputs go first
    TARGET_MET = "TargetMet"
    TARGET_MISSED = "TargetMissed"
    NO_DATA = "NoData"
    NO_TARGET = "NoTarget"
    INVALID_TARGET = "InvalidTarget"
    COUNTED = "Counted"


# The Ready reasons a failed OpenTofu run ends with (the failure classes of blacktop_runs_total).
RUN_FAILURES = (
    Reason.PLAN_FAILED,
    Reason.APPLY_FAILED,
    Reason.DESTROY_FAILED,
    Reason.STATE_LOCKED,
    Reason.PROVIDER_ERROR,
    Reason.TIMEOUT,
    Reason.RUNNER_FAILED,
    Reason.RUNNER_EVICTED,
    Reason.RUNNER_OUT_OF_MEMORY,
)


# Reasons of routine progress: their Events are Normal. Every other reason of a Ready=False (and of
# Drifted=True or a failed check) is something someone may need to look at: a Warning Event.
ROUTINE = frozenset({Reason.PROGRESSING, Reason.QUEUED, Reason.DELETING, Reason.WAITING_FOR_SERVICE_REQUESTS})
# Failures of the operator's own infrastructure (see above): short backoff, never Stalled.
INFRASTRUCTURE = frozenset({Reason.API_UNAVAILABLE, Reason.WORKSPACE_ERROR})


def get_condition(conditions: list[Condition], ctype: str) -> Condition | None:
    """The condition of that type, if present."""
    return next((c for c in conditions if c.type == ctype), None)


def is_true(conditions: list[Condition], ctype: str) -> bool:
    """Whether the condition is present and True."""
    found = get_condition(conditions, ctype)
    return found is not None and found.status == "True"


def set_condition(conditions: list[Condition], new: Condition) -> list[Condition]:
    """A new list with ``new`` in place of its type; lastTransitionTime moves only when status does."""
    old = get_condition(conditions, new.type)
    if old is not None and old.status == new.status:
        new = new.model_copy(update={"last_transition_time": old.last_transition_time})
    result = [c for c in conditions if c.type != new.type]
    result.append(new)
    return sorted(result, key=lambda c: (c.type != ConditionType.READY, c.type))


def remove_condition(conditions: list[Condition], ctype: str) -> list[Condition]:
    """A new list without the condition of that type."""
    return [c for c in conditions if c.type != ctype]
