"""The worst-case cost of a CEL expression, estimated from its checked syntax tree before it ever runs. Pure.

Kubernetes refuses a ValidatingAdmissionPolicy or a CRD validation rule whose *estimated* cost is
over a limit: cel-go walks the checked expression, assumes every input as large as it may be, and
multiplies through comprehensions (``all``, ``exists``, ``map``, ``filter``). Blacktop does the same
with the CEL runtime it uses (cel-expr-python), which has no estimator of its own: the compiled
expression serialises to a ``cel.expr.CheckedExpr`` protocol buffer, which :func:`decode` reads with
a minimal wire-format reader (no protobuf dependency), and :func:`estimate` prices it.

The prices follow cel-go's: one unit per call, select and iteration, 0.1 per character a string
function traverses, and comprehension bodies paid once per element. Inputs are Kubernetes objects,
the request's bounded parameters and plans, so an unknown string is priced at
:data:`MAX_STRING` characters and an unknown list or map at :data:`MAX_ITEMS` elements; a string
split into a list has as many elements as characters. ``object.spec.parameters.size == 'small'``
costs a few units, ``plan.resource_changes.all(r, ...)`` thousands, and ``all()`` nested over
``split()`` of a parameter billions: that one is refused when the policy is applied, with the
estimate in the message. The evaluation deadline (controllers/evaluation.py) stays the backstop.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

MAX_STRING = 256 * 1024  # an annotation value, a dashboard: the longest strings Blacktop's inputs hold
MAX_ITEMS = 1024  # elements of a list or entries of a map of unknown size
TRAVERSAL = 0.1  # per character a string function reads (cel-go's StringTraversalCostFactor)
DEFAULT_LIMIT = 10_000_000  # Kubernetes' per-expression estimated cost limit for CRD validation rules


# -- the protobuf wire format, as much as a CheckedExpr needs ------------------------------------------


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(data):
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a serialised message: ints for varints, bytes for the rest."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 1:
            value, at = data[at : at + 8], at + 8
        elif wire == 2:
            length, at = _varint(data, at)
            value, at = data[at : at + length], at + length
        elif wire == 5:
            value, at = data[at : at + 4], at + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, value


def _bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError("expected a length-delimited field")
    return value


@dataclass
class Node:
    """One node of a checked CEL expression (cel.expr.Expr), reduced to what pricing needs."""

    kind: str  # const, ident, select, call, list, struct, comprehension
    name: str = ""  # ident name, selected field, called function
    chars: int = 0  # a string or bytes constant's length
    test_only: bool = False  # has(a.b)
    target: Node | None = None  # a member call's receiver, a select's operand
    args: list[Node] = field(default_factory=list)  # call arguments, list elements, struct values
    # Comprehensions: the loop variable(s), the range, the accumulator and the three bodies.
    iter_vars: tuple[str, ...] = ()
    accu_var: str = ""
    parts: dict[str, Node] = field(default_factory=dict)


_COMPREHENSION_PARTS = {2: "range", 4: "init", 5: "condition", 6: "step", 7: "result"}


def _ident(data: bytes) -> Node:
    return Node("ident", name=next((_bytes(v).decode() for n, v in _fields(data) if n == 1), ""))


def _list(data: bytes) -> Node:
    return Node("list", args=[_expr(_bytes(v)) for n, v in _fields(data) if n == 1])


def _expr(data: bytes) -> Node:
    """An Expr: the first of its kind fields (const 3, ident 4, select 5, call 6, list 7, struct 8,
    comprehension 9) decides."""
    readers: dict[int, Callable[[bytes], Node]] = {
        3: _constant,
        4: _ident,
        5: functools.partial(_targeted, "select"),
        6: functools.partial(_targeted, "call"),
        7: _list,
        8: _struct,
        9: _comprehension,
    }
    for number, value in _fields(data):
        if number in readers:
            return readers[number](_bytes(value))
    return Node("const")


def _constant(data: bytes) -> Node:
    for number, value in _fields(data):
        if number in (6, 7):  # string_value, bytes_value
            return Node("const", chars=len(_bytes(value)))
    return Node("const")


def _targeted(kind: str, data: bytes) -> Node:
    """A Select (kind "select": operand 1, field 2, test_only 3) or a Call ("call": target 1, function 2,
    args 3): the same first two fields."""
    node = Node(kind)
    for number, value in _fields(data):
        if number == 1:
            node.target = _expr(_bytes(value))
        elif number == 2:
            node.name = _bytes(value).decode()
        elif number == 3 and kind == "call":
            node.args.append(_expr(_bytes(value)))
        elif number == 3:
            node.test_only = bool(value)
    return node


def _struct(data: bytes) -> Node:
    node = Node("struct")
    for number, value in _fields(data):
        if number == 2:  # entries: map_key (3) and value (4) are expressions
            node.args += [_expr(_bytes(v)) for n, v in _fields(_bytes(value)) if n in (3, 4)]
    return node


def _comprehension(data: bytes) -> Node:
    node = Node("comprehension")
    loop_vars: dict[int, str] = {}
    for number, value in _fields(data):
        if number in (1, 8):
            loop_vars[number] = _bytes(value).decode()
        elif number == 3:
            node.accu_var = _bytes(value).decode()
        elif number in _COMPREHENSION_PARTS:
            node.parts[_COMPREHENSION_PARTS[number]] = _expr(_bytes(value))
    node.iter_vars = tuple(loop_vars[k] for k in sorted(loop_vars))
    return node


def decode(serialized: bytes) -> Node:
    """The expression tree of ``Expression.serialize()`` (an Any wrapping a cel.expr.CheckedExpr)."""
    payload = next((_bytes(v) for n, v in _fields(serialized) if n == 2), serialized)  # Any.value
    checked = next((_bytes(v) for n, v in _fields(payload) if n == 4), None)  # CheckedExpr.expr
    if checked is None:
        raise ValueError("not a checked CEL expression")
    return _expr(checked)


# -- pricing -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """Worst case of a sub-expression: its cost and how large its value may be."""

    cost: float = 0.0
    chars: float = 0.0  # if a string (or bytes): at most this long
    items: float = 0.0  # if a list or map: at most this many elements
    element: Estimate | None = None  # what one element may be (None: anything)


UNKNOWN = Estimate(chars=MAX_STRING, items=MAX_ITEMS)
_SMALL = Estimate(chars=32, items=0)  # numbers, bools, durations rendered as text


def _element(value: Estimate) -> Estimate:
    return value.element if value.element is not None else UNKNOWN


def _traverse(*values: Estimate) -> float:
    return TRAVERSAL * sum(v.chars for v in values)


_SMALL_SHAPE = (_SMALL.chars, _SMALL.items)


def _shape(value: Estimate) -> tuple[float, float, Estimate | None]:
    return value.chars, value.items, value.element


@dataclass(frozen=True)
class _Call:
    """A call being priced: its node, receiver, arguments, and what its operands already cost."""

    node: Node
    receiver: Estimate | None
    args: list[Estimate]
    accu: str

    @property
    def operands(self) -> list[Estimate]:
        return ([self.receiver] if self.receiver is not None else []) + self.args

    @property
    def paid(self) -> float:
        return sum(o.cost for o in self.operands)


def _comparison(call: _Call) -> Estimate:
    a, b = ([*call.operands, _SMALL, _SMALL])[:2]
    return Estimate(call.paid + 1 + TRAVERSAL * min(a.chars, b.chars) + min(a.items, b.items), *_SMALL_SHAPE)


def _membership(call: _Call) -> Estimate:
    needle, haystack = ([*call.args, _SMALL, UNKNOWN])[:2]
    each = 1 + TRAVERSAL * min(needle.chars, _element(haystack).chars)
    return Estimate(call.paid + 1 + haystack.items * each, *_SMALL_SHAPE)


def _concatenation(call: _Call) -> Estimate:
    a, b = ([*call.args, Estimate(), Estimate()])[:2]
    first = call.node.args[0] if call.node.args else None
    if first is not None and first.kind == "ident" and first.name == call.accu:
        # A macro appending to its own accumulator (map, filter): priced per element, not per copy.
        return Estimate(call.paid + 1, a.chars, a.items, b.element or a.element)
    return Estimate(call.paid + 1 + _traverse(a, b), a.chars + b.chars, a.items + b.items, b.element or a.element)


def _index(call: _Call) -> Estimate:
    return Estimate(call.paid + 1, *_shape(_element(call.args[0] if call.args else UNKNOWN)))


def _conditional(call: _Call) -> Estimate:
    test, yes, no = ([*call.args, Estimate(), Estimate(), Estimate()])[:3]
    wider = yes if yes.cost >= no.cost else no
    return Estimate(test.cost + max(yes.cost, no.cost) + 1, *_shape(wider))


def _split(call: _Call) -> Estimate:
    text = call.receiver or UNKNOWN
    return Estimate(call.paid + 1 + _traverse(text), 0, text.chars + 1, Estimate(chars=text.chars))


def _join(call: _Call) -> Estimate:
    parts = call.receiver or UNKNOWN
    each = _element(parts)
    return Estimate(call.paid + 1 + parts.items * each.chars * TRAVERSAL, parts.items * each.chars, 0)


def _matches(call: _Call) -> Estimate:
    text, pattern = ([*call.operands, UNKNOWN, UNKNOWN])[:2]
    return Estimate(call.paid + 1 + TRAVERSAL * text.chars * max(1.0, pattern.chars), *_SMALL_SHAPE)


def _affix(call: _Call) -> Estimate:
    """startsWith, endsWith: read only as far as the prefix or suffix is long."""
    return Estimate(call.paid + 1 + _traverse(*call.args), *_SMALL_SHAPE)


def _scan(call: _Call) -> Estimate:
    return Estimate(call.paid + 1 + _traverse(*call.operands), *_SMALL_SHAPE)


def _copy(call: _Call) -> Estimate:
    operands = call.operands
    longest = max((o.chars for o in operands), default=0.0)
    if call.node.name == "replace" and len(operands) >= 3:
        longest = operands[0].chars * max(1.0, operands[2].chars)
    return Estimate(call.paid + 1 + _traverse(*operands), longest, 0)


def _flat(call: _Call) -> Estimate:
    return Estimate(call.paid + 1, *_SMALL_SHAPE)


_PRICES = {
    **dict.fromkeys(("_==_", "_!=_", "_<_", "_<=_", "_>_", "_>=_"), _comparison),
    "@in": _membership,
    "_+_": _concatenation,
    "_[_]": _index,
    "_?_:_": _conditional,
    "split": _split,
    "join": _join,
    "matches": _matches,
    **dict.fromkeys(("startsWith", "endsWith"), _affix),
    **dict.fromkeys(("contains", "indexOf", "lastIndexOf"), _scan),
    **dict.fromkeys(
        ("lowerAscii", "upperAscii", "trim", "substring", "reverse", "quote", "string", "format", "replace"), _copy
    ),
    **dict.fromkeys(("size", "@not_strictly_false", "_&&_", "_||_", "!_", "-_"), _flat),
}


def _call_estimate(node: Node, scope: dict[str, Estimate], accu: str) -> Estimate:
    receiver = _estimate(node.target, scope, accu) if node.target is not None else None
    call = _Call(node, receiver, [_estimate(a, scope, accu) for a in node.args], accu)
    # Anything else (arithmetic, conversions, duration(), timestamp(), ...): one call reading its inputs.
    return _PRICES.get(node.name, _scan)(call)


def _comprehension_estimate(node: Node, scope: dict[str, Estimate]) -> Estimate:
    over = _estimate(node.parts.get("range"), scope, "")
    start = _estimate(node.parts.get("init"), scope, "")
    count = over.items
    inner = dict(scope)
    if len(node.iter_vars) == 2:  # two-variable macros: index or key, then value
        inner[node.iter_vars[0]] = _SMALL
        inner[node.iter_vars[1]] = _element(over)
    elif node.iter_vars:
        inner[node.iter_vars[0]] = _element(over)
    inner[node.accu_var] = Estimate(0, start.chars, count, start.element)
    condition = _estimate(node.parts.get("condition"), inner, node.accu_var)
    step = _estimate(node.parts.get("step"), inner, node.accu_var)
    inner[node.accu_var] = Estimate(0, step.chars, count, step.element)
    result = _estimate(node.parts.get("result"), inner, node.accu_var)
    cost = over.cost + start.cost + count * (condition.cost + step.cost + 1) + result.cost
    return Estimate(cost, *_shape(result))


def _literal(node: Node, scope: dict[str, Estimate], accu: str) -> Estimate:
    parts = [_estimate(a, scope, accu) for a in node.args]
    widest = max(parts, key=lambda p: p.chars + p.items, default=None)
    count = len(parts) if node.kind == "list" else len(parts) // 2  # a struct's args are key, value, ...
    return Estimate(sum(p.cost for p in parts), 0, count, widest)


# Object metadata fields Kubernetes itself bounds (as cel-go reads maxLength from a schema): a
# comparison with one of them costs their length, not an unknown string's.
_METADATA_BOUNDS = {"name": 253, "namespace": 63, "uid": 36, "generateName": 253}


def _select(node: Node, scope: dict[str, Estimate], accu: str) -> Estimate:
    operand = _estimate(node.target, scope, accu)
    if node.test_only:
        return Estimate(operand.cost + 1, *_SMALL_SHAPE)
    target = node.target
    if node.name in _METADATA_BOUNDS and target is not None and target.kind == "select" and target.name == "metadata":
        return Estimate(operand.cost + 1, _METADATA_BOUNDS[node.name], 0)
    return Estimate(operand.cost + 1, *_shape(UNKNOWN))


def _estimate(node: Node | None, scope: dict[str, Estimate], accu: str) -> Estimate:
    if node is None:
        return Estimate()
    if node.kind == "const":
        return Estimate(0, node.chars or _SMALL.chars, 0)
    if node.kind == "ident":
        return Estimate(1, *_shape(scope.get(node.name, UNKNOWN)))
    pricing = {"select": _select, "call": _call_estimate, "list": _literal, "struct": _literal}
    if node.kind in pricing:
        return pricing[node.kind](node, scope, accu)
    return _comprehension_estimate(node, scope)


def estimate(serialized: bytes) -> float:
    """The worst-case cost of a compiled expression (``Expression.serialize()``)."""
    return math.ceil(_estimate(decode(serialized), {}, "").cost)
