"""Shared API building blocks: base models, Condition, Subject, Tier, and pure value helpers.

Wire format is camelCase (Kubernetes style); Python attributes are snake_case. Specs forbid unknown
fields so a typo is an error at admission; statuses ignore them so older operators can read newer
objects. Money is a decimal string ("120.50"), never a float.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
MONEY = r"^[0-9]{1,9}(\.[0-9]{1,2})?$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
DURATION = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
CURRENCY = r"^[A-Z]{3}$"
# A condition's message is for people: a few lines, never a dump. Bounding it here bounds every
# status Blacktop writes (three conditions repeating a 100 KB message once made every later
# admission review of the object larger than the webhook accepts).
MAX_CONDITION_MESSAGE = 2048
TRUNCATED = " ... (truncated)"

# Constrained strings for list items and map values (so every schema node keeps its type).
DnsLabel = Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]
Money = Annotated[str, Field(pattern=MONEY, max_length=16)]
ShortName = Annotated[str, Field(max_length=253)]


class SpecModel(BaseModel):
    """Base of spec models: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=False)


class StatusModel(BaseModel):
    """Base of status models: camelCase on the wire, unknown fields ignored (forward compatible)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Tier(StrEnum):
    """How critical an environment is; guardrails and golden paths differ by tier."""

    DEV = "dev"
    STAGING = "staging"
    PROD = "prod"


class SubjectKind(StrEnum):
    """RBAC subject kinds a person can be named by."""

    USER = "User"
    GROUP = "Group"


class Subject(SpecModel):
    """A user or group that is granted access."""

    kind: SubjectKind = Field(description="User or Group.")
    name: str = Field(
        min_length=1, max_length=253, description="User name or group name as the cluster's authenticator reports it."
    )


class Condition(StatusModel):
    """One aspect of an object's state, in the shape of metav1.Condition."""

    type: str = Field(description="What this condition is about, in CamelCase (Ready, Reconciling, ...).")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="Machine-readable CamelCase reason for the last transition.")
    message: str = Field("", description="Human-readable details: what happened and what to do about it.")
    observed_generation: int | None = Field(None, description="The .metadata.generation this condition was set for.")
    last_transition_time: str = Field(description="When the status last changed (RFC 3339).")

    @field_validator("message")
    @classmethod
    def _bounded(cls, message: str) -> str:
        return bounded(message, MAX_CONDITION_MESSAGE)


class ConditionedStatus(StatusModel):
    """Base of every kind's status: conditions with a summary Ready, and the generation they describe."""

    observed_generation: int | None = Field(None, description="The .metadata.generation this status describes.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Current state; Ready summarises it (Reconciling and Stalled appear while they apply).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


def bounded(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying so when it was cut."""
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATED)] + TRUNCATED


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, the way Kubernetes writes timestamps."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """Parse a Kubernetes timestamp (RFC 3339, UTC, optional fractional seconds)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


_DURATION_RE = re.compile(DURATION)


def parse_duration(text: str) -> timedelta:
    """``"1h30m"`` → 90 minutes. Raises ValueError for anything else (including the empty string)."""
    match = _DURATION_RE.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"invalid duration {text!r}: use hours, minutes and seconds like 72h, 90m, 1h30m, 30s")
    hours, minutes, seconds = (int(g[:-1]) if g else 0 for g in match.groups())
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


def money_to_cents(text: str) -> int:
    """``"120.5"`` → 12050. Raises ValueError for anything but a non-negative decimal with ≤ 2 places."""
    if not re.fullmatch(MONEY, text):
        raise ValueError(f"invalid amount {text!r}: use a decimal like 120 or 120.50")
    whole, _, frac = text.partition(".")
    return int(whole) * 100 + int((frac + "00")[:2])


def cents_to_money(cents: int) -> str:
    """12050 → ``"120.50"``."""
    if cents < 0:
        raise ValueError("amounts are never negative")
    return f"{cents // 100}.{cents % 100:02d}"


def cel(rule: str, message: str, *, reason: str | None = None) -> dict[str, Any]:
    """An ``x-kubernetes-validations`` entry (a CEL rule the apiserver itself enforces)."""
    entry: dict[str, Any] = {"rule": rule, "message": message}
    if reason:
        entry["reason"] = reason
    return entry


def immutable(field: str, hint: str) -> dict[str, Any]:
    """Schema extra making a field immutable once set."""
    return {"x-kubernetes-validations": [cel("self == oldSelf", f"{field} is immutable; {hint}")]}


CONDITIONS_FIELD: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}
