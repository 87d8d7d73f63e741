"""Feedback: a developer rates a golden path or the platform, 0-10, in their environment's namespace.

The scorecard turns these into a Net Promoter Score per quarter and per golden path. A Feedback
lives in an Environment's namespace and counts for that environment's team: the namespace is the
team, so nobody can rate as another team (RBAC lets only a team's members and the platform team
create or read Feedback there), and comments stay with the team and the platform team.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import Field

from blacktop.api.common import DNS_SUBDOMAIN, ConditionedStatus, SpecModel

MAX_COMMENT = 2000


class FeedbackSpec(SpecModel):
    """One developer's rating."""

    score: int = Field(
        ge=0,
        le=10,
        description="How likely you are to recommend it to a colleague: 0 (not at all) to 10 (extremely).",
    )
    golden_path: str | None = Field(
        None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="The golden path rated (see `kubectl get goldenpaths`); leave out to rate the platform as a whole.",
    )
    comment: str | None = Field(
        None,
        max_length=MAX_COMMENT,
        description="What works, what does not. Readable by your team and the platform team, never by other teams.",
    )


class FeedbackCategory(StrEnum):
    """Net Promoter Score buckets."""

    PROMOTER = "Promoter"  # 9-10
    PASSIVE = "Passive"  # 7-8
    DETRACTOR = "Detractor"  # 0-6


class FeedbackStatus(ConditionedStatus):
    """How the rating is counted."""

    team: str | None = Field(None, description="The team it counts for (the team of the namespace's Environment).")
    quarter: str | None = Field(None, description="The quarter it counts in, by creation time, e.g. 2026-Q1.")
    category: FeedbackCategory | None = Field(None, description="Promoter (9-10), Passive (7-8) or Detractor (0-6).")


def category(score: int) -> FeedbackCategory:
    """The NPS bucket of a score."""
    if score >= 9:
        return FeedbackCategory.PROMOTER
    if score >= 7:
        return FeedbackCategory.PASSIVE
    return FeedbackCategory.DETRACTOR


def quarter_of(moment: datetime) -> str:
    """``2026-Q1`` for any time in January to March 2026 (UTC)."""
    moment = moment.astimezone(UTC)
    return f"{moment.year}-Q{(moment.month - 1) // 3 + 1}"
