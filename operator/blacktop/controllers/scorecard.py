"""The scorecard controller: compute the platform's scorecard and keep the PlatformScorecard objects current.

Every ``resync_seconds`` (and a second after something that should show soon: a new target, a
deleted request), :func:`refresh_scorecard` lists what the figures are made of (Environments,
ServiceRequests, GoldenPaths, Feedback, the workloads of environment namespaces), reads the
ledger (the ConfigMap ``blacktop-scorecard-ledger`` in the operator's namespace), lets the pure
deciders fold and compute (:mod:`blacktop.metrics.ledger`, :mod:`blacktop.metrics.scorecard`),
then writes what changed: the ten objects' status (one per metric, created when missing; an Event
when a target turns met or missed), the ledger, and the latest scorecard into the book that
/metrics and the developer portal read. Every figure comes from complete lists (the informer cache
once it has synced is one: a list kept current by a watch), never from what one watch happened to
deliver since the start, so the first figures after a restart are as exact as the last ones before it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from blacktop.api.common import parse_time
from blacktop.api.conditions import ConditionType, Reason, get_condition
from blacktop.api.kinds import API_VERSION
from blacktop.api.scorecard import (
    BreakdownEntry,
    Metric,
    PlatformScorecardSpec,
    PlatformScorecardStatus,
    ScorecardLedger,
)
from blacktop.builders import naming
from blacktop.controllers import lookup
from blacktop.controllers.context import Context
from blacktop.controllers.tracker import StatusTracker
from blacktop.kube import events
from blacktop.kube.client import gather
from blacktop.kube.errors import ConflictError
from blacktop.kube.resources import (
    FEEDBACKS,
    PLATFORMSCORECARDS,
    WORKLOADS,
    resource_for,
)
from blacktop.metrics.facts import observe
from blacktop.metrics.ledger import next_ledger
from blacktop.metrics.scorecard import Figure, Scorecard, compute

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
CONFIGMAP = resource_for("v1", "ConfigMap")
LEDGER_CONFIGMAP = "blacktop-scorecard-ledger"
LEDGER_KEY = "ledger.json"
# A ConfigMap holds at most 1 MiB; the ledger's caps keep it far below, this is the last guard.
MAX_LEDGER_BYTES = 900_000
TICK_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 60.0


async def run_scorecard(ctx: Context, interval: float) -> None:
    """Forever: refresh the scorecard when due (every ``interval`` seconds, or soon after a poke)."""
    book, failures = ctx.metrics.scorecard, 0
    while True:
        if book.due(interval):
            book.started()
            try:
                await refresh_scorecard(ctx)
                failures = 0
            except Exception as exc:  # the loop must outlive any one failure (an apiserver away, a bug)
                failures += 1
                delay = min(MAX_BACKOFF_SECONDS, 2.0**failures)
                logger.warning("could not refresh the platform scorecard (retrying in %.0fs): %s", delay, exc)
                await asyncio.sleep(delay)
        await asyncio.sleep(TICK_SECONDS)


async def _list_all(ctx: Context) -> tuple[list[JSON], ...]:
    """Environments, requests, golden paths (the informer cache's copies once it has synced: a
    complete list kept current by its watch, so as exact as a list and free), then Feedback, the
    scorecard objects and the workloads, listed."""
    cached = (lookup.listed(ctx, kind) for kind in ("environments", "requests", "golden_paths"))
    results = await gather(*cached, *(ctx.client.list(kind) for kind in [FEEDBACKS, PLATFORMSCORECARDS, *WORKLOADS]))
    return tuple(results)


async def _read_ledger(ctx: Context) -> tuple[ScorecardLedger, bool]:
    """The stored ledger, and whether there was one."""
    stored = await ctx.client.get(CONFIGMAP, LEDGER_CONFIGMAP, ctx.settings.namespace)
    if stored is None:
        return ScorecardLedger(), False
    try:
        return ScorecardLedger.model_validate_json((stored.get("data") or {}).get(LEDGER_KEY) or "{}"), True
    except ValidationError as exc:
        # Better a scorecard that starts remembering again than none at all; say what was lost.
        logger.warning("the scorecard ledger %s is unreadable and starts afresh: %s", LEDGER_CONFIGMAP, exc)
        return ScorecardLedger(), True


def _encode(ledger: ScorecardLedger) -> str:
    """Compact JSON within MAX_LEDGER_BYTES (oldest retired requests, then environments, dropped first)."""
    while True:
        text = json.dumps(ledger.model_dump(by_alias=True, mode="json", exclude_none=True), separators=(",", ":"))
        if len(text.encode()) <= MAX_LEDGER_BYTES:
            return text
        if ledger.retired_requests:
            ledger = ledger.model_copy(update={"retired_requests": ledger.retired_requests[1:]})
        elif ledger.environments:
            ledger = ledger.model_copy(update={"environments": ledger.environments[1:]})
        else:
            ledger = ledger.model_copy(update={"teams": ledger.teams[1:]})


async def _write_ledger(ctx: Context, ledger: ScorecardLedger) -> None:
    await ctx.client.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": LEDGER_CONFIGMAP,
                "namespace": ctx.settings.namespace,
                "labels": {naming.MANAGED_BY: naming.MANAGER},
                "annotations": {
                    f"{naming.DOMAIN}/about": "the platform scorecard's memory of what the cluster no longer shows"
                },
            },
            "data": {LEDGER_KEY: _encode(ledger)},
        }
    )


def _targets(objects: list[JSON]) -> tuple[dict[Metric, str | None], tuple[str, ...]]:
    """spec.target of each metric object, and the known teams (spec.knownTeams of weekly-active-teams)."""
    targets: dict[Metric, str | None] = {}
    known: tuple[str, ...] = ()
    for obj in objects:
        try:
            metric = Metric(obj["metadata"]["name"])
            spec = PlatformScorecardSpec.model_validate(obj.get("spec") or {})
        except (ValueError, ValidationError):
            continue  # the CRD refuses these; an unreadable one keeps the default target
        targets[metric] = spec.target
        if metric == Metric.WEEKLY_ACTIVE_TEAMS:
            known = tuple(spec.known_teams)
    return targets, known


async def refresh_scorecard(ctx: Context, now: datetime | None = None) -> Scorecard:
    """Compute the scorecard from the cluster now, write it everywhere it shows, and return it."""
    now = now or ctx.now()
    book = ctx.metrics.scorecard
    (envs, requests, golden_paths, feedback, objects, *workloads), (ledger, had_ledger) = await gather(
        _list_all(ctx), _read_ledger(ctx)
    )
    targets, known = _targets(objects)
    observed = observe(
        envs,
        requests,
        golden_paths,
        feedback=feedback,
        workloads=[w for kind in workloads for w in kind],
        known_teams=known,
    )
    retired = book.take_retired()
    try:
        folded = next_ledger(ledger, observed, retired, now)
        scorecard = compute(observed, folded, targets, now)
        await _write_objects(ctx, objects, scorecard)
        if folded != ledger or not had_ledger:
            await _write_ledger(ctx, folded)
    except BaseException:
        book.give_back(retired)
        raise
    if had_ledger:  # the first ledger ever is a baseline, like every first sighting
        _observe_onboarding(ctx, ledger, folded)
    book.publish(scorecard)
    return scorecard


def _observe_onboarding(ctx: Context, before: ScorecardLedger, after: ScorecardLedger) -> None:
    """Each environment onboarded since the last ledger goes into the onboarding histogram once."""
    known = {e.uid for e in before.environments if e.onboarded_at}
    for env in after.environments:
        if env.onboarded_at and env.uid not in known:
            seconds = (parse_time(env.onboarded_at) - parse_time(env.created_at)).total_seconds()
            ctx.metrics.observe_environment_onboarding(env.tier, max(0.0, seconds))


async def _write_objects(ctx: Context, objects: list[JSON], scorecard: Scorecard) -> None:
    by_name = {obj["metadata"]["name"]: obj for obj in objects}
    for figure in scorecard.figures:
        body = by_name.get(figure.metric.value)
        if body is None:
            body = await _create(ctx, figure.metric)
            if body is None:
                continue
        await _write_status(ctx, body, figure)


async def _create(ctx: Context, metric: Metric) -> JSON | None:
    """The metric's object with the default target (a platform team's own is never overwritten)."""
    obj = {
        "apiVersion": API_VERSION,
        "kind": "PlatformScorecard",
        "metadata": {"name": metric.value, "labels": {naming.MANAGED_BY: naming.MANAGER}},
        "spec": {},
    }
    try:
        return await ctx.client.create(obj)
    except ConflictError:
        return await ctx.client.get(PLATFORMSCORECARDS, metric.value)  # someone was quicker: theirs stands


def _verdict_message(figure: Figure) -> tuple[bool | None, str]:
    if figure.reason == Reason.NO_TARGET:
        return None, "informational: this metric has no target"
    if figure.reason == Reason.NO_DATA:
        return None, f"no data yet ({figure.summary})"
    if figure.reason == Reason.INVALID_TARGET:
        return None, figure.summary
    words = "meets" if figure.met else "misses"
    return figure.met, f"{figure.display} {words} the target {figure.target_display}"


async def _write_status(ctx: Context, body: JSON, figure: Figure) -> PlatformScorecardStatus:
    before = get_condition(
        PlatformScorecardStatus.model_validate(body.get("status") or {}).conditions, ConditionType.TARGET_MET
    )
    tracker = StatusTracker(body, PlatformScorecardStatus, now=ctx.now())
    status = tracker.status
    status.description = figure.description
    status.value = figure.value
    status.display = figure.display
    status.unit = figure.unit
    status.target = figure.target_display
    status.window = figure.window
    status.summary = figure.summary
    status.breakdown = [
        BreakdownEntry(dimension=e.dimension, key=e.key, value=e.value, display=e.display) for e in figure.breakdown
    ]
    met, message = _verdict_message(figure)
    tracker.set(ConditionType.TARGET_MET, met, figure.reason, message)
    if figure.reason == Reason.INVALID_TARGET:
        tracker.not_ready(Reason.INVALID_TARGET, f"{message}; fix spec.target or remove it", stalled=True)
    else:
        tracker.ready(f"{figure.metric.value}: {figure.display} ({figure.window})", Reason.RECONCILED)
    written = await tracker.write(ctx.client, PLATFORMSCORECARDS)
    if met is not None and (before is None or before.status != ("True" if met else "False")):
        event_type = events.NORMAL if met else events.WARNING
        await events.post_event(ctx.client, body, event_type, figure.reason, message)
    return written
