"""Which CEL library should guardrail policies use? Measures the PyPI candidates side by side.

For each installed candidate: does it support the macros and string functions policies need
(``has``, ``all``, ``exists``, ``exists_one``, ``map``, ``filter``, ``startsWith``/``endsWith``/
``contains``/``matches``/``size``, ``duration``, ``in``), does it report a syntax error at compile time
with a message, and how long do compile and evaluate take on typical policy expressions over a
realistic context (an object, its environment, the user, the cost and a plan).

    .venv/bin/python bench/cel_libraries.py            # the candidates that are installed
    pip install cel-python common-expression-language cel-expr-python   # to compare all three

Figures are medians (and p99) in microseconds over many repetitions on this machine.
"""

from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Callable
from typing import Any

CONTEXT: dict[str, Any] = {
    "object": {
        "apiVersion": "platform.blacktop.dev/v1alpha1",
        "kind": "ServiceRequest",
        "metadata": {"name": "orders-db", "namespace": "payments-dev", "labels": {"app": "orders"}},
        "spec": {"goldenPath": "tiny", "parameters": {"size": "small", "database": "orders"}},
    },
    "environment": {
        "metadata": {"name": "payments-dev"},
        "spec": {"team": "payments", "tier": "dev", "ttl": "72h", "budget": {"monthly": "500", "currency": "USD"}},
        "status": {"cost": {"monthly": "120.50", "budget": "500", "currency": "USD", "serviceRequests": 3}},
    },
    "goldenPath": {"metadata": {"name": "tiny"}, "spec": {"module": "tiny", "tiers": ["dev", "staging"]}},
    "user": {"username": "alice@example.com", "groups": ["payments", "system:authenticated"]},
    "cost": {"monthly": 15.0, "currency": "USD"},
    "plan": {
        "resource_changes": [
            {"address": f"terraform_data.r{i}", "type": "terraform_data", "change": {"actions": ["create"]}}
            for i in range(20)
        ]
    },
}

# Expressions like the example policies'; every one must evaluate to True on CONTEXT.
EXPRESSIONS: dict[str, str] = {
    "has": "has(object.spec.parameters.size)",
    "in": "object.spec.parameters.size in ['small', 'medium']",
    "all": "plan.resource_changes.all(r, r.type != 'random_password')",
    "exists": "user.groups.exists(g, g == 'payments')",
    "exists_one": "plan.resource_changes.exists_one(r, r.address == 'terraform_data.r3')",
    "map/filter": "plan.resource_changes.filter(r, r.type == 'terraform_data').map(r, r.address).size() == 20",
    "strings": "object.metadata.name.startsWith('orders') && object.metadata.name.endsWith('db') && "
    "object.metadata.name.contains('-') && object.metadata.name.matches('^[a-z-]+$') && size(object.metadata.name) == 9",
    "budget": "double(environment.status.cost.monthly) + cost.monthly <= double(environment.spec.budget.monthly)",
    "duration": "!has(environment.spec.ttl) || duration(environment.spec.ttl) <= duration('168h')",
}
BROKEN = "object.spec.parameters.size == "
# A typo in a variable name: a type-checking compiler refuses it when the policy is applied.
TYPO = "objct.spec.parameters.size == 'small'"


class Candidate:
    """One library behind a common compile/evaluate interface."""

    name = ""
    module = ""

    def compile(self, expression: str) -> Any:
        raise NotImplementedError

    def evaluate(self, program: Any, context: dict[str, Any]) -> Any:
        raise NotImplementedError

    def bind(self, context: dict[str, Any]) -> Any:
        """Convert a context once, for evaluating several programs against it (one admission request)."""
        return context

    def evaluate_bound(self, program: Any, bound: Any) -> Any:
        return self.evaluate(program, bound)


class RustCel(Candidate):
    name, module = "common-expression-language", "cel"

    def __init__(self) -> None:
        self.cel = importlib.import_module("cel")

    def compile(self, expression: str) -> Any:
        return self.cel.compile(expression)

    def evaluate(self, program: Any, context: dict[str, Any]) -> Any:
        return program.execute(context)

    def bind(self, context: dict[str, Any]) -> Any:
        return self.cel.Context(variables=context)


