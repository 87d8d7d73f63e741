"""The developer portal in a real browser (headless Debian Chromium, Playwright) against the real operator.

The session operator serves its portal with sign-in by token (the chart's mode). Visitors are
ServiceAccounts with real tokens (`kubectl create token`): a platform admin bound to cluster-admin,
and two tenants, each the owner of their team's environments and nothing else. What the portal
shows is checked against what plain kubectl says: the golden paths, their schemas, the refusal
`kubectl apply` prints, a failed request's reason, and what a tenant may not list.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from playwright.sync_api import Browser, Page, expect

from browser import chromium, screenshot
from helpers import (
    Kubectl,
    OperatorProcess,
    apply_json,
    apply_ready,
    environment_body,
    fetch,
    http_status,
    secret_values,
    service_request,
    tiny_golden_path,
    unique,
    wait_for,
    wait_ready,
    wait_reason,
)

pytestmark = pytest.mark.integration

ACCOUNTS = "portal-accounts"
TINY, POSTGRES = "tiny-service", "postgres"
CHECKOUT, SEARCH = "checkout", "search"  # two teams
CANARY = "portal-canary-" + os.urandom(8).hex()
REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@dataclass
class Visitor:
    """A ServiceAccount with a real token, and kubectl acting with that very token."""

    name: str
    token: str
    kubectl: Kubectl

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{ACCOUNTS}:{self.name}"


def token_kubeconfig(admin: Path, token: str, path: Path) -> Path:
    """The admin kubeconfig's cluster with a bearer token as the user."""
    config = yaml.safe_load(admin.read_text())
    config["users"] = [{"name": "visitor", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "visitor"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def visitors(kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Visitor]]:
    kubectl("create", "namespace", ACCOUNTS)
    folder = tmp_path_factory.mktemp("visitors")
    found = {}
    for name in ("admin", "alice", "bob"):
        kubectl("create", "serviceaccount", name, "-n", ACCOUNTS)
        token = kubectl("create", "token", name, "-n", ACCOUNTS, "--duration=2h").stdout.strip()
        found[name] = Visitor(name, token, Kubectl(token_kubeconfig(kubectl.kubeconfig, token, folder / name)))
    binding = f"{ACCOUNTS}-admin"
    kubectl(
        "create", "clusterrolebinding", binding, "--clusterrole=cluster-admin", f"--serviceaccount={ACCOUNTS}:admin"
    )
    yield found
    kubectl("delete", "clusterrolebinding", binding, "--ignore-not-found")
    kubectl("delete", "namespace", ACCOUNTS, "--wait=false")


def _postgres_golden_path() -> dict[str, Any]:
    """The example PostgreSQL golden path under our name, its credentials a Secret holding the canary."""
    body: dict[str, Any] = yaml.safe_load((REPO_EXAMPLES / "goldenpath-postgres.yaml").read_text())
    body["metadata"]["name"] = POSTGRES
    body["spec"]["credentialsSecretRef"] = {"name": "portal-canary", "namespace": "blacktop-system"}
    return body


@pytest.fixture(scope="module")
def world(kubectl: Kubectl, operator: OperatorProcess, visitors: dict[str, Visitor]) -> Iterator[dict[str, str]]:
    """Two golden paths, three environments of two teams, a budget policy for one team."""
    kubectl(
        "create", "secret", "generic", "portal-canary", "-n", "blacktop-system", f"--from-literal=PGPASSWORD={CANARY}"
    )
    apply_ready(kubectl, tiny_golden_path(TINY))
    apply_ready(kubectl, _postgres_golden_path())
    owner = {"kind": "User", "name": visitors["alice"].username}
    environments = {
        "checkout-dev": environment_body(
            "checkout-dev", CHECKOUT, "dev", owners=[owner], ttl="72h", budget={"monthly": "30", "currency": "USD"}
        ),
        "checkout-prod": environment_body("checkout-prod", CHECKOUT, "prod", owners=[owner]),
        "search-dev": environment_body(
            "search-dev", SEARCH, "dev", owners=[{"kind": "User", "name": visitors["bob"].username}], ttl="24h"
        ),
    }
    for body in environments.values():
        apply_json(kubectl, body)
    for name in environments:
        kubectl("wait", "--for=condition=Ready", f"environment/{name}", "--timeout=60s")
    policy = yaml.safe_load((REPO_EXAMPLES / "policies" / "team-budget.yaml").read_text())
    policy["metadata"]["name"] = "portal-checkout-budget"
    policy["spec"]["match"]["teams"] = [CHECKOUT]  # other tests' requests stay out of it
    apply_ready(kubectl, policy)
    yield {"dev": "checkout-dev", "prod": "checkout-prod", "other": "search-dev"}
    kubectl("delete", "guardrailpolicy", "portal-checkout-budget", "--ignore-not-found")
    for name in environments:
        kubectl("delete", "environment", name, "--ignore-not-found", "--wait=false")
    for name in environments:
        kubectl("wait", "--for=delete", f"environment/{name}", "--timeout=180s", check=False)
    for name in (TINY, POSTGRES):
        kubectl("delete", "goldenpath", name, "--ignore-not-found", "--wait=false")
    kubectl("delete", "secret", "portal-canary", "-n", "blacktop-system", "--ignore-not-found")


@pytest.fixture(scope="module")
def portal(operator: OperatorProcess) -> str:
    url = f"http://127.0.0.1:{operator.portal_port}"
    wait_for(lambda: http_status(f"{url}/healthz") == 200, timeout=30, what="the portal to listen")
    return url


def test_blacktop_run_prints_the_portal_url(operator: OperatorProcess, portal: str) -> None:
    assert f"The developer portal (read-only): {portal}/" in operator.log_text()


def fetch_until(url: str, token: str, *needles: str) -> str:
    """The page once it shows every needle: the portal's cache follows the watch, a moment after kubectl."""
    return wait_for(
        lambda: (page := fetch(url, token)[1]) and all(n in page for n in needles) and page,
        timeout=30,
        interval=0.5,
        what=f"{needles} on {url}",
    )


def open_until(page: Page, url: str, shown: Callable[[], bool], what: str) -> None:
    """Open ``url`` again until ``shown()`` holds (the cache follows the watch, a moment after kubectl)."""

    def probe() -> bool:
        page.goto(url)
        return shown()

    wait_for(probe, timeout=30, interval=0.5, what=what)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def _signed_in(browser: Browser, portal: str, visitor: Visitor, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context signed in through the sign-in form; a screenshot if the test fails."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{portal}/catalog")
    page.fill("#token", visitor.token)
    page.click("form.login button[type=submit]")
    expect(page.locator("#signed-in-as")).to_have_text(visitor.username)
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        path = screenshot(page, re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name))
        print(f"screenshot of the failing page: {path}")
    context.close()


