"""Notifications through the real operator: a team's Slack and signed webhook channels on its
Environment, the platform's channel in the operator's namespace, one message per transition, a
receiver that answers 500 for a while, and tenants who try to redirect or read others' channels.

The receiver (tests/receiver.py) is a real HTTP server on loopback; the session operator may post
to it because the tests allow ``http://127.0.0.1:`` (BLACKTOP_NOTIFICATION_ALLOWED_URLS), and
retries within seconds (helpers.OperatorProcess).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from blacktop.notifications import render
from helpers import (
    API,
    Kubectl,
    OperatorProcess,
    apply_json,
    apply_ready,
    condition,
    environment_body,
    get,
    scrape_metrics,
    secret_values,
    service_request,
    tiny_golden_path,
    try_apply,
    unique,
    wait_for,
    wait_ready,
)
from receiver import Delivery, Receiver, receiver

pytestmark = pytest.mark.integration

HMAC_KEY = "team-signing-key-" + os.urandom(4).hex()
OPERATOR_NAMESPACE = "blacktop-system"


@pytest.fixture(scope="module")
def hooks() -> Iterator[Receiver]:
    with receiver() as running:
        yield running


@pytest.fixture(scope="module")
def catalog(
    kubectl: Kubectl, operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """A tiny golden path, its failable variant, and `drifting` (its drift is a file the test rewrites)."""
    tiny = apply_ready(kubectl, tiny_golden_path(unique("tiny-nt"), failable=True))
    drifting = unique("drifting-nt")
    apply_ready(
        kubectl,
        {
            "apiVersion": API,
            "kind": "GoldenPath",
            "metadata": {"name": drifting},
            "spec": {
                "description": "Drifts when its marker file changes.",
                "module": "drifting",
                "parameters": {"type": "object", "properties": {"marker": {"type": "string"}}, "required": ["marker"]},
                "driftCheckInterval": "2s",
            },
        },
    )
    yield {"tiny": tiny, "drifting": drifting}
    for name in (tiny, drifting):
        kubectl("delete", "goldenpath", name, "--ignore-not-found", "--wait=false")


def tenant(user: str, team: str) -> tuple[str, str]:
    return f"--as={user}", f"--as-group={team}"


def channels(slack_secret: str = "chat-hook", webhook_secret: str = "signed-hook") -> list[dict[str, Any]]:
    return [
        {"name": "chat", "type": "Slack", "secretRef": {"name": slack_secret}},
        {"name": "hook", "type": "Webhook", "secretRef": {"name": webhook_secret}},
    ]


def create_secret(kubectl: Kubectl, namespace: str, name: str, *who: str, **values: str) -> None:
    literals = [f"--from-literal={k}={v}" for k, v in values.items()]
    kubectl("create", "secret", "generic", name, "-n", namespace, *literals, *who)


def wait_channels_ready(kubectl: Kubectl, environment: str, status: str = "True", saying: str = "") -> dict[str, Any]:
    """The environment's NotificationsConfigured condition, once it has ``status`` and its message says
    ``saying`` (a resync or two)."""
    return wait_for(
        lambda: (
            (c := condition(get(kubectl, "environment", environment), "NotificationsConfigured"))
            and c["status"] == status
            and saying in c["message"]
            and c
        ),
        timeout=60,
        what=f"NotificationsConfigured={status} on {environment}",
    )


@dataclass(frozen=True)
class Team:
    """A team's environment with channels, the receiver they post to, and the catalog."""

    name: str  # the environment (and namespace)
    team: str
    slack: str  # the receiver path of its Slack channel (as secret as a Slack webhook URL)
    hook: str  # the receiver path of its signed webhook
    hooks: Receiver
    catalog: dict[str, str]


