"""The platform scorecard: ten figures of the platform as a product, their targets, met or not. Pure.

:func:`compute` takes what is live (:class:`~blacktop.metrics.facts.Observed`), what the ledger
remembers (:mod:`blacktop.metrics.ledger`), the targets and the time, and returns a
:class:`Scorecard`: one :class:`Figure` per :class:`~blacktop.api.scorecard.Metric` with its value,
target, verdict and breakdown, plus the per-team and per-golden-path numbers /metrics exports. The
PlatformScorecard objects, the /metrics gauges and the developer portal all show this one result.

Durations are the 90th percentile (nearest rank: for fewer than ten, the slowest), and anything
still waiting (a team not onboarded yet, a change not Ready yet, trouble not over) counts with its
time so far: a team that never onboards shows, rather than disappearing from the figure.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from blacktop.api.common import parse_duration, parse_time
from blacktop.api.conditions import Reason
from blacktop.api.feedback import FeedbackCategory, category, quarter_of
from blacktop.api.scorecard import (
    DURATION_METRICS,
    PERCENT_METRICS,
    TARGET_DURATION,
    TARGET_PERCENT,
    TARGET_SCORE,
    TARGET_TROUBLE,
    Metric,
    ScorecardLedger,
)
from blacktop.metrics.facts import Observed, RequestFacts
from blacktop.metrics.ledger import ONBOARDING_WINDOW, REQUEST_WINDOW, all_requests

WEEK = timedelta(days=7)
UNUSED_AFTER = timedelta(days=30)
PLATFORM = "(platform)"  # the golden-path key of feedback about the platform as a whole
NO_GOLDEN_PATH = "(none)"  # the golden-path key of workloads no golden path made
MAX_ENTRIES = 300  # per figure (the status' breakdown cap)
QUARTERS_SHOWN = 4

DEFAULT_TARGETS: dict[Metric, str | None] = {
    Metric.TEAM_ONBOARDING: "30m",
    Metric.ENVIRONMENT_ONBOARDING: "30m",
    Metric.WEEKLY_ACTIVE_TEAMS: "90%",
    Metric.GOLDEN_PATH_ADOPTION: "80%",
    Metric.SELF_SERVICE_RATE: "90%",
    Metric.CHANGE_LEAD_TIME: "1h",
    Metric.CHANGE_FREQUENCY: None,
    Metric.WEEKLY_TROUBLE: "decreasing",
    Metric.TIME_TO_RECOVERY: "4h",
    Metric.DEVELOPER_SATISFACTION: "40",
}
# How a figure is compared with its target (the wording: "< 30 min", "≥ 90%", "> 80%", ...).
COMPARISONS: dict[Metric, str] = {
    Metric.TEAM_ONBOARDING: "<",
    Metric.ENVIRONMENT_ONBOARDING: "<",
    Metric.WEEKLY_ACTIVE_TEAMS: "≥",
    Metric.GOLDEN_PATH_ADOPTION: ">",
    Metric.SELF_SERVICE_RATE: ">",
    Metric.CHANGE_LEAD_TIME: "<",
    Metric.CHANGE_FREQUENCY: "",
    Metric.WEEKLY_TROUBLE: "≤",
    Metric.TIME_TO_RECOVERY: "<",
    Metric.DEVELOPER_SATISFACTION: ">",
}
DESCRIPTIONS: dict[Metric, str] = {
    Metric.TEAM_ONBOARDING: "Time from a team's first Environment to its first Ready ServiceRequest: the p90 of the "
    "teams that started in the last 90 days (a team still waiting counts with its time so far).",
    Metric.ENVIRONMENT_ONBOARDING: "Time from an Environment's creation to its first Ready ServiceRequest: the p90 of "
    "the environments created in the last 90 days (one still waiting counts with its time so far).",
    Metric.WEEKLY_ACTIVE_TEAMS: "Share of the known teams (those with an Environment, and those listed in knownTeams) "
    "that created or changed an Environment or ServiceRequest in the last 7 days.",
    Metric.GOLDEN_PATH_ADOPTION: "Share of the workloads (Deployments, StatefulSets, DaemonSets, CronJobs) in "
    "environment namespaces that a golden path made (labelled with, or owned by, their ServiceRequest); the "
    "breakdown adds each golden path's share of the requests and the golden paths unused for 30 days.",
    Metric.SELF_SERVICE_RATE: "Share of the ServiceRequests created in the last 30 days that reached Ready with no "
    "human step (approval, manual retry, platform-team edit), among those that are Ready, needed a human or are "
    "in trouble.",
    Metric.CHANGE_LEAD_TIME: "Time from a spec change (a new generation) to Ready on it: the p90 of the changes of "
    "the last 30 days (one still pending counts with its time so far). Creation to first Ready is "
    "blacktop_provisioning_lead_time_seconds.",
    Metric.CHANGE_FREQUENCY: "Applies that changed something (a new request, or a spec change whose plan was not "
    "empty) in the last 7 days, by team and golden path.",
    Metric.WEEKLY_TROUBLE: "Episodes of trouble that began in the last 7 days (a request failing or stalled: what "
    "would otherwise be a support ticket), by failure class, against the 7 days before.",
    Metric.TIME_TO_RECOVERY: "Time from a request's first failure to its next Ready: the p90 of the episodes of the "
    "last 30 days (one still open counts with its time so far).",
    Metric.DEVELOPER_SATISFACTION: "Net Promoter Score of this quarter's Feedback: % promoters (9-10) minus % "
    "detractors (0-6), from -100 to 100; by golden path and for the last quarters in the breakdown.",
}
UNITS: dict[Metric, str] = {
    **dict.fromkeys(DURATION_METRICS, "seconds"),
    **dict.fromkeys(PERCENT_METRICS, "ratio"),
    Metric.CHANGE_FREQUENCY: "count",
    Metric.WEEKLY_TROUBLE: "count",
    Metric.DEVELOPER_SATISFACTION: "nps",
}


# -- targets ------------------------------------------------------------------------------------------


class InvalidTargetError(ValueError):
    """A target the metric cannot use (the CRD refuses these; this covers objects written without it)."""


@dataclass(frozen=True)
class Target:
    """A metric's target: ``value`` in the metric's unit (None for `decreasing` and for no target)."""

    text: str | None
    value: float | None
    decreasing: bool = False


def parse_target(metric: Metric, text: str | None) -> Target:
    """The target in force: ``text`` (spec.target) or the default; raises InvalidTargetError."""
    import re

    text = text if text is not None else DEFAULT_TARGETS[metric]
    if text is None:
        return Target(None, None)
    if metric == Metric.CHANGE_FREQUENCY:
        raise InvalidTargetError("change-frequency is informational and takes no target")
    if metric in DURATION_METRICS and re.fullmatch(TARGET_DURATION, text) and text:
        return Target(text, parse_duration(text).total_seconds())
    if metric in PERCENT_METRICS and re.fullmatch(TARGET_PERCENT, text):
        return Target(text, float(text.rstrip("%")) / 100)
    if metric == Metric.DEVELOPER_SATISFACTION and re.fullmatch(TARGET_SCORE, text):
        return Target(text, float(text))
    if metric == Metric.WEEKLY_TROUBLE and re.fullmatch(TARGET_TROUBLE, text):
        return Target(text, None, decreasing=True) if text == "decreasing" else Target(text, float(text))
    raise InvalidTargetError(f"{text!r} is not a target of {metric.value}")


# -- the result -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """The figure for one team, golden path, failure class or quarter."""

    dimension: str
    key: str
    value: float | None
    display: str


@dataclass(frozen=True)
class Figure:
    """One metric: its value, its target and the verdict."""

    metric: Metric
    value: float | None  # None: no data
    display: str
    target: float | None
    target_display: str
    met: bool | None  # None: no data, or no target
    reason: str  # TargetMet, TargetMissed, NoData, NoTarget, InvalidTarget
    summary: str
    window: str
    breakdown: tuple[Entry, ...] = ()

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.metric]

    @property
    def unit(self) -> str:
        return UNITS[self.metric]


@dataclass(frozen=True)
class Scorecard:
    """All figures, and the dimensional numbers behind them that /metrics exports."""

    computed_at: datetime
    figures: tuple[Figure, ...]
    team_onboarding: tuple[tuple[str, float, bool], ...] = ()  # team, seconds, onboarded
    team_activity: tuple[tuple[str, datetime | None], ...] = ()  # known team, last activity
    active_teams: int = 0
    workloads: tuple[tuple[str, str, int], ...] = ()  # team, golden path or (none), count
    golden_paths_unused: tuple[tuple[str, bool], ...] = ()  # every golden path: unused?
    self_service: tuple[tuple[str, str, int], ...] = ()  # golden path, outcome, count
    feedback: tuple[tuple[str, str, int], ...] = ()  # golden path or (platform), category, count (quarter)

    def figure(self, metric: Metric) -> Figure:
        """The figure of one metric."""
        return next(f for f in self.figures if f.metric == metric)


# -- formatting and statistics ---------------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    """12s, 12m 5s, 2h 3m, 3d 4h."""
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        parts = [f"{days}d", f"{hours}h" if hours else ""]
    elif hours:
        parts = [f"{hours}h", f"{minutes}m" if minutes else ""]
    elif minutes:
        parts = [f"{minutes}m", f"{secs}s" if secs else ""]
    else:
        parts = [f"{secs}s"]
    return " ".join(p for p in parts if p)


def percent(ratio: float) -> str:
    """0.6667 -> 66.7%."""
    return f"{ratio * 100:.1f}".rstrip("0").rstrip(".") + "%"


def nps_text(score: float) -> str:
    return f"{score:+.0f}" if round(score) else "0"


def p90(values: Iterable[float]) -> float | None:
    """The 90th percentile by nearest rank (the slowest of fewer than ten); None for none."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[math.ceil(0.9 * len(ordered)) - 1]


