"""The scorecard's ledger: what it must remember because the cluster forgets. Pure.

Objects go away (a TTL'd environment, a request deleted in frustration after failing), yet their
past still belongs in the figures: the team that onboarded last month is not a new team today, a
request that failed and was deleted was still trouble. :func:`next_ledger` folds what is live now
into the previous ledger:

- **teams**: first environment (sticky minimum), onboarding (first Ready request, sticky) and last
  activity (sticky maximum) of every team;
- **environments** created within the onboarding window, live or deleted, with their onboarding;
- **golden paths**: whether each is in use and when its last request went away (unused after 30 days);
- **retired requests**: the facts of deleted requests (a deleting one is retired as soon as it is
  seen), while they can still fall inside a window.

Facts only ever move one way (a first time only earlier, a last time only later), so folding the
same cluster twice changes nothing: an operator that restarts computes the same ledger. Bounded:
records outside every window are dropped, and each list has a cap (oldest first).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from blacktop.api.common import format_time, parse_time
from blacktop.api.scorecard import (
    EnvironmentRecord,
    GoldenPathRecord,
    RetiredRequest,
    ScorecardLedger,
    TeamRecord,
)
from blacktop.metrics.facts import (
    NOT_IN_CATALOG,
    UNKNOWN,
    Observed,
    RequestFacts,
    request_facts,
    retired_facts,
)

ONBOARDING_WINDOW = timedelta(days=90)
REQUEST_WINDOW = timedelta(days=30)  # the longest window a request's facts count in
TEAM_MEMORY = timedelta(days=90)  # a team with no environment left is forgotten after this long
MAX_TEAMS = 1000
MAX_ENVIRONMENTS = 1000
MAX_GOLDEN_PATHS = 1000
MAX_RETIRED_REQUESTS = 200


def _min(*moments: datetime | None) -> datetime | None:
    known = [m for m in moments if m is not None]
    return min(known) if known else None


def _max(*moments: datetime | None) -> datetime | None:
    known = [m for m in moments if m is not None]
    return max(known) if known else None


def _t(text: str | None) -> datetime | None:
    return parse_time(text) if text else None


def _fmt(moment: datetime | None) -> str | None:
    return format_time(moment) if moment is not None else None


def retire(request: RequestFacts) -> RetiredRequest:
    """The ledger's record of a deleted (or deleting) request."""
    return RetiredRequest(
        uid=request.uid,
        golden_path=request.golden_path,
        environment=request.environment,
        team=request.team,
        tier=request.tier,
        created_at=format_time(request.created_at),
        deleted_at=format_time(request.deleted_at or request.created_at),
        first_ready_time=_fmt(request.first_ready),
        history=request.history,
    )


def retired_from_body(body: dict[str, Any], now: datetime) -> RetiredRequest | None:
    """The ledger's record of a request whose object just went away (its last body), or None; its
    team and tier are its environment's, filled in when the ledger folds it (:func:`next_ledger`)."""
    facts = request_facts(body, {})
    if facts is None:
        return None
    return retire(replace(facts, deleted_at=facts.deleted_at or now))


def next_ledger(
    previous: ScorecardLedger, observed: Observed, retired: Iterable[RetiredRequest], now: datetime
) -> ScorecardLedger:
    """The ledger after folding in the live objects and the requests deleted since (``retired``)."""
    retired_requests = _retired(previous, observed, retired, now)
    environments = _environments(previous, observed, retired_requests, now)
    return ScorecardLedger(
        teams=_teams(previous, observed, environments, retired_requests, now),
        environments=environments,
        golden_paths=_golden_paths(previous, observed, retired_requests, now),
        retired_requests=retired_requests,
    )


def _retired(
    previous: ScorecardLedger, observed: Observed, retired: Iterable[RetiredRequest], now: datetime
) -> list[RetiredRequest]:
    by_uid = {r.uid: r for r in previous.retired_requests}
    catalog = set(observed.golden_paths)
    for record in retired:
        if record.golden_path not in catalog:  # bounded labels, as for live requests (facts.observe)
            record = record.model_copy(update={"golden_path": NOT_IN_CATALOG})  # noqa: PLW2901
        env = observed.environments.get(record.environment)
        if record.team == UNKNOWN and env is not None:  # told by its last body alone: its environment says
            record = record.model_copy(update={"team": env.team, "tier": env.tier})  # noqa: PLW2901
        by_uid[record.uid] = record
    for request in observed.requests:
        if request.deleted_at is not None:  # deleting: its history is final but for the destroy
            by_uid[request.uid] = retire(request)
    keep = [r for r in by_uid.values() if parse_time(r.deleted_at) >= now - REQUEST_WINDOW]
    return sorted(keep, key=lambda r: (r.deleted_at, r.uid))[-MAX_RETIRED_REQUESTS:]


