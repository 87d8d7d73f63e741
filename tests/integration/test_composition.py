"""Composition through the real operator: a ServiceRequest takes inputs from other requests' outputs
in its namespace, validated at admission, waits for its sources, is applied again when their outputs
change, and its sources cannot be deleted from under it. Sensitive outputs reach the consumer's run
only through its variable file: never its status, Events or the operator's log.

The `consumer` fixture module (tests/fixtures/modules/consumer) takes an `upstream` and a sensitive
`upstream_token` and outputs the token's digest, so the test proves the value arrived unseen.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from helpers import (
    API,
    Kubectl,
    OperatorProcess,
    apply_json,
    apply_ready,
    condition,
    get,
    make_environment,
    scrape_metrics,
    secret_values,
    service_request,
    tiny_golden_path,
    try_apply,
    unique,
    wait_for,
    wait_ready,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def catalog(kubectl: Kubectl, operator: OperatorProcess) -> Iterator[dict[str, str]]:
    tiny = apply_ready(kubectl, tiny_golden_path(unique("tiny-cp")))
    consumer = unique("consumer-cp")
    apply_ready(
        kubectl,
        {
            "apiVersion": API,
            "kind": "GoldenPath",
            "metadata": {"name": consumer},
            "spec": {
                "description": "A service that takes another request's endpoint and token.",
                "module": "consumer",
                "parameters": {"type": "object", "additionalProperties": False, "properties": {}},
                "outputs": [{"name": "endpoint"}, {"name": "token_digest"}],
            },
        },
    )
    yield {"tiny": tiny, "consumer": consumer}
    for name in (tiny, consumer):
        kubectl("delete", "goldenpath", name, "--ignore-not-found", "--wait=false")


@pytest.fixture(scope="module")
def environment(kubectl: Kubectl, catalog: dict[str, str]) -> Iterator[dict[str, str]]:
    team = unique("cteam")
    name = make_environment(kubectl, f"{team}-dev", team)
    yield {"name": name, "team": team}
    kubectl("delete", "environment", name, "--ignore-not-found", "--wait=true", "--timeout=240s")


def consumer(name: str, namespace: str, golden_path: str, **inputs: tuple[str, str]) -> dict[str, Any]:
    """A request of ``golden_path`` whose variables come from (source, output) pairs."""
    body = service_request(name, namespace, golden_path)
    body["spec"]["inputs"] = [
        {"variable": variable, "from": {"serviceRequest": source, "output": output}}
        for variable, (source, output) in inputs.items()
    ]
    return body


def member(team: str) -> tuple[str, str]:
    return "--as=alice", f"--as-group={team}"


def refused(kubectl: Kubectl, body: dict[str, Any], *phrases: str, who: tuple[str, ...] = ()) -> str:
    result = try_apply(kubectl, body, "--dry-run=server", *who)
    assert result.returncode != 0, f"admitted: {body}"
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr
    return result.stderr


def test_inputs_are_checked_at_admission(
    kubectl: Kubectl, operator: OperatorProcess, environment: dict[str, str], catalog: dict[str, str]
) -> None:
    env, team = environment["name"], environment["team"]
    db = unique("db")
    apply_json(kubectl, service_request(db, env, catalog["tiny"]))
    who = member(team)
    refused(
        kubectl,
        consumer("api", env, catalog["consumer"], upstream=(db, "password")),
        f"output password is not one golden path {catalog['tiny']} of ServiceRequest {db} declares "
        "(it declares: endpoint, token)",
        who=who,
    )
    refused(
        kubectl,
        consumer("api", env, catalog["consumer"], database_uri=(db, "endpoint")),
        f"the module of golden path {catalog['consumer']} has no variable database_uri (its variables: ",
        who=who,
    )
    refused(kubectl, consumer("api", env, catalog["consumer"], upstream=("api", "endpoint")), "from itself", who=who)
    # Inputs name requests of the same namespace only: there is no namespace field to point elsewhere.
    elsewhere = consumer("api", env, catalog["consumer"], upstream=(db, "endpoint"))
    elsewhere["spec"]["inputs"][0]["from"]["namespace"] = "another-team-dev"
    refused(kubectl, elsewhere, 'unknown field "spec.inputs[0].from.namespace"', who=who)

    # A source that does not exist yet is admitted (GitOps applies in any order), with a warning.
    a, b = unique("a"), unique("b")
    first = try_apply(kubectl, consumer(a, env, catalog["consumer"], upstream=(b, "endpoint")), *who)
    assert first.returncode == 0, first.stderr
    assert f"Warning: input upstream: ServiceRequest {b} does not exist yet; {a} waits until it exists" in first.stderr
    # ... but no cycle: b cannot consume a while a consumes b.
    refused(
        kubectl,
        consumer(b, env, catalog["consumer"], upstream=(a, "endpoint")),
        f"inputs form a cycle: {b} -> {a} -> {b}",
        who=who,
    )
    kubectl("delete", "servicerequest", a, "-n", env, "--wait=false")
    kubectl("delete", "servicerequest", db, "-n", env, "--wait=false")


def test_a_request_others_consume_cannot_be_deleted_before_them(
    kubectl: Kubectl, operator: OperatorProcess, environment: dict[str, str], catalog: dict[str, str]
) -> None:
    env, team = environment["name"], environment["team"]
    db, api, worker = unique("db"), unique("api"), unique("worker")
    apply_json(kubectl, service_request(db, env, catalog["tiny"]))
    for name in (api, worker):
        apply_json(kubectl, consumer(name, env, catalog["consumer"], upstream=(db, "endpoint")))
    for args in ((), member(team), ("--dry-run=server",)):
        denied = kubectl("delete", "servicerequest", db, "-n", env, *args, check=False)
        assert denied.returncode != 0
        assert f"ServiceRequest {db} is an input of {', '.join(sorted([api, worker]))} (their spec.inputs)" in (
            denied.stderr
        )
    assert get(kubectl, "servicerequest", db, "-n", env) is not None
    kubectl("delete", "servicerequest", api, worker, "-n", env, "--timeout=180s")
    kubectl("delete", "servicerequest", db, "-n", env, "--timeout=180s")
    assert get(kubectl, "servicerequest", db, "-n", env) is None


def test_a_consumer_waits_for_its_source_takes_its_outputs_unseen_and_follows_their_changes(
    kubectl: Kubectl, operator: OperatorProcess, environment: dict[str, str], catalog: dict[str, str]
) -> None:
    env = environment["name"]
    db, api = unique("db"), unique("api")
    # The consumer comes first (GitOps applies in any order): it waits, visibly.
    apply_json(
        kubectl, consumer(api, env, catalog["consumer"], upstream=(db, "endpoint"), upstream_token=(db, "token"))
    )
    waiting = wait_for(
        lambda: (
            (sr := get(kubectl, "servicerequest", api, "-n", env))
            and (sr.get("status") or {}).get("stage") == "WaitingForInputs"
            and sr
        ),
        timeout=60,
        what="the consumer to wait for its inputs",
    )
    ready = condition(waiting)
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "WaitingForInputs")
    assert f"waiting for input(s) from {db} (for upstream), {db} (for upstream_token)" in ready["message"]
    assert [(i["variable"], i["ready"]) for i in waiting["status"]["inputs"]] == [
        ("upstream", False),
        ("upstream_token", False),
    ]

    apply_json(kubectl, service_request(db, env, catalog["tiny"], size="small"))
    wait_ready(kubectl, db, env)
    consumed = wait_ready(kubectl, api, env)
    source = secret_values(kubectl, f"{db}-connection", env)
    delivered = secret_values(kubectl, f"{api}-connection", env)
    assert delivered["endpoint"] == f"consumer://{api}?upstream={source['endpoint']}"
    assert delivered["token_digest"] == hashlib.sha256(source["token"].encode()).hexdigest()  # it arrived
    assert all(i["ready"] and i["revision"] for i in consumed["status"]["inputs"])
    # ... and was never shown: not in the consumer's status, any Event of the namespace, or the log.
    events = kubectl("get", "events", "-n", env, "-o", "json").stdout
    for text in (json.dumps(consumed), events, operator.log_text()):
        assert source["token"] not in text

    # The source changes its outputs: the consumer is applied again with them.
    kubectl("patch", "servicerequest", db, "-n", env, "--type=merge", "-p", '{"spec":{"parameters":{"size":"large"}}}')
    wait_for(
        lambda: secret_values(kubectl, f"{api}-connection", env)["endpoint"].endswith(f"{db}.large.svc:8080"),
        timeout=180,
        what="the consumer to follow its source's new endpoint",
    )
    told = wait_for(
        lambda: [
            e["message"]
            for e in json.loads(
                kubectl("get", "events", "-n", env, f"--field-selector=involvedObject.name={api}", "-o", "json").stdout
            )["items"]
            if e["reason"] == "InputsChanged"
        ],
        timeout=30,
        what="an InputsChanged Event on the consumer",
    )
    assert told[0] == "a source's outputs changed: applying again with the new inputs"
    metrics = scrape_metrics(operator)
    assert f'blacktop_input_reapplies_total{{golden_path="{catalog["consumer"]}"}} ' in metrics
    # Deleting the environment destroys the consumer before its source (the source's finalizer waits).
    kubectl("delete", "servicerequest", api, "-n", env, "--wait=false")
    wait_for(lambda: get(kubectl, "servicerequest", api, "-n", env) is None, timeout=180, what="the consumer to go")
    kubectl("delete", "servicerequest", db, "-n", env, "--timeout=180s")


def test_another_team_cannot_consume_this_teams_outputs(
    kubectl: Kubectl, operator: OperatorProcess, environment: dict[str, str], catalog: dict[str, str]
) -> None:
    env = environment["name"]
    db = unique("db")
    apply_json(kubectl, service_request(db, env, catalog["tiny"]))
    wait_ready(kubectl, db, env)
    theirs = unique("mteam")
    mallory = ("--as=mallory", f"--as-group={theirs}")
    # Not in the team's namespace (RBAC) ...
    into = try_apply(kubectl, consumer("steal", env, catalog["consumer"], upstream=(db, "token")), *mallory)
    assert into.returncode != 0
    assert "forbidden" in into.stderr.lower()
    # ... and from her own namespace the name resolves there: her request waits, and never sees the value.
    other = make_environment(kubectl, f"{theirs}-dev", theirs)
    try:
        wait_for(
            lambda: (
                kubectl(
                    "auth",
                    "can-i",
                    "create",
                    "servicerequests.platform.blacktop.dev",
                    "-n",
                    other,
                    *mallory,
                    check=False,
                ).stdout.strip()
                == "yes"
            ),
            timeout=30,
            what="mallory's team to manage requests in its namespace",
        )
        mine = try_apply(kubectl, consumer("steal", other, catalog["consumer"], upstream=(db, "token")), *mallory)
        assert mine.returncode == 0, mine.stderr
        assert f"ServiceRequest {db} does not exist yet" in mine.stderr
        waiting = wait_for(
            lambda: (
                (sr := get(kubectl, "servicerequest", "steal", "-n", other))
                and (sr.get("status") or {}).get("stage") == "WaitingForInputs"
                and sr
            ),
            timeout=60,
            what="mallory's request to wait for a source of its own namespace",
        )
        assert waiting["status"]["inputs"][0]["ready"] is False
        assert get(kubectl, "secret", "steal-connection", "-n", other) is None
        token = secret_values(kubectl, f"{db}-connection", env)["token"]
        assert token not in json.dumps(waiting)
    finally:
        kubectl("delete", "environment", other, "--ignore-not-found", "--wait=false")
        kubectl("delete", "servicerequest", db, "-n", env, "--wait=false")