def nps(scores: Iterable[int]) -> float | None:
    """Net Promoter Score of ``scores`` (None for none), rounded to a whole number."""
    buckets = Counter(category(s) for s in scores)
    total = sum(buckets.values())
    if not total:
        return None
    return float(round(100 * (buckets[FeedbackCategory.PROMOTER] - buckets[FeedbackCategory.DETRACTOR]) / total))


def _since(moment: datetime | None, now: datetime) -> str:
    return "never" if moment is None else f"{human_duration((now - moment).total_seconds())} ago"


def _names(names: Iterable[str], limit: int = 10) -> str:
    listed = sorted(names)
    text = ", ".join(listed[:limit])
    return text + (f" and {len(listed) - limit} more" if len(listed) > limit else "")


# -- the figures ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Draft:
    value: float | None
    display: str
    summary: str
    window: str
    breakdown: tuple[Entry, ...] = ()
    previous: float | None = None  # weekly-trouble: the week before


def _figure(metric: Metric, draft: _Draft, **verdict: object) -> Figure:
    fields: dict[str, object] = {"target": None, "target_display": "-", "met": None, "summary": draft.summary}
    fields.update(verdict)
    return Figure(
        metric=metric,
        value=draft.value,
        display=draft.display,
        window=draft.window,
        breakdown=draft.breakdown[:MAX_ENTRIES],
        **fields,  # type: ignore[arg-type]
    )