@pytest.fixture(scope="module")
def team(kubectl: Kubectl, operator: OperatorProcess, hooks: Receiver, catalog: dict[str, str]) -> Iterator[Team]:
    """An environment of a fresh team with a Slack and a Webhook channel whose Secrets the team made
    itself (as a tenant), pointing at the receiver under a path that is as secret as a Slack URL."""
    team = unique("nteam")
    name = f"{team}-dev"
    secret_path = f"/services/T0/B0/{os.urandom(6).hex()}"
    apply_json(kubectl, environment_body(name, team, notifications=channels()))
    kubectl("wait", "--for=condition=Ready", f"environment/{name}", "--timeout=60s")
    member = tenant("alice", team)
    wait_for(
        lambda: kubectl("auth", "can-i", "create", "secrets", "-n", name, *member, check=False).stdout.strip() == "yes",
        timeout=30,
        what="the team to be allowed to create Secrets in its namespace",
    )
    create_secret(kubectl, name, "chat-hook", *member, url=hooks.url(secret_path))
    create_secret(kubectl, name, "signed-hook", *member, url=hooks.url(f"/{team}/hook"), hmacKey=HMAC_KEY)
    wait_channels_ready(kubectl, name)
    yield Team(name, team, secret_path, f"/{team}/hook", hooks, catalog)
    kubectl("delete", "environment", name, "--ignore-not-found", "--wait=true", "--timeout=180s")


def about(deliveries: list[Delivery], name: str, event: str | None = None) -> list[Delivery]:
    """Deliveries that are about object ``name`` (and ``event``), Slack or JSON alike."""
    found = []
    for d in deliveries:
        doc = d.json
        if "text" in doc:
            matches = f"/{name} " in doc["text"] or f" {name} " in doc["text"]
            if matches and (event is None or _slack_event(doc["text"]) == event):
                found.append(d)
        elif doc["object"]["name"] == name and (event is None or doc["event"] == event):
            found.append(d)
    return found


def _slack_event(text: str) -> str:
    head = text.split("*")[1] if "*" in text else text
    for event, words in (
        ("Ready", " is Ready"),
        ("Failed", " failed: "),
        ("AwaitingApproval", " awaits approval"),
        ("Drifted", " has drifted"),
        ("Expiring", " expires at "),
        ("BudgetNearlySpent", " of its monthly budget"),
    ):
        if words in head:
            return event
    return "?"


def wait_delivered(hooks: Receiver, path: str, name: str, event: str, count: int = 1) -> list[Delivery]:
    return wait_for(
        lambda: len(found := about(hooks.received(path), name, event)) >= count and found,
        timeout=90,
        what=f"{count} {event} message(s) about {name} at the receiver",
    )


def provision(kubectl: Kubectl, namespace: str, golden_path: str, **parameters: Any) -> str:
    name = unique("svc")
    apply_json(kubectl, service_request(name, namespace, golden_path, **parameters))
    return name


def test_team_channels_get_one_message_per_transition(
    kubectl: Kubectl,
    operator: OperatorProcess,
    team: Team,
) -> None:
    env, slack, hook, hooks, catalog = team.name, team.slack, team.hook, team.hooks, team.catalog
    ok = provision(kubectl, env, catalog["tiny"])
    wait_ready(kubectl, ok, env)
    [chat] = wait_delivered(hooks, slack, ok, "Ready")
    [signed] = wait_delivered(hooks, hook, ok, "Ready")
    assert f"ServiceRequest {env}/{ok} ({catalog['tiny']}) is Ready" in chat.text
    assert "connection details in Secret" in chat.text
    document = signed.json
    assert document["event"] == "Ready"
    assert document["team"] == team.team
    assert document["environment"] == env
    assert document["goldenPath"] == catalog["tiny"]
    assert signed.headers[render.DELIVERY_HEADER] == document["id"]
    assert render.verify(HMAC_KEY, signed.body, signed.headers[render.SIGNATURE_HEADER])

    # A failing request retries; its failure is told once, not per attempt, with reason and message.
    bad = provision(kubectl, env, catalog["tiny"], fail=True)
    wait_for(
        lambda: ((get(kubectl, "servicerequest", bad, "-n", env) or {}).get("status") or {}).get("failures", 0) >= 2,
        timeout=120,
        what="the failing request to have failed twice",
    )
    [failed] = wait_delivered(hooks, hook, bad, "Failed")
    assert failed.json["reason"] == "PlanFailed"
    assert "fail = true was requested" in failed.json["message"]
    [failed_chat] = wait_delivered(hooks, slack, bad, "Failed")
    assert "failed: PlanFailed" in failed_chat.text
    assert len(about(hooks.received(hook), bad, "Failed")) == 1

    # Fixed: Ready is told again (recovery); the request that was Ready all along is not repeated.
    kubectl("patch", "servicerequest", bad, "-n", env, "--type=merge", "-p", '{"spec":{"parameters":{"fail":false}}}')
    wait_delivered(hooks, hook, bad, "Ready")
    assert len(about(hooks.received(hook), ok)) == 1

    # No secret value anywhere: not the delivered token, not the channel URL nor its signing key.
    token = secret_values(kubectl, f"{ok}-connection", env)["token"]
    everything = b"".join(d.body for d in hooks.received(accepted=False)).decode()
    assert token not in everything
    assert HMAC_KEY not in everything
    events = (
        kubectl("get", "events", "-n", env, "-o", "json").stdout
        + kubectl("get", "events", "-n", "default", "-o", "json").stdout
    )
    status = json.dumps(get(kubectl, "environment", env))
    for text in (operator.log_text(), events, status):
        assert slack not in text
        assert HMAC_KEY not in text
        assert token not in text