@pytest.fixture
def admin_page(
    browser: Browser, portal: str, visitors: dict[str, Visitor], request: pytest.FixtureRequest
) -> Iterator[Page]:
    yield from _signed_in(browser, portal, visitors["admin"], request)


@pytest.fixture
def alice_page(
    browser: Browser, portal: str, visitors: dict[str, Visitor], request: pytest.FixtureRequest
) -> Iterator[Page]:
    yield from _signed_in(browser, portal, visitors["alice"], request)


# -- the catalog ----------------------------------------------------------------------------------


def test_the_catalog_lists_every_golden_path_with_its_documentation(
    kubectl: Kubectl, world: dict[str, str], portal: str, admin_page: Page
) -> None:
    page = admin_page
    page.goto(f"{portal}/catalog")
    expected = {
        gp["metadata"]["name"] for gp in json.loads(kubectl("get", "goldenpaths", "-o", "json").stdout)["items"]
    }
    shown = set(page.locator("#catalog li.card").evaluate_all("cards => cards.map(c => c.dataset.goldenPath)"))
    assert shown == expected
    card = page.locator(f'li.card[data-golden-path="{POSTGRES}"]')
    expect(card.locator("p.description")).to_have_text(
        "A PostgreSQL database with its own role; credentials in a Secret."
    )
    expect(card).to_contain_text("15.00 to 240.00 USD/month by size")
    screenshot(page, "catalog", for_readme=True)

    card.locator("h2 a").click()
    expect(page.locator("main > h1")).to_contain_text(POSTGRES)
    # The module's README, rendered from Markdown (its table included), never raw.
    expect(page.locator("#documentation .markdown h2").first).to_have_text("PostgreSQL database")
    expect(page.locator("#documentation .markdown table").first).to_be_visible()
    expect(page.locator("#outputs")).to_contain_text("password")
    expect(page.locator("#tiers")).to_have_text(re.compile(r"dev\s+staging\s+prod"))


def _allowed(prop: dict[str, Any]) -> str:
    """What the table's "allowed" column says of a property: its values, else its length and pattern."""
    if "enum" in prop:
        return ", ".join(prop["enum"])
    parts = []
    if "maxLength" in prop:
        parts.append(f"{prop.get('minLength', 0)} to {prop['maxLength']} characters")
    if "pattern" in prop:
        parts.append(f"matches {prop['pattern']}")
    return "; ".join(parts)