def _verdict(metric: Metric, draft: _Draft, target_text: str | None) -> Figure:
    """Compare the draft figure with its target."""
    try:
        target = parse_target(metric, target_text)
    except InvalidTargetError as exc:
        return _figure(metric, draft, target_display="invalid", reason=Reason.INVALID_TARGET, summary=str(exc))
    if target.text is None:
        return _figure(metric, draft, reason=Reason.NO_TARGET)
    previous = draft.previous or 0.0
    if target.decreasing:
        value: float | None = previous
        shown = f"< {previous:.0f} (the 7 days before)" if previous else "0 (none the 7 days before)"
    else:
        assert target.value is not None
        value, shown = target.value, f"{COMPARISONS[metric]} {_format(metric, target.value)}"
    if draft.value is None:
        return _figure(metric, draft, target=value, target_display=shown, reason=Reason.NO_DATA)
    met = _met(COMPARISONS[metric], draft.value, target, previous)
    reason = Reason.TARGET_MET if met else Reason.TARGET_MISSED
    return _figure(metric, draft, target=value, target_display=shown, met=met, reason=reason)


def _met(comparison: str, value: float, target: Target, previous: float) -> bool:
    if target.decreasing:
        return value == 0 or value < previous
    assert target.value is not None
    checks: dict[str, Callable[[float, float], bool]] = {
        "<": lambda v, t: v < t,
        "≤": lambda v, t: v <= t,
        ">": lambda v, t: v > t,
        "≥": lambda v, t: v >= t,
    }
    return checks[comparison](value, target.value)


