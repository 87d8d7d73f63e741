"""GoldenPath: a catalog entry of the platform team — a module, its parameter schema, outputs, cost."""

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
    QUANTITY,
    ConditionedStatus,
    Money,
    SpecModel,
    Tier,
    cel,
)

MODULE_PATH = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"


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


class Monitoring(SpecModel):
    """Monitoring wired for every request of this golden path."""

    rules: list[AlertRule] = Field(default_factory=list, max_length=64, description="Alert rules (a PrometheusRule).")
    dashboard: str | None = Field(
        None, max_length=262144, description="Grafana dashboard JSON (a ConfigMap for the sidecar)."
    )


IMAGE = r"^[a-zA-Z0-9][a-zA-Z0-9._/:@-]*$"


class ResourceAmounts(SpecModel):
    """CPU and memory, as Kubernetes quantities."""

    cpu: str | None = Field(None, pattern=QUANTITY, max_length=32, description="CPU, e.g. 500m or 2.")
    memory: str | None = Field(None, pattern=QUANTITY, max_length=32, description="Memory, e.g. 512Mi or 2Gi.")


class RunnerResources(SpecModel):
    """Requests and limits of a runner pod; what is left out comes from the operator's defaults."""

    requests: ResourceAmounts = Field(default_factory=ResourceAmounts, description="What the scheduler reserves.")
    limits: ResourceAmounts = Field(
        default_factory=ResourceAmounts, description="The most it may use (over the memory limit it is OOM-killed)."
    )


class RunnerSpec(SpecModel):
    """How this golden path's runs run in pod mode (BLACKTOP_RUNNER=pod); ignored by the local runner."""

    image: str | None = Field(
        None,
        pattern=IMAGE,
        max_length=512,
        description="Image of the runner pods (default: the operator's image); it must contain blacktop, "
        "tofu and the providers the module uses.",
    )
    resources: RunnerResources = Field(
        default_factory=RunnerResources, description="CPU and memory of each runner pod (defaults from the operator)."
    )


class GoldenPathSpec(SpecModel):
    """A self-service offering: what a ServiceRequest naming this golden path gets."""

    description: str = Field(max_length=1024, description="What developers get, in one or two sentences.")
    module: str = Field(
        max_length=253,
        pattern=MODULE_PATH,
        description="Folder of the OpenTofu/Terraform module under the operator's modules root, e.g. postgres-database.",
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!self.contains('..') && !self.contains('://')", "module must be a folder under the modules root")
            ]
        },
    )
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
    runner: RunnerSpec = Field(
        default_factory=RunnerSpec, description="The runner pods of its runs in pod mode: image, CPU and memory."
    )


class GoldenPathStatus(ConditionedStatus):
    """Whether the golden path can be used."""

    module_digest: str | None = Field(None, description="sha256 of the module's files.")
    providers: list[str] = Field(default_factory=list, description="Providers the module uses.")
    requests: int = Field(0, description="How many ServiceRequests use it (adoption).")
