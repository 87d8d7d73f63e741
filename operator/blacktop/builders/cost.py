"""What a request costs per month by its golden path's cost model. Pure; money in integer cents."""

from __future__ import annotations

from typing import Any

from blacktop.api.common import money_to_cents
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