def _format(metric: Metric, value: float) -> str:
    unit = UNITS[metric]
    if unit == "seconds":
        return human_duration(value)
    if unit == "ratio":
        return percent(value)
    if unit == "nps":
        return nps_text(value)
    return f"{value:.0f}"


def _duration_draft(values: list[float], summary: str, window: str, breakdown: tuple[Entry, ...]) -> _Draft:
    value = p90(values)
    return _Draft(value, human_duration(value) if value is not None else "-", summary, window, breakdown)


def _team_onboarding(
    ledger: ScorecardLedger, observed: Observed, now: datetime
) -> tuple[_Draft, list[tuple[str, float, bool]]]:
    live_teams = {e.team for e in observed.environments.values() if e.deleted_at is None}
    rows: list[tuple[str, float, bool]] = []
    entries: list[Entry] = []
    for team in ledger.teams:
        started = parse_time(team.first_environment_time)
        if started < now - ONBOARDING_WINDOW:
            continue
        if team.onboarded_time:
            end, onboarded = parse_time(team.onboarded_time), True
            shown = human_duration((end - started).total_seconds())
        else:
            deleted = [parse_time(e.deleted_at) for e in ledger.environments if e.team == team.name and e.deleted_at]
            gave_up = team.name not in live_teams and deleted
            end, onboarded = (max(deleted) if gave_up else now), False
            seconds = (end - started).total_seconds()
            shown = f"gave up after {human_duration(seconds)}" if gave_up else f"waiting {human_duration(seconds)}"
        seconds = max(0.0, (end - started).total_seconds())
        rows.append((team.name, seconds, onboarded))
        entries.append(Entry("team", team.name, seconds, shown))
    done = sum(1 for _, _, ok in rows if ok)
    summary = f"{len(rows)} team(s) started in the last 90 days: {done} onboarded, {len(rows) - done} not yet"
    draft = _duration_draft([s for _, s, _ in rows], summary, "90d", tuple(entries))
    return draft, rows


def _environment_onboarding(ledger: ScorecardLedger, now: datetime) -> _Draft:
    per_team: defaultdict[str, list[float]] = defaultdict(list)
    values, waiting = [], 0
    for env in ledger.environments:
        created = parse_time(env.created_at)
        if created < now - ONBOARDING_WINDOW:
            continue
        end = env.onboarded_at or env.deleted_at
        waiting += env.onboarded_at is None
        seconds = max(0.0, ((parse_time(end) if end else now) - created).total_seconds())
        values.append(seconds)
        per_team[env.team].append(seconds)
    entries = tuple(
        Entry("team", team, v, human_duration(v)) for team, vs in sorted(per_team.items()) if (v := p90(vs)) is not None
    )
    summary = f"{len(values)} environment(s) created in the last 90 days: {len(values) - waiting} onboarded"
    return _duration_draft(values, summary + f", {waiting} not yet", "90d", entries)


def _weekly_active_teams(
    ledger: ScorecardLedger, observed: Observed, now: datetime
) -> tuple[_Draft, list[tuple[str, datetime | None]], int]:
    known = {e.team for e in observed.environments.values() if e.deleted_at is None} | set(observed.known_teams)
    last = {t.name: parse_time(t.last_activity_time) if t.last_activity_time else None for t in ledger.teams}
    activity = [(team, last.get(team)) for team in sorted(known)]
    active = [team for team, moment in activity if moment is not None and moment >= now - WEEK]
    entries = tuple(
        Entry(
            "team",
            team,
            1.0 if team in active else 0.0,
            f"{'active' if team in active else 'inactive'}, last change {_since(moment, now)}",
        )
        for team, moment in activity
    )
    inactive = sorted(known - set(active))
    summary = f"{len(active)} of {len(known)} known team(s) active in the last 7 days"
    summary += f"; inactive: {_names(inactive)}" if inactive else ""
    value = len(active) / len(known) if known else None
    draft = _Draft(value, percent(value) if value is not None else "-", summary, "7d", entries)
    return draft, activity, len(active)


