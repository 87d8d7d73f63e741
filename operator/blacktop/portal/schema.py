"""A golden path's parameter schema, read for people: the documentation table and the form. Pure.

The table lists every property (nested objects as dotted names) with its type, whether it is
required, its default, the values it allows and its description, straight from the JSON Schema
the golden path declares. The form has one field per top-level property: enums (and booleans) as
selects, everything else as text, objects and arrays as YAML/JSON text. What a visitor typed is
turned back into typed parameters by :func:`form_parameters`; whether they are valid is then
decided by the same code admission runs, never by the form.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

JSON = dict[str, Any]
FIELD_PREFIX = "p."  # form keys of parameters, so they never clash with name or environment
MAX_DEPTH = 3  # nested objects documented this deep
MAX_TEXT = 8192  # longest parameter value the builder takes (a structured value included)
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_NUMBER = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")


def show(value: Any) -> str:
    """A schema value as it reads in YAML: strings bare, everything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def type_text(schema: Mapping[str, Any]) -> str:
    """``string``, ``integer``, ``array of string``, ``string | null``..."""
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(str(k) for k in kind)
    if kind == "array" and isinstance(schema.get("items"), Mapping):
        return f"array of {type_text(schema['items'])}"
    if kind is None and "enum" in schema:
        kinds = sorted({type(v).__name__ for v in schema["enum"]})
        return " | ".join(
            {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(k, k) for k in kinds
        )
    return str(kind or "any")


def allowed_text(schema: Mapping[str, Any]) -> str:
    """The values a property allows, in words: the enum, else its constraints."""
    if isinstance(schema.get("enum"), list):
        return ", ".join(show(v) for v in schema["enum"])
    if "const" in schema:
        return f"only {show(schema['const'])}"
    parts = []
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        parts.append(f"{low} to {high}")
    elif low is not None:
        parts.append(f"at least {low}")
    elif high is not None:
        parts.append(f"at most {high}")
    if "exclusiveMinimum" in schema:
        parts.append(f"more than {schema['exclusiveMinimum']}")
    if "exclusiveMaximum" in schema:
        parts.append(f"less than {schema['exclusiveMaximum']}")
    shortest, longest = schema.get("minLength"), schema.get("maxLength")
    if shortest is not None or longest is not None:
        parts.append(
            f"{shortest or 0} to {longest} characters" if longest is not None else f"at least {shortest} characters"
        )
    if "pattern" in schema:
        parts.append(f"matches {schema['pattern']}")
    if "format" in schema:
        parts.append(f"format {schema['format']}")
    if schema.get("minItems") is not None or schema.get("maxItems") is not None:
        parts.append(f"{schema.get('minItems', 0)} to {schema.get('maxItems', 'any number of')} items")
    return "; ".join(parts)


@dataclass(frozen=True)
class ParameterRow:
    """One line of a golden path's parameter table."""

    name: str
    type: str
    required: bool
    default: str  # empty: no default
    allowed: str
    description: str


def _properties(schema: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any], bool]]:
    properties = schema.get("properties")
    required = set(schema.get("required") or [])
    if isinstance(properties, Mapping):
        for name, sub in properties.items():
            if isinstance(sub, Mapping):
                yield str(name), sub, name in required


def parameter_rows(schema: Mapping[str, Any], prefix: str = "", depth: int = 0) -> list[ParameterRow]:
    """The table of ``schema``'s properties, in the schema's order, nested objects after their parent."""
    rows = []
    for name, sub, required in _properties(schema):
        rows.append(
            ParameterRow(
                name=prefix + name,
                type=type_text(sub),
                required=required,
                default=show(sub["default"]) if "default" in sub else "",
                allowed=allowed_text(sub),
                description=str(sub.get("description") or ""),
            )
        )
        if sub.get("type") == "object" and depth + 1 < MAX_DEPTH:
            rows.extend(parameter_rows(sub, f"{prefix}{name}.", depth + 1))
    return rows


def additional_properties_allowed(schema: Mapping[str, Any]) -> bool:
    """Whether parameters not in the table are accepted too."""
    return schema.get("additionalProperties", True) is not False


@dataclass(frozen=True)
class FormField:
    """One input of the request builder."""

    key: str  # the form key: p.<name>
    name: str
    widget: str  # select, text or structured (YAML/JSON text)
    value: str
    required: bool
    description: str
    allowed: str
    type: str
    options: list[tuple[str, str]] = field(default_factory=list)  # (value, label); "" means unset


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return json.dumps(value)


def form_fields(schema: Mapping[str, Any], given: Mapping[str, str] | None = None) -> list[FormField]:
    """The builder's fields: ``given`` (what the visitor typed, by form key) else the defaults."""
    given = given or {}
    fields = []
    for name, sub, required in _properties(schema):
        key = FIELD_PREFIX + name
        default = _form_value(sub["default"]) if "default" in sub else ""
        value = given.get(key, default)
        options: list[tuple[str, str]] = []
        if isinstance(sub.get("enum"), list):
            widget = "select"
            options = [(_form_value(v), show(v)) for v in sub["enum"]]
        elif sub.get("type") == "boolean":
            widget = "select"
            options = [("true", "true"), ("false", "false")]
        elif sub.get("type") in ("object", "array"):
            widget = "structured"
        else:
            widget = "text"
        if widget == "select" and "default" not in sub:
            # Unset (left out of the manifest) is a choice too, unless a default makes it moot.
            options.insert(0, ("", "(not set)"))
        fields.append(
            FormField(
                key=key,
                name=name,
                widget=widget,
                value=value,
                required=required,
                description=str(sub.get("description") or ""),
                allowed=allowed_text(sub),
                type=type_text(sub),
                options=options,
            )
        )
    return fields


def _typed(text: str, schema: Mapping[str, Any]) -> Any:
    """What a YAML manifest would carry for ``text`` typed into a field of ``schema``.

    Text that is not of the schema's type stays text, so the validator reports it the way
    admission would report the same value in a manifest (``'abc' is not of type 'integer'``).
    """
    kinds = schema.get("type")
    enum = schema.get("enum")
    if isinstance(enum, list):
        for value in enum:
            if _form_value(value) == text:
                return value
    for kind in kinds if isinstance(kinds, list) else [kinds]:
        converted = _CONVERTERS.get(str(kind), _keep)(text)
        if converted is not _NOT_THIS:
            return converted
    return text


_NOT_THIS = object()


def _keep(_: str) -> Any:
    return _NOT_THIS


def _integer(text: str) -> Any:
    return int(text) if _INTEGER.match(text) else _NOT_THIS


def _number(text: str) -> Any:
    if _INTEGER.match(text):
        return int(text)
    return float(text) if _NUMBER.match(text) else _NOT_THIS


def _boolean(text: str) -> Any:
    return text == "true" if text in ("true", "false") else _NOT_THIS


def _null(text: str) -> Any:
    return None if text == "null" else _NOT_THIS


def _structured(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return _NOT_THIS


_CONVERTERS = {
    "integer": _integer,
    "number": _number,
    "boolean": _boolean,
    "null": _null,
    "object": _structured,
    "array": _structured,
}


def form_parameters(schema: Mapping[str, Any], form: Mapping[str, str]) -> JSON:
    """The parameters a filled-in form stands for; empty fields are left out (defaults then apply)."""
    parameters: JSON = {}
    for name, sub, _ in _properties(schema):
        text = form.get(FIELD_PREFIX + name, "")
        if text.strip() == "":
            continue
        parameters[name] = _typed(text[:MAX_TEXT], sub)
    return parameters
