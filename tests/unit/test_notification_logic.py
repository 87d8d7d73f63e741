"""Notifications: which transitions are announced (once), what the bodies say and how they are signed,
and the dispatcher's queue, retries, backoff and bound (with a fake poster and resolver)."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from blacktop.api.notifications import ChannelType, NotificationChannel, NotificationEvent, parse_events
from blacktop.controllers.notifications import channel_problem
from blacktop.metrics.registry import Metrics, create_metrics
from blacktop.notifications import render
from blacktop.notifications.delivery import Dispatcher, Outcome, Target, request_for
from blacktop.notifications.notices import ENVIRONMENT, SERVICE_REQUEST, Memory, Notice

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def cond(ctype: str, status: str, reason: str, message: str = "", generation: int = 1) -> dict[str, Any]:
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": "2026-03-01T11:00:00Z",
    }


def request(stage: str, *conditions: dict[str, Any], generation: int = 1, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "db", "namespace": "pay-dev", "uid": "u1", "generation": generation},
        "spec": {"goldenPath": "tiny"},
        "status": {
            "stage": stage,
            "environment": "pay-dev",
            "observedGeneration": generation,
            "conditions": list(conditions),
            **status,
        },
    }


def ready(generation: int = 1) -> dict[str, Any]:
    return request(
        "Ready",
        cond("Ready", "True", "Provisioned", "tiny is ready; connection details in Secret db-connection", generation),
        generation=generation,
        connectionSecret="db-connection",
        outputs=["endpoint", "token"],
    )


def progressing(generation: int = 1) -> dict[str, Any]:
    return request(
        "Planning", cond("Ready", "False", "Progressing", "planning tiny", generation), generation=generation
    )


def failed(reason: str = "ApplyFailed", generation: int = 1, attempt: int = 1) -> dict[str, Any]:
    message = f"apply failed ({reason}, attempt {attempt}, next retry in 5s): boom"
    return request(
        "Failed", cond("Ready", "False", reason, message, generation), generation=generation, failures=attempt
    )


def events_of(memory: Memory, *bodies: dict[str, Any], kind: str = SERVICE_REQUEST) -> list[list[str]]:
    """The events announced after each body, in order."""
    return [[n.event.value for n in memory.observe(kind, body, NOW)] for body in bodies]


def test_first_sighting_is_a_baseline_and_a_resumed_operator_repeats_nothing() -> None:
    memory = Memory()
    # A restart sees a Ready request, re-verifies it (Progressing, then Ready again): no news.
    assert events_of(memory, ready(), progressing(), ready()) == [[], [], []]


def test_ready_once_per_generation_and_after_a_failure() -> None:
    memory = Memory()
    steps = events_of(
        memory,
        progressing(1),  # baseline
        ready(1),  # first Ready
        ready(1),  # a status write that changes nothing else
        progressing(2),  # a new spec
        failed("ApplyFailed", 2, 1),
        progressing(2),  # the retry
        failed("ApplyFailed", 2, 2),  # fails the same way: no news
        failed("ProviderError", 2, 3),  # fails differently: news
        ready(2),  # recovered
    )
    assert steps == [[], ["Ready"], [], [], ["Failed"], [], [], ["Failed"], ["Ready"]]


def test_failed_notice_carries_reason_message_and_attempt() -> None:
    memory = Memory()
    memory.observe(SERVICE_REQUEST, progressing(), NOW)
    [notice] = memory.observe(SERVICE_REQUEST, failed("StateLocked", attempt=3), NOW)
    assert notice.reason == "StateLocked"
    assert notice.summary == "ServiceRequest pay-dev/db (tiny) failed: StateLocked"
    assert "boom" in notice.message
    assert dict(notice.details)["attempt"] == "3"
    assert notice.environment == "pay-dev"


def test_awaiting_approval_once_per_digest_with_the_command() -> None:
    def awaiting(digest: str) -> dict[str, Any]:
        approval = {
            "operation": "apply",
            "state": "Pending",
            "planDigest": digest,
            "plan": "1 to add, 0 to change, 0 to destroy",
            "monthlyCost": "20.00",
            "rules": [{"policy": "prod", "rule": "needs-approval", "message": "prod needs a lead"}],
            "approvers": [{"kind": "Group", "name": "leads"}],
            "requestedAt": "2026-03-01T11:00:00Z",
            "command": f"blacktop approve -n pay-dev db --digest {digest}",
        }
        return request("AwaitingApproval", cond("Ready", "False", "AwaitingApproval", "waiting"), approval=approval)

    memory = Memory()
    steps = events_of(memory, progressing(), awaiting("sha256:a"), awaiting("sha256:a"), awaiting("sha256:b"))
    assert steps == [[], ["AwaitingApproval"], [], ["AwaitingApproval"]]
    memory = Memory()
    memory.observe(SERVICE_REQUEST, progressing(), NOW)
    [notice] = memory.observe(SERVICE_REQUEST, awaiting("sha256:a"), NOW)
    details = dict(notice.details)
    assert details["command"] == "blacktop approve -n pay-dev db --digest sha256:a"
    assert details["approvers"] == "Group leads"
    assert details["monthlyCost"] == "20.00"
    assert "prod/needs-approval" in notice.message


def test_drifted_when_the_condition_turns_true_only() -> None:
    drifted = ready()
    drifted["status"]["conditions"].append(cond("Drifted", "True", "DriftDetected", "1 to change"))
    corrected = ready()
    corrected["status"]["conditions"].append(cond("Drifted", "False", "DriftCorrected", "corrected"))
    memory = Memory()
    assert events_of(memory, ready(), drifted, drifted, corrected, drifted) == [
        [],
        ["Drifted"],
        [],
        [],
        ["Drifted"],
    ]


def environment(*conditions: dict[str, Any], monthly: str = "0.00", budget: str | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "pay-dev", "uid": "e1"},
        "spec": {"team": "pay", "tier": "dev"},
        "status": {
            "expiresAt": "2026-03-02T10:00:00Z",
            "conditions": list(conditions),
            "cost": {"monthly": monthly, "budget": budget, "currency": "EUR"},
        },
    }


def test_environment_expiring_and_budget_crossing_ninety_percent() -> None:
    expiring = cond("Expiring", "True", "ExpiringSoon", "the TTL runs out at 2026-03-02T10:00:00Z")
    memory = Memory()
    steps = events_of(
        memory,
        environment(monthly="10.00", budget="100"),
        environment(expiring, monthly="10.00", budget="100"),
        environment(expiring, monthly="89.99", budget="100"),
        environment(expiring, monthly="90.00", budget="100"),
        environment(expiring, monthly="95.00", budget="100"),
        environment(expiring, monthly="50.00", budget="100"),
        environment(expiring, monthly="99.00", budget="100"),
        kind=ENVIRONMENT,
    )
    assert steps == [[], ["Expiring"], [], ["BudgetNearlySpent"], [], [], ["BudgetNearlySpent"]]
    memory = Memory()
    memory.observe(ENVIRONMENT, environment(budget="100"), NOW)
    [notice] = memory.observe(ENVIRONMENT, environment(monthly="92.50", budget="100"), NOW)
    assert notice.summary == "Environment pay-dev has used 92% of its monthly budget"
    assert notice.team == "pay"
    # No budget, or a budget and no cost: never nearly spent.
    assert events_of(Memory(), environment(), environment(monthly="5.00"), kind=ENVIRONMENT) == [[], []]


def test_deleted_objects_are_forgotten() -> None:
    memory = Memory()
    memory.observe(SERVICE_REQUEST, progressing(), NOW)
    memory.observe(SERVICE_REQUEST, progressing(), NOW, deleted=True)
    assert memory.requests == {}
    # A re-created object (same uid is impossible, but a new first sighting) is a baseline again.
    assert memory.observe(SERVICE_REQUEST, ready(), NOW) == []


def test_notice_ids_are_stable_per_announcement() -> None:
    first, second = Memory(), Memory()
    for memory in (first, second):
        memory.observe(SERVICE_REQUEST, progressing(), NOW)
    [a] = first.observe(SERVICE_REQUEST, ready(), NOW)
    [b] = second.observe(SERVICE_REQUEST, ready(), NOW)
    assert a.id == b.id
    [c] = first.observe(SERVICE_REQUEST, failed(), NOW)
    assert c.id != a.id


# -- bodies and signatures --------------------------------------------------------------------------


def a_notice(event: NotificationEvent = NotificationEvent.READY, **details: str) -> Notice:
    return Notice(
        id="abc",
        event=event,
        kind=SERVICE_REQUEST,
        name="db",
        namespace="pay-dev",
        environment="pay-dev",
        reason="Provisioned",
        summary="ServiceRequest pay-dev/db (tiny) is Ready",
        message="tiny is ready <@channel> & more",
        time="2026-03-01T12:00:00Z",
        golden_path="tiny",
        team="pay",
        details=tuple(details.items()),
    )


def test_slack_body_escapes_markup_and_shows_the_approve_command() -> None:
    body = render.slack_body(a_notice(NotificationEvent.AWAITING_APPROVAL, command="blacktop approve -n pay-dev db"))
    assert "&lt;@channel&gt; &amp; more" in body["text"]  # never a mention or a link from a message
    assert "Approve with: `blacktop approve -n pay-dev db`" in body["text"]
    said = render.slack_body(
        replace(a_notice(NotificationEvent.AWAITING_APPROVAL, command="kubectl x"), message="approve with: kubectl x")
    )
    assert said["text"].count("kubectl x") == 1  # the command once, not twice
    assert body["blocks"][0]["text"]["text"] == body["text"]
    assert "team pay" in body["blocks"][1]["elements"][0]["text"]


def test_webhook_request_is_signed_and_verifiable() -> None:
    target = Target("pay-dev/hook", "team", ChannelType.WEBHOOK, "https://example.test/hook", "s3cret")
    payload, headers = request_for(a_notice(), target)
    document = json.loads(payload)
    assert document["apiVersion"] == "notifications.blacktop.dev/v1"
    assert document["event"] == "Ready"
    assert document["object"] == {"kind": "ServiceRequest", "namespace": "pay-dev", "name": "db"}
    assert headers[render.DELIVERY_HEADER] == "abc"
    assert render.verify("s3cret", payload, headers[render.SIGNATURE_HEADER])
    assert not render.verify("other", payload, headers[render.SIGNATURE_HEADER])
    assert not render.verify("s3cret", payload + b" ", headers[render.SIGNATURE_HEADER])
    # Neither the URL nor the key is in what is sent, nor in how a target prints.
    assert b"s3cret" not in payload
    assert b"example.test" not in payload
    assert "s3cret" not in repr(target)
    assert "example.test" not in repr(target)
    slack_payload, slack_headers = request_for(a_notice(), Target("c", "team", ChannelType.SLACK, "https://x/y"))
    assert render.SIGNATURE_HEADER not in slack_headers
    assert "text" in json.loads(slack_payload)


@pytest.mark.parametrize(
    ("channel_type", "values", "allowed", "problem"),
    [
        (ChannelType.SLACK, {"url": "https://hooks.example/x"}, ("https://",), None),
        (ChannelType.SLACK, {}, ("https://",), "has no key 'url'"),
        (ChannelType.SLACK, {"url": "http://10.0.0.1/x"}, ("https://",), "must start with https://"),
        (ChannelType.WEBHOOK, {"url": "https://h/x"}, ("https://",), "has no key 'hmacKey'"),
        (ChannelType.WEBHOOK, {"url": "https://h/x", "hmacKey": "k"}, ("https://",), None),
        (ChannelType.SLACK, {"url": "http://platform.internal/x"}, None, None),
        (ChannelType.SLACK, {"url": "file:///etc/passwd"}, None, "must start with https:// or http://"),
    ],
)
def test_channel_secret_problems(
    channel_type: ChannelType, values: dict[str, str], allowed: tuple[str, ...] | None, problem: str | None
) -> None:
    found = channel_problem(channel_type, values, allowed)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_channel_events_filter_and_parsing() -> None:
    channel = NotificationChannel.model_validate(
        {"name": "chat", "type": "Slack", "secretRef": {"name": "s"}, "events": ["Failed"]}
    )
    assert channel.wants(NotificationEvent.FAILED)
    assert not channel.wants(NotificationEvent.READY)
    assert NotificationChannel.model_validate({"name": "c", "type": "Webhook", "secretRef": {"name": "s"}}).wants(
        NotificationEvent.READY
    )
    assert parse_events("Ready, Failed,,Bogus") == ((NotificationEvent.READY, NotificationEvent.FAILED), ["Bogus"])


# -- the dispatcher ---------------------------------------------------------------------------------


class FakePoster:
    """Answers each channel from its script (then success), recording every attempt."""

    def __init__(self, *script: Outcome, **scripts: list[Outcome]) -> None:
        self.scripts = {name.replace("_", "-"): list(lines) for name, lines in scripts.items()}
        self.default = list(script)
        self.calls: list[tuple[str, bytes]] = []

    async def __call__(self, target: Target, payload: bytes, headers: dict[str, str]) -> Outcome:
        self.calls.append((target.name, payload))
        script = self.scripts.get(target.name, self.default)
        return script.pop(0) if script else Outcome(True, "HTTP 200")

    def count(self, target: Target) -> int:
        return [name for name, _ in self.calls].count(target.name)


def sample(metrics: Metrics, result: str, channel: str = "Slack", scope: str = "team") -> float:
    value = metrics.registry.get_sample_value(
        "blacktop_notifications_total",
        {"event": "Ready", "channel_type": channel, "scope": scope, "result": result},
    )
    return value or 0.0


SLACK = Target("pay-dev/chat", "team", ChannelType.SLACK, "https://hooks.example/T/B/secret")
HOOK = Target("platform-hook", "platform", ChannelType.WEBHOOK, "https://hooks.example/platform", "k")


def dispatcher(
    poster: FakePoster, metrics: Metrics, targets: list[Target], **options: Any
) -> tuple[Dispatcher, list[tuple[str, str]]]:
    given_up: list[tuple[str, str]] = []

    async def resolve(notice: Notice) -> tuple[Notice, list[Target]]:
        return notice, targets

    async def give_up(notice: Notice, target: Target, detail: str) -> None:
        given_up.append((target.name, detail))

    settings: dict[str, Any] = {
        "queue_size": 10,
        "workers": 2,
        "max_attempts": 3,
        "backoff": 0.01,
        "backoff_cap": 0.05,
        **options,
    }
    return Dispatcher(resolve, metrics, poster=poster, give_up=give_up, rng=random.Random(1), **settings), given_up


def run(scenario: Any) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(10):
            return await scenario()

    return asyncio.run(bounded())


def test_each_channel_gets_the_message_and_a_failing_one_is_retried_alone() -> None:
    metrics = create_metrics()
    # The platform webhook fails twice with 503, then answers; the team's Slack answers at once.
    poster = FakePoster(platform_hook=[Outcome(False, "HTTP 503", retryable=True)] * 2)

    async def scenario() -> list[tuple[str, str]]:
        d, given_up = dispatcher(poster, metrics, [SLACK, HOOK])
        d.start()
        assert d.submit(a_notice())
        await d.drained()
        await d.stop()
        return given_up

    assert run(scenario) == []
    assert poster.count(SLACK) == 1
    assert poster.count(HOOK) == 3
    assert sample(metrics, "delivered") == 1
    assert sample(metrics, "delivered", "Webhook", "platform") == 1
    assert metrics.registry.get_sample_value("blacktop_notification_retries_total", {"channel_type": "Webhook"}) == 2
    assert metrics.registry.get_sample_value("blacktop_notifications_queued") == 0


def test_gives_up_after_max_attempts_and_does_not_retry_a_refusal() -> None:
    metrics = create_metrics()
    poster = FakePoster(*[Outcome(False, "HTTP 500", retryable=True)] * 5)

    async def scenario() -> list[tuple[str, str]]:
        d, given_up = dispatcher(poster, metrics, [SLACK])
        d.start()
        d.submit(a_notice())
        await d.drained()
        await asyncio.sleep(0)  # the give-up report runs in its own task
        await d.stop()
        return given_up

    given_up = run(scenario)
    assert len(poster.calls) == 3
    assert given_up == [(SLACK.name, "HTTP 500 after 3 attempt(s)")]
    assert sample(metrics, "failed") == 1
    assert sample(metrics, "delivered") == 0

    metrics = create_metrics()
    poster = FakePoster(Outcome(False, "HTTP 404"))

    async def refused() -> list[tuple[str, str]]:
        d, given_up = dispatcher(poster, metrics, [SLACK])
        d.start()
        d.submit(a_notice())
        await d.drained()
        await asyncio.sleep(0)
        await d.stop()
        return given_up

    assert run(refused) == [(SLACK.name, "HTTP 404, not retried after 1 attempt(s)")]
    assert len(poster.calls) == 1


def test_the_queue_is_bounded_and_submit_never_blocks() -> None:
    metrics = create_metrics()

    async def scenario() -> list[bool]:
        d, _ = dispatcher(FakePoster(), metrics, [SLACK], queue_size=3)
        # Workers not started: nothing drains, so the fourth is dropped, at once.
        return [d.submit(a_notice()) for _ in range(4)]

    assert run(scenario) == [True, True, True, False]
    assert (
        metrics.registry.get_sample_value(
            "blacktop_notifications_total",
            {"event": "Ready", "channel_type": "none", "scope": "none", "result": "dropped"},
        )
        == 1
    )


def test_a_resolver_that_fails_is_retried_then_counted() -> None:
    metrics = create_metrics()
    attempts: list[int] = []

    async def scenario() -> None:
        async def resolve(notice: Notice) -> tuple[Notice, list[Target]]:
            attempts.append(1)
            if len(attempts) < 2:
                raise ConnectionError("apiserver away")
            return notice, [SLACK]

        poster = FakePoster()
        d = Dispatcher(
            resolve, metrics, queue_size=5, workers=1, max_attempts=3, backoff=0.01, backoff_cap=0.02, poster=poster
        )
        d.start()
        d.submit(a_notice())
        await d.drained()
        await d.stop()
        assert len(poster.calls) == 1

    run(scenario)
    assert len(attempts) == 2
    assert sample(metrics, "delivered") == 1


def test_backoff_doubles_is_capped_jittered_and_honours_retry_after() -> None:
    async def resolve(notice: Notice) -> tuple[Notice, list[Target]]:
        return notice, []

    d = Dispatcher(
        resolve,
        create_metrics(),
        queue_size=1,
        workers=1,
        max_attempts=9,
        backoff=2,
        backoff_cap=60,
        poster=FakePoster(),
        rng=random.Random(7),
    )
    for attempt, ceiling in [(1, 2), (2, 4), (3, 8), (5, 32), (6, 60), (9, 60)]:
        delay = d.delay(attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert d.delay(1, retry_after=7) == 7
    assert d.delay(1, retry_after=900) == 60
