"""What every reconciler needs: the API client, the settings, the metrics, and per-object locks."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field

from blacktop.config import Settings
from blacktop.controllers.evaluation import Evaluator
from blacktop.kube.client import KubeClient
from blacktop.metrics.registry import Metrics, create_metrics


@dataclass
class Context:
    """Shared, process-wide state of the running operator."""

    client: KubeClient
    settings: Settings
    metrics: Metrics = field(default_factory=create_metrics)  # the process's explicit registry
    # Kopf serialises change handlers per object, but timers and watches of child objects run beside
    # them; one lock per object keeps two reconciles of the same object from interleaving their writes.
    _locks: defaultdict[str, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))
    _runs: asyncio.Semaphore | None = None
    _evaluator: Evaluator | None = None
    # Who the operator is to the API server (SelfSubjectReview at start-up): its own changes (finalizers,
    # Kopf's annotations, TTL deletions) pass the team boundary that every other user's must.
    username: str = ""

    @property
    def runs(self) -> asyncio.Semaphore:
        """Bounds OpenTofu runs cluster-wide (settings.max_concurrent_runs)."""
        if self._runs is None:
            self._runs = asyncio.Semaphore(self.settings.max_concurrent_runs)
        return self._runs

    @property
    def evaluator(self) -> Evaluator:
        """Guardrail evaluation in worker processes under a deadline (settings.guardrail_*)."""
        if self._evaluator is None:
            self._evaluator = Evaluator(
                workers=self.settings.guardrail_workers, timeout=self.settings.guardrail_timeout_seconds
            )
        return self._evaluator

    def lock(self, key: str) -> asyncio.Lock:
        """The lock serialising work on one object (key: its uid or kind/namespace/name)."""
        return self._locks[key]

    def forget(self, key: str) -> None:
        """Drop the lock of an object that is gone, so the table does not grow forever."""
        self._locks.pop(key, None)
