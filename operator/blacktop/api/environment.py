"""Environment: a team's namespace with quota, limits, network policy, RBAC, an optional TTL and budget."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum

from pydantic import Field

from blacktop.api.common import (
    CURRENCY,
    DNS_LABEL,
    DURATION,
    MONEY,
    QUANTITY,
    ConditionedStatus,
    DnsLabel,
    SpecModel,
    StatusModel,
    Subject,
    Tier,
    cel,
    immutable,
    parse_duration,
)
from blacktop.api.notifications import NotificationChannel

__all__ = ["parse_duration"]

# An environment whose TTL runs out within this window is Expiring (a condition, a notice, a gauge).
EXPIRING_WITHIN = timedelta(hours=24)


class Quota(SpecModel):
    """Hard limits for the whole namespace (a ResourceQuota)."""

    cpu: str = Field(
        "4",
        pattern=QUANTITY,
        max_length=32,
        description="CPU cores all pods may request and use together, e.g. 4 or 500m.",
    )
    memory: str = Field(
        "8Gi", pattern=QUANTITY, max_length=32, description="Memory all pods may request and use together, e.g. 8Gi."
    )
    pods: int = Field(20, ge=1, le=10000, description="How many pods may exist at once.")
    storage: str = Field(
        "20Gi",
        pattern=QUANTITY,
        max_length=32,
        description="Persistent volume storage all claims may request together.",
    )


class ResourceAmounts(SpecModel):
    """CPU and memory of one container."""

    cpu: str = Field(pattern=QUANTITY, max_length=32, description="CPU, e.g. 100m.")
    memory: str = Field(pattern=QUANTITY, max_length=32, description="Memory, e.g. 128Mi.")


class Limits(SpecModel):
    """Container defaults (a LimitRange) for pods that do not say what they need."""

    default_request: ResourceAmounts = Field(
        default_factory=lambda: ResourceAmounts(cpu="100m", memory="128Mi"),
        description="Requests given to containers that set none.",
        json_schema_extra={"default": {"cpu": "100m", "memory": "128Mi"}},
    )
    default: ResourceAmounts = Field(
        default_factory=lambda: ResourceAmounts(cpu="500m", memory="512Mi"),
        description="Limits given to containers that set none.",
        json_schema_extra={"default": {"cpu": "500m", "memory": "512Mi"}},
    )


class Budget(SpecModel):
    """What the environment may cost per month; guardrail policies compare requests against it."""

    monthly: str = Field(
        pattern=MONEY, max_length=16, description='Monthly budget as a decimal amount, e.g. "500" or "499.99".'
    )
    currency: str = Field("USD", pattern=CURRENCY, description="ISO 4217 currency code of the amount.")


class NetworkIsolation(StrEnum):
    """Whether other namespaces may reach the environment's pods."""

    ISOLATED = "Isolated"
    OPEN = "Open"


class NetworkPolicySpec(SpecModel):
    """Ingress isolation of the namespace."""

    isolation: NetworkIsolation = Field(
        NetworkIsolation.ISOLATED,
        description="Isolated (default): only pods of the namespace itself, the monitoring namespace and "
        "allowFromNamespaces may connect. Open: no NetworkPolicy is created.",
    )
    allow_from_namespaces: list[DnsLabel] = Field(
        default_factory=list,
        max_length=32,
        description="Further namespaces whose pods may connect (when Isolated).",
    )


class EnvironmentSpec(SpecModel):
    """What a team asks for: a namespace of this Environment's name, fenced and sized."""

    team: str = Field(
        pattern=DNS_LABEL,
        max_length=63,
        description="The team that owns the environment. Members of the team's group may create ServiceRequests in it.",
        json_schema_extra=immutable("team", "create a new Environment for another team"),
    )
    tier: Tier = Field(
        description="dev, staging or prod: decides which golden paths and guardrails apply.",
        json_schema_extra=immutable("tier", "create a new Environment in the other tier"),
    )
    owners: list[Subject] = Field(
        default_factory=list,
        max_length=64,
        description="Users or groups who get the editor role besides the team's group.",
    )
    description: str | None = Field(None, max_length=1024, description="What the environment is for.")
    ttl: str | None = Field(
        None,
        pattern=DURATION,
        max_length=32,
        description="Time to live from creation, e.g. 72h, 90m or 1h30m (10s to 8760h). When it runs out, the "
        "environment, its ServiceRequests (and what they provisioned) and its namespace are deleted.",
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self != ''", "ttl must not be empty; leave it out for no expiry"),
                cel(
                    "self == '' || (duration(self) >= duration('10s') && duration(self) <= duration('8760h'))",
                    "ttl must be between 10s and 8760h (one year)",
                ),
            ]
        },
    )
    quota: Quota = Field(
        default_factory=Quota, json_schema_extra={"default": {}}, description="Namespace-wide resource quota."
    )
    limits: Limits = Field(
        default_factory=Limits, json_schema_extra={"default": {}}, description="Default container requests and limits."
    )
    budget: Budget | None = Field(None, description="Monthly budget, checked by guardrail policies.")
    network_policy: NetworkPolicySpec = Field(
        default_factory=NetworkPolicySpec,
        json_schema_extra={"default": {}},
        description="Network isolation of the namespace.",
    )
    notifications: list[NotificationChannel] = Field(
        default_factory=list,
        max_length=8,
        description="Where to send what happens to the environment and its ServiceRequests (Ready, Failed, "
        "AwaitingApproval, Drifted, Expiring, BudgetNearlySpent): Slack-compatible or HMAC-signed JSON webhooks.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class EnvironmentCost(StatusModel):
    """What the environment's ServiceRequests cost per month, by the golden paths' cost models."""

    monthly: str = Field("0.00", description="Sum of the monthly cost of the environment's ServiceRequests.")
    budget: str | None = Field(None, description="The monthly budget from the spec, if any.")
    currency: str = Field("USD", description="Currency of the amounts.")
    service_requests: int = Field(0, description="How many ServiceRequests the environment has.")


class EnvironmentStatus(ConditionedStatus):
    """What Blacktop observed and did."""

    namespace: str | None = Field(None, description="The environment's namespace.")
    expires_at: str | None = Field(None, description="When the TTL runs out (RFC 3339), if a ttl is set.")
    cost: EnvironmentCost = Field(default_factory=EnvironmentCost, description="Monthly cost against the budget.")


NAME_RULES = [
    cel(
        "self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
        "the Environment name becomes its namespace name, so it must be a DNS label of at most 63 characters",
    ),
    cel(
        "!(self.metadata.name in ['default', 'blacktop-system']) && !self.metadata.name.startsWith('kube-')",
        "the Environment name becomes its namespace name: default, kube-* and blacktop-system are reserved",
    ),
]