def test_a_webhook_down_for_a_while_gets_the_message_late_and_a_dead_one_is_reported(
    kubectl: Kubectl,
    operator: OperatorProcess,
    team: Team,
) -> None:
    env, slack, hook, hooks, catalog = team.name, team.slack, team.hook, team.hooks, team.catalog
    hooks.fail(hook, 3)  # the webhook answers 500 three times, then recovers
    late = provision(kubectl, env, catalog["tiny"])
    wait_ready(kubectl, late, env)
    wait_delivered(hooks, slack, late, "Ready")  # the chat does not wait for the broken webhook
    [delivered] = wait_delivered(hooks, hook, late, "Ready")
    attempts = [d for d in about(hooks.received(hook, accepted=False), late, "Ready")]
    assert [d.status for d in attempts] == [500, 500, 500, 200]
    assert len({d.json["id"] for d in attempts}) == 1  # the same message, retried: receivers can dedupe by id
    assert render.verify(HMAC_KEY, delivered.body, delivered.headers[render.SIGNATURE_HEADER])

    # Down for good: after its attempts the message is given up, counted, and the team told by an Event.
    hooks.fail(hook, 1000, status=503)
    try:
        lost = provision(kubectl, env, catalog["tiny"])
        wait_ready(kubectl, lost, env)
        event = wait_for(
            lambda: next(
                (
                    e
                    for e in json.loads(
                        kubectl(
                            "get",
                            "events",
                            "-n",
                            "default",
                            f"--field-selector=involvedObject.name={env}",
                            "-o",
                            "json",
                        ).stdout
                    )["items"]
                    if e["reason"] == "NotificationFailed" and lost in e["message"]
                ),
                None,
            ),
            timeout=90,
            what="a NotificationFailed Event on the environment",
        )
        assert f"to channel {env}/hook failed: HTTP 503 after 5 attempt(s)" in event["message"]
        assert "127.0.0.1" not in event["message"]
        assert len(about(hooks.received(hook, accepted=False), lost, "Ready")) == 5
    finally:
        hooks.fail(hook, 0)
    metrics = scrape_metrics(operator)
    failed = 'blacktop_notifications_total{channel_type="Webhook",event="Ready",result="failed",scope="team"}'
    assert _sample(metrics, failed) >= 1
    assert _sample(metrics, 'blacktop_notification_retries_total{channel_type="Webhook"}') >= 7
    assert (
        _sample(
            metrics, 'blacktop_notifications_total{channel_type="Slack",event="Ready",result="delivered",scope="team"}'
        )
        >= 3
    )


