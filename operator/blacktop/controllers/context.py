"""What every reconciler needs, and all the state the operator process keeps: one object.

The API client, the settings (the very object the CLI built), the metrics, where OpenTofu runs
(:class:`blacktop.terraform.runner.Runners`: start-up passes subprocess runners whose state backend
uses the client's own kubeconfig, tests pass fakes), the module cache, the clock and the random source
(injected, so tests control time and jitter), and the process-wide tables: per-object locks, the run
slots, the state locks runs of this process hold, the last price seen per request, the background
tasks in flight, the guardrail evaluator (worker processes; in-process for tests) and who the operator
is. Nothing of this lives in module globals, so a test builds a fresh Context with fakes and nothing
leaks between tests.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from blacktop.config import Settings
from blacktop.controllers.evaluation import Evaluator
from blacktop.controllers.schedule import DriftSchedule
from blacktop.controllers.slots import FairSlots
from blacktop.kube.client import Client
from blacktop.kube.informer import ClusterCache
from blacktop.metrics.registry import Metrics, create_metrics
from blacktop.notifications.delivery import Notifier
from blacktop.terraform.module import ModuleCache
from blacktop.terraform.runner import Runners
from blacktop.terraform.sources import ModuleSources


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Context:
    """Shared, process-wide state of the running operator."""

    def __init__(
        self,
        client: Client,
        settings: Settings,
        *,
        runners: Runners,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = _utcnow,
        rng: random.Random | None = None,
        evaluator: Evaluator | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        # Watch-fed copies of what reviews and reconciles read (None: read everything from the API).
        self.cache: ClusterCache | None = None
        self.runners = runners
        self.metrics = metrics or create_metrics()  # the process's explicit registry
        self.clock = clock
        self.rng = rng or random.Random()  # backoff jitter  # noqa: S311 (not cryptography)
        self.modules = ModuleCache(settings.modules_root)
        # Guardrail rules run in worker processes under a deadline (settings.guardrail_*), off the event loop.
        self.evaluator = evaluator or Evaluator(
            workers=settings.guardrail_workers, timeout=settings.guardrail_timeout_seconds
        )
        # Who the operator is to the API server (SelfSubjectReview at start-up): its own changes (finalizers,
        # Kopf's annotations, TTL deletions) pass the team boundary that every other user's must.
        self.username = ""
        # Git commits and copies of folder modules that golden path revisions name (bounded).
        self.sources = ModuleSources(
            settings.module_cache_root,
            settings.modules_root,
            max_entries=settings.module_cache_entries,
            max_bytes=settings.module_max_bytes,
            timeout=settings.git_timeout_seconds,
        )
        # Bound runs cluster-wide (settings.max_concurrent_runs) and per team (settings.team_run_limit),
        # shared fairly between the teams that wait (controllers/slots.py).
        self.runs = FairSlots(settings.max_concurrent_runs, settings.team_run_limit)
        # Lock IDs held by runs of this process right now: such a lock is busy, never an orphan.
        self.held_locks: set[str] = set()
        # Set while this replica stops its runs because it lost its leader lease: how such a run failed.
        self.interruption: Any = None  # runs.RunFailed | None (runs imports this module)
        # Runs stopped that way, by request (namespace/name): their next reconcile records the failure.
        self.interrupted: dict[str, Any] = {}
        # When each Ready request's next drift check is due (fed by watch events, run by one task).
        self.drift = DriftSchedule(self.now)
        # The last monthlyCost seen per request uid: most request events (progress in status) change no price.
        self.prices: dict[str, str | None] = {}
        # Work started beside a response (guardrail recordings); referenced so it is not garbage-collected.
        self.background: set[asyncio.Task[None]] = set()
        # Notifications (the memory of what was announced, and the delivery queue), started at start-up.
        self.notifier: Notifier | None = None
        # Kopf serialises change handlers per object, but timers and watches of child objects run beside
        # them; one lock per object keeps two reconciles of the same object from interleaving their writes.
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def now(self) -> datetime:
        """The current time (UTC) by the context's clock."""
        return self.clock()

    def lock(self, key: str) -> asyncio.Lock:
        """The lock serialising work on one object (key: its uid or kind/namespace/name)."""
        return self._locks[key]

    def forget(self, key: str) -> None:
        """Drop the lock of an object that is gone, so the table does not grow forever."""
        self._locks.pop(key, None)