def _adoption(
    ledger: ScorecardLedger, observed: Observed, now: datetime
) -> tuple[_Draft, list[tuple[str, str, int]], list[tuple[str, bool]]]:
    envs = {name: e for name, e in observed.environments.items() if e.deleted_at is None}
    by_name = {(r.environment, r.name): r for r in observed.requests}
    workloads: Counter[tuple[str, str]] = Counter()
    for w in observed.workloads:
        env = envs.get(w.namespace)
        if env is None:
            continue
        made = by_name.get((w.namespace, w.request)) if w.request else None
        workloads[env.team, made.golden_path if made else NO_GOLDEN_PATH] += 1
    total = sum(workloads.values())
    by_golden_path = sum(n for (_, gp), n in workloads.items() if gp != NO_GOLDEN_PATH)
    entries: list[Entry] = []
    for team in sorted({t for t, _ in workloads}):
        mine = {gp: n for (t, gp), n in workloads.items() if t == team}
        share = sum(n for gp, n in mine.items() if gp != NO_GOLDEN_PATH) / sum(mine.values())
        entries.append(Entry("team", team, share, f"{percent(share)} of {sum(mine.values())} workload(s)"))
    live = [r for r in observed.requests if r.deleted_at is None]
    per_path = Counter(r.golden_path for r in live)
    for gp in observed.golden_paths:
        share = per_path[gp] / len(live) if live else 0.0
        entries.append(Entry("goldenPath", gp, share, f"{per_path[gp]} request(s), {percent(share)}"))
    records = {g.name: g for g in ledger.golden_paths}
    unused: list[tuple[str, bool]] = []
    for gp in observed.golden_paths:
        record = records.get(gp)
        last = parse_time(record.last_used_time) if record and record.last_used_time else None
        is_unused = not (record is not None and record.in_use) and (last is None or now - last >= UNUSED_AFTER)
        unused.append((gp, is_unused))
        if is_unused:
            seconds = (now - last).total_seconds() if last else None
            words = f"last request gone {_since(last, now)}" if last else "never requested"
            entries.append(Entry("unusedGoldenPath", gp, seconds, words))
    value = by_golden_path / total if total else None
    names = [gp for gp, is_unused in unused if is_unused]
    summary = f"{by_golden_path} of {total} workload(s) in environments made by golden paths; "
    summary += f"unused golden paths: {_names(names)}" if names else "every golden path in use"
    draft = _Draft(value, percent(value) if value is not None else "-", summary, "now", tuple(entries))
    return draft, [(t, gp, n) for (t, gp), n in sorted(workloads.items())], unused


SELF_SERVED, HUMAN_STEP, IN_TROUBLE = "self_served", "human_step", "in_trouble"
OUTCOMES = (SELF_SERVED, HUMAN_STEP, IN_TROUBLE)


def outcome(request: RequestFacts) -> str | None:
    """How a request got (or did not get) to Ready: self_served, human_step, in_trouble; None: too early to say."""
    history = request.history
    if history.human_steps:
        return HUMAN_STEP
    if request.first_ready is not None:
        return SELF_SERVED
    if history.trouble is not None or history.episodes:
        return IN_TROUBLE
    return None


def _self_service(requests: list[RequestFacts], now: datetime) -> tuple[_Draft, list[tuple[str, str, int]]]:
    tally: Counter[tuple[str, str]] = Counter()
    for request in requests:
        if request.created_at < now - REQUEST_WINDOW:
            continue
        if (result := outcome(request)) is not None:
            tally[request.golden_path, result] += 1
    counts = Counter({o: sum(n for (_, oo), n in tally.items() if oo == o) for o in OUTCOMES})
    assessed = sum(counts.values())
    entries = []
    for gp in sorted({gp for gp, _ in tally}):
        mine = {o: tally[gp, o] for o in OUTCOMES}
        rate = mine[SELF_SERVED] / sum(mine.values())
        entries.append(Entry("goldenPath", gp, rate, f"{mine[SELF_SERVED]} of {sum(mine.values())} self-served"))
    value = counts[SELF_SERVED] / assessed if assessed else None
    summary = (
        f"{counts[SELF_SERVED]} of {assessed} request(s) self-served; {counts[HUMAN_STEP]} needed a human step, "
        f"{counts[IN_TROUBLE]} in trouble"
    )
    draft = _Draft(value, percent(value) if value is not None else "-", summary, "30d", tuple(entries))
    return draft, [(gp, o, n) for (gp, o), n in sorted(tally.items())]