def _sample(metrics: str, series: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not exported")


def test_environment_expiry_budget_and_drift_are_announced(
    kubectl: Kubectl,
    operator: OperatorProcess,
    team: Team,
    tmp_path: Path,
) -> None:
    env, hook, hooks, catalog = team.name, team.hook, team.hooks, team.catalog
    marker = tmp_path / "marker"
    marker.write_text("v1")
    drifting = provision(kubectl, env, catalog["drifting"], marker=str(marker))
    wait_ready(kubectl, drifting, env)
    cost = (get(kubectl, "environment", env) or {})["status"]["cost"]["monthly"]
    # A TTL within 24 h and a budget the current cost already uses 90% of (but does not exceed).
    budget = f"{float(cost) / 0.95:.2f}"
    kubectl(
        "patch",
        "environment",
        env,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"ttl": "20h", "budget": {"monthly": budget}}}),
    )
    [expiring] = wait_delivered(hooks, hook, env, "Expiring")
    assert expiring.json["object"] == {"kind": "Environment", "namespace": None, "name": env}
    assert "within 24 hours" in expiring.json["message"]
    [spent] = wait_delivered(hooks, hook, env, "BudgetNearlySpent")
    assert spent.json["details"]["budget"] == budget
    assert int(spent.json["details"]["percent"]) >= 90

    marker.write_text("changed out of band")
    [drifted] = wait_delivered(hooks, hook, drifting, "Drifted")
    assert "no longer matches the module" in drifted.json["message"]
    kubectl(
        "patch",
        "environment",
        env,
        "--type=json",
        "-p",
        '[{"op":"remove","path":"/spec/ttl"},{"op":"remove","path":"/spec/budget"}]',
    )
    assert len(about(hooks.received(hook), env, "Expiring")) == 1
    assert len(about(hooks.received(hook), drifting, "Drifted")) == 1


@pytest.fixture
def platform_channel(kubectl: Kubectl, hooks: Receiver) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def make(path: str, events: str = "", channel_type: str = "Slack") -> str:
        name = unique("platform-chat")
        data = {"url": hooks.url(path), **({"events": events} if events else {})}
        kubectl(
            "create",
            "secret",
            "generic",
            name,
            "-n",
            OPERATOR_NAMESPACE,
            *[f"--from-literal={k}={v}" for k, v in data.items()],
        )
        kubectl(
            "label",
            "secret",
            name,
            "-n",
            OPERATOR_NAMESPACE,
            f"platform.blacktop.dev/notification-channel={channel_type}",
        )
        made.append(name)
        return name

    yield make
    for name in made:
        kubectl("delete", "secret", name, "-n", OPERATOR_NAMESPACE, "--ignore-not-found")


def test_the_platform_channel_hears_every_team_and_filters_by_event(
    kubectl: Kubectl,
    operator: OperatorProcess,
    team: Team,
    platform_channel: Callable[..., str],
) -> None:
    env, hooks, catalog = team.name, team.hooks, team.catalog
    path = f"/platform/{os.urandom(4).hex()}"
    platform_channel(path, events="Failed")
    bad = provision(kubectl, env, catalog["tiny"], fail=True)
    good = provision(kubectl, env, catalog["tiny"])
    [told] = wait_delivered(hooks, path, bad, "Failed")
    assert f"team {team.team}" in told.json["blocks"][1]["elements"][0]["text"]
    wait_ready(kubectl, good, env)
    wait_delivered(hooks, team.hook, good, "Ready")  # the team heard it ...
    assert about(hooks.received(path), good) == []  # ... the platform, asking only for failures, did not


# -- the wrong tenant -------------------------------------------------------------------------------------


