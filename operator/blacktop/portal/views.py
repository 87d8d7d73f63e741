"""What each page shows, computed from a snapshot of the cluster state. Pure (time is passed in).

Pages never reach into raw objects: these functions turn GoldenPaths, Environments and
ServiceRequests into small rows with the words and numbers a developer reads (TTL left, cost
against budget, lead time, plan summary, last run), sorted the way a person scans them: the
newest problems first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from blacktop.api.common import cents_to_money, money_to_cents, parse_time
from blacktop.portal.schema import ParameterRow, additional_properties_allowed, parameter_rows

JSON = dict[str, Any]
MAX_MESSAGE = 2000  # a condition message is shown whole up to this length


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def condition(body: Mapping[str, Any], ctype: str) -> Mapping[str, Any]:
    """The condition of type ``ctype`` (empty if the object has none)."""
    for cond in _map(body.get("status")).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == ctype:
            return cond
    return {}


def _time(text: object) -> datetime | None:
    try:
        return parse_time(str(text)) if text else None
    except ValueError:
        return None


def _cents(text: object) -> int | None:
    try:
        return money_to_cents(str(text)) if text not in (None, "") else None
    except ValueError:
        return None


def duration_text(seconds: float) -> str:
    """``45s``, ``3m 20s``, ``2h 5m``, ``3d 4h``: two units at most, the way people say it."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def ago_text(moment: datetime | None, now: datetime) -> str:
    """``5m ago`` (empty when unknown)."""
    return "" if moment is None else f"{duration_text((now - moment).total_seconds())} ago"


def money_text(cents: int | None, currency: str) -> str:
    return "" if cents is None else f"{cents_to_money(cents)} {currency}"


# -- the catalog ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Price:
    when: str  # "size = small", or "" for the flat price
    amount: str


@dataclass(frozen=True)
class CatalogEntry:
    """A golden path as the catalog shows it."""

    name: str
    description: str
    module: str
    ready: str  # True, False, Unknown
    ready_reason: str
    ready_message: str
    tiers: list[str]
    prices: list[Price]
    cost_summary: str
    outputs: list[tuple[str, str]]  # (module output, key in the Secret)
    parameters: list[ParameterRow]
    extra_parameters: bool
    schema: JSON
    requests: int
    teams: int
    providers: list[str]
    drift_policy: str
    drift_check_interval: str
    uses_credentials: bool


def _prices(cost: Mapping[str, Any]) -> tuple[list[Price], str]:
    if not cost:
        return [], "free (no cost model)"
    currency = str(cost.get("currency") or "USD")
    table = _map(cost.get("table"))
    base = _cents(cost.get("monthly") or "0") or 0
    if cost.get("parameter") and table:
        prices = [
            Price(f"{cost['parameter']} = {value}", money_text(_cents(amount), currency) + "/month")
            for value, amount in table.items()
        ]
        amounts = [c for c in (_cents(a) for a in table.values()) if c is not None]
        low, high = (min(amounts), max(amounts)) if amounts else (base, base)
        summary = (
            money_text(low, currency) if low == high else f"{cents_to_money(low)} to {cents_to_money(high)} {currency}"
        )
        return prices, f"{summary}/month by {cost['parameter']}"
    return [Price("", money_text(base, currency) + "/month")], money_text(base, currency) + "/month"


def team_of(snapshot_environments: Mapping[str, JSON], namespace: str) -> str | None:
    env = snapshot_environments.get(namespace)
    return str(_map(env.get("spec")).get("team")) if env else None


def catalog_entry(body: JSON, requests: Iterable[JSON], environments: Mapping[str, JSON]) -> CatalogEntry:
    """One golden path with its usage: requests not being deleted, and the teams they belong to."""
    name = str(body["metadata"]["name"])
    spec, status = _map(body.get("spec")), _map(body.get("status"))
    ready = condition(body, "Ready")
    using = [
        r
        for r in requests
        if _map(r.get("spec")).get("goldenPath") == name and not r["metadata"].get("deletionTimestamp")
    ]
    teams = {team_of(environments, str(r["metadata"].get("namespace"))) for r in using} - {None}
    prices, summary = _prices(_map(spec.get("cost")))
    schema = dict(_map(spec.get("parameters"))) or {"type": "object"}
    return CatalogEntry(
        name=name,
        description=str(spec.get("description") or ""),
        module=str(spec.get("module") or ""),
        ready=str(ready.get("status") or "Unknown"),
        ready_reason=str(ready.get("reason") or ""),
        ready_message=str(ready.get("message") or "")[:MAX_MESSAGE],
        tiers=[str(t) for t in spec.get("tiers") or []] or ["dev", "staging", "prod"],
        prices=prices,
        cost_summary=summary,
        outputs=[(str(o.get("name")), str(o.get("key") or o.get("name"))) for o in spec.get("outputs") or []],
        parameters=parameter_rows(schema),
        extra_parameters=additional_properties_allowed(schema),
        schema=schema,
        requests=len(using),
        teams=len(teams),
        providers=[str(p) for p in status.get("providers") or []],
        drift_policy=str(spec.get("driftPolicy") or "Report"),
        drift_check_interval=str(spec.get("driftCheckInterval") or "10m"),
        uses_credentials=bool(spec.get("credentialsSecretRef")),
    )


