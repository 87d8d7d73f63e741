"""Typed views of the objects a reconcile works on, decoded once per reconcile.

A reconcile gets object bodies (from Kopf, or read fresh); it decodes each into a view once, at the
start, and passes views on: the spec is validated once, and later steps read typed fields instead
of decoding the JSON again. The raw body travels along for what needs the object as it is: owner
references and Events, and the variables guardrail rules see.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from blacktop.api.common import Condition, parse_time
from blacktop.api.conditions import ConditionType, is_true
from blacktop.api.goldenpath import GoldenPathSpec
from blacktop.api.goldenpathrevision import GoldenPathRevisionSpec
from blacktop.api.servicerequest import ServiceRequestSpec

JSON = dict[str, Any]


@dataclass(frozen=True)
class RequestView:
    """A ServiceRequest: who it is and what it asks for (the spec, validated)."""

    body: JSON
    name: str
    namespace: str
    uid: str
    created: datetime
    spec: ServiceRequestSpec

    @property
    def key(self) -> str:
        """Stable and unique per request: names what its runs work in (a workspace, a pod)."""
        return f"{self.namespace}-{self.name}-{self.uid[:8]}"


def request_view(body: JSON) -> RequestView:
    """Decode a ServiceRequest; raises pydantic's ValidationError for a spec the schema should have refused."""
    meta = body["metadata"]
    return RequestView(
        body=body,
        name=str(meta["name"]),
        namespace=str(meta["namespace"]),
        uid=str(meta["uid"]),
        created=parse_time(meta["creationTimestamp"]),
        spec=ServiceRequestSpec.model_validate(body.get("spec") or {}),
    )


@dataclass(frozen=True)
class GoldenPathView:
    """A GoldenPath: its spec (validated), whether it is Ready, and the module digest its status names.
    Seen at a revision (controllers.revisions.at_revision), the spec, the digest and ``revision`` are
    that revision's: its module (at its commit), schema and outputs."""

    body: JSON
    name: str
    spec: GoldenPathSpec
    ready: bool
    module_digest: str | None
    revision: GoldenPathRevisionSpec | None = None


def golden_path_view(body: JSON) -> GoldenPathView:
    """Decode a GoldenPath; raises ValidationError for a spec the schema should have refused."""
    status = body.get("status") or {}
    conditions = [Condition.model_validate(c) for c in status.get("conditions") or []]
    return GoldenPathView(
        body=body,
        name=str(body["metadata"]["name"]),
        spec=GoldenPathSpec.model_validate(body.get("spec") or {}),
        ready=is_true(conditions, ConditionType.READY),
        module_digest=status.get("moduleDigest"),
    )


@dataclass(frozen=True)
class EnvironmentRef:
    """The Environment a request belongs to, as far as a request needs it."""

    body: JSON
    name: str
    team: str | None
    tier: str | None


def environment_ref(body: JSON) -> EnvironmentRef:
    spec = body.get("spec") or {}
    return EnvironmentRef(body=body, name=str(body["metadata"]["name"]), team=spec.get("team"), tier=spec.get("tier"))


# What a request being destroyed sees when its Environment is already gone.
NO_ENVIRONMENT = EnvironmentRef(body={"metadata": {"name": ""}, "spec": {}}, name="", team=None, tier=None)
