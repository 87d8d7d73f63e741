"""PlatformScorecard: the platform measured as a product, one cluster-scoped object per metric.

``kubectl get platformscorecards`` is the scorecard: one row per metric with its value, its target
and whether the target is met. The operator creates the ten objects and keeps their status current;
the platform team changes a target with ``spec.target`` (and lists every engineering team in
``spec.knownTeams`` of ``weekly-active-teams``). The CRD itself refuses names that are no metric,
targets in the wrong format and settings on the wrong metric.

Also here: the scorecard's ledger, the operator's memory of what the cluster no longer shows (teams'
first environments, deleted environments and requests within the windows), kept in a ConfigMap.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from blacktop.api.common import ConditionedStatus, DnsLabel, SpecModel, StatusModel, cel
from blacktop.api.history import RequestHistory

MAX_KNOWN_TEAMS = 1000
MAX_BREAKDOWN = 300


class Metric(StrEnum):
    """The scorecard's metrics; each is one PlatformScorecard object of that name."""

    TEAM_ONBOARDING = "team-onboarding"
    ENVIRONMENT_ONBOARDING = "environment-onboarding"
    WEEKLY_ACTIVE_TEAMS = "weekly-active-teams"
    GOLDEN_PATH_ADOPTION = "golden-path-adoption"
    SELF_SERVICE_RATE = "self-service-rate"
    CHANGE_LEAD_TIME = "change-lead-time"
    CHANGE_FREQUENCY = "change-frequency"
    WEEKLY_TROUBLE = "weekly-trouble"
    TIME_TO_RECOVERY = "time-to-recovery"
    DEVELOPER_SATISFACTION = "developer-satisfaction"


DURATION_METRICS = (
    Metric.TEAM_ONBOARDING,
    Metric.ENVIRONMENT_ONBOARDING,
    Metric.CHANGE_LEAD_TIME,
    Metric.TIME_TO_RECOVERY,
)
PERCENT_METRICS = (Metric.WEEKLY_ACTIVE_TEAMS, Metric.GOLDEN_PATH_ADOPTION, Metric.SELF_SERVICE_RATE)

TARGET_DURATION = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
TARGET_PERCENT = r"^(100(\.0+)?|[0-9]{1,2}(\.[0-9]+)?)%$"
TARGET_SCORE = r"^-?(100|[0-9]{1,2})$"
TARGET_TROUBLE = r"^(decreasing|[0-9]{1,6})$"


def _names(metrics: tuple[Metric, ...] | list[Metric]) -> str:
    return "[" + ", ".join(f"'{m.value}'" for m in metrics) + "]"


def _target_rule(metrics: tuple[Metric, ...], pattern: str, message: str) -> dict[str, str]:
    return cel(
        f"!has(self.spec.target) || !(self.metadata.name in {_names(metrics)}) || "
        f"(self.spec.target != '' && self.spec.target.matches(r'{pattern}'))",
        message,
    )


ROOT_RULES = [
    cel(
        f"self.metadata.name in {_names(list(Metric))}",
        "a PlatformScorecard is named after its metric: " + ", ".join(m.value for m in Metric),
    ),
    _target_rule(DURATION_METRICS, TARGET_DURATION, "the target of this metric is a duration such as 30m, 1h or 4h"),
    _target_rule(PERCENT_METRICS, TARGET_PERCENT, "the target of this metric is a percentage such as 90%"),
    _target_rule(
        (Metric.DEVELOPER_SATISFACTION,),
        TARGET_SCORE,
        "the target of developer-satisfaction is an NPS from -100 to 100",
    ),
    _target_rule(
        (Metric.WEEKLY_TROUBLE,),
        TARGET_TROUBLE,
        "the target of weekly-trouble is `decreasing` (fewer than the week before) or a maximum count such as 5",
    ),
    cel(
        f"!has(self.spec.target) || self.metadata.name != '{Metric.CHANGE_FREQUENCY.value}'",
        "change-frequency is informational and takes no target",
    ),
    cel(
        f"!has(self.spec.knownTeams) || self.metadata.name == '{Metric.WEEKLY_ACTIVE_TEAMS.value}'",
        f"knownTeams belongs on {Metric.WEEKLY_ACTIVE_TEAMS.value}",
    ),
]