def _change_lead_time(requests: list[RequestFacts], now: datetime) -> _Draft:
    per_path: defaultdict[str, list[float]] = defaultdict(list)
    pending = 0
    for request in requests:
        history = request.history
        for change in history.changes:
            if change.generation >= 2 and parse_time(change.ready_at) >= now - REQUEST_WINDOW:
                per_path[request.golden_path].append(float(change.lead_time_seconds))
        delivered = {c.generation for c in history.changes}
        if (
            request.deleted_at is None
            and history.generation >= 2
            and history.generation not in delivered
            and history.changed_at
            and parse_time(history.changed_at) >= now - REQUEST_WINDOW
        ):
            pending += 1
            per_path[request.golden_path].append(max(0.0, (now - parse_time(history.changed_at)).total_seconds()))
    values = [v for vs in per_path.values() for v in vs]
    entries = tuple(
        Entry("goldenPath", gp, v, human_duration(v))
        for gp, vs in sorted(per_path.items())
        if (v := p90(vs)) is not None
    )
    return _duration_draft(values, f"{len(values)} change(s) in the last 30 days, {pending} pending", "30d", entries)


def _change_frequency(requests: list[RequestFacts], now: datetime) -> _Draft:
    tally: Counter[tuple[str, str]] = Counter()
    for request in requests:
        for change in request.history.changes:
            if change.applied and parse_time(change.ready_at) >= now - WEEK:
                tally[request.team, request.golden_path] += 1
    entries = [Entry("team", t, float(n), str(n)) for t, n in sorted(_sum_by(tally, 0).items())]
    entries += [Entry("goldenPath", g, float(n), str(n)) for g, n in sorted(_sum_by(tally, 1).items())]
    total = sum(tally.values())
    summary = f"{total} apply(s) changed something in the last 7 days"
    return _Draft(float(total), str(total), summary, "7d", tuple(entries))


def _sum_by(tally: Counter[tuple[str, str]], index: int) -> Counter[str]:
    out: Counter[str] = Counter()
    for key, n in tally.items():
        out[key[index]] += n
    return out


def _episodes(requests: list[RequestFacts]) -> Iterable[tuple[RequestFacts, str, datetime, float | None, bool]]:
    """(request, failure class, since, recovery seconds or None, open) of every episode."""
    for request in requests:
        for episode in request.history.episodes:
            yield request, episode.failure_class, parse_time(episode.since), float(episode.recovery_seconds or 0), False
        if (trouble := request.history.trouble) is not None:
            yield request, trouble.failure_class, parse_time(trouble.since), None, True


def _weekly_trouble(requests: list[RequestFacts], now: datetime) -> _Draft:
    this_week: Counter[str] = Counter()
    previous = 0
    for _, failure_class, since, _, _ in _episodes(requests):
        if since >= now - WEEK:
            this_week[failure_class] += 1
        elif since >= now - 2 * WEEK:
            previous += 1
    total = sum(this_week.values())
    entries = tuple(Entry("failureClass", c, float(n), str(n)) for c, n in sorted(this_week.items()))
    summary = f"{total} episode(s) of trouble in the last 7 days, {previous} the 7 days before"
    return _Draft(float(total), str(total), summary, "7d", entries, previous=float(previous))


