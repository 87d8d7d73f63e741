"""Scrape-time gauges: from the inventory (readiness, adoption, teams, cost, budgets, expiry) and
from the latest scorecard (its figures, targets and verdicts, and the numbers behind them).

Computing them at scrape time from what the operator already holds keeps them exact (no gauge to
forget to decrement when an object goes away) and costs no API calls. Every label is a bounded set:
kind, readiness, golden path, tier, team, currency, metric, outcome, category.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from blacktop.api.environment import EXPIRING_WITHIN
from blacktop.metrics.book import ScorecardBook
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
        "waiting": GaugeMetricFamily(
            "blacktop_service_requests_waiting",
            "ServiceRequests waiting, by stage: AwaitingApproval (for a human) or WaitingForInputs (for their sources).",
            labels=["stage"],
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
        _waiting(families["waiting"], requests)
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


WAITING_STAGES = ("AwaitingApproval", "WaitingForInputs")


def _waiting(family: GaugeMetricFamily, requests: list[RequestView]) -> None:
    # A drift plan waiting for approval leaves the request Ready: its approval says it waits.
    tally = Tally(
        "AwaitingApproval" if req.approval is not None and req.approval.state == "Pending" else req.stage
        for req in requests
        if req.deleting_since is None
    )
    for stage in WAITING_STAGES:
        family.add_metric([stage], tally[stage])


def _scorecard_families() -> dict[str, GaugeMetricFamily]:
    return {
        "value": GaugeMetricFamily(
            "blacktop_scorecard_value",
            "Each scorecard figure (seconds, ratio 0-1, count or NPS), as `kubectl get platformscorecards` shows it.",
            labels=["metric"],
        ),
        "target": GaugeMetricFamily(
            "blacktop_scorecard_target",
            "Each scorecard figure's target in force (weekly-trouble: the count of the 7 days before).",
            labels=["metric"],
        ),
        "met": GaugeMetricFamily(
            "blacktop_scorecard_target_met",
            "1 when the figure meets its target, 0 when it misses it (no series: no data or no target).",
            labels=["metric"],
        ),
        "onboarding": GaugeMetricFamily(
            "blacktop_team_onboarding_seconds",
            "Time from a team's first Environment to its first Ready ServiceRequest (teams of the last 90 days); "
            "a team not yet onboarded (onboarded=false) shows its time so far.",
            labels=["team", "onboarded"],
        ),
        "activity": GaugeMetricFamily(
            "blacktop_team_last_activity_timestamp_seconds",
            "When each known team last created or changed an Environment or ServiceRequest (0: never).",
            labels=["team"],
        ),
        "known": GaugeMetricFamily(
            "blacktop_teams_known", "Known teams: those with an Environment, and those listed in knownTeams."
        ),
        "active": GaugeMetricFamily(
            "blacktop_teams_active_weekly", "Known teams that created or changed an Environment or request in 7 days."
        ),
        "workloads": GaugeMetricFamily(
            "blacktop_workloads",
            "Workloads in environment namespaces by team and the golden path that made them ((none): made by hand).",
            labels=["team", "golden_path"],
        ),
        "unused": GaugeMetricFamily(
            "blacktop_golden_path_unused",
            "1 for a golden path with no ServiceRequest in the last 30 days, else 0.",
            labels=["golden_path"],
        ),
        "self_service": GaugeMetricFamily(
            "blacktop_self_service_requests",
            "ServiceRequests of the last 30 days by golden path and outcome: self_served, human_step, in_trouble.",
            labels=["golden_path", "outcome"],
        ),
        "feedback": GaugeMetricFamily(
            "blacktop_feedback_responses",
            "This quarter's Feedback by golden path ((platform): the platform as a whole) and NPS category.",
            labels=["golden_path", "category"],
        ),
    }


class ScorecardCollector(Collector):
    """A prometheus-client collector over the latest scorecard (nothing before the first one)."""

    def __init__(self, book: ScorecardBook) -> None:
        self.book = book

    def describe(self) -> Iterable[Metric]:
        return list(_scorecard_families().values())

    def collect(self) -> Iterable[Metric]:
        families = _scorecard_families()
        scorecard = self.book.latest
        if scorecard is None:
            return list(families.values())  # no figures yet: the families without series, not zeros
        for figure in scorecard.figures:
            if figure.value is not None:
                families["value"].add_metric([figure.metric.value], figure.value)
            if figure.target is not None:
                families["target"].add_metric([figure.metric.value], figure.target)
            if figure.met is not None:
                families["met"].add_metric([figure.metric.value], 1.0 if figure.met else 0.0)
        for team, seconds, onboarded in scorecard.team_onboarding:
            families["onboarding"].add_metric([team, "true" if onboarded else "false"], seconds)
        for team, moment in scorecard.team_activity:
            families["activity"].add_metric([team], moment.timestamp() if moment else 0.0)
        families["known"].add_metric([], len(scorecard.team_activity))
        families["active"].add_metric([], scorecard.active_teams)
        for team, golden_path, count in scorecard.workloads:
            families["workloads"].add_metric([team, golden_path], count)
        for golden_path, unused in scorecard.golden_paths_unused:
            families["unused"].add_metric([golden_path], 1.0 if unused else 0.0)
        for golden_path, outcome, count in scorecard.self_service:
            families["self_service"].add_metric([golden_path, outcome], count)
        for golden_path, category, count in scorecard.feedback:
            families["feedback"].add_metric([golden_path, category], count)
        return list(families.values())
