"""Run slots shared fairly between teams: one team's burst never starves another.

OpenTofu processes are bounded cluster-wide (``settings.max_concurrent_runs``). Each operation of a
run (init, plan, apply, ...) waits for a slot and holds it while the tool runs, so slots are busy
with tools, never with API calls between them. When a slot frees, it goes to the waiting team that
holds the fewest slots (ties: the team served longest ago), and within that team to the oldest run:
a run that has begun continues before a newer one of the same team starts. A team never holds more
than ``settings.max_runs_per_team`` slots. So with 500 queued runs of one team, a run of another team
starts at the next free slot, and the big team still uses every slot nobody else wants.

:meth:`FairSlots.standing` says where a new run of a team would stand, for status (``queue``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import defaultdict, deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Standing:
    """Where a run waiting for a slot stands."""

    position: int  # among its team's waiting runs, 1 = next
    ahead: int  # runs of all teams expected to start before it (fair interleaving)

    @property
    def waits(self) -> bool:
        return self.ahead > 0


@dataclass(order=True)
class _Waiter:
    run: int
    future: asyncio.Future[None] = field(compare=False)
    granted: bool = field(default=False, compare=False)


class FairSlots:
    """``total`` slots, at most ``per_team`` per team, granted fairly (see the module docstring)."""

    def __init__(self, total: int, per_team: int) -> None:
        self.total = total
        self.per_team = min(per_team, total)
        self._held: defaultdict[str, int] = defaultdict(int)
        self._waiting: defaultdict[str, deque[_Waiter]] = defaultdict(deque)
        self._served: dict[str, int] = {}  # team -> tick of its last grant
        self._ticks = itertools.count(1)
        self._runs = itertools.count(1)

    def new_run(self) -> int:
        """A run's number: older runs of a team are served first."""
        return next(self._runs)

    @property
    def in_use(self) -> int:
        return sum(self._held.values())

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def standing(self, team: str) -> Standing:
        """Where a run of ``team`` arriving now would stand (an estimate: others may arrive)."""
        if self.in_use < self.total and self._held[team] < self.per_team and not self._waiting[team]:
            return Standing(position=1, ahead=0)
        position = len(self._waiting[team]) + 1
        # Teams take turns: before our position-th turn, each other team gets at most as many.
        others = sum(min(len(q), position) for t, q in self._waiting.items() if t != team)
        return Standing(position=position, ahead=position - 1 + others + (1 if self.in_use >= self.total else 0))

    async def acquire(self, team: str, run: int) -> None:
        """Wait for a slot for ``team``'s run number ``run``."""
        if not self._waiting[team] and self._grantable(team) and not self._others_waiting(team):
            self._grant(team)
            return
        waiter = _Waiter(run, asyncio.get_running_loop().create_future())
        queue = self._waiting[team]
        queue.append(waiter)
        if len(queue) > 1 and queue[-2].run > run:  # keep the team's queue ordered by run
            ordered = sorted(queue)
            queue.clear()
            queue.extend(ordered)
        self._dispatch()
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.granted:
                self.release(team)  # granted just as we were cancelled: give it back
            else:
                with contextlib.suppress(ValueError):  # already dropped by _dispatch
                    queue.remove(waiter)
                self._dispatch()
            raise

    def release(self, team: str) -> None:
        """Give back a slot of ``team``."""
        self._held[team] -= 1
        if self._held[team] <= 0:
            del self._held[team]
        self._dispatch()

    def _grantable(self, team: str) -> bool:
        return self.in_use < self.total and self._held[team] < self.per_team

    def _others_waiting(self, team: str) -> bool:
        return any(q and self._grantable(t) for t, q in self._waiting.items() if t != team)

    def _grant(self, team: str) -> None:
        self._held[team] += 1
        self._served[team] = next(self._ticks)

    def _dispatch(self) -> None:
        """Hand free slots to waiters: fewest slots held first, then the team served longest ago."""
        while self.in_use < self.total:
            teams = [t for t, q in self._waiting.items() if q and self._held[t] < self.per_team]
            if not teams:
                break
            team = min(teams, key=lambda t: (self._held[t], self._served.get(t, 0)))
            waiter = self._waiting[team].popleft()
            if not self._waiting[team]:
                del self._waiting[team]
            if waiter.future.done():  # its task was cancelled while it waited: nothing to grant
                continue
            self._grant(team)
            waiter.granted = True
            waiter.future.set_result(None)
        for team in [t for t, q in self._waiting.items() if not q]:
            del self._waiting[team]
