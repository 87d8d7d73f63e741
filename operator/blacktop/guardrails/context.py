"""The variables a rule sees, built from the objects involved. Pure.

``object`` is the object under review (Environment or ServiceRequest), ``oldObject`` its previous
version on update, ``environment`` its Environment (spec and status, whose ``cost`` carries the
current monthly cost and budget), ``goldenPath`` the requested GoldenPath, ``user`` who asks
(``username``, ``groups``), ``cost`` what this request costs per month by the golden path's cost model
(``monthly``, ``currency``) and ``environmentMonthly``, the environment's monthly cost if the
request is admitted; and, at the Plan stage only, ``plan``: the JSON of ``tofu show -json`` plus
``providers``, the provider names the plan uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from blacktop.api.common import money_to_cents
from blacktop.api.goldenpath import GoldenPathSpec
from blacktop.builders import parameters
from blacktop.builders.cost import monthly_cost_cents
from blacktop.guardrails.engine import Subject
from blacktop.guardrails.plan import plan_providers

JSON = dict[str, Any]


def _map(value: object) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else empty: admission sees whatever a client sent."""
    return value if isinstance(value, Mapping) else {}


def _cents(text: object) -> int:
    try:
        return money_to_cents(str(text))
    except ValueError:
        return 0


def user_of(userinfo: Mapping[str, Any] | None) -> JSON:
    """``{username, groups}`` from an admission request's userInfo."""
    info = _map(userinfo)
    groups = info.get("groups")
    return {
        "username": str(info.get("username") or ""),
        "groups": [str(g) for g in groups] if isinstance(groups, list) else [],
    }


def _golden_spec(golden_path: Mapping[str, Any] | None) -> GoldenPathSpec | None:
    if not golden_path:
        return None
    try:
        return GoldenPathSpec.model_validate(_map(golden_path.get("spec")))
    except ValidationError:
        return None


def request_cost_cents(
    request: Mapping[str, Any], golden_path: Mapping[str, Any] | None, *, golden_spec: GoldenPathSpec | None = None
) -> tuple[int, str]:
    """(monthly cost in cents, currency) of a ServiceRequest by its golden path's cost model, defaults
    applied. ``golden_spec``: the golden path's spec when the caller has already decoded it."""
    spec = golden_spec or _golden_spec(golden_path)
    if spec is None:
        return 0, "USD"
    params = _map(request.get("spec")).get("parameters")
    given = params if isinstance(params, dict) else {}
    try:
        filled, _ = parameters.validate(spec.parameters, given)
    except Exception:  # a broken schema is the GoldenPath's problem (its status says so), not admission's
        filled = given
    currency = spec.cost.currency if spec.cost else "USD"
    return monthly_cost_cents(spec.cost, filled), currency


def _strip(obj: Mapping[str, Any] | None) -> JSON | None:
    """The object without managedFields (noise that only slows evaluation down)."""
    if obj is None:
        return None
    result = dict(obj)
    meta = dict(_map(result.get("metadata")))
    meta.pop("managedFields", None)
    result["metadata"] = meta
    return result


def environment_subject(env: Mapping[str, Any]) -> Subject:
    spec = _map(env.get("spec"))
    return Subject(kind="Environment", tier=spec.get("tier"), team=spec.get("team"))


def request_subject(request: Mapping[str, Any], env: Mapping[str, Any] | None) -> Subject:
    env_spec = _map(_map(env).get("spec"))
    return Subject(
        kind="ServiceRequest",
        tier=env_spec.get("tier"),
        team=env_spec.get("team"),
        golden_path=_map(request.get("spec")).get("goldenPath"),
    )


def environment_variables(
    env: Mapping[str, Any], old: Mapping[str, Any] | None, userinfo: Mapping[str, Any] | None
) -> JSON:
    """Variables for an Environment under review: it is both ``object`` and ``environment``."""
    budget = _map(_map(env.get("spec")).get("budget")).get("monthly")
    current = _map(_map(env.get("status")).get("cost")).get("monthly", "0")
    return {
        "object": _strip(env),
        "oldObject": _strip(old),
        "environment": _strip(env),
        "goldenPath": None,
        "user": user_of(userinfo),
        "cost": {
            "monthly": 0.0,
            "currency": _map(_map(env.get("spec")).get("budget")).get("currency", "USD"),
            "environmentMonthly": _cents(current) / 100,
            "budget": _cents(budget) / 100 if budget is not None else None,
        },
        "plan": {},
    }


def _siblings_cost(siblings: Iterable[tuple[Mapping[str, Any], Mapping[str, Any] | None]], name: object) -> int:
    """The monthly cost of the other requests: each golden path decoded once, each distinct
    (golden path, parameters) priced once, so thousands of siblings cost milliseconds."""
    specs: dict[int, GoldenPathSpec | None] = {}
    prices: dict[tuple[int, str], int] = {}
    total = 0
    for sibling, golden in siblings:
        if _map(sibling.get("metadata")).get("name") == name:
            continue
        ident = id(golden)
        if ident not in specs:
            specs[ident] = _golden_spec(golden)
        params = _map(sibling.get("spec")).get("parameters")
        key = (ident, repr(sorted(params.items())) if isinstance(params, dict) else "")
        if key not in prices:
            prices[key] = request_cost_cents(sibling, golden, golden_spec=specs[ident])[0] if specs[ident] else 0
        total += prices[key]
    return total


def request_variables(
    request: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    env: Mapping[str, Any] | None,
    golden_path: Mapping[str, Any] | None,
    userinfo: Mapping[str, Any] | None,
    *,
    siblings: Iterable[tuple[Mapping[str, Any], Mapping[str, Any] | None]] = (),
    plan: Mapping[str, Any] | None = None,
    golden_spec: GoldenPathSpec | None = None,
    leftover_cents: int = 0,
) -> JSON:
    """Variables for a ServiceRequest. ``siblings`` are the other requests of its environment with their
    golden paths: their cost plus this one's (plus ``leftover_cents``, what requests that went without
    a destroy left behind) is ``cost.environmentMonthly`` (computed from the specs, so requests that
    have not been reconciled yet count too). ``golden_spec``: the golden path's spec when the caller
    has already decoded it (a reconcile has; an admission review has not)."""
    cents, currency = request_cost_cents(request, golden_path, golden_spec=golden_spec)
    name = _map(request.get("metadata")).get("name")
    others = leftover_cents + _siblings_cost(siblings, name)
    env_spec = _map(_map(env).get("spec"))
    budget = _map(env_spec.get("budget")).get("monthly")
    variables: JSON = {
        "object": _strip(request),
        "oldObject": _strip(old),
        "environment": _strip(env),
        "goldenPath": _strip(golden_path),
        "user": user_of(userinfo),
        "cost": {
            "monthly": cents / 100,
            "currency": currency,
            "environmentMonthly": (cents + others) / 100,
            "budget": _cents(budget) / 100 if budget is not None else None,
        },
        "plan": {},
    }
    if plan is not None:
        variables["plan"] = {**plan, "providers": sorted(plan_providers(plan))}
    return variables
