"""Inputs from other requests' outputs, read at run time from each source's connection Secret.

:func:`resolve` gives the values of a request's ``spec.inputs`` and where each stands: the source
must exist, be Ready for its current spec and deliver the output (its connection Secret has the
key). The values go into the run's variable file and into the runner's redaction list; status
records each input's source, readiness and the Secret's resourceVersion, never a value, and nothing
here logs one. A request whose sources are not ready waits (stage WaitingForInputs, Reconciling,
retried). :func:`check` runs on a timer for Ready consumers and applies them again when a source's
outputs changed (another revision of its Secret than the last apply used). A source being deleted
waits for the requests that consume it (:func:`dependents_of`), so consumers are destroyed first,
with their inputs still readable.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from blacktop.api.conditions import ConditionType, Reason, is_true
from blacktop.api.servicerequest import Input, InputStatus, ServiceRequestStatus, Stage
from blacktop.builders import composition
from blacktop.controllers import lookup
from blacktop.controllers.context import Context
from blacktop.controllers.failures import Failure
from blacktop.controllers.views import RequestView, request_view
from blacktop.kube.resources import SERVICEREQUESTS, resource_for

JSON = dict[str, Any]
SECRET = resource_for("v1", "Secret")


@dataclass(frozen=True)
class Resolved:
    """A request's inputs: their values (by variable) and where each stands."""

    values: dict[str, str] = field(default_factory=dict)
    statuses: tuple[InputStatus, ...] = ()

    @property
    def ready(self) -> bool:
        return all(s.ready for s in self.statuses)


class InputsNotReady(Failure):
    """A source is missing, not Ready, or does not deliver the output (yet); retried."""

    def __init__(self, resolved: Resolved, delay: float) -> None:
        super().__init__(Reason.WAITING_FOR_INPUTS, composition.waiting_message(resolved.statuses), delay=delay)
        self.resolved = resolved


async def _one(ctx: Context, namespace: str, item: Input, *, settled: bool) -> tuple[InputStatus, str | None]:
    """Where one input stands, and its value when its source delivers it (``settled``: only from a
    source that is Ready for its current spec)."""
    source_name, output = item.from_.service_request, item.from_.output
    state = InputStatus(variable=item.variable, service_request=source_name, output=output)
    source = await ctx.client.get(SERVICEREQUESTS, source_name, namespace)
    if source is None or (settled and source["metadata"].get("deletionTimestamp")):
        return state, None
    status = ServiceRequestStatus.model_validate(source.get("status") or {})
    generation = int(source["metadata"].get("generation", 1))
    ready = is_true(status.conditions, ConditionType.READY) and status.observed_generation == generation
    if (settled and not ready) or not status.connection_secret:
        return state, None
    _, golden = await lookup.golden_path(ctx, str((source.get("spec") or {}).get("goldenPath") or ""))
    key = composition.secret_key(golden.spec, output) if golden is not None else output
    secret = await ctx.client.get(SECRET, status.connection_secret, namespace)
    raw = ((secret or {}).get("data") or {}).get(key)
    if secret is None or raw is None:
        return state, None
    try:
        value = base64.b64decode(raw).decode()
    except (binascii.Error, UnicodeDecodeError):
        return state, None
    revision = str(secret["metadata"].get("resourceVersion") or "")
    return state.model_copy(update={"ready": True, "revision": revision}), value


async def resolve(ctx: Context, request: RequestView, *, settled: bool = True) -> Resolved:
    """The values and states of the request's inputs (nothing to read without inputs). ``settled``
    (provisioning): only from sources Ready for their current spec; else (destroy, drift checks)
    whatever their connection Secrets deliver now, even while a source changes or waits to be deleted."""
    values: dict[str, str] = {}
    statuses: list[InputStatus] = []
    for item in request.spec.inputs:
        state, value = await _one(ctx, request.namespace, item, settled=settled)
        statuses.append(state)
        if value is not None:
            values[item.variable] = value
    return Resolved(values, tuple(statuses))


async def dependents_of(ctx: Context, request: RequestView) -> list[str]:
    """The requests of the namespace that consume ``request``'s outputs (being deleted or not)."""
    siblings = await ctx.client.list(SERVICEREQUESTS, request.namespace)
    return composition.dependents(request.name, siblings)


async def due(ctx: Context, body: JSON) -> bool:
    """Whether a Ready consumer must be applied again: an input's source changed its outputs."""
    status = ServiceRequestStatus.model_validate(body.get("status") or {})
    if status.stage != Stage.READY or status.observed_generation != int(body["metadata"].get("generation", 1)):
        return False  # provisioning owns a request until it is Ready for its current spec
    request = request_view(body)
    if not request.spec.inputs:
        return False
    current = await resolve(ctx, request)
    return composition.needs_apply(status.inputs, current.statuses)
