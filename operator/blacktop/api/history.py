"""A ServiceRequest's history (``status.history``): what the platform scorecard needs and no object keeps.

Kubernetes keeps the present, not the past: a request's status says it is Ready, not that it failed
three times an hour ago, nor how long its last spec change took. This small, bounded record keeps
exactly what the scorecard derives its figures from: when each generation was made and when it
became Ready (lead time for changes, change frequency), the open and the last closed episodes of
trouble (trouble per week, time to recovery), and the human steps it needed (self-service rate).

It is written by the scorecard's history recorder alone (:mod:`blacktop.controllers.history`), from
the status the reconciler writes, never by the reconciler itself: the reconciler's status model
(:class:`~blacktop.api.servicerequest.ServiceRequestStatus`) leaves ``history`` out, so its merge
patches never touch it. Every list is capped; times are RFC 3339 strings like the rest of status.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from blacktop.api.common import StatusModel

# Caps on each list: enough for a week of a busy request, bounded for etcd and for every watcher.
MAX_CHANGES = 10
MAX_EPISODES = 10
MAX_HUMAN_STEPS = 10


class HumanStepKind(StrEnum):
    """A step a person had to take for a request to get where it is (it was not self-service)."""

    APPROVAL = "Approval"  # the Approved condition turned True (approvals, issue 17)
    MANUAL_RETRY = "ManualRetry"  # someone changed the spec while the request was in trouble
    PLATFORM_EDIT = "PlatformEdit"  # a platform admin created or changed the spec


class HumanStep(StatusModel):
    """One human step on one generation of the request."""

    kind: HumanStepKind = Field(description="Approval, ManualRetry or PlatformEdit.")
    time: str = Field(description="When it happened (RFC 3339).")
    generation: int = Field(description="The generation it concerns.")


class ChangeRecord(StatusModel):
    """A generation of the spec that reached Ready: a change delivered."""

    generation: int = Field(description="The .metadata.generation (1 is the creation).")
    changed_at: str = Field(description="When that generation was made (creation time for generation 1).")
    ready_at: str = Field(description="When the request was first Ready on that generation.")
    lead_time_seconds: int = Field(description="readyAt - changedAt, in seconds.")
    applied: bool = Field(description="Whether its apply changed something (the plan was not empty).")


class TroubleEpisode(StatusModel):
    """A stretch of trouble: from the first failure to the next Ready (what would be a support ticket)."""

    failure_class: str = Field(description="The Ready reason of the first failure (PlanFailed, PolicyDenied, ...).")
    since: str = Field(description="When the first failure was recorded (RFC 3339).")
    failures: int = Field(1, description="Failed attempts seen in the episode.")
    recovered_at: str | None = Field(None, description="When the request was Ready again (RFC 3339); open if unset.")
    recovery_seconds: int | None = Field(None, description="recoveredAt - since, in seconds.")


class RequestHistory(StatusModel):
    """The bounded history of one request (``status.history``)."""

    generation: int = Field(0, description="The newest generation the recorder has seen.")
    changed_at: str | None = Field(None, description="When that generation was made (RFC 3339).")
    changes: list[ChangeRecord] = Field(
        default_factory=list, max_length=MAX_CHANGES, description="The last generations that reached Ready."
    )
    trouble: TroubleEpisode | None = Field(None, description="The episode of trouble going on now, if any.")
    episodes: list[TroubleEpisode] = Field(
        default_factory=list, max_length=MAX_EPISODES, description="The last episodes of trouble that ended in Ready."
    )
    human_steps: list[HumanStep] = Field(
        default_factory=list, max_length=MAX_HUMAN_STEPS, description="The last human steps the request needed."
    )


class HistoryStatus(StatusModel):
    """The part of a ServiceRequest's status the history recorder writes: ``history`` and nothing else."""

    history: RequestHistory = Field(description="The request's history.")