def test_the_parameter_table_matches_the_schema(
    kubectl: Kubectl, world: dict[str, str], visitors: dict[str, Visitor], portal: str, admin_page: Page
) -> None:
    schema = json.loads(kubectl("get", "goldenpath", POSTGRES, "-o", "jsonpath={.spec.parameters}").stdout)
    page = admin_page
    page.goto(f"{portal}/catalog/{POSTGRES}")
    rows = page.locator("#parameters tbody tr").evaluate_all(
        """rows => rows.map(r => Object.fromEntries(
             ['name', 'type', 'required', 'default', 'allowed', 'description']
               .map(k => [k, r.querySelector('td.' + k).textContent.trim()])))"""
    )
    expected = [
        {
            "name": name,
            "type": prop["type"],
            "required": "yes" if name in schema.get("required", []) else "no",
            "default": str(prop.get("default", "")),
            "allowed": _allowed(prop),
            "description": prop["description"],
        }
        for name, prop in schema["properties"].items()
    ]
    assert rows == expected
    # The schema itself is served as JSON, for tools and for the form.
    status, body = fetch(f"{portal}/api/catalog/{POSTGRES}/schema", visitors["admin"].token)
    assert status == 200
    assert json.loads(body) == schema


def cards(page: Page, golden_path: str) -> int:
    """How many catalog cards of ``golden_path`` the page shows after a reload."""
    page.reload()
    return page.locator(f'li.card[data-golden-path="{golden_path}"]').count()


def test_a_golden_path_added_to_the_cluster_appears_without_a_restart(
    kubectl: Kubectl, operator: OperatorProcess, world: dict[str, str], portal: str, admin_page: Page
) -> None:
    assert operator.proc is not None
    pid = operator.proc.pid
    name = unique("fresh-path")
    page = admin_page
    page.goto(f"{portal}/catalog")
    expect(page.locator(f'li.card[data-golden-path="{name}"]')).to_have_count(0)
    body = tiny_golden_path(name)
    body["spec"]["description"] = "Added while the portal was open."
    apply_json(kubectl, body)
    try:
        wait_for(
            lambda: cards(page, name) == 1,
            timeout=30,
            interval=0.5,
            what="the new golden path in the catalog",
        )
        expect(page.locator(f'li.card[data-golden-path="{name}"] p.description')).to_have_text(
            "Added while the portal was open."
        )
        kubectl("delete", "goldenpath", name)
        wait_for(
            lambda: cards(page, name) == 0,
            timeout=30,
            interval=0.5,
            what="the deleted golden path to leave the catalog",
        )
    finally:
        kubectl("delete", "goldenpath", name, "--ignore-not-found", "--wait=false")
    assert operator.proc.pid == pid
    assert operator.proc.poll() is None


# -- the request builder --------------------------------------------------------------------------


def _fill(page: Page, portal: str, golden_path: str, name: str, environment: str, **parameters: str) -> None:
    page.goto(f"{portal}/catalog/{golden_path}/request")
    page.fill("#f-name", name)
    page.select_option("#f-environment", environment)
    for key, value in parameters.items():
        field = page.locator(f"#f-{key}")
        if field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)


def _manifest(page: Page, *lines: str) -> str:
    """The manifest once it shows every one of ``lines`` (answers to earlier keystrokes may come first)."""
    for line in lines:
        expect(page.locator("#manifest")).to_contain_text(line)
    return str(page.locator("#manifest").text_content())


def test_the_builder_makes_yaml_that_kubectl_apply_accepts_and_the_webhook_admits(
    kubectl: Kubectl, world: dict[str, str], visitors: dict[str, Visitor], portal: str, alice_page: Page
) -> None:
    page, alice = alice_page, visitors["alice"]
    name = unique("web")
    page.goto(f"{portal}/catalog/{TINY}/request")
    # Defaults are filled in, enums are selects.
    assert page.locator("#f-size").evaluate("e => e.tagName") == "SELECT"
    expect(page.locator("#f-size")).to_have_value("small")
    assert page.locator("#f-size option").all_text_contents() == ["small", "medium", "large"]
    _fill(page, portal, TINY, name, world["dev"], size="medium")
    manifest = _manifest(page, f"name: {name}", "size: medium")
    expect(page.locator("#verdict")).to_have_attribute("data-state", "admitted")
    assert yaml.safe_load(manifest) == service_request(name, world["dev"], TINY, size="medium")
    expect(page.locator("#apply-line")).to_have_text(f"kubectl apply -f {name}.yaml")
    expect(page.locator("#cost-text")).to_contain_text("5.00 USD/month")
    expect(page.locator("#cost-text")).to_contain_text("budget 30.00")
    screenshot(page, "request-builder", for_readme=True)

    dry = alice.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest)
    assert "created (server dry run)" in dry.stdout
    alice.kubectl("apply", "-f", "-", input=manifest)
    ready = wait_ready(kubectl, name, world["dev"])
    assert ready["spec"]["parameters"] == {"size": "medium"}
    # The same form again: the request exists with these values, so applying changes nothing.
    _fill(page, portal, TINY, name, world["dev"], size="medium")
    expect(page.locator("#verdict")).to_have_attribute("data-state", "unchanged")


