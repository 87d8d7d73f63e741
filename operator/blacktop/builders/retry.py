"""When to try a failed run again: capped exponential backoff with jitter, then Stalled. Pure."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Retry:
    """The next attempt after ``failures`` consecutive failures."""

    delay: float
    stalled: bool  # retries are exhausted: a human should look (the request is still retried, slowly)


def backoff(failures: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Capped exponential backoff with full jitter over the upper half: base, 2 base, 4 base ... cap
    (5 s, 10 s, 20 s ... 300 s with the default settings)."""
    ceiling = min(cap, base * 2 ** max(failures - 1, 0))
    jitter = float((rng or random).uniform(0, ceiling / 2))  # jitter, not cryptography
    return float(ceiling / 2 + jitter)


def next_retry(
    failures: int,
    *,
    base: float,
    cap: float,
    stalled_after: int | None,
    stalled_delay: float,
    rng: random.Random | None,
) -> Retry:
    """Backoff until ``stalled_after`` consecutive failures, then Stalled, retried every ``stalled_delay``
    (``stalled_after`` None: never Stalled, the backoff stays capped at ``cap``)."""
    if stalled_after is not None and failures >= stalled_after:
        return Retry(delay=stalled_delay, stalled=True)
    return Retry(delay=backoff(failures, base=base, cap=cap, rng=rng), stalled=False)
