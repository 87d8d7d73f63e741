"""Blacktop's metrics: defined in one place, registered into an explicit ``CollectorRegistry``.

Nothing is registered globally at import time: :func:`create_metrics` builds a fresh set bound to
the registry it is given, so tests get isolated registries and the process exports exactly these
series. Label values are bounded sets (golden path, tier, team, reason, operation) — never an
object's name or uid, which would grow cardinality without limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

# Provisioning lead time: from a request's creation to its first Ready, 1 s to 2 h.
LEAD_TIME_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
STAGE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


@dataclass(frozen=True)
class Metrics:
    """Every metric Blacktop exports."""

    registry: CollectorRegistry
    environment_reconciles: Counter

    @property
    def names(self) -> list[str]:
        """Names of all collectors in the registry (for docs and tests)."""
        return sorted({metric.name for metric in self.registry.collect()})


def create_metrics(registry: CollectorRegistry | None = None) -> Metrics:
    """Build the metric set in ``registry`` (a new one if not given)."""
    registry = registry or CollectorRegistry(auto_describe=True)
    return Metrics(
        registry=registry,
        environment_reconciles=Counter(
            "blacktop_environment_reconciles_total",
            "Environment reconciles by result.",
            ["result"],
            registry=registry,
        ),
    )