def _first_ready_in(environment: str, created_at: datetime, requests: Iterable[RequestFacts]) -> datetime | None:
    # A request of an earlier environment of the same name was Ready before this one existed.
    return _min(
        *(
            r.first_ready
            for r in requests
            if r.environment == environment and r.first_ready is not None and r.first_ready >= created_at
        )
    )


def all_requests(observed: Observed, retired: Iterable[RetiredRequest]) -> list[RequestFacts]:
    """The live requests, and the retired ones no longer live."""
    live = {r.uid for r in observed.requests}
    gone = [f for f in (retired_facts(r) for r in retired if r.uid not in live) if f is not None]
    return [*observed.requests, *gone]


def _environments(
    previous: ScorecardLedger, observed: Observed, retired: list[RetiredRequest], now: datetime
) -> list[EnvironmentRecord]:
    requests = all_requests(observed, retired)
    by_uid = {e.uid: e for e in previous.environments}
    live = {env.uid for env in observed.environments.values()}
    for env in observed.environments.values():
        old = by_uid.get(env.uid)
        onboarded = _min(_t(old.onboarded_at) if old else None, _first_ready_in(env.name, env.created_at, requests))
        by_uid[env.uid] = EnvironmentRecord(
            name=env.name,
            uid=env.uid,
            team=env.team,
            tier=env.tier,
            created_at=format_time(env.created_at),
            onboarded_at=_fmt(onboarded),
            deleted_at=_fmt(_min(_t(old.deleted_at) if old else None, env.deleted_at)),
        )
    for uid, record in list(by_uid.items()):
        if uid not in live and record.deleted_at is None:  # gone while nobody looked: gone by now
            by_uid[uid] = record.model_copy(update={"deleted_at": format_time(now)})
    keep = [e for e in by_uid.values() if parse_time(e.created_at) >= now - ONBOARDING_WINDOW]
    return sorted(keep, key=lambda e: (e.created_at, e.uid))[-MAX_ENVIRONMENTS:]


def _teams(
    previous: ScorecardLedger,
    observed: Observed,
    environments: list[EnvironmentRecord],
    retired: list[RetiredRequest],
    now: datetime,
) -> list[TeamRecord]:
    requests = all_requests(observed, retired)
    by_name = {t.name: t for t in previous.teams}
    teams = {env.team for env in observed.environments.values()} | {e.team for e in environments}
    for team in teams:
        old = by_name.get(team)
        envs = [e for e in observed.environments.values() if e.team == team]
        first = _min(
            _t(old.first_environment_time) if old else None,
            *(e.created_at for e in envs),
            *(_t(e.created_at) for e in environments if e.team == team),
        )
        if first is None:
            continue
        onboarded = _min(
            _t(old.onboarded_time) if old else None,
            *(_t(e.onboarded_at) for e in environments if e.team == team),
            *(r.first_ready for r in requests if r.team == team and r.first_ready and r.first_ready >= first),
        )
        active = _max(
            _t(old.last_activity_time) if old else None,
            *(e.last_change for e in envs),
            *(r.last_change for r in requests if r.team == team),
        )
        by_name[team] = TeamRecord(
            name=team,
            first_environment_time=format_time(first),
            onboarded_time=_fmt(onboarded),
            last_activity_time=_fmt(active),
        )
    present = {env.team for env in observed.environments.values()} | set(observed.known_teams)

    def remembered(team: TeamRecord) -> bool:
        last = _max(_t(team.last_activity_time), _t(team.first_environment_time))
        return team.name in present or (last is not None and last >= now - TEAM_MEMORY)

    keep = [t for t in by_name.values() if remembered(t)]
    return sorted(keep, key=lambda t: (t.last_activity_time or "", t.name))[-MAX_TEAMS:]


def _golden_paths(
    previous: ScorecardLedger, observed: Observed, retired: list[RetiredRequest], now: datetime
) -> list[GoldenPathRecord]:
    by_name = {g.name: g for g in previous.golden_paths}
    in_use = {r.golden_path for r in observed.requests if r.deleted_at is None}
    records = []
    for name in observed.golden_paths:
        old = by_name.get(name)
        last = _t(old.last_used_time) if old else None
        if old is None:  # first look: a request deleted lately still counts as recent use
            last = _max(*(parse_time(r.deleted_at) for r in retired if r.golden_path == name))
        elif old.in_use and name not in in_use:
            last = now  # its last request went away since the last look
        records.append(GoldenPathRecord(name=name, in_use=name in in_use, last_used_time=_fmt(last)))
    return sorted(records, key=lambda g: g.name)[:MAX_GOLDEN_PATHS]
