"""A request's parameters against its golden path's JSON Schema: defaults filled in, errors listed. Pure.

Also the bounds every request's parameters keep whatever the schema says, checked at admission and
again before any run: parameters are copied into the request's annotations by Kopf (256 KiB for all
of them), into status messages, into guardrail evaluation and into the module's variable file, so
an unbounded one (300 KiB, 10,000 keys, nested 600 levels) once made requests that could not be
reconciled or even deleted. The identity variables Blacktop passes to every module are Blacktop's:
a parameter may never set them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any

from jsonschema.validators import validator_for

MAX_ERRORS = 5
MAX_ERROR_LENGTH = 300
MAX_BYTES = 32 * 1024
MAX_DEPTH = 16
MAX_VALUES = 1024
# The variables Blacktop itself gives every module (where it runs and for whom): never a parameter's.
IDENTITY_VARIABLES = ("name", "namespace", "environment", "team", "tier", "uid", "golden_path")


def with_defaults(schema: dict[str, Any], value: Any) -> Any:
    """``value`` with the schema's ``default``s filled in for missing object properties (recursively)."""
    if not isinstance(value, dict) or schema.get("type", "object") != "object":
        return value
    result = copy.deepcopy(value)
    for name, sub in (schema.get("properties") or {}).items():
        if not isinstance(sub, dict):
            continue
        if name not in result and "default" in sub:
            result[name] = copy.deepcopy(sub["default"])
        if name in result:
            result[name] = with_defaults(sub, result[name])
    return result


def _shape(value: Any) -> tuple[int, int]:
    """(deepest nesting, number of values) of a JSON value, without recursion (it may be very deep)."""
    deepest, count = 0, 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        deepest = max(deepest, depth)
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
    return deepest, count


def bounds_problem(parameters: Any) -> str | None:
    """Why ``parameters`` are too big to accept (size, depth, count), or None. Checked before the schema."""
    if not isinstance(parameters, dict):
        return "parameters must be an object"
    depth, count = _shape(parameters)
    if depth > MAX_DEPTH:
        return f"parameters are nested {depth} levels deep; at most {MAX_DEPTH} are accepted"
    if count > MAX_VALUES:
        return f"parameters hold {count} values; at most {MAX_VALUES} are accepted"
    size = len(json.dumps(parameters, separators=(",", ":")))
    if size > MAX_BYTES:
        return f"parameters are {size} bytes as JSON; at most {MAX_BYTES} are accepted (put large data elsewhere)"
    return None


def identity_problem(names: Iterable[str]) -> str | None:
    """Why these parameter (or schema property) names are not allowed: Blacktop sets the identity ones."""
    taken = sorted(set(names) & set(IDENTITY_VARIABLES))
    if not taken:
        return None
    return (
        f"parameter(s) {', '.join(taken)} cannot be set: Blacktop passes {', '.join(IDENTITY_VARIABLES)} to every "
        "module itself (the request's own name, namespace, environment, team, tier, uid and golden path)"
    )


def _short(message: str) -> str:
    """jsonschema quotes the offending value in full; keep the line readable."""
    return message if len(message) <= MAX_ERROR_LENGTH else message[: MAX_ERROR_LENGTH - 3] + "..."


def validate(schema: dict[str, Any], parameters: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(parameters with defaults, readable errors). No errors means the request may proceed."""
    problem = bounds_problem(parameters) or identity_problem(parameters)
    if problem:
        return parameters, [problem]
    filled = with_defaults(schema, parameters)
    validator = validator_for(schema)(schema)
    errors = []
    for error in sorted(validator.iter_errors(filled), key=lambda e: list(map(str, e.path))):
        where = ".".join(str(p) for p in error.path)
        message = _short(error.message)
        errors.append(f"parameters.{where}: {message}" if where else f"parameters: {message}")
        if len(errors) >= MAX_ERRORS:
            break
    return filled, errors


REFUSAL = "invalid parameters: "


def refusal(errors: list[str]) -> str:
    """The one line that refuses parameters (admission's denial and the InvalidParameters message)."""
    return REFUSAL + "; ".join(errors)
