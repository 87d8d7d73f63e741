"""The CEL runtime behind guardrail rules: one checked environment, compiled programs cached.

The library is ``cel-expr-python`` (the CEL C++ runtime, published by the cel-expr project): chosen
over ``common-expression-language`` and ``cel-python`` by measurement (bench/cel_libraries.py), and
because its type checker refuses undeclared names (a typo like ``objct.spec``) when the policy is
applied instead of at the first request. Every variable is declared ``dyn``: the objects are
Kubernetes JSON, so field access is checked at evaluation time, and ``has()`` guards optional fields.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

# The names a rule may use. `plan` is empty at the Admission stage.
VARIABLES = ("object", "oldObject", "environment", "goldenPath", "user", "cost", "plan")
_INT64 = 2**63 - 1
MAX_EXPRESSION = 4096


class CelCompileError(ValueError):
    """An expression that does not compile; the message is the compiler's."""


class CelEvaluationError(ValueError):
    """An expression that failed while evaluating (missing key, wrong type, ...)."""


@functools.cache
def _env() -> Any:
    # Imported and built lazily: the C++ runtime (about 15 MiB) is loaded by the first policy, and
    # an operator (or `blacktop --help`) without any never pays for it.
    from cel_expr_python import cel
    from cel_expr_python.ext import ext_strings

    return cel.NewEnv(variables=dict.fromkeys(VARIABLES, cel.Type.DYN), extensions=[ext_strings.ExtStrings()])


def _first_lines(text: str, lines: int = 3) -> str:
    return "\n".join(text.strip().splitlines()[:lines])


@dataclass(frozen=True)
class Program:
    """A compiled expression and the type the checker inferred for its result (BOOL, DYN, INT, ...)."""

    source: str
    expression: Any
    result_type: str


@functools.lru_cache(maxsize=2048)
def _compile_cached(source: str) -> Program | str:
    try:
        expression = _env().compile(source)
    except (RuntimeError, ValueError, TypeError) as exc:
        return _first_lines(str(exc)).removeprefix("INVALID_ARGUMENT: ")
    return Program(source, expression, str(expression.return_type().name()))


def compile_expression(source: str) -> Program:
    """Compile (or take from the cache) one expression; raises CelCompileError with the compiler's message."""
    if not isinstance(source, str):
        raise CelCompileError("an expression must be a string")
    if len(source) > MAX_EXPRESSION:
        raise CelCompileError(f"expression is longer than {MAX_EXPRESSION} characters")
    if "\x00" in source:
        raise CelCompileError("expression contains a NUL character")
    result = _compile_cached(source)
    if isinstance(result, str):
        raise CelCompileError(result)
    return result


def compile_condition(source: str) -> Program:
    """Compile an expression that must produce a bool (a rule's condition)."""
    program = compile_expression(source)
    if program.result_type.upper() not in ("BOOL", "DYN"):
        raise CelCompileError(f"the expression returns {program.result_type.lower()}, but a rule must return a bool")
    return program


def _sanitize(value: Any, depth: int = 0) -> Any:
    """JSON-like data the runtime accepts: int64 ints, finite floats, string keys, bounded depth."""
    if depth > 64 or value is None or isinstance(value, bool | str):
        return None if depth > 64 else value
    if isinstance(value, int):
        return value if -_INT64 - 1 <= value <= _INT64 else float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _sanitize(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sanitize(v, depth + 1) for v in value]
    return str(value)


class Bindings:
    """The variables of one evaluation, converted once and shared by all rules of a request."""

    def __init__(self, variables: dict[str, Any]) -> None:
        data = {name: _sanitize(variables.get(name)) for name in VARIABLES}
        self._activation = _env().Activation(data)

    def evaluate(self, program: Program) -> Any:
        """The expression's value as plain Python; raises CelEvaluationError for a CEL error value."""
        try:
            value = program.expression.eval(self._activation)
            if str(value.type().name()).upper() == "ERROR":
                raise CelEvaluationError(_first_lines(str(value.value()), 1))
            return value.plain_value()
        except CelEvaluationError:
            raise
        except Exception as exc:  # the runtime raises plain exceptions for conversions it cannot do
            raise CelEvaluationError(f"{type(exc).__name__}: {_first_lines(str(exc), 1)}") from None


def render(value: Any) -> str:
    """A value as text inside a message: money-like floats without noise, lists joined."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.2f}".rstrip("0").rstrip(".")
    if isinstance(value, list | tuple):
        return ", ".join(render(v) for v in value)
    if value is None:
        return "null"
    return str(value)
