"""The portal's HTTP face, in process: sign-in, who sees what, headers, every page rendering.

A real aiohttp server on loopback over a cluster state fed like the watches feed it; the
apiserver's TokenReview and SubjectAccessReview answers come from a fake at the level of
Blacktop's own adapter (:class:`blacktop.portal.access.Access` takes the two review calls).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from blacktop.api.scorecard import ScorecardLedger
from blacktop.config import Settings
from blacktop.kube.reviews import Identity
from blacktop.metrics.facts import observe
from blacktop.metrics.ledger import next_ledger
from blacktop.metrics.registry import Metrics, create_metrics
from blacktop.metrics.scorecard import compute
from blacktop.portal.access import COOKIE, Access
from blacktop.portal.server import Portal
from blacktop.portal.state import ClusterState

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
TOKENS = {"alice-token": Identity("alice", ("payments",)), "bob-token": Identity("bob", ("search",))}
# What RBAC allows: everyone lists the catalog and environments; each team its own requests.
ALLOWED = {
    ("alice", "list", "servicerequests", "payments-dev"),
    ("alice", "create", "servicerequests", "payments-dev"),
    ("bob", "list", "servicerequests", "search-dev"),
}


async def review_token(token: str) -> Identity | None:
    return TOKENS.get(token)


async def review_access(who: Identity, verb: str, resource: str, namespace: str) -> bool:
    if verb == "list" and resource in ("goldenpaths", "environments") and not namespace:
        return True
    return (who.username, verb, resource, namespace) in ALLOWED


def example(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((REPO / "examples" / name).read_text())
    return body


def cluster() -> ClusterState:
    state = ClusterState()
    for name in ("goldenpath-tiny.yaml", "goldenpath-postgres.yaml"):
        state.observe("GoldenPath", example(name))
    payments = example("environment.yaml")
    search = copy.deepcopy(payments)
    search["metadata"]["name"], search["spec"]["team"] = "search-dev", "search"
    for env in (payments, search):
        state.observe("Environment", env)
    state.observe("ServiceRequest", example("servicerequest-postgres.yaml"))
    secret_plan = example("servicerequest-postgres.yaml")
    secret_plan["metadata"] = {"name": "search-internal", "namespace": "search-dev"}
    secret_plan["status"] = {
        "conditions": [{"type": "Ready", "status": "False", "reason": "ProviderError", "message": "search's own words"}]
    }
    state.observe("ServiceRequest", secret_plan)
    return state


Scenario = Callable[[TestClient], Awaitable[None]]


def serve(scenario: Scenario, *, signed_in: bool = True, metrics: Metrics | None = None) -> None:
    access = Access(review_token, review_access) if signed_in else None
    settings = Settings(portal_auth="token" if signed_in else "none")
    metrics = metrics or create_metrics()
    portal = Portal(settings, cluster(), metrics.registry, access, metrics.scorecard)

    async def run() -> None:
        async with TestClient(TestServer(portal.app())) as client:
            await scenario(client)

    asyncio.run(run())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


PAGES = [
    "/catalog",
    "/catalog/tiny",
    "/catalog/postgres-database",
    "/catalog/tiny/request",
    "/catalog/postgres-database/request?name=x&environment=payments-dev&p.size=large&p.database=Bad",
    "/teams",
    "/teams/payments",
    "/environments/payments-dev",
    "/requests",
    "/requests?problems=1",
    "/scorecard",
]


def test_the_scorecard_page_shows_each_figure_against_its_target() -> None:
    metrics = create_metrics()
    now = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
    observed = observe(
        [
            {
                "metadata": {"name": "e1", "uid": "u", "creationTimestamp": "2026-01-10T11:00:00Z"},
                "spec": {"team": "payments", "tier": "dev"},
            }
        ],
        [
            {
                "metadata": {"name": "db", "namespace": "e1", "uid": "r", "creationTimestamp": "2026-01-10T11:00:00Z"},
                "spec": {"goldenPath": "tiny"},
                "status": {"firstReadyTime": "2026-01-10T11:12:00Z"},
            }
        ],
        [{"metadata": {"name": "tiny"}}],
        feedback=[],
        workloads=[],
        known_teams=["payments", "search"],
    )

    async def before(client: TestClient) -> None:
        text = await (await client.get("/scorecard")).text()
        assert "No scorecard computed yet" in text

    serve(before, signed_in=False, metrics=metrics)
    metrics.scorecard.publish(compute(observed, next_ledger(ScorecardLedger(), observed, [], now), {}, now))

    async def after(client: TestClient) -> None:
        text = await (await client.get("/scorecard")).text()
        onboarding = text[text.index('id="target-team-onboarding"') :].split("</tr>")[0]
        assert "12m" in onboarding  # 12 minutes, against the 30-minute default target
        assert "<td>yes</td>" in onboarding
        active = text[text.index('id="target-weekly-active-teams"') :].split("</tr>")[0]
        assert 'class="missed"' in active  # one of the two known teams
        assert "<td>no</td>" in active

    serve(after, signed_in=False, metrics=metrics)


def test_every_page_renders_in_local_mode() -> None:
    async def scenario(client: TestClient) -> None:
        for path in PAGES:
            response = await client.get(path)
            assert response.status == 200, path
            text = await response.text()
            assert "Blacktop" in text, path
            assert response.headers["Content-Security-Policy"].startswith("default-src 'none'; script-src 'self'")
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["Cache-Control"] == "no-store"
        assert (await client.get("/teams/nobody")).status == 404
        assert (await client.get("/catalog/nothing")).status == 404
        assert (await client.get("/static/portal.js")).status == 200
        assert (await client.get("/static/..%2Fserver.py")).status == 404

    serve(scenario, signed_in=False)


def test_without_a_token_there_is_only_the_sign_in_form() -> None:
    async def scenario(client: TestClient) -> None:
        for headers in ({}, bearer("forged")):
            response = await client.get("/teams/search", headers=headers)
            assert response.status == 401
            text = await response.text()
            assert 'name="token"' in text
            assert "search-internal" not in text
            preview = await client.get("/api/catalog/tiny/preview", headers=headers)
            assert preview.status == 401

    serve(scenario)


def test_a_tenant_sees_only_the_requests_rbac_lets_them_list() -> None:
    async def scenario(client: TestClient) -> None:
        for path in ("/teams/search", "/environments/search-dev", "/requests", "/teams"):
            text = await (await client.get(path, headers=bearer("alice-token"))).text()
            assert "search-internal" not in text, path
            assert "search's own words" not in text, path
        own = await (await client.get("/teams/payments", headers=bearer("alice-token"))).text()
        assert "orders-db" in own
        theirs = await (await client.get("/teams/search", headers=bearer("bob-token"))).text()
        assert "search-internal" in theirs
        assert "search&#39;s own words" in theirs
        builder = await (await client.get("/catalog/tiny/request", headers=bearer("alice-token"))).text()
        assert 'value="payments-dev"' in builder
        assert 'value="search-dev"' not in builder

    serve(scenario)


def test_sign_in_sets_an_opaque_strict_cookie_and_sign_out_ends_the_session() -> None:
    async def scenario(client: TestClient) -> None:
        foreign = await client.post(
            "/login", data={"token": "alice-token"}, headers={"Origin": "https://evil.example"}, allow_redirects=False
        )
        assert foreign.status == 403
        refused = await client.post("/login", data={"token": "forged"}, allow_redirects=False)
        assert refused.status == 401
        assert "did not accept this token" in await refused.text()
        signed = await client.post(
            "/login", data={"token": "alice-token", "next": "//evil.example/"}, allow_redirects=False
        )
        assert signed.status == 303
        assert signed.headers["Location"] == "/catalog"  # never off-site
        cookie = signed.headers["Set-Cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert "alice-token" not in cookie  # the token stays on the server
        page = await client.get("/teams/payments")
        assert page.status == 200
        assert 'Signed in as <strong id="signed-in-as">alice</strong>' in await page.text()
        session = client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value
        await client.post("/logout", allow_redirects=False)
        again = await client.get("/teams/payments", cookies={COOKIE: session})
        assert again.status == 401  # the old session id is gone on the server too

    serve(scenario)


def test_the_preview_answers_with_admissions_words_as_json() -> None:
    async def scenario(client: TestClient) -> None:
        response = await client.get(
            "/api/catalog/postgres-database/preview?name=db&environment=payments-dev&p.database=Bad",
            headers=bearer("alice-token"),
        )
        answer = await response.json()
        assert (
            answer["denial"]
            == "invalid parameters: parameters.database: 'Bad' does not match '^[a-z][a-z0-9]*(_[a-z0-9]+)*$'"
        )
        assert answer["errors"]["p.database"] == [answer["denial"].removeprefix("invalid parameters: ")]
        assert answer["admitted"] is False
        schema = await (await client.get("/api/catalog/postgres-database/schema", headers=bearer("bob-token"))).json()
        assert schema == example("goldenpath-postgres.yaml")["spec"]["parameters"]
        download = await client.get(
            "/catalog/tiny/request.yaml?name=svc&environment=payments-dev&p.size=small", headers=bearer("alice-token")
        )
        assert download.headers["Content-Disposition"] == 'attachment; filename="svc.yaml"'
        assert yaml.safe_load(await download.text())["metadata"] == {"name": "svc", "namespace": "payments-dev"}

    serve(scenario)
