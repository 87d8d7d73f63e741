"""The portal's pure parts: schema table and form, views and their order, the builder's answers
(checked against admission's own decision), the scorecard, plots, Markdown, access caching."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from markupsafe import Markup

from blacktop.cli import local_defaults
from blacktop.config import Settings
from blacktop.controllers.admission import decide_service_request
from blacktop.guardrails.engine import compile_active
from blacktop.kube.reviews import Identity
from blacktop.metrics.registry import create_metrics
from blacktop.portal import builder, docs, plots, views
from blacktop.portal.access import REVIEW_TTL, SESSION_TTL, Access
from blacktop.portal.schema import form_fields, form_parameters, parameter_rows
from blacktop.portal.scorecard import platform_scorecard, quantile
from blacktop.portal.state import ClusterState

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["database"],
    "properties": {
        "database": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 63, "description": "Name."},
        "size": {"type": "string", "enum": ["small", "large"], "default": "small"},
        "replicas": {"type": "integer", "minimum": 1, "maximum": 5},
        "tls": {"type": "boolean"},
        "backup": {"type": "object", "properties": {"days": {"type": "integer", "default": 7}}},
    },
}


def example(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((REPO / "examples" / name).read_text())
    return body


def ready(
    body: dict[str, Any], status: str = "True", reason: str = "Reconciled", when: str = "2026-12-01T11:00:00Z"
) -> dict[str, Any]:
    body = copy.deepcopy(body)
    body.setdefault("status", {})["conditions"] = [
        {
            "type": "Ready",
            "status": status,
            "reason": reason,
            "message": f"{reason} message",
            "lastTransitionTime": when,
        }
    ]
    return body


# -- the schema, read for people ------------------------------------------------------------------


def test_parameter_rows_say_type_required_default_allowed_and_description() -> None:
    rows = {r.name: r for r in parameter_rows(SCHEMA)}
    assert list(rows) == ["database", "size", "replicas", "tls", "backup", "backup.days"]
    assert rows["database"].required
    assert rows["database"].allowed == "0 to 63 characters; matches ^[a-z]+$"
    assert rows["database"].description == "Name."
    assert (rows["size"].allowed, rows["size"].default, rows["size"].required) == ("small, large", "small", False)
    assert rows["replicas"].allowed == "1 to 5"
    assert (rows["backup.days"].type, rows["backup.days"].default) == ("integer", "7")


def test_form_fields_are_selects_for_enums_and_booleans_with_defaults_filled() -> None:
    fields = {f.name: f for f in form_fields(SCHEMA)}
    assert fields["size"].widget == "select"
    assert fields["size"].options == [("small", "small"), ("large", "large")]  # a default: no "(not set)"
    assert fields["size"].value == "small"
    assert fields["tls"].options == [("", "(not set)"), ("true", "true"), ("false", "false")]
    assert fields["backup"].widget == "structured"
    assert fields["database"].widget == "text"
    assert form_fields(SCHEMA, {"p.size": "large"})[1].value == "large"


def test_typed_form_values_are_what_a_manifest_would_carry() -> None:
    form = {"p.database": "orders", "p.replicas": "3", "p.tls": "true", "p.backup": "days: 30", "p.size": ""}
    assert form_parameters(SCHEMA, form) == {"database": "orders", "replicas": 3, "tls": True, "backup": {"days": 30}}
    # Not of the type: kept as text, so the validator words it as admission would ("'many' is not of type").
    assert form_parameters(SCHEMA, {"p.replicas": "many"}) == {"replicas": "many"}


# -- the views -----------------------------------------------------------------------------------


def request_body(name: str, created: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "env", "creationTimestamp": created},
        "spec": {"goldenPath": "tiny"},
        "status": status,
    }


def test_requests_are_listed_newest_problems_first() -> None:
    def cond(status: str, when: str) -> list[dict[str, str]]:
        return [{"type": "Ready", "status": status, "reason": "R", "lastTransitionTime": when}]

    bodies = [
        request_body("old-ready", "2026-12-01T08:00:00Z", conditions=cond("True", "2026-12-01T08:05:00Z")),
        request_body("new-ready", "2026-12-01T10:00:00Z", conditions=cond("True", "2026-12-01T10:05:00Z")),
        request_body("old-failure", "2026-12-01T07:00:00Z", conditions=cond("False", "2026-12-01T09:00:00Z")),
        request_body("new-failure", "2026-12-01T06:00:00Z", conditions=cond("False", "2026-12-01T11:00:00Z")),
        request_body("on-its-way", "2026-12-01T11:30:00Z"),
    ]
    rows = views.request_rows(bodies, NOW)
    assert [r.name for r in rows] == ["new-failure", "old-failure", "on-its-way", "new-ready", "old-ready"]
    assert rows[0].since == "1h ago"


def test_a_request_row_summarises_plan_run_and_lead_time() -> None:
    body = request_body(
        "db",
        "2026-12-01T11:00:00Z",
        leadTimeSeconds=95,
        plan={"add": 2, "change": 1, "destroy": 0, "resources": ["a.one", "b.two", "c.three", "d.four"]},
        lastRun={"operation": "apply", "result": "Succeeded", "finishedAt": "2026-12-01T11:58:00Z"},
        conditions=[{"type": "Drifted", "status": "True", "reason": "DriftDetected", "message": "changed by hand"}],
    )
    row = views.request_row(body, NOW)
    assert (row.lead_time, row.last_run) == ("1m 35s", "apply succeeded, 2m ago")
    assert row.plan == "+2 ~1 -0 (a.one, b.two, c.three, ...)"
    assert row.problem
    assert row.drifted == "changed by hand"


def test_environment_rows_show_ttl_left_and_cost_against_budget() -> None:
    env = example("environment.yaml")
    env["status"] = {"expiresAt": "2026-12-03T15:00:00Z", "cost": {"monthly": "600.00"}}
    row = views.environment_row(env, 3, NOW)
    assert (row.ttl_left, row.cost, row.budget, row.used_percent, row.over_budget) == (
        "2d 3h left",
        "600.00 USD",
        "500.00 USD",
        120,
        True,
    )
    env["status"]["expiresAt"] = "2026-12-01T11:55:00Z"
    assert views.environment_row(env, 0, NOW).ttl_left == "expired 5m ago"


def test_team_summaries_hide_counts_the_visitor_may_not_list() -> None:
    env = example("environment.yaml")
    other = copy.deepcopy(env)
    other["metadata"]["name"], other["spec"]["team"] = "search-dev", "search"
    summaries = views.team_summaries([env, other], {"payments-dev": [ready({}, "False")], "search-dev": None})
    assert [(s.name, s.requests, s.problems) for s in summaries] == [("payments", 1, 1), ("search", None, None)]


def test_catalog_entry_counts_requests_and_teams_and_prices() -> None:
    golden = ready(example("goldenpath-postgres.yaml"))
    env = example("environment.yaml")
    requests = [example("servicerequest-postgres.yaml")]
    entry = views.catalog_entry(golden, requests, {"payments-dev": env})
    assert (entry.requests, entry.teams) == (1, 1)
    assert entry.cost_summary == "15.00 to 240.00 USD/month by size"
    assert [p.amount for p in entry.prices] == ["15.00 USD/month", "60.00 USD/month", "240.00 USD/month"]
    assert entry.outputs[0] == ("host", "host")


# -- the builder: admission's answer ------------------------------------------------------------


@pytest.fixture
def state() -> ClusterState:
    cluster = ClusterState()
    cluster.observe("GoldenPath", ready(example("goldenpath-postgres.yaml")))
    tiny = ready(example("goldenpath-tiny.yaml"))
    cluster.observe("GoldenPath", tiny)
    env = ready(example("environment.yaml"))
    env["status"]["cost"] = {"monthly": "15.00", "currency": "USD"}
    cluster.observe("Environment", env)
    prod = copy.deepcopy(env)
    prod["metadata"]["name"], prod["spec"]["tier"] = "payments-prod", "prod"
    cluster.observe("Environment", prod)
    cluster.observe("ServiceRequest", example("servicerequest-postgres.yaml"))
    cluster.observe("GuardrailPolicy", example("policies/team-budget.yaml"))
    return cluster


def preview(state: ClusterState, golden_path: str, form: dict[str, str], userinfo: Any = None) -> builder.Preview:
    return builder.preview(
        Settings(),
        state.snapshot(),
        golden_path,
        form,
        environments={"payments-dev", "payments-prod"},
        userinfo=userinfo,
    )


def test_a_valid_form_gives_the_manifest_the_apply_line_and_the_cost(state: ClusterState) -> None:
    found = preview(state, "postgres-database", {"name": "users-db", "environment": "payments-dev", "p.size": "medium"})
    assert found.admitted
    assert yaml.safe_load(found.yaml)["spec"] == {"goldenPath": "postgres-database", "parameters": {"size": "medium"}}
    assert found.apply_line == "kubectl apply -f users-db.yaml"
    assert found.cost is not None
    assert (found.cost.monthly, found.cost.environment_before, found.cost.environment_after) == (60.0, 15.0, 75.0)
    assert found.cost.percent_after == 15


def test_an_invalid_value_gets_admissions_own_words_next_to_its_field(state: ClusterState) -> None:
    form = {"name": "users-db", "environment": "payments-dev", "p.database": "Users!"}
    found = preview(state, "postgres-database", form)
    snapshot = state.snapshot()
    body = builder.manifest("users-db", "payments-dev", "postgres-database", {"database": "Users!", "size": "small"})
    verdict = decide_service_request(
        Settings(),
        body,
        None,
        None,
        env=snapshot.environments["payments-dev"],
        golden_paths=snapshot.golden_paths.values(),
        siblings=snapshot.requests_in("payments-dev"),
        policies=compile_active(snapshot.policies.values()),
        check_team_boundary=False,
    )
    assert found.denial == verdict.denial
    assert (
        found.denial
        == "invalid parameters: parameters.database: 'Users!' does not match '^[a-z][a-z0-9]*(_[a-z0-9]+)*$'"
    )
    assert found.errors == {
        "p.database": ["parameters.database: 'Users!' does not match '^[a-z][a-z0-9]*(_[a-z0-9]+)*$'"]
    }
    # Before the name and environment are there, the parameters are checked already.
    early = preview(state, "postgres-database", {"p.database": "Users!"})
    assert early.errors == found.errors
    assert early.missing == ["a name for the request", "an environment"]


def test_the_guardrails_and_the_team_boundary_answer_as_at_admission(state: ClusterState) -> None:
    over = preview(state, "postgres-database", {"name": "big", "environment": "payments-dev", "p.size": "large"})
    # 15 (orders-db) + 240 stays within 500; with two more siblings (240 + 60) it would not.
    assert over.admitted
    for name, size in (("big2", "large"), ("mid", "medium")):
        state.observe(
            "ServiceRequest",
            {
                "metadata": {"name": name, "namespace": "payments-dev"},
                "spec": {"goldenPath": "postgres-database", "parameters": {"size": size}},
            },
        )
    over = preview(state, "postgres-database", {"name": "big", "environment": "payments-dev", "p.size": "large"})
    assert over.denial is not None
    assert over.denial.startswith("denied by GuardrailPolicy team-budget/within-budget: big costs 240")
    assert over.cost is not None
    assert over.cost.over_budget
    stranger = {"username": "mallory", "groups": ["search"]}
    refused = preview(state, "postgres-database", {"name": "x", "environment": "payments-dev"}, stranger)
    assert refused.denial is not None
    assert refused.denial.startswith("denied by team boundary: user mallory is neither in group 'payments'")


def test_names_environments_and_tiers_are_checked(state: ClusterState) -> None:
    bad = preview(state, "tiny", {"name": "Bad_Name", "environment": "payments-dev"})
    assert bad.errors["name"][0].startswith('metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain')
    assert not bad.yaml
    elsewhere = builder.preview(
        Settings(),
        state.snapshot(),
        "tiny",
        {"name": "a", "environment": "payments-dev"},
        environments=set(),
        userinfo=None,
    )
    assert elsewhere.errors["environment"] == [
        "environment 'payments-dev' is not one you may create ServiceRequests in"
    ]
    prod = preview(state, "tiny", {"name": "a", "environment": "payments-prod"})
    assert prod.errors["environment"] == ["golden path 'tiny' is offered in tiers dev, staging, not in prod"]
    assert preview(state, "nope", {}).errors[""][0].startswith("golden path 'nope' does not exist")


def test_the_same_request_again_is_unchanged(state: ClusterState) -> None:
    form = {"name": "orders-db", "environment": "payments-dev", "p.database": "orders", "p.size": "small"}
    found = preview(state, "postgres-database", form)
    assert found.exists
    assert found.unchanged


# -- scorecard, plots, documentation ------------------------------------------------------------


def test_the_scorecard_reads_the_metrics_registry() -> None:
    metrics = create_metrics()
    metrics.prepare_golden_path("tiny", ("dev",))
    for seconds in (3, 4, 8, 50):
        metrics.observe_lead_time("tiny", "dev", seconds)
    metrics.observe_run("apply", "tiny", None)
    metrics.observe_run("apply", "tiny", "PlanFailed")
    env = ready(example("environment.yaml"))
    env["metadata"]["uid"] = "e1"
    metrics.observe_object("Environment", env)
    sr = example("servicerequest-postgres.yaml")
    sr["metadata"]["uid"], sr["status"] = "r1", {"monthlyCost": "15.00", "environment": "payments-dev"}
    metrics.observe_object("ServiceRequest", sr)
    card = platform_scorecard(metrics.registry)
    assert dict(card.lead_time_buckets)["≤ 5s"] == 2
    assert dict(card.lead_time_buckets)["≤ 1m"] == 1
    assert card.lead_times[0].count == 4
    assert card.adoption == [("postgres-database", 1.0)]
    assert [(c.team, c.cost, c.budget) for c in card.costs] == [("payments", 15.0, 500.0)]
    assert card.failure_percent == 50.0


def test_quantiles_interpolate_like_prometheus() -> None:
    buckets = [(1.0, 0.0), (10.0, 10.0), (float("inf"), 10.0)]
    assert quantile(0.5, buckets) == 5.5
    assert quantile(0.5, []) is None
    assert quantile(0.99, [(1.0, 0.0), (float("inf"), 4.0)]) == 1.0  # beyond the last bound: the bound


def test_plots_escape_their_labels_and_mark_the_budget() -> None:
    svg = plots.bar_chart("Cost", [plots.Bar("<script>x</script>", 120, "120 / 100", marker=100, alert=True)])
    assert isinstance(svg, Markup)
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg
    assert 'class="bar alert"' in svg
    assert 'class="marker"' in svg
    assert "nothing to show yet" in plots.histogram("Lead time", [("≤ 1s", 0)], "requests")


def test_markdown_is_rendered_without_raw_html_or_script_links(tmp_path: Path) -> None:
    (tmp_path / "mod").mkdir()
    (tmp_path / "mod" / "README.md").write_text("# Title\n\n<script>alert(1)</script>\n\n[x](javascript:alert(1))\n")
    found = docs.documentation(tmp_path, "mod")
    assert "<h2>Title</h2>" in found.html
    assert "<script>" not in found.html
    assert 'href="javascript' not in found.html
    assert found.source == "mod/README.md"
    (tmp_path / "bare").mkdir()
    assert "has no README.md" in docs.documentation(tmp_path, "bare").missing
    assert "outside the modules root" in docs.documentation(tmp_path, "../etc").missing


# -- access -----------------------------------------------------------------------------------


class Reviews:
    """The apiserver's answers, counted: a fake at the level of Blacktop's own adapter."""

    def __init__(self) -> None:
        self.tokens: dict[str, Identity] = {"good": Identity("alice", ("checkout", "system:authenticated"))}
        self.allowed: set[tuple[str, str, str, str]] = {("alice", "list", "servicerequests", "checkout-dev")}
        self.calls = 0
        self.broken = False

    async def token(self, text: str) -> Identity | None:
        self.calls += 1
        return self.tokens.get(text)

    async def access(self, who: Identity, verb: str, resource: str, namespace: str) -> bool:
        self.calls += 1
        if self.broken:
            raise OSError("apiserver unreachable")
        return (who.username, verb, resource, namespace) in self.allowed


def test_tokens_and_permissions_are_reviewed_by_the_cluster_and_cached_briefly() -> None:
    reviews, now = Reviews(), [0.0]
    access = Access(reviews.token, reviews.access, clock=lambda: now[0])

    async def scenario() -> None:
        who = await access.identify("good")
        assert who is not None
        assert await access.identify("bad") is None
        assert await access.identify("x" * 20000) is None  # refused unread
        viewer = access.viewer(who)
        assert await viewer.namespaces_where("list", "servicerequests", ["checkout-dev", "search-dev"]) == {
            "checkout-dev"
        }
        calls = reviews.calls
        assert await access.identify("good") == who
        assert await viewer.may("list", "servicerequests", "search-dev") is False
        assert reviews.calls == calls  # both answers came from the cache
        now[0] += REVIEW_TTL + 1
        reviews.broken = True
        assert await viewer.may("list", "servicerequests", "checkout-dev") is False  # fails closed
        session = access.open_session("good")
        assert access.token_of(session) == "good"
        access.close_session(session)
        assert access.token_of(session) is None
        expiring = access.open_session("good")
        now[0] += SESSION_TTL + 1
        assert access.token_of(expiring) is None

    asyncio.run(scenario())


def test_sign_in_off_is_only_allowed_on_loopback() -> None:
    assert Settings.from_env({"BLACKTOP_PORTAL_PORT": "8090", "BLACKTOP_PORTAL_AUTH": "none"}).portal_auth == "none"
    with pytest.raises(ValueError, match="only allowed on a loopback address"):
        Settings.from_env(
            {"BLACKTOP_PORTAL_PORT": "8090", "BLACKTOP_PORTAL_AUTH": "none", "BLACKTOP_PORTAL_ADDRESS": "0.0.0.0"}
        )


def test_durations_read_like_people_say_them() -> None:
    assert [views.duration_text(s) for s in (0, 45, 200, 7500, 3 * 86400 + 4 * 3600)] == [
        "0s",
        "45s",
        "3m 20s",
        "2h 5m",
        "3d 4h",
    ]
    assert views.ago_text(NOW - timedelta(minutes=5), NOW) == "5m ago"


def test_make_run_serves_the_portal_on_loopback_without_sign_in() -> None:
    """`blacktop run --local` (`make run`'s command) turns the portal on: port 8090, no sign-in, the
    address the loopback default; what the user set wins."""
    assert local_defaults({}) == {"BLACKTOP_PORTAL_PORT": "8090", "BLACKTOP_PORTAL_AUTH": "none"}
    assert local_defaults({"BLACKTOP_PORTAL_PORT": "8091"}) == {"BLACKTOP_PORTAL_AUTH": "none"}
    assert "BLACKTOP_PORTAL_ADDRESS" not in local_defaults({})
    settings = Settings.from_env(local_defaults({}))
    assert (settings.portal_port, settings.portal_address, settings.portal_auth) == (8090, "127.0.0.1", "none")