def test_a_tenant_cannot_redirect_or_read_another_teams_notifications(
    kubectl: Kubectl,
    operator: OperatorProcess,
    team: Team,
    developers_may_create_environments: str,
    platform_channel: Callable[..., str],
) -> None:
    victim, victim_team, hooks, catalog = team.name, team.team, team.hooks, team.catalog
    platform_channel(f"/platform/{os.urandom(4).hex()}")
    mallory_team = unique("mteam")
    mallory = (*tenant("mallory", developers_may_create_environments), f"--as-group={mallory_team}")

    # Cannot point the victim's environment at her own hook (the team boundary of admission) ...
    patch = {"spec": {"notifications": [{"name": "steal", "type": "Slack", "secretRef": {"name": "mine"}}]}}
    refused = kubectl("patch", "environment", victim, "--type=merge", "-p", json.dumps(patch), *mallory, check=False)
    assert refused.returncode != 0
    assert f"denied by team boundary: user mallory is not in group {victim_team!r}" in refused.stderr
    # ... nor read the victim's channel Secrets, nor see or touch the platform's.
    for args in (
        ("get", "secret", "chat-hook", "-n", victim),
        ("get", "secrets", "-n", OPERATOR_NAMESPACE),
        ("create", "secret", "generic", "evil", "-n", OPERATOR_NAMESPACE, "--from-literal=url=https://evil.example/"),
        ("label", "secret", "chat-hook", "-n", victim, "platform.blacktop.dev/notification-channel=Slack"),
    ):
        denied = kubectl(*args, *mallory, check=False)
        assert denied.returncode != 0
        assert "forbidden" in denied.stderr.lower(), denied.stderr
    # Even the victim's own members cannot create a platform channel.
    member = kubectl(
        "create",
        "secret",
        "generic",
        "evil",
        "-n",
        OPERATOR_NAMESPACE,
        "--from-literal=url=https://x/",
        *tenant("alice", victim_team),
        check=False,
    )
    assert "forbidden" in member.stderr.lower()

    # Her own environment can only name Secrets of its own namespace: a namespace field is refused by the
    # schema, and the victim's Secret name resolves in her namespace, where it does not exist.
    mine = f"{mallory_team}-dev"
    body = environment_body(
        mine,
        mallory_team,
        notifications=[{"name": "x", "type": "Slack", "secretRef": {"name": "chat-hook", "namespace": victim}}],
    )
    schema = try_apply(kubectl, body, *mallory)
    assert schema.returncode != 0
    assert 'unknown field "spec.notifications[0].secretRef.namespace"' in schema.stderr
    body["spec"]["notifications"] = channels("chat-hook", "plain-http")
    assert try_apply(kubectl, body, *mallory).returncode == 0
    try:
        kubectl("wait", "--for=condition=Ready", f"environment/{mine}", "--timeout=60s")
        own = tenant("mallory", mallory_team)
        wait_for(
            lambda: (
                kubectl("auth", "can-i", "create", "secrets", "-n", mine, *own, check=False).stdout.strip() == "yes"
            ),
            timeout=30,
            what="mallory's team to manage Secrets in its namespace",
        )
        # A plain-http URL into the cluster is refused (only the allowed prefixes may be posted to).
        create_secret(kubectl, mine, "plain-http", *own, url="http://10.96.0.1/steal", hmacKey="k")
        problem = wait_channels_ready(kubectl, mine, "False", saying="must start with")
        assert problem["reason"] == "NotificationChannelInvalid"
        assert f"channel chat: Secret {mine}/chat-hook does not exist" in problem["message"]
        assert "channel hook: Secret" in problem["message"]
        assert "must start with https:// or http://127.0.0.1:" in problem["message"]
        assert "10.96.0.1" not in problem["message"]  # the URL itself is never quoted
        theirs = provision(kubectl, mine, catalog["tiny"])
        wait_ready(kubectl, theirs, mine)
        platform_seen = wait_for(
            lambda: about([d for d in hooks.received() if d.path.startswith("/platform/")], theirs, "Ready"),
            timeout=60,
            what="the platform channel to hear about mallory's request (so delivery did run)",
        )
        assert platform_seen
        # Nothing about her request reached the victim's channels.
        assert about(hooks.received(team.slack), theirs) == []
        assert about(hooks.received(team.hook), theirs) == []
    finally:
        kubectl("delete", "environment", mine, "--ignore-not-found", "--wait=false")


def test_the_example_channels_validate(kubectl: Kubectl, operator: OperatorProcess) -> None:
    """examples/environment-notifications.yaml is what the README shows: the apiserver accepts it."""
    docs = list(
        yaml.safe_load_all(
            (Path(__file__).resolve().parents[2] / "examples" / "environment-notifications.yaml").read_text()
        )
    )
    environment = next(d for d in docs if d["kind"] == "Environment")
    environment["metadata"]["name"] = unique("example-notify")
    environment["spec"]["team"] = environment["metadata"]["name"]
    result = try_apply(kubectl, environment, "--dry-run=server")
    assert result.returncode == 0, result.stderr
