"""The scorecard's process state: the latest scorecard, and what is waiting to go into the next one.

One :class:`ScorecardBook` lives in the operator's :class:`~blacktop.metrics.registry.Metrics`
(``ctx.metrics.scorecard``). The scorecard controller publishes each :class:`Scorecard` it computes
here; /metrics (another thread) and the developer portal read :attr:`ScorecardBook.latest`.
Admission notes platform-team edits, the watch notes deleted requests, and anything that should
show soon (a new target, a deletion) asks for an early refresh with :meth:`ScorecardBook.poke`.
Thread-safe; pure apart from its lock and a monotonic clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from blacktop.api.scorecard import RetiredRequest
from blacktop.builders.history import PlatformEdits
from blacktop.metrics.scorecard import Scorecard

# A poke waits this long for more of the same (a burst of deletions is one refresh).
DEBOUNCE_SECONDS = 1.0
MAX_PENDING_RETIRED = 1000


class ScorecardBook:
    """The latest scorecard and the notes for the next one."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._latest: Scorecard | None = None
        self._retired: dict[str, RetiredRequest] = {}
        self._poked_at: float | None = None
        self._computed_at: float | None = None
        self.platform_edits = PlatformEdits(clock)

    @property
    def latest(self) -> Scorecard | None:
        """The scorecard last computed (None until the first one): what the portal shows."""
        with self._lock:
            return self._latest

    def publish(self, scorecard: Scorecard) -> None:
        with self._lock:
            self._latest = scorecard
            self._computed_at = self._clock()

    def retire(self, record: RetiredRequest) -> None:
        """A request was deleted: keep its facts for the next ledger (the object is gone)."""
        with self._lock:
            if len(self._retired) >= MAX_PENDING_RETIRED:
                self._retired.pop(next(iter(self._retired)))
            self._retired[record.uid] = record
        self.poke()

    def take_retired(self) -> list[RetiredRequest]:
        """The deleted requests noted since the last call (the caller folds them into the ledger)."""
        with self._lock:
            taken, self._retired = list(self._retired.values()), {}
            return taken

    def give_back(self, records: list[RetiredRequest]) -> None:
        """Records taken for a ledger that could not be written: keep them for the next try."""
        with self._lock:
            for record in records:
                self._retired.setdefault(record.uid, record)

    def poke(self) -> None:
        """Something changed that should show in the scorecard soon."""
        with self._lock:
            if self._poked_at is None:
                self._poked_at = self._clock()

    def due(self, interval: float) -> bool:
        """Whether a refresh is due: never computed, ``interval`` passed, or poked (and debounced)."""
        with self._lock:
            now = self._clock()
            if self._computed_at is None or now - self._computed_at >= interval:
                return True
            return self._poked_at is not None and now - self._poked_at >= DEBOUNCE_SECONDS

    def started(self) -> None:
        """A refresh starts: pokes until now are served by it."""
        with self._lock:
            self._poked_at = None