class PlatformScorecardSpec(SpecModel):
    """What the platform team sets: the target, and (weekly-active-teams) every team there is."""

    target: str | None = Field(
        None,
        max_length=32,
        description="The target; unset: the default. A duration (30m) for team-onboarding, environment-onboarding, "
        "change-lead-time and time-to-recovery (met when below); a percentage (90%) for weekly-active-teams (met "
        "when at least), golden-path-adoption and self-service-rate (met when above); an NPS (40) for "
        "developer-satisfaction (met when above); `decreasing` or a maximum count for weekly-trouble. "
        "change-frequency has none.",
    )
    known_teams: list[DnsLabel] = Field(
        default_factory=list,
        max_length=MAX_KNOWN_TEAMS,
        description="weekly-active-teams only: every engineering team, so teams without an Environment count as "
        "inactive (teams with an Environment are always known).",
    )


class BreakdownEntry(StatusModel):
    """The metric for one team, golden path, failure class or quarter."""

    dimension: str = Field(description="team, goldenPath, unusedGoldenPath, failureClass or quarter.")
    key: str = Field(description="Which team, golden path (`platform`: the platform as a whole), class or quarter.")
    value: float | None = Field(None, description="The figure for it (same unit as the metric).")
    display: str = Field(description="The figure in words.")


class PlatformScorecardStatus(ConditionedStatus):
    """The figure, its target, whether it is met (condition TargetMet), and its breakdown."""

    description: str | None = Field(None, description="What the metric measures.")
    value: float | None = Field(
        None, description="The figure (seconds, a ratio 0-1, a count or an NPS); unset: no data."
    )
    display: str | None = Field(None, description="The figure in words, e.g. 12m 30s or 75%.")
    unit: str | None = Field(None, description="seconds, ratio, count or nps.")
    target: str | None = Field(None, description="The target in force, e.g. < 30m.")
    window: str | None = Field(None, description="What the figure covers, e.g. 7d or 2026-Q1.")
    summary: str | None = Field(None, description="One sentence on the figure.")
    breakdown: list[BreakdownEntry] = Field(
        default_factory=list, max_length=MAX_BREAKDOWN, description="The figure per team, golden path, class, quarter."
    )


# -- the ledger: the scorecard's memory, a ConfigMap in the operator's namespace ----------------------


class TeamRecord(StatusModel):
    """What is known of a team, kept after its environments are gone."""

    name: str = Field(description="The team.")
    first_environment_time: str = Field(description="When its first Environment was created.")
    onboarded_time: str | None = Field(None, description="When one of its ServiceRequests was first Ready.")
    last_activity_time: str | None = Field(
        None, description="When it last created or changed an Environment or request."
    )


class EnvironmentRecord(StatusModel):
    """An Environment of the onboarding window, live or deleted."""

    name: str = Field(description="The Environment.")
    uid: str = Field(description="Its uid (a re-created environment of the same name is another one).")
    team: str = Field(description="Its team.")
    tier: str = Field(description="Its tier.")
    created_at: str = Field(description="Its creation time.")
    onboarded_at: str | None = Field(None, description="When a ServiceRequest in it was first Ready.")
    deleted_at: str | None = Field(None, description="When it was deleted.")


class GoldenPathRecord(StatusModel):
    """When a golden path was last in use."""

    name: str = Field(description="The golden path.")
    in_use: bool = Field(False, description="Whether it had ServiceRequests when last looked at.")
    last_used_time: str | None = Field(None, description="When its last ServiceRequest went away.")


class RetiredRequest(StatusModel):
    """A deleted ServiceRequest's facts, kept while they are inside a window."""

    uid: str = Field(description="Its uid.")
    golden_path: str = Field(description="Its golden path.")
    environment: str = Field(description="Its environment.")
    team: str = Field(description="Its team.")
    tier: str = Field(description="Its environment's tier.")
    created_at: str = Field(description="Its creation time.")
    deleted_at: str = Field(description="When it was deleted.")
    first_ready_time: str | None = Field(None, description="When it was first Ready.")
    history: RequestHistory = Field(default_factory=RequestHistory, description="Its history at deletion.")


class ScorecardLedger(StatusModel):
    """Everything the scorecard remembers; bounded (see :mod:`blacktop.metrics.ledger`)."""

    teams: list[TeamRecord] = Field(default_factory=list, description="Teams.")
    environments: list[EnvironmentRecord] = Field(default_factory=list, description="Environments of the window.")
    golden_paths: list[GoldenPathRecord] = Field(default_factory=list, description="Golden paths.")
    retired_requests: list[RetiredRequest] = Field(default_factory=list, description="Deleted requests of the window.")
