"""When each Ready request's next drift check is due, kept in one place, and one loop that runs them.

A timer per object (Kopf's ``@timer``) costs a task, a wake-up and an API read per request per
interval, due or not: with thousands of requests the idle operator is busy. Instead, the watch
events the operator already receives feed :class:`DriftSchedule`: a request that is Ready for its
spec is due at its last check (or its last run) plus its golden path's ``driftCheckInterval``. One
task (:meth:`DriftSchedule.run`) sleeps until the earliest due time and starts those checks, a
bounded number at a time. Requests that are not Ready are provisioning's and are not in it. Nothing
here reads the API: a check re-reads its request and decides again (its view may be newer).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from blacktop.api.common import parse_duration, parse_time

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
Key = tuple[str, str]  # namespace, name
# A check of one request; returns when to look at it again if nothing else says (None: the next
# watch event of the request will say).
Check = Callable[[str, str], Awaitable[float | None]]


@dataclass(frozen=True)
class _Entry:
    golden_path: str
    since: datetime | None  # the last check, or the last run; None: never checked


def _ready_for_spec(body: JSON) -> bool:
    status = body.get("status") or {}
    generation = int(body["metadata"].get("generation", 1))
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    return (
        not body["metadata"].get("deletionTimestamp")
        and status.get("stage") == "Ready"
        and status.get("observedGeneration") == generation
        and ready is not None
        and ready.get("status") == "True"
    )


def _since(status: JSON) -> datetime | None:
    text = status.get("lastDriftCheckTime") or (status.get("lastRun") or {}).get("finishedAt")
    try:
        return parse_time(str(text)) if text else None
    except ValueError:
        return None


class DriftSchedule:
    """Due times of drift checks (see the module docstring). Fed by watch events; not thread-safe:
    used from the event loop only."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._entries: dict[Key, _Entry] = {}
        self._intervals: dict[str, timedelta] = {}
        self._due: dict[Key, datetime] = {}
        self._heap: list[tuple[datetime, int, Key]] = []
        self._order = itertools.count()
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._due)

    def golden_path(self, body: JSON, *, deleted: bool = False) -> None:
        """A GoldenPath event: its interval applies to its requests from now on."""
        name = str(body["metadata"]["name"])
        interval = None
        if not deleted:
            try:
                interval = parse_duration(str((body.get("spec") or {}).get("driftCheckInterval") or "10m"))
            except ValueError:
                interval = None
        if interval == self._intervals.get(name):
            return
        if interval is None:
            self._intervals.pop(name, None)
        else:
            self._intervals[name] = interval
        for key, entry in self._entries.items():
            if entry.golden_path == name:
                self._plan(key, entry)

    def request(self, body: JSON, *, deleted: bool = False) -> None:
        """A ServiceRequest event: (re)plan its check, or forget it while it is not Ready."""
        meta = body["metadata"]
        key = (str(meta.get("namespace") or ""), str(meta["name"]))
        if deleted or not _ready_for_spec(body):
            self._entries.pop(key, None)
            self._due.pop(key, None)
            return
        entry = _Entry(str((body.get("spec") or {}).get("goldenPath") or ""), _since(body.get("status") or {}))
        if self._entries.get(key) == entry:
            return
        self._entries[key] = entry
        self._plan(key, entry)

    def due_at(self, key: Key) -> datetime | None:
        return self._due.get(key)

    def later(self, key: Key, seconds: float) -> None:
        """Look at ``key`` again in ``seconds`` (a check that was skipped, or must be retried)."""
        if key in self._entries:
            self._set(key, self._clock() + timedelta(seconds=seconds))

    def pop_due(self) -> list[Key]:
        """The keys due now, taken off the schedule (a check puts them back through its events)."""
        now, found = self._clock(), []
        while self._heap and self._heap[0][0] <= now:
            when, _, key = heapq.heappop(self._heap)
            if self._due.get(key) == when:
                del self._due[key]
                found.append(key)
        return found

    def next_wait(self, ceiling: float) -> float:
        """Seconds until the earliest due check (at most ``ceiling``)."""
        while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # superseded
        if not self._heap:
            return ceiling
        return max(0.0, min(ceiling, (self._heap[0][0] - self._clock()).total_seconds()))

    def _plan(self, key: Key, entry: _Entry) -> None:
        interval = self._intervals.get(entry.golden_path)
        if interval is None:
            self._due.pop(key, None)  # its golden path is not known (yet): its event plans it
            return
        self._set(key, self._clock() if entry.since is None else entry.since + interval)

    def _set(self, key: Key, when: datetime) -> None:
        self._due[key] = when
        heapq.heappush(self._heap, (when, next(self._order), key))
        if len(self._heap) > 4 * len(self._due) + 64:  # drop superseded entries now and then
            self._heap = [(w, o, k) for w, o, k in self._heap if self._due.get(k) == w]
            heapq.heapify(self._heap)
        self._changed.set()

    async def run(self, check: Check, *, concurrency: int, retry_seconds: float, idle_seconds: float = 3600) -> None:
        """Forever: start the checks that are due, at most ``concurrency`` at a time."""
        limit = asyncio.Semaphore(concurrency)
        running: set[asyncio.Task[None]] = set()

        async def one(key: Key) -> None:
            try:
                again = await check(*key)
            except Exception as exc:  # a check reports its own failures; this is a last resort
                logger.warning("drift check of %s/%s failed: %s", key[0], key[1], exc)
                again = retry_seconds
            finally:
                limit.release()
            if again is not None and self.due_at(key) is None:
                self.later(key, again)

        while True:
            self._changed.clear()
            for key in self.pop_due():
                await limit.acquire()
                task = asyncio.create_task(one(key), name=f"drift {key[0]}/{key[1]}")
                running.add(task)
                task.add_done_callback(running.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=self.next_wait(idle_seconds))
