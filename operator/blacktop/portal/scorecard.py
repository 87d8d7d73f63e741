"""The platform scorecard's figures, read from the operator's own metrics registry.

:func:`platform_scorecard` is the one function the scorecard page calls: today it reads what
``/metrics`` exports (lead time histogram, adoption, cost and budget per team, run results,
readiness), so the page and Prometheus always agree, and the product scorecard's figures with their
targets (the ones `kubectl get platformscorecards` shows) from the operator's scorecard book. Pure
apart from collecting the registry (which computes the scrape-time gauges from the operator's
inventory, no API call).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from blacktop.metrics.book import ScorecardBook
from blacktop.metrics.scorecard import Figure
from blacktop.portal.views import duration_text

LEAD_TIME = "blacktop_provisioning_lead_time_seconds"


@dataclass(frozen=True)
class LeadTimes:
    """One golden path's (or the platform's) lead times: count and estimated percentiles."""

    golden_path: str
    count: int
    p50: float | None
    p95: float | None

    @property
    def p50_text(self) -> str:
        return duration_text(self.p50) if self.p50 is not None else ""

    @property
    def p95_text(self) -> str:
        return duration_text(self.p95) if self.p95 is not None else ""


@dataclass(frozen=True)
class TeamCost:
    team: str
    currency: str
    cost: float
    budget: float | None


@dataclass
class Scorecard:
    """What the scorecard page plots and lists."""

    lead_time_buckets: list[tuple[str, float]] = field(default_factory=list)  # (≤ label, count in bucket)
    lead_times: list[LeadTimes] = field(default_factory=list)  # the platform first, then per golden path
    adoption: list[tuple[str, float]] = field(default_factory=list)  # (golden path, requests)
    costs: list[TeamCost] = field(default_factory=list)
    runs: float = 0.0
    failed_runs: float = 0.0
    ready: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> ready -> count
    active_teams: float = 0.0
    # The product scorecard (onboarding, adoption, self-service...): empty until the operator has
    # computed its first one.
    figures: tuple[Figure, ...] = ()

    @property
    def failure_percent(self) -> float | None:
        return 100.0 * self.failed_runs / self.runs if self.runs else None


def _bound_text(bound: float) -> str:
    return "more" if math.isinf(bound) else f"≤ {duration_text(bound)}"


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) buckets."""
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower  # above the largest finite bound: the best that can be said
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def _lead_times(name: str, cumulative: dict[float, float]) -> LeadTimes:
    ordered = sorted(cumulative.items())
    count = int(ordered[-1][1]) if ordered else 0
    return LeadTimes(name, count, quantile(0.5, ordered), quantile(0.95, ordered))


Samples = dict[str, list[tuple[dict[str, str], float]]]


def _samples(families: Iterable[Metric]) -> Samples:
    """Every sample of the registry by sample name (``blacktop_runs_total``, ``..._bucket``)."""
    found: Samples = defaultdict(list)
    for family in families:
        for sample in family.samples:
            found[sample.name].append((sample.labels, sample.value))
    return found


def _lead_time_section(samples: Samples, scorecard: Scorecard) -> None:
    per_path: defaultdict[str, defaultdict[float, float]] = defaultdict(lambda: defaultdict(float))
    for labels, value in samples[f"{LEAD_TIME}_bucket"]:
        per_path[labels["golden_path"]][float(labels["le"])] += value
    platform: defaultdict[float, float] = defaultdict(float)
    for buckets in per_path.values():
        for bound, count in buckets.items():
            platform[bound] += count
    previous = 0.0
    for bound, count in sorted(platform.items()):
        scorecard.lead_time_buckets.append((_bound_text(bound), count - previous))
        previous = count
    scorecard.lead_times = [_lead_times("all golden paths", platform)] + [
        _lead_times(gp, buckets) for gp, buckets in sorted(per_path.items())
    ]


def _read(samples: Samples, scorecard: Scorecard) -> None:
    _lead_time_section(samples, scorecard)
    adoption: defaultdict[str, float] = defaultdict(float)
    for labels, value in samples["blacktop_service_requests"]:
        adoption[labels["golden_path"]] += value
    scorecard.adoption = sorted(adoption.items(), key=lambda item: (-item[1], item[0]))
    budget = {(labels["team"], labels["currency"]): value for labels, value in samples["blacktop_team_monthly_budget"]}
    scorecard.costs = [
        TeamCost(labels["team"], labels["currency"], value, budget.get((labels["team"], labels["currency"])))
        for labels, value in sorted(
            samples["blacktop_team_monthly_cost"], key=lambda s: (s[0]["team"], s[0]["currency"])
        )
    ]
    for labels, value in samples["blacktop_runs_total"]:
        scorecard.runs += value
        scorecard.failed_runs += value if labels.get("result") == "failed" else 0.0
    for labels, value in samples["blacktop_resources"]:
        scorecard.ready.setdefault(labels["kind"], {})[labels["ready"]] = value
    scorecard.active_teams = sum(value for _, value in samples["blacktop_active_teams"])


def platform_scorecard(registry: CollectorRegistry, book: ScorecardBook | None = None) -> Scorecard:
    """The scorecard as the operator's /metrics has it now (counters since the operator started),
    with the latest product scorecard of ``book``."""
    scorecard = Scorecard()
    _read(_samples(registry.collect()), scorecard)
    latest = book.latest if book is not None else None
    if latest is not None:
        scorecard.figures = latest.figures
    return scorecard