def _time_to_recovery(requests: list[RequestFacts], now: datetime) -> _Draft:
    per_class: defaultdict[str, list[float]] = defaultdict(list)
    still_open = 0
    for request, failure_class, since, recovered, is_open in _episodes(requests):
        if since < now - REQUEST_WINDOW:
            continue
        still_open += is_open
        # An open episode counts with its time so far (until the deletion, for a deleted request).
        seconds = max(0.0, ((request.deleted_at or now) - since).total_seconds()) if recovered is None else recovered
        per_class[failure_class].append(seconds)
    values = [v for vs in per_class.values() for v in vs]
    entries = tuple(
        Entry("failureClass", c, v, human_duration(v))
        for c, vs in sorted(per_class.items())
        if (v := p90(vs)) is not None
    )
    summary = f"{len(values)} episode(s) in the last 30 days, {still_open} still open"
    return _duration_draft(values, summary, "30d", entries)


def _satisfaction(observed: Observed, now: datetime) -> tuple[_Draft, list[tuple[str, str, int]]]:
    counted = [f for f in observed.feedback if f.team is not None]
    quarter = quarter_of(now)
    current = [f for f in counted if quarter_of(f.created_at) == quarter]
    entries: list[Entry] = []
    by_path: defaultdict[str, list[int]] = defaultdict(list)
    for f in current:
        by_path[f.golden_path or PLATFORM].append(f.score)
    for key, scores in sorted(by_path.items()):
        score = nps(scores)
        assert score is not None
        entries.append(Entry("goldenPath", key, score, f"{nps_text(score)} ({len(scores)} response(s))"))
    quarters: defaultdict[str, list[int]] = defaultdict(list)
    for f in counted:
        quarters[quarter_of(f.created_at)].append(f.score)
    for key in sorted(quarters)[-QUARTERS_SHOWN:]:
        score = nps(quarters[key])
        assert score is not None
        entries.append(Entry("quarter", key, score, f"{nps_text(score)} ({len(quarters[key])} response(s))"))
    buckets = Counter(category(f.score) for f in current)
    value = nps(f.score for f in current)
    summary = (
        f"{len(current)} response(s) this quarter: {buckets[FeedbackCategory.PROMOTER]} promoter(s), "
        f"{buckets[FeedbackCategory.PASSIVE]} passive(s), {buckets[FeedbackCategory.DETRACTOR]} detractor(s)"
    )
    draft = _Draft(value, nps_text(value) if value is not None else "-", summary, quarter, tuple(entries))
    tally = Counter((f.golden_path or PLATFORM, category(f.score).value) for f in current)
    return draft, [(gp, c, n) for (gp, c), n in sorted(tally.items())]


def compute(
    observed: Observed, ledger: ScorecardLedger, targets: Mapping[Metric, str | None], now: datetime
) -> Scorecard:
    """The scorecard at ``now``; ``targets`` maps a metric to its spec.target (missing or None: the default)."""
    requests = all_requests(observed, ledger.retired_requests)
    team_onboarding, onboarding_rows = _team_onboarding(ledger, observed, now)
    active_teams, activity, active = _weekly_active_teams(ledger, observed, now)
    adoption, workloads, unused = _adoption(ledger, observed, now)
    self_service, outcomes = _self_service(requests, now)
    satisfaction, feedback = _satisfaction(observed, now)
    drafts = {
        Metric.TEAM_ONBOARDING: team_onboarding,
        Metric.ENVIRONMENT_ONBOARDING: _environment_onboarding(ledger, now),
        Metric.WEEKLY_ACTIVE_TEAMS: active_teams,
        Metric.GOLDEN_PATH_ADOPTION: adoption,
        Metric.SELF_SERVICE_RATE: self_service,
        Metric.CHANGE_LEAD_TIME: _change_lead_time(requests, now),
        Metric.CHANGE_FREQUENCY: _change_frequency(requests, now),
        Metric.WEEKLY_TROUBLE: _weekly_trouble(requests, now),
        Metric.TIME_TO_RECOVERY: _time_to_recovery(requests, now),
        Metric.DEVELOPER_SATISFACTION: satisfaction,
    }
    figures = [_verdict(metric, drafts[metric], targets.get(metric)) for metric in Metric]
    return Scorecard(
        computed_at=now,
        figures=tuple(figures),
        team_onboarding=tuple(onboarding_rows),
        team_activity=tuple(activity),
        active_teams=active,
        workloads=tuple(workloads),
        golden_paths_unused=tuple(unused),
        self_service=tuple(outcomes),
        feedback=tuple(feedback),
    )