def catalog(
    golden_paths: Iterable[JSON], requests: Iterable[JSON], environments: Mapping[str, JSON]
) -> list[CatalogEntry]:
    """Every golden path, by name."""
    listed = list(requests)
    return sorted((catalog_entry(gp, listed, environments) for gp in golden_paths), key=lambda e: e.name)


# -- environments and requests -----------------------------------------------------------------------


@dataclass(frozen=True)
class EnvironmentRow:
    name: str
    team: str
    tier: str
    description: str
    ready: str
    reason: str
    message: str
    ttl_left: str  # "2d 3h left", "expired 5m ago", "no TTL"
    expired: bool
    cost: str
    budget: str
    used_percent: int | None  # cost against budget
    over_budget: bool
    requests: int
    deleting: bool


def environment_row(body: JSON, requests: int, now: datetime) -> EnvironmentRow:
    spec, status = _map(body.get("spec")), _map(body.get("status"))
    ready = condition(body, "Ready")
    cost = _map(status.get("cost"))
    budget_spec = _map(spec.get("budget"))
    currency = str(budget_spec.get("currency") or cost.get("currency") or "USD")
    monthly = _cents(cost.get("monthly")) or 0
    budget = _cents(budget_spec.get("monthly"))
    expires = _time(status.get("expiresAt"))
    if expires is None:
        ttl_left, expired = "no TTL", False
    elif expires > now:
        ttl_left, expired = f"{duration_text((expires - now).total_seconds())} left", False
    else:
        ttl_left, expired = f"expired {ago_text(expires, now)}", True
    return EnvironmentRow(
        name=str(body["metadata"]["name"]),
        team=str(spec.get("team") or ""),
        tier=str(spec.get("tier") or ""),
        description=str(spec.get("description") or ""),
        ready=str(ready.get("status") or "Unknown"),
        reason=str(ready.get("reason") or ""),
        message=str(ready.get("message") or "")[:MAX_MESSAGE],
        ttl_left=ttl_left,
        expired=expired,
        cost=money_text(monthly, currency),
        budget=money_text(budget, currency) if budget is not None else "no budget",
        used_percent=round(100 * monthly / budget) if budget else None,
        over_budget=budget is not None and monthly > budget,
        requests=requests,
        deleting=bool(body["metadata"].get("deletionTimestamp")),
    )


@dataclass(frozen=True)
class RequestRow:
    name: str
    namespace: str
    golden_path: str
    stage: str
    ready: str
    reason: str
    message: str
    problem: bool
    stalled: bool
    drifted: str  # the Drifted message when drift is reported
    lead_time: str
    plan: str
    last_run: str
    monthly_cost: str
    created: str
    since: str  # when Ready last changed, "5m ago"


def _plan_text(plan: Mapping[str, Any]) -> str:
    if not plan:
        return ""
    text = f"+{plan.get('add', 0)} ~{plan.get('change', 0)} -{plan.get('destroy', 0)}"
    resources = plan.get("resources") or []
    if resources:
        shown = ", ".join(str(r) for r in resources[:3])
        text += f" ({shown}{', ...' if len(resources) > 3 else ''})"
    return text


def _run_text(run: Mapping[str, Any], now: datetime) -> str:
    if not run:
        return ""
    result = str(run.get("result") or "running")
    finished = _time(run.get("finishedAt")) or _time(run.get("startedAt"))
    when = ago_text(finished, now)
    return f"{run.get('operation', '?')} {result.lower()}" + (f", {when}" if when else "")


