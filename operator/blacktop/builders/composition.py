"""Requests that consume other requests' outputs: what admission checks, who depends on whom, and when
a consumer must be applied again. Pure.

A ServiceRequest's ``spec.inputs`` fill module variables from outputs of other ServiceRequests in
the same namespace (a service gets its database's ``uri``). Admission checks what it can: a request
never feeds itself, the output is one the source's golden path declares (delivers in its connection
Secret), the variable is one the consumer's module declares and not also a parameter, and the
inputs form no cycle. A source that does not exist yet is admitted with a warning (GitOps applies
objects in any order): the consumer waits for it. The values travel only from the source's
connection Secret into the consumer's variable file; status records, per input, whether its source
is ready and which revision (resourceVersion) of that Secret the last apply used, never a value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from blacktop.api.goldenpath import GoldenPathSpec
from blacktop.api.servicerequest import Input, InputStatus

JSON = dict[str, Any]


def inputs_of(request: Mapping[str, Any]) -> list[Input]:
    """The request's inputs (none when its spec does not parse: the schema answers for that)."""
    raw = (request.get("spec") or {}).get("inputs") or []
    try:
        return [Input.model_validate(item) for item in raw]
    except ValidationError:
        return []


def _name(request: Mapping[str, Any]) -> str:
    return str((request.get("metadata") or {}).get("name") or "")


def delivered_outputs(spec: GoldenPathSpec, module_outputs: set[str] | None) -> set[str] | None:
    """The outputs a golden path delivers: those it lists, else all its module's (None: not known)."""
    if spec.outputs:
        return {o.name for o in spec.outputs}
    return module_outputs


def secret_key(spec: GoldenPathSpec, output: str) -> str:
    """The key of ``output`` in the source's connection Secret (a mapping may rename it)."""
    for mapping in spec.outputs:
        if mapping.name == output:
            return mapping.key or mapping.name
    return output


def find_cycle(start: str, graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A path ``start -> ... -> start`` through ``graph`` (consumer -> its sources), if there is one."""
    path: list[str] = []
    seen: set[str] = set()

    def visit(node: str) -> list[str] | None:
        for source in graph.get(node, ()):
            if source == start:
                return [*path, node, start]
            if source in seen:
                continue
            seen.add(source)
            path.append(node)
            found = visit(source)
            path.pop()
            if found:
                return found
        return None

    return visit(start)


@dataclass
class InputReview:
    """What admission says about a request's inputs."""

    denials: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def review_inputs(
    request: Mapping[str, Any],
    siblings: Sequence[Mapping[str, Any]],
    golden_paths: Mapping[str, GoldenPathSpec],
    *,
    outputs_of: Callable[[str], set[str] | None],
    variables: set[str] | None,
) -> InputReview:
    """Check ``request``'s inputs against the other requests of its namespace (``siblings``).

    ``outputs_of(golden_path)`` gives what a golden path delivers (None: unknown), ``variables`` the
    consumer module's variables (None: unknown); what is unknown is not refused.
    """
    review = InputReview()
    name = _name(request)
    inputs = inputs_of(request)
    if not inputs:
        return review
    by_name = {_name(s): s for s in siblings if _name(s) != name}
    consumer_gp = str((request.get("spec") or {}).get("goldenPath") or "")
    parameters = (request.get("spec") or {}).get("parameters") or {}
    for item in inputs:
        source_name, output, variable = item.from_.service_request, item.from_.output, item.variable
        if source_name == name:
            review.denials.append(f"input {variable}: a ServiceRequest cannot take inputs from itself")
            continue
        if isinstance(parameters, Mapping) and variable in parameters:
            review.denials.append(
                f"input {variable}: {variable} is also given in spec.parameters; set it in one place only"
            )
        if variables is not None and variable not in variables:
            known = ", ".join(sorted(variables)) or "none"
            review.denials.append(
                f"input {variable}: the module of golden path {consumer_gp} has no variable {variable} "
                f"(its variables: {known})"
            )
        source = by_name.get(source_name)
        if source is None:
            review.warnings.append(
                f"input {variable}: ServiceRequest {source_name} does not exist yet; {name} waits until it "
                "exists and is Ready"
            )
            continue
        source_gp = str((source.get("spec") or {}).get("goldenPath") or "")
        if source_gp not in golden_paths:
            continue  # a missing golden path is the source's own problem (its status says so)
        delivered = outputs_of(source_gp)
        if delivered is not None and output not in delivered:
            offered = ", ".join(sorted(delivered)) or "none"
            review.denials.append(
                f"input {variable}: output {output} is not one golden path {source_gp} of ServiceRequest "
                f"{source_name} declares (it declares: {offered})"
            )
    graph = {n: [i.from_.service_request for i in inputs_of(s)] for n, s in by_name.items()}
    graph[name] = [i.from_.service_request for i in inputs]
    cycle = find_cycle(name, graph)
    if cycle:
        review.denials.append(f"inputs form a cycle: {' -> '.join(cycle)}; a request cannot depend on itself")
    return review


def dependents(name: str, siblings: Sequence[Mapping[str, Any]], *, deleting: bool = True) -> list[str]:
    """The requests whose inputs name ``name`` (with ``deleting`` False: only those not being deleted)."""
    found = []
    for sibling in siblings:
        if _name(sibling) == name:
            continue
        if not deleting and (sibling.get("metadata") or {}).get("deletionTimestamp"):
            continue
        if any(i.from_.service_request == name for i in inputs_of(sibling)):
            found.append(_name(sibling))
    return sorted(found)


def deletion_denial(name: str, siblings: Sequence[Mapping[str, Any]]) -> str | None:
    """Why ``name`` may not be deleted now: requests still consume its outputs."""
    consumers = dependents(name, siblings, deleting=False)
    if not consumers:
        return None
    return (
        f"denied: ServiceRequest {name} is an input of {', '.join(consumers)} (their spec.inputs); delete "
        "those first or remove the inputs, so nothing runs on outputs that are being destroyed"
    )


def needs_apply(recorded: Sequence[InputStatus], current: Sequence[InputStatus]) -> bool:
    """Whether a consumer must be applied again: an input became ready, or a source's outputs changed
    (another revision of its connection Secret than the last apply used)."""
    before = {i.variable: i for i in recorded}
    for now in current:
        was = before.get(now.variable)
        if now.ready and (was is None or not was.ready or was.revision != now.revision):
            return True
    return False


def waiting_message(current: Sequence[InputStatus]) -> str:
    """The line status shows while inputs are not ready."""
    missing = [f"{i.service_request} (for {i.variable})" for i in current if not i.ready]
    return f"waiting for input(s) from {', '.join(missing)} to be Ready and deliver their outputs"
