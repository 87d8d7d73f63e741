"""Blacktop's API (platform.blacktop.dev/v1alpha1): pydantic models, the source of truth of the CRDs.

No I/O here. Controllers decode ``spec`` with ``<Kind>Spec.model_validate`` and write status with
``<Kind>Status.model_dump(by_alias=True, mode="json")``.
"""

from blacktop.api.common import Condition, Subject, Tier
from blacktop.api.conditions import ConditionType, Reason
from blacktop.api.environment import EnvironmentSpec, EnvironmentStatus
from blacktop.api.goldenpath import GoldenPathSpec, GoldenPathStatus
from blacktop.api.guardrailpolicy import GuardrailPolicySpec, GuardrailPolicyStatus
from blacktop.api.kinds import ALL_KINDS, API_VERSION, GROUP, VERSION, KindInfo
from blacktop.api.servicerequest import ServiceRequestSpec, ServiceRequestStatus

__all__ = [
    "ALL_KINDS",
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Condition",
    "ConditionType",
    "EnvironmentSpec",
    "EnvironmentStatus",
    "GoldenPathSpec",
    "GoldenPathStatus",
    "GuardrailPolicySpec",
    "GuardrailPolicyStatus",
    "KindInfo",
    "Reason",
    "ServiceRequestSpec",
    "ServiceRequestStatus",
    "Subject",
    "Tier",
]
