"""Scrape-time gauges computed from the inventory: readiness, adoption, teams, cost, budgets, expiry.

Computing them at scrape time from what the operator already watches keeps them exact (no gauge to
forget to decrement when an object goes away) and costs no API calls. Every label is a bounded set:
kind, readiness, golden path, tier, team, currency.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from blacktop.metrics.inventory import (
    ENVIRONMENT,
    GOLDEN_PATH,
    KINDS,
    LEFTOVER_REASONS,
    SERVICE_REQUEST,
    TIERS,
    UNKNOWN,
    EnvironmentView,
    GoldenPathView,
    Inventory,
    LeftoverView,
    RequestView,
)

# An environment whose TTL runs out within this window counts as expiring.
EXPIRING_WITHIN = timedelta(hours=24)
# A deletion still pending after this long is stuck (a destroy failing, a finalizer held).
STUCK_AFTER = timedelta(minutes=15)
READINESS = ("true", "false", UNKNOWN)


def _families() -> dict[str, GaugeMetricFamily]:
    return {
        "resources": GaugeMetricFamily(
            "blacktop_resources",
            "Blacktop objects by kind and Ready condition (true, false, unknown).",
            labels=["kind", "ready"],
        ),
        "requests": GaugeMetricFamily(
            "blacktop_service_requests",
            "ServiceRequests by golden path and environment tier (adoption of the catalog).",
            labels=["golden_path", "tier"],
        ),
        "teams": GaugeMetricFamily("blacktop_active_teams", "Teams that own at least one Environment."),
        "cost": GaugeMetricFamily(
            "blacktop_team_monthly_cost",
            "Monthly cost of a team's ServiceRequests by the golden paths' cost models, in the currency's unit.",
            labels=["team", "currency"],
        ),
        "budget": GaugeMetricFamily(
            "blacktop_team_monthly_budget",
            "Sum of the monthly budgets of a team's Environments, in the currency's unit (teams with a budget).",
            labels=["team", "currency"],
        ),
        "expiring": GaugeMetricFamily(
            "blacktop_environments_expiring",
            "Environments whose TTL runs out within the next 24 hours, by tier.",
            labels=["tier"],
        ),
        "past_ttl": GaugeMetricFamily(
            "blacktop_environments_past_ttl",
            "Environments whose TTL has run out but which still exist, by tier.",
            labels=["tier"],
        ),
        "stuck": GaugeMetricFamily(
            "blacktop_deletions_stuck",
            "Objects being deleted for longer than 15 minutes, by kind.",
            labels=["kind"],
        ),
        "leftovers": GaugeMetricFamily(
            "blacktop_leftover_states",
            "State left by ServiceRequests that are gone, whose infrastructure still exists, by golden path and "
            "reason (orphaned: its finalizer was removed, destroyed as soon as possible; abandoned: by an admin).",
            labels=["golden_path", "reason"],
        ),
    }


class InventoryCollector(Collector):
    """A prometheus-client collector over an :class:`Inventory`."""

    def __init__(self, inventory: Inventory, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.inventory = inventory
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        # Without describe(), registering would call collect() once at start-up; the names suffice.
        return list(_families().values())

    def collect(self) -> Iterable[Metric]:
        now = self.clock()
        environments, golden_paths, requests = self.inventory.snapshot()
        leftovers = self.inventory.leftover_views()
        families = _families()
        _readiness(families["resources"], environments, golden_paths, requests)
        _adoption_and_cost(families, environments, requests, leftovers)
        _leftovers(families["leftovers"], golden_paths, leftovers)
        _expiry(families, environments, now)
        _stuck(families["stuck"], environments, golden_paths, requests, now)
        return list(families.values())


def _readiness(
    family: GaugeMetricFamily,
    environments: dict[str, EnvironmentView],
    golden_paths: list[GoldenPathView],
    requests: list[RequestView],
) -> None:
    tally: Tally[tuple[str, str]] = Tally()
    tally.update((ENVIRONMENT, env.ready) for env in environments.values())
    tally.update((GOLDEN_PATH, gp.ready) for gp in golden_paths)
    tally.update((SERVICE_REQUEST, req.ready) for req in requests)
    for kind in KINDS:
        for ready in READINESS:
            family.add_metric([kind, ready], tally[kind, ready])


def _leftovers(family: GaugeMetricFamily, golden_paths: list[GoldenPathView], leftovers: list[LeftoverView]) -> None:
    tally = Tally((v.golden_path, v.reason) for v in leftovers)
    for golden_path in sorted({gp.name for gp in golden_paths} | {v.golden_path for v in leftovers}):
        for reason in LEFTOVER_REASONS:
            family.add_metric([golden_path, reason], tally[golden_path, reason])


def _adoption_and_cost(
    families: dict[str, GaugeMetricFamily],
    environments: dict[str, EnvironmentView],
    requests: list[RequestView],
    leftovers: list[LeftoverView],
) -> None:
    adoption: Tally[tuple[str, str]] = Tally()
    cost: defaultdict[tuple[str, str], int] = defaultdict(int)
    budget: defaultdict[tuple[str, str], int] = defaultdict(int)
    for env in environments.values():
        cost[env.team, env.currency] += 0  # teams without requests cost 0, not nothing
        if env.budget_cents is not None:
            budget[env.team, env.currency] += env.budget_cents
    for req in requests:
        owner = environments.get(req.environment)
        if req.deleting_since is None:
            adoption[req.golden_path, owner.tier if owner else UNKNOWN] += 1
        if owner is not None:
            cost[owner.team, owner.currency] += req.monthly_cost_cents
    for left in leftovers:  # what is left still costs, until it is destroyed
        cost[left.team, left.currency] += left.monthly_cost_cents
    for (golden_path, tier), count in sorted(adoption.items()):
        families["requests"].add_metric([golden_path, tier], count)
    teams = {env.team for env in environments.values() if env.deleting_since is None}
    families["teams"].add_metric([], len(teams))
    for (team, currency), cents in sorted(cost.items()):
        families["cost"].add_metric([team, currency], cents / 100)
    for (team, currency), cents in sorted(budget.items()):
        families["budget"].add_metric([team, currency], cents / 100)


def _expiry(families: dict[str, GaugeMetricFamily], environments: dict[str, EnvironmentView], now: datetime) -> None:
    expiring: Tally[str] = Tally()
    past: Tally[str] = Tally()
    for env in environments.values():
        if env.expires_at is None:
            continue
        if env.expires_at <= now:
            past[env.tier] += 1
        elif env.expires_at - now <= EXPIRING_WITHIN:
            expiring[env.tier] += 1
    for tier in TIERS:
        families["expiring"].add_metric([tier], expiring[tier])
        families["past_ttl"].add_metric([tier], past[tier])


def _stuck(
    family: GaugeMetricFamily,
    environments: dict[str, EnvironmentView],
    golden_paths: list[GoldenPathView],
    requests: list[RequestView],
    now: datetime,
) -> None:
    deleting = [(ENVIRONMENT, env.deleting_since) for env in environments.values()]
    deleting += [(GOLDEN_PATH, gp.deleting_since) for gp in golden_paths]
    deleting += [(SERVICE_REQUEST, req.deleting_since) for req in requests]
    tally = Tally(kind for kind, since in deleting if since is not None and now - since > STUCK_AFTER)
    for kind in KINDS:
        family.add_metric([kind], tally[kind])
