"""A request's parameters against its golden path's JSON Schema: defaults filled in, errors listed. Pure."""

from __future__ import annotations

import copy
from typing import Any

from jsonschema.validators import validator_for

MAX_ERRORS = 5


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


def validate(schema: dict[str, Any], parameters: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(parameters with defaults, readable errors). No errors means the request may proceed."""
    filled = with_defaults(schema, parameters)
    validator = validator_for(schema)(schema)
    errors = []
    for error in sorted(validator.iter_errors(filled), key=lambda e: list(map(str, e.path))):
        where = ".".join(str(p) for p in error.path)
        errors.append(f"parameters.{where}: {error.message}" if where else f"parameters: {error.message}")
    return filled, errors[:MAX_ERRORS]


REFUSAL = "invalid parameters: "


def refusal(errors: list[str]) -> str:
    """The one line that refuses parameters (admission's denial and the InvalidParameters message)."""
    return REFUSAL + "; ".join(errors)
