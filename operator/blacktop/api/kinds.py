"""The five kinds of the API and the CRD metadata that goes with each (names, scope, columns)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from blacktop.api.environment import NAME_RULES, EnvironmentSpec, EnvironmentStatus
from blacktop.api.goldenpath import GoldenPathSpec, GoldenPathStatus
from blacktop.api.goldenpathrevision import REVISION_RULES, GoldenPathRevisionSpec, GoldenPathRevisionStatus
from blacktop.api.guardrailpolicy import GuardrailPolicySpec, GuardrailPolicyStatus
from blacktop.api.servicerequest import ServiceRequestSpec, ServiceRequestStatus

GROUP = "platform.blacktop.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "blacktop"


def _ready(path: str = '.status.conditions[?(@.type=="Ready")]') -> list[dict[str, Any]]:
    return [
        {"name": "Ready", "type": "string", "jsonPath": f"{path}.status"},
        {"name": "Reason", "type": "string", "jsonPath": f"{path}.reason"},
    ]


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


@dataclass(frozen=True)
class KindInfo:
    """One kind: its models and how its CRD presents it."""

    kind: str
    plural: str
    namespaced: bool
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    short_names: list[str] = field(default_factory=list)
    columns: list[dict[str, Any]] = field(default_factory=list)
    root_validations: list[dict[str, Any]] = field(default_factory=list)
    selectable_fields: list[str] = field(default_factory=list)  # for kubectl --field-selector

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


ENVIRONMENT = KindInfo(
    kind="Environment",
    plural="environments",
    namespaced=False,
    spec=EnvironmentSpec,
    status=EnvironmentStatus,
    description="A team's namespace with quota, limits, network policy and RBAC, an optional TTL and a budget.",
    short_names=["env", "envs"],
    columns=[
        {"name": "Team", "type": "string", "jsonPath": ".spec.team"},
        {"name": "Tier", "type": "string", "jsonPath": ".spec.tier"},
        {"name": "Namespace", "type": "string", "jsonPath": ".status.namespace"},
        *_ready(),
        {"name": "Expires", "type": "string", "jsonPath": ".status.expiresAt"},
        _AGE,
    ],
    root_validations=NAME_RULES,
)

GOLDEN_PATH = KindInfo(
    kind="GoldenPath",
    plural="goldenpaths",
    namespaced=False,
    spec=GoldenPathSpec,
    status=GoldenPathStatus,
    description="A catalog entry of the platform team: a module, its parameters, outputs, cost model and monitoring.",
    short_names=["gp"],
    columns=[
        {"name": "Description", "type": "string", "jsonPath": ".spec.description"},
        {"name": "Module", "type": "string", "jsonPath": ".spec.module", "priority": 1},
        *_ready(),
        {"name": "Revision", "type": "integer", "jsonPath": ".status.latestRevision"},
        {"name": "Target", "type": "integer", "jsonPath": ".status.rollout.revision"},
        {"name": "Rollout", "type": "string", "jsonPath": ".status.rollout.phase"},
        {"name": "Progress", "type": "string", "jsonPath": ".status.rollout.progress", "priority": 1},
        {"name": "Requests", "type": "integer", "jsonPath": ".status.requests"},
        _AGE,
    ],
)

GOLDEN_PATH_REVISION = KindInfo(
    kind="GoldenPathRevision",
    plural="goldenpathrevisions",
    namespaced=False,
    spec=GoldenPathRevisionSpec,
    status=GoldenPathRevisionStatus,
    description="An immutable version of a golden path: its module source and commit, parameter schema and outputs.",
    short_names=["gprev"],
    columns=[
        {"name": "GoldenPath", "type": "string", "jsonPath": ".spec.goldenPath"},
        {"name": "Revision", "type": "integer", "jsonPath": ".spec.revision"},
        {"name": "Module", "type": "string", "jsonPath": ".spec.module"},
        {"name": "Ref", "type": "string", "jsonPath": ".spec.git.ref"},
        {"name": "Commit", "type": "string", "jsonPath": ".spec.git.commit", "priority": 1},
        _AGE,
    ],
    root_validations=REVISION_RULES,
    selectable_fields=[".spec.goldenPath"],
)

SERVICE_REQUEST = KindInfo(
    kind="ServiceRequest",
    plural="servicerequests",
    namespaced=True,
    spec=ServiceRequestSpec,
    status=ServiceRequestStatus,
    description="A request for a golden path with parameters, provisioned by Blacktop in an environment.",
    short_names=["sr"],
    columns=[
        {"name": "GoldenPath", "type": "string", "jsonPath": ".spec.goldenPath"},
        {"name": "Environment", "type": "string", "jsonPath": ".status.environment"},
        *_ready(),
        {"name": "Revision", "type": "integer", "jsonPath": ".status.revision"},
        {"name": "Stage", "type": "string", "jsonPath": ".status.stage", "priority": 1},
        {"name": "LeadTime(s)", "type": "integer", "jsonPath": ".status.leadTimeSeconds"},
        _AGE,
    ],
    selectable_fields=[".spec.goldenPath"],
)

GUARDRAIL_POLICY = KindInfo(
    kind="GuardrailPolicy",
    plural="guardrailpolicies",
    namespaced=False,
    spec=GuardrailPolicySpec,
    status=GuardrailPolicyStatus,
    description="CEL rules checked at admission and on the Terraform plan; Enforce, Warn or Audit.",
    short_names=["gpol", "guardrail"],
    columns=[
        {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
        *_ready(),
        {"name": "Violations", "type": "integer", "jsonPath": ".status.violationCount"},
        _AGE,
    ],
)

ALL_KINDS = [ENVIRONMENT, GOLDEN_PATH, GOLDEN_PATH_REVISION, SERVICE_REQUEST, GUARDRAIL_POLICY]