def _conditions(body: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    found: dict[str, Mapping[str, Any]] = {}
    for cond in _map(body.get("status")).get("conditions") or []:
        if isinstance(cond, Mapping):
            found.setdefault(str(cond.get("type")), cond)
    return found


def _problem(conditions: Mapping[str, Mapping[str, Any]]) -> bool:
    """Ready is False, or the request is Stalled or Drifted."""
    return (
        conditions.get("Ready", {}).get("status") == "False"
        or conditions.get("Stalled", {}).get("status") == "True"
        or conditions.get("Drifted", {}).get("status") == "True"
    )


def is_problem(body: Mapping[str, Any]) -> bool:
    return _problem(_conditions(body))


def _rank_and_stamp(body: Mapping[str, Any]) -> tuple[int, str]:
    conditions = _conditions(body)
    created = str(_map(body.get("metadata")).get("creationTimestamp") or "")
    if _problem(conditions):
        return 0, str(conditions.get("Ready", {}).get("lastTransitionTime") or created)
    return (2 if conditions.get("Ready", {}).get("status") == "True" else 1), created


def sort_requests(bodies: Iterable[JSON]) -> list[JSON]:
    """Requests, the newest problems first (when Ready last changed), then those on their way, then
    the Ready ones (both the newest first, by creation). Kubernetes writes timestamps as RFC 3339 in
    UTC with a fixed width, so they sort as text: no parsing for the 1,000 rows of a big list."""
    keyed = [(_rank_and_stamp(b), b) for b in bodies]
    keyed.sort(key=lambda item: item[0][1], reverse=True)  # newest first...
    keyed.sort(key=lambda item: item[0][0])  # ...within each rank (the sort is stable)
    return [body for _, body in keyed]


def request_row(body: JSON, now: datetime) -> RequestRow:
    meta, spec, status = body["metadata"], _map(body.get("spec")), _map(body.get("status"))
    conditions = _conditions(body)
    ready, stalled, drifted = (conditions.get(t, {}) for t in ("Ready", "Stalled", "Drifted"))
    changed = _time(ready.get("lastTransitionTime")) or _time(meta.get("creationTimestamp"))
    created = _time(meta.get("creationTimestamp"))
    lead = status.get("leadTimeSeconds")
    is_drifted = drifted.get("status") == "True"
    return RequestRow(
        name=str(meta["name"]),
        namespace=str(meta.get("namespace") or ""),
        golden_path=str(spec.get("goldenPath") or ""),
        stage=str(status.get("stage") or ("Deleting" if meta.get("deletionTimestamp") else "Pending")),
        ready=str(ready.get("status") or "Unknown"),
        reason=str(ready.get("reason") or ""),
        message=str(ready.get("message") or "")[:MAX_MESSAGE],
        problem=_problem(conditions),
        stalled=stalled.get("status") == "True",
        drifted=str(drifted.get("message") or "")[:MAX_MESSAGE] if is_drifted else "",
        lead_time=duration_text(float(lead)) if isinstance(lead, int | float) else "",
        plan=_plan_text(_map(status.get("plan"))),
        last_run=_run_text(_map(status.get("lastRun")), now),
        monthly_cost=str(status.get("monthlyCost") or ""),
        created=ago_text(created, now),
        since=ago_text(changed, now),
    )


def request_rows(bodies: Iterable[JSON], now: datetime) -> list[RequestRow]:
    """Requests as rows, the newest problems first."""
    return [request_row(b, now) for b in sort_requests(bodies)]


@dataclass(frozen=True)
class TeamSummary:
    name: str
    environments: int
    requests: int | None  # None: the visitor may not list them
    problems: int | None
    cost: str
    budget: str
    used_percent: int | None


def team_summaries(environments: Iterable[JSON], requests_of: Mapping[str, list[JSON] | None]) -> list[TeamSummary]:
    """One line per team: its environments, requests (where visible), problems, cost against budget.

    ``requests_of`` maps an environment's name to its requests, or None where they are hidden.
    """
    by_team: dict[str, list[JSON]] = {}
    for env in environments:
        by_team.setdefault(str(_map(env.get("spec")).get("team") or "?"), []).append(env)
    out = []
    for team, envs in sorted(by_team.items()):
        cost = sum(_cents(_map(_map(e.get("status")).get("cost")).get("monthly")) or 0 for e in envs)
        budgets = [_cents(_map(_map(e.get("spec")).get("budget")).get("monthly")) for e in envs]
        budget = sum(b for b in budgets if b is not None) if any(b is not None for b in budgets) else None
        currency = next(
            (
                str(_map(_map(e.get("spec")).get("budget")).get("currency"))
                for e in envs
                if _map(e.get("spec")).get("budget")
            ),
            "USD",
        )
        visible = [requests_of.get(str(e["metadata"]["name"])) for e in envs]
        hidden = any(v is None for v in visible)
        listed = [r for v in visible if v for r in v]
        problems = sum(1 for r in listed if is_problem(r))
        out.append(
            TeamSummary(
                name=team,
                environments=len(envs),
                requests=None if hidden else len(listed),
                problems=None if hidden else problems,
                cost=money_text(cost, currency),
                budget=money_text(budget, currency) if budget is not None else "no budget",
                used_percent=round(100 * cost / budget) if budget else None,
            )
        )
    return out
