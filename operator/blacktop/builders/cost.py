"""What a request costs per month by its golden path's cost model. Pure; money in integer cents."""

from __future__ import annotations

from typing import Any

from blacktop.api.common import cents_to_money, money_to_cents
from blacktop.api.environment import EnvironmentCost, EnvironmentSpec
from blacktop.api.goldenpath import CostModel


def monthly_cost_cents(model: CostModel | None, parameters: dict[str, Any]) -> int:
    """The table price for the parameter's value, else the base monthly price, else zero."""
    if model is None:
        return 0
    if model.parameter is not None:
        value = parameters.get(model.parameter)
        if value is not None and str(value) in model.table:
            return money_to_cents(model.table[str(value)])
    return money_to_cents(model.monthly)


def environment_cost(spec: EnvironmentSpec, requests: list[dict[str, Any]], leftover_cents: int = 0) -> EnvironmentCost:
    """The sum of the requests' ``status.monthlyCost`` (plus what requests that went without a destroy
    left, ``leftover_cents``) against the environment's budget (an unreadable amount counts as zero: it
    never blocks the rest)."""
    total = leftover_cents
    for request in requests:
        cost = (request.get("status") or {}).get("monthlyCost")
        try:
            total += money_to_cents(str(cost)) if cost else 0
        except ValueError:
            continue
    return EnvironmentCost(
        monthly=cents_to_money(total),
        budget=spec.budget.monthly if spec.budget else None,
        currency=spec.budget.currency if spec.budget else "USD",
        service_requests=len(requests),
    )