class CelPython(Candidate):
    name, module = "cel-python", "celpy"

    def __init__(self) -> None:
        self.celpy = importlib.import_module("celpy")
        self.env = self.celpy.Environment()

    def compile(self, expression: str) -> Any:
        return self.env.program(self.env.compile(expression))

    def evaluate(self, program: Any, context: dict[str, Any]) -> Any:
        return program.evaluate(self.celpy.json_to_cel(context))

    def bind(self, context: dict[str, Any]) -> Any:
        return self.celpy.json_to_cel(context)

    def evaluate_bound(self, program: Any, bound: Any) -> Any:
        return program.evaluate(bound)


class CelCpp(Candidate):
    name, module = "cel-expr-python", "cel_expr_python.cel"

    def __init__(self) -> None:
        self.cel = importlib.import_module("cel_expr_python.cel")
        self.env = self.cel.NewEnv(variables={k: self.cel.Type.DYN for k in CONTEXT})

    def compile(self, expression: str) -> Any:
        return self.env.compile(expression)

    def evaluate(self, program: Any, context: dict[str, Any]) -> Any:
        return program.eval(data=context).value()

    def bind(self, context: dict[str, Any]) -> Any:
        return self.env.Activation(context)

    def evaluate_bound(self, program: Any, bound: Any) -> Any:
        return program.eval(bound).value()


def timings(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Median and p99 of ``fn`` in microseconds."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def measure(candidate: Candidate, repeat: int) -> None:
    print(f"\n== {candidate.name} (import {candidate.module})")
    supported = []
    for label, expression in EXPRESSIONS.items():
        try:
            # cel-python answers with its own BoolType: compare by value, not identity.
            ok = bool(candidate.evaluate(candidate.compile(expression), CONTEXT) == True)  # noqa: E712
        except Exception as exc:
            ok = False
            print(f"   {label:<11} FAILS: {type(exc).__name__}: {str(exc)[:120]}")
        supported.append(ok)
    print(f"   features    {sum(supported)}/{len(supported)} supported")
    try:
        candidate.compile(BROKEN)
        print("   syntax error NOT reported at compile time")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:110]
        print(f"   syntax error reported at compile time: {type(exc).__name__}: {first}")
    try:
        candidate.compile(TYPO)
        print("   undeclared variable (typo) NOT caught at compile time: found only when a request is evaluated")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:110]
        print(f"   undeclared variable (typo) caught at compile time: {first}")
    compile_med, compile_p99 = [], []
    eval_med, eval_p99 = [], []
    for expression in EXPRESSIONS.values():
        try:
            program = candidate.compile(expression)
            candidate.evaluate(program, CONTEXT)
        except Exception:
            continue
        m, p = timings(lambda e=expression: candidate.compile(e), max(repeat // 10, 20))
        compile_med.append(m)
        compile_p99.append(p)
        m, p = timings(lambda p=program: candidate.evaluate(p, CONTEXT), repeat)
        eval_med.append(m)
        eval_p99.append(p)
    if not eval_med:
        return
    print(f"   compile     median {statistics.mean(compile_med):9.1f} us  p99 {statistics.mean(compile_p99):9.1f} us")
    print(
        f"   evaluate    median {statistics.mean(eval_med):9.1f} us  p99 {statistics.mean(eval_p99):9.1f} us  (per rule)"
    )
    programs = []
    for expression in EXPRESSIONS.values():
        try:
            programs.append(candidate.compile(expression))
        except Exception:
            continue

    def one_request() -> None:
        bound = candidate.bind(CONTEXT)
        for program in programs:
            candidate.evaluate_bound(program, bound)

    m, p = timings(one_request, max(repeat // 5, 50))
    print(f"   one request: context bound once, {len(programs)} rules   median {m:9.1f} us  p99 {p:9.1f} us")


def main() -> None:
    repeat = 500
    print(f"CEL libraries: {len(EXPRESSIONS)} policy-like expressions, {repeat} evaluations each")
    for cls in (RustCel, CelPython, CelCpp):
        try:
            candidate = cls()
        except ImportError:
            print(f"\n== {cls.name}: not installed (pip install {cls.name})")
            continue
        measure(candidate, repeat)


if __name__ == "__main__":
    main()
