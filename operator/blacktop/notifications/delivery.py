"""Delivering notices: a bounded queue, a few workers that POST, retries with capped jittered backoff.

Nothing here can block or fail a reconcile. :meth:`Dispatcher.submit` only puts the notice on an
in-memory queue (or drops it, counted, when the queue is full) and returns at once; workers route
it (the resolver reads the channels' Secrets), then deliver it to each channel independently, so a
dead webhook never delays the team's chat. A delivery is retried on connection errors, timeouts,
408, 429 (after its Retry-After) and 5xx; any other answer is final. Each message and channel is
tried ``max_attempts`` times, waiting ``backoff * 2^(n-1)`` (capped, jittered over its upper half)
between tries; messages retried or waiting count against the queue's bound. Every outcome is
counted (``blacktop_notifications_total``) and logged by channel name, never by URL: a Slack webhook
URL is a credential. Pending messages are lost when the operator stops (at most a few seconds of
grace); the next transition is announced by the next process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import aiohttp

from blacktop.api.notifications import ChannelType
from blacktop.metrics.registry import Metrics
from blacktop.notifications import render
from blacktop.notifications.notices import Memory, Notice

logger = logging.getLogger(__name__)

TEAM, PLATFORM, NO_CHANNEL = "team", "platform", "none"
DELIVERED, FAILED, DROPPED = "delivered", "failed", "dropped"
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "blacktop-notifications/1"


@dataclass(frozen=True)
class Target:
    """One channel a notice goes to; ``name`` is what logs and Events call it (never the URL)."""

    name: str
    scope: str  # team or platform
    type: ChannelType
    url: str
    hmac_key: str | None = None

    def __repr__(self) -> str:  # a Target must never print its URL or key
        return f"Target({self.scope} channel {self.name}, {self.type.value})"


@dataclass(frozen=True)
class Outcome:
    """What one attempt got: delivered, or why not and whether to try again (after ``retry_after``)."""

    ok: bool
    detail: str
    retryable: bool = False
    retry_after: float | None = None


Resolver = Callable[[Notice], Awaitable[tuple[Notice, list[Target]]]]
Poster = Callable[[Target, bytes, dict[str, str]], Awaitable[Outcome]]
GiveUp = Callable[[Notice, Target, str], Awaitable[None]]


@dataclass(frozen=True)
class _Job:
    notice: Notice
    target: Target | None  # None: not routed yet
    attempt: int = 0
    queued_at: float = 0.0


def request_for(notice: Notice, target: Target) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one delivery (signed for a generic webhook)."""
    body = render.slack_body(notice) if target.type is ChannelType.SLACK else render.json_body(notice)
    payload = render.encode(body)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if target.type is ChannelType.WEBHOOK:
        headers[render.DELIVERY_HEADER] = notice.id
        headers[render.EVENT_HEADER] = notice.event.value
        if target.hmac_key:
            headers[render.SIGNATURE_HEADER] = render.signature(target.hmac_key, payload)
    return payload, headers


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class HttpPoster:
    """POSTs with one aiohttp session: no redirects followed, a total timeout per attempt."""

    def __init__(self, timeout: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, target: Target, payload: bytes, headers: dict[str, str]) -> Outcome:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(target.url, data=payload, headers=headers, allow_redirects=False) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return Outcome(True, f"HTTP {resp.status}")
                return Outcome(
                    False,
                    f"HTTP {resp.status}",
                    retryable=resp.status in RETRYABLE_STATUSES,
                    retry_after=_retry_after(resp.headers.get("Retry-After")),
                )
        except TimeoutError:
            return Outcome(False, "timed out", retryable=True)
        except aiohttp.InvalidURL:
            return Outcome(False, "the URL is invalid")
        except aiohttp.ClientConnectorError as exc:
            # The exception's text names the host; the path (a Slack webhook's secret) is never in it.
            return Outcome(False, f"cannot connect to {exc.host}:{exc.port}", retryable=True)
        except aiohttp.ClientError as exc:
            return Outcome(False, type(exc).__name__, retryable=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class Dispatcher:
    """The queue and its workers. ``start`` in the operator's start-up, ``stop`` in its cleanup."""

    def __init__(
        self,
        resolve: Resolver,
        metrics: Metrics,
        *,
        queue_size: int,
        workers: int,
        max_attempts: int,
        backoff: float,
        backoff_cap: float,
        poster: Poster,
        give_up: GiveUp | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.resolve = resolve
        self.metrics = metrics
        self.queue_size = queue_size
        self.workers = workers
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.poster = poster
        self.give_up = give_up
        self.rng = rng or random.Random()  # noqa: S311 (jitter, not cryptography)
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._pending = 0  # accepted and not finished: queued, in flight, or waiting to be retried
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._reports: set[asyncio.Task[None]] = set()  # give-up reports in flight (held, so not collected)
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pending(self) -> int:
        return self._pending

    # -- accepting ----------------------------------------------------------------------------------

    def submit(self, notice: Notice) -> bool:
        """Queue a notice; False (and counted as dropped) when the queue is full. Never blocks."""
        return self._accept(_Job(notice, None, queued_at=time.monotonic()))

    def _accept(self, job: _Job) -> bool:
        if self._pending >= self.queue_size:
            self._count(job, DROPPED)
            logger.warning("notification %s about %s dropped: the queue is full", job.notice.event, job.notice.name)
            return False
        self._pending += 1
        self._idle.clear()
        self._queue.put_nowait(job)
        self.metrics.notifications_queued.set(self._pending)
        return True

    def _finish(self) -> None:
        self._pending -= 1
        self.metrics.notifications_queued.set(self._pending)
        if self._pending == 0:
            self._idle.set()

    def _count(self, job: _Job, result: str) -> None:
        target = job.target
        self.metrics.observe_notification(
            job.notice.event.value,
            target.type.value if target else NO_CHANNEL,
            target.scope if target else NO_CHANNEL,
            result,
        )

    # -- running ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers (in the running event loop)."""
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._work(), name=f"blacktop-notify-{n}") for n in range(self.workers)]

    async def stop(self, grace: float = 2.0) -> None:
        """Let queued deliveries finish for ``grace`` seconds, then stop the workers."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=grace)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def drained(self) -> None:
        """Wait until nothing is pending (tests and benchmarks bound it with asyncio.timeout)."""
        await self._idle.wait()

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await (self._route(job) if job.target is None else self._deliver(job))
            except Exception:
                # A bug in routing or rendering must not stop the worker (nor reach a reconcile).
                logger.exception("notification %s about %s could not be handled", job.notice.event, job.notice.name)
                self._count(job, FAILED)
            finally:
                self._finish()
                self._queue.task_done()

    async def _route(self, job: _Job) -> None:
        try:
            notice, targets = await self.resolve(job.notice)
        except Exception as exc:
            # The channels could not be read (API server unavailable): try again like a delivery.
            self._retry_or_fail(job, Outcome(False, f"channels could not be read: {type(exc).__name__}", True))
            return
        for target in targets:
            self._accept(_Job(notice, target, queued_at=job.queued_at))

    async def _deliver(self, job: _Job) -> None:
        target = job.target
        assert target is not None
        payload, headers = request_for(job.notice, target)
        outcome = await self.poster(target, payload, headers)
        if outcome.ok:
            self._count(job, DELIVERED)
            self.metrics.observe_notification_latency(target.type.value, time.monotonic() - job.queued_at)
            logger.info("notification %s about %s delivered to %r", job.notice.event, job.notice.name, target)
            return
        self._retry_or_fail(job, outcome)

    def _retry_or_fail(self, job: _Job, outcome: Outcome) -> None:
        attempt = job.attempt + 1
        channel = job.target.type.value if job.target else NO_CHANNEL
        if outcome.retryable and attempt < self.max_attempts:
            delay = self.delay(attempt, outcome.retry_after)
            self.metrics.notification_retries.labels(channel_type=channel).inc()
            logger.info(
                "notification %s about %s to %r failed (%s, attempt %d of %d); retrying in %.1fs",
                job.notice.event,
                job.notice.name,
                job.target,
                outcome.detail,
                attempt,
                self.max_attempts,
                delay,
            )
            self._pending += 1  # the retry stays pending while it waits (it counts against the bound)
            self._idle.clear()
            timer = asyncio.get_running_loop().call_later(delay, self._requeue, replace(job, attempt=attempt))
            self._timers.add(timer)
            return
        self._count(job, FAILED)
        why = outcome.detail if outcome.retryable else f"{outcome.detail}, not retried"
        detail = f"{why} after {attempt} attempt(s)"
        logger.warning(
            "notification %s about %s to %r failed: %s", job.notice.event, job.notice.name, job.target, detail
        )
        if self.give_up is not None and job.target is not None:
            task = asyncio.create_task(self._report(job.notice, job.target, detail))
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)

    async def _report(self, notice: Notice, target: Target, detail: str) -> None:
        assert self.give_up is not None
        with contextlib.suppress(Exception):  # reporting is a courtesy too
            await self.give_up(notice, target, detail)

    def _requeue(self, job: _Job) -> None:
        self._timers = {t for t in self._timers if not t.cancelled() and t.when() > asyncio.get_running_loop().time()}
        self._queue.put_nowait(job)  # already counted as pending

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before attempt ``attempt + 1``: the server's Retry-After if it gave one (capped), else
        capped exponential backoff with jitter over its upper half."""
        if retry_after is not None:
            return min(self.backoff_cap, retry_after)
        ceiling = min(self.backoff_cap, self.backoff * 2 ** (attempt - 1))
        return float(ceiling / 2 + self.rng.uniform(0, ceiling / 2))


@dataclass
class Notifier:
    """The process's notifications: the memory of what was announced, and the dispatcher."""

    memory: Memory
    dispatcher: Dispatcher
    closers: tuple[Callable[[], Awaitable[None]], ...] = ()  # e.g. the HTTP session

    async def stop(self, grace: float = 2.0) -> None:
        """Give queued messages ``grace`` seconds, then stop the workers and close connections."""
        await self.dispatcher.stop(grace)
        for close in self.closers:
            await close()

    def observe(self, kind: str, body: dict[str, Any], now: datetime, *, deleted: bool = False) -> list[Notice]:
        """Take in one watch event and queue what it calls for (never blocks, never raises)."""
        try:
            notices = self.memory.observe(kind, body, now, deleted=deleted)
        except Exception:
            logger.exception("notifications: could not read a %s event", kind)
            return []
        for notice in notices:
            self.dispatcher.submit(notice)
        return notices