def _refusal(visitor: Visitor, manifest: str) -> str:
    result = visitor.kubectl("apply", "-f", "-", input=manifest, check=False)
    assert result.returncode != 0, result.stdout
    return result.stderr


def test_an_invalid_value_is_flagged_with_the_message_admission_gives(
    world: dict[str, str], visitors: dict[str, Visitor], portal: str, alice_page: Page
) -> None:
    page, alice = alice_page, visitors["alice"]
    name = unique("db")
    _fill(page, portal, POSTGRES, name, world["dev"], database="Orders-DB")
    flagged = page.locator('[data-error-for="p.database"]')
    expect(flagged).to_contain_text("does not match")
    expect(page.locator("#f-database")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#verdict")).to_have_attribute("data-state", "denied")
    message = str(flagged.text_content())
    assert message == "parameters.database: 'Orders-DB' does not match '^[a-z][a-z0-9]*(_[a-z0-9]+)*$'"
    assert message in _refusal(alice, _manifest(page, f"name: {name}", "database: Orders-DB"))

    # Fixing it as you type clears the message; a size over the team's budget is refused by its policy.
    page.fill("#f-database", "orders")
    expect(flagged).to_be_empty()
    page.select_option("#f-size", "large")
    expect(page.locator("#verdict")).to_have_attribute("data-state", "denied")
    denial = str(page.locator("#denial").text_content())
    assert denial.startswith("denied by GuardrailPolicy portal-checkout-budget/within-budget:")
    expect(page.locator("#cost")).to_have_class(re.compile(r"\bover\b"))
    assert denial in _refusal(alice, _manifest(page, f"name: {name}", "database: orders", "size: large"))

    # A name the apiserver would refuse is flagged with the apiserver's words.
    page.fill("#f-name", "Orders_DB")
    flagged_name = page.locator('[data-error-for="name"]')
    expect(flagged_name).to_contain_text("a lowercase RFC 1123 subdomain")
    refused = alice.kubectl(
        "apply", "-f", "-", input=json.dumps(service_request("Orders_DB", world["dev"], POSTGRES)), check=False
    )
    assert str(flagged_name.text_content()).removeprefix("metadata.name: ") in refused.stderr


# -- teams and requests ---------------------------------------------------------------------------


def test_a_team_view_shows_a_failed_requests_reason_first(
    kubectl: Kubectl, world: dict[str, str], portal: str, alice_page: Page
) -> None:
    good, bad = unique("ok"), unique("wrong-tier")
    apply_json(kubectl, service_request(good, world["dev"], TINY))
    wait_ready(kubectl, good, world["dev"])
    apply_json(kubectl, service_request(bad, world["prod"], TINY))  # tiny is offered in dev and staging only
    failed = wait_reason(kubectl, bad, world["prod"], "TierNotAllowed")
    page = alice_page
    row = page.locator(f'tr[data-request="{world["prod"]}/{bad}"] td.ready')
    open_until(
        page, f"{portal}/teams/{CHECKOUT}", lambda: "TierNotAllowed" in (row.all_text_contents() or [""])[0], bad
    )
    rows = page.locator("table.requests tbody tr")
    first = rows.first
    expect(first).to_have_attribute("data-request", f"{world['prod']}/{bad}")
    expect(first.locator("td.ready")).to_contain_text("TierNotAllowed")
    expect(first.locator("td.message")).to_have_text(failed["message"])
    expect(first.locator("td.stage")).to_have_text("Failed")
    expect(page.locator(f'tr[data-request="{world["dev"]}/{good}"] td.ready')).to_contain_text("Ready")
    expect(page.locator(f'tr[data-environment="{world["dev"]}"] td.ttl')).to_contain_text("left")
    kubectl("delete", "servicerequest", bad, "-n", world["prod"], "--wait=false")


def test_a_tenant_sees_in_the_portal_only_what_kubectl_shows_them(
    kubectl: Kubectl, world: dict[str, str], visitors: dict[str, Visitor], portal: str
) -> None:
    """Team checkout (alice) cannot read team search's (bob's) request names or messages."""
    alice, bob = visitors["alice"], visitors["bob"]
    secret_name = unique("search-internal")
    golden_path = unique("not-yet-there")
    apply_json(kubectl, service_request(secret_name, world["other"], golden_path))
    message = wait_reason(kubectl, secret_name, world["other"], "GoldenPathNotFound")["message"]
    # kubectl agrees: bob may list search's requests, alice may not.
    assert secret_name in bob.kubectl("get", "servicerequests", "-n", world["other"]).stdout
    assert "forbidden" in alice.kubectl("get", "servicerequests", "-n", world["other"], check=False).stderr

    for path in (f"/teams/{SEARCH}", f"/environments/{world['other']}", "/requests", "/requests?problems=1", "/teams"):
        status, page = fetch(f"{portal}{path}", alice.token)
        assert status == 200, path
        assert secret_name not in page, path
        assert golden_path not in page, path
        assert message not in page, path
    status, page = fetch(f"{portal}/environments/{world['other']}", alice.token)
    assert "You may not list the ServiceRequests of search-dev" in page
    fetch_until(f"{portal}/teams/{SEARCH}", bob.token, secret_name, "GoldenPathNotFound")
    # The builder offers alice only her own environments, and refuses another's as admission would.
    status, page = fetch(f"{portal}/catalog/{TINY}/request", alice.token)
    assert 'value="checkout-dev"' in page
    assert 'value="search-dev"' not in page
    status, answer = fetch(
        f"{portal}/api/catalog/{TINY}/preview?name=x&environment={world['other']}&p.size=small", alice.token
    )
    assert json.loads(answer)["errors"]["environment"] == [
        "environment 'search-dev' is not one you may create ServiceRequests in"
    ]
    # Without a token (or with a wrong one) nothing but the sign-in form.
    for token in (None, "not-a-token", bob.token[:-4] + "AAAA"):
        status, page = fetch(f"{portal}/teams/{SEARCH}", token)
        assert status == 401
        assert 'name="token"' in page
        assert "search-dev" not in page
        status, answer = fetch(f"{portal}/api/catalog/{TINY}/preview?environment=search-dev", token)
        assert status == 401
    kubectl("delete", "servicerequest", secret_name, "-n", world["other"], "--wait=false")


def test_no_secret_value_is_ever_shown(
    kubectl: Kubectl, world: dict[str, str], visitors: dict[str, Visitor], portal: str
) -> None:
    name = unique("secretive")
    apply_json(kubectl, service_request(name, world["dev"], TINY))
    wait_ready(kubectl, name, world["dev"])
    token = secret_values(kubectl, f"{name}-connection", world["dev"])["token"]
    assert secret_values(kubectl, "portal-canary", "blacktop-system")["PGPASSWORD"] == CANARY
    pages = [
        "/catalog",
        f"/catalog/{TINY}",
        f"/catalog/{POSTGRES}",
        f"/catalog/{POSTGRES}/request?name=x&environment={world['dev']}",
        f"/catalog/{TINY}/request?name={name}&environment={world['dev']}&p.size=small",
        f"/api/catalog/{TINY}/preview?name={name}&environment={world['dev']}&p.size=small",
        f"/api/catalog/{POSTGRES}/schema",
        "/teams",
        f"/teams/{CHECKOUT}",
        f"/environments/{world['dev']}",
        "/requests",
        "/scorecard",
    ]
    for path in pages:
        status, body = fetch(f"{portal}{path}", visitors["admin"].token)
        assert status == 200, path
        assert token not in body, path
        assert CANARY not in body, path
    fetch_until(f"{portal}/teams/{CHECKOUT}", visitors["admin"].token, name)  # the request itself is shown
    kubectl("delete", "servicerequest", name, "-n", world["dev"], "--wait=false")


def test_the_scorecard_plots_lead_time_adoption_and_cost(
    kubectl: Kubectl, world: dict[str, str], portal: str, admin_page: Page
) -> None:
    name = unique("scored")
    apply_json(kubectl, service_request(name, world["dev"], TINY, size="medium"))
    wait_ready(kubectl, name, world["dev"])
    page = admin_page
    adoption = page.locator("#adoption svg.plot")
    open_until(page, f"{portal}/scorecard", lambda: TINY in "".join(adoption.all_text_contents()), "adoption")
    expect(page.locator("#lead-time svg.plot rect.bar").first).to_be_attached()
    cost = page.locator("#cost svg.plot")
    expect(cost).to_contain_text(CHECKOUT)
    expect(cost.locator("line.marker").first).to_be_attached()  # the team's budget
    kubectl("delete", "servicerequest", name, "-n", world["dev"], "--wait=false")
