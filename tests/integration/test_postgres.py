"""The postgres-database golden path against a real PostgreSQL server started by the tests.

A request goes Ready and its Secret's credentials work; a parameter change re-applies; deletion
drops the role, the database, the state Secret and its lock; an outage of the server is reported as
ProviderError and recovers by itself; drift made out of band is detected and corrected; a lock
taken by someone else is reported and never broken; no secret value leaks into the operator's log,
Events or status.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import (
    REPO,
    Kubectl,
    OperatorProcess,
    apply_json,
    as_user,
    condition,
    environment_body,
    event_reasons,
    get,
    make_environment,
    scrape_metrics,
    secret_values,
    service_request,
    try_apply,
    unique,
    wait_for,
    wait_ready,
    wait_reason,
)
from pgserver import PostgresServer

pytestmark = pytest.mark.integration

OPERATOR_NS = "blacktop-system"
# Secret values and operator logs seen by the tests of this module; the canary test greps for them.
SEEN_SECRETS: list[str] = []
OPERATOR_LOGS: list[Path] = []
GOLDEN_PATH = "postgres-database"
DRIFTING = "postgres-database-drift"
REPORTING = "postgres-database-report"


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.remove()


@pytest.fixture(scope="module")
def pg_catalog(kubectl: Kubectl, operator: OperatorProcess, postgres: PostgresServer) -> Iterator[str]:
    """The example golden path, its credentials Secret pointing at the test server, and a variant
    that checks for drift every few seconds."""
    secret = yaml.safe_load((REPO / "examples" / "postgres-admin-secret.yaml").read_text())
    secret["stringData"] = postgres.env
    apply_json(kubectl, secret)
    golden = yaml.safe_load((REPO / "examples" / "goldenpath-postgres.yaml").read_text())
    apply_json(kubectl, golden)
    drifting = json.loads(json.dumps(golden))
    drifting["metadata"]["name"] = DRIFTING
    drifting["spec"]["driftCheckInterval"] = "3s"
    drifting["spec"]["driftPolicy"] = "Correct"
    apply_json(kubectl, drifting)
    drifting["metadata"]["name"] = REPORTING
    drifting["spec"]["driftPolicy"] = "Report"
    apply_json(kubectl, drifting)
    for name in (GOLDEN_PATH, DRIFTING, REPORTING):
        kubectl("wait", "--for=condition=Ready", f"goldenpath/{name}", "--timeout=60s")
    yield GOLDEN_PATH
    for name in (GOLDEN_PATH, DRIFTING, REPORTING):
        kubectl("delete", "goldenpath", name, "--ignore-not-found", "--wait=false")
    kubectl("delete", "secret", secret["metadata"]["name"], "-n", OPERATOR_NS, "--ignore-not-found")


@pytest.fixture(scope="module")
def environment(kubectl: Kubectl, pg_catalog: str) -> Iterator[str]:
    name = make_environment(kubectl, unique("pg-env"), "payments")
    yield name
    kubectl("delete", "environment", name, "--ignore-not-found", "--wait=true", "--timeout=180s")


def db_name(environment: str, database: str) -> str:
    """The module's name on the server: `<environment>__<database>` (see terraform-modules/postgres-database)."""
    name = f"{environment.replace('-', '_')}__{database}"
    return f"_{name}" if name.startswith("pg_") else name  # pg_ names are reserved


def patch_size(kubectl: Kubectl, name: str, namespace: str, size: str) -> None:
    patch = json.dumps({"spec": {"parameters": {"size": size}}})
    kubectl("patch", "servicerequest", name, "-n", namespace, "--type=merge", "-p", patch)


def sr_condition(kubectl: Kubectl, name: str, namespace: str, ctype: str = "Ready") -> dict[str, Any]:
    """The condition ``ctype`` of ServiceRequest ``namespace/name``, or {} while it has none."""
    return condition(get(kubectl, "servicerequest", name, "-n", namespace), ctype) or {}


def provision(
    kubectl: Kubectl, environment: str, prefix: str, golden_path: str = GOLDEN_PATH
) -> tuple[str, str, dict[str, Any]]:
    """Request a database under a fresh name and wait until it is Ready: (name, database, request)."""
    name = unique(prefix)
    apply_json(kubectl, service_request(name, environment, golden_path, database=name.replace("-", "_")))
    return name, db_name(environment, name.replace("-", "_")), wait_ready(kubectl, name, environment)


def delete_and_check_nothing_left(
    kubectl: Kubectl, postgres: PostgresServer, name: str, namespace: str, uid: str, database: str
) -> None:
    kubectl("delete", "servicerequest", name, "-n", namespace, "--timeout=180s")
    assert postgres.query(f"SELECT 1 FROM pg_database WHERE datname = '{database}'") == []
    assert postgres.query(f"SELECT 1 FROM pg_roles WHERE rolname = '{database}'") == []
    assert get(kubectl, "secret", f"tfstate-default-{uid}", "-n", OPERATOR_NS) is None
    assert get(kubectl, "lease", f"lock-tfstate-default-{uid}", "-n", OPERATOR_NS) is None


def test_database_is_provisioned_usable_updated_and_dropped(
    kubectl: Kubectl, environment: str, postgres: PostgresServer, operator: OperatorProcess
) -> None:
    name = unique("orders")
    database = db_name(environment, name.replace("-", "_"))
    started = time.monotonic()
    apply_json(kubectl, service_request(name, environment, GOLDEN_PATH, database=name.replace("-", "_"), size="small"))
    sr = wait_ready(kubectl, name, environment)
    print(
        f"postgres-database Ready in {time.monotonic() - started:.1f}s (lead time {sr['status']['leadTimeSeconds']}s)"
    )
    assert sr["status"]["plan"]["add"] == 3  # password, role, database
    assert sr["status"]["monthlyCost"] == "15.00"
    assert sr["status"]["outputs"] == ["database", "host", "password", "port", "uri", "username"]
    values = secret_values(kubectl, f"{name}-connection", environment)
    SEEN_SECRETS.append(values["password"])
    assert values["database"] == database
    assert values["username"] == database
    assert values["host"] == "127.0.0.1"
    assert values["port"] == str(postgres.port)

    # The application's view: log in with the delivered credentials and use the database.
    uri = values["uri"]
    assert values["password"] in uri
    rows = postgres.query(
        "CREATE TABLE orders (id int); INSERT INTO orders VALUES (7); "
        "SELECT current_user, current_database(), (SELECT sum(id) FROM orders)",
        uri=uri,
    )
    assert rows == [f"{database}|{database}|7"]
    assert postgres.query(f"SELECT rolconnlimit FROM pg_roles WHERE rolname = '{database}'") == ["10"]

    # A parameter change re-applies in place: same role and password, new limit.
    patch_size(kubectl, name, environment, "medium")
    wait_for(
        lambda: postgres.query(f"SELECT rolconnlimit FROM pg_roles WHERE rolname = '{database}'") == ["50"],
        timeout=180,
        what="the role's connection limit to follow size=medium",
    )
    updated = wait_ready(kubectl, name, environment)
    assert updated["status"]["monthlyCost"] == "60.00"
    assert updated["status"]["plan"]["change"] == 2
    assert updated["status"]["lastRun"]["lockId"]
    assert secret_values(kubectl, f"{name}-connection", environment)["password"] == values["password"]

    # The canaries: neither the admin's password nor the generated one leaks anywhere visible.
    visible = (
        operator.log_text()
        + json.dumps(updated)
        + kubectl("get", "events", "-A", "-o", "json").stdout
        + kubectl("get", "servicerequests", "-A", "-o", "yaml").stdout
    )
    for canary in (postgres.password, values["password"]):
        assert canary not in visible

    delete_and_check_nothing_left(kubectl, postgres, name, environment, sr["metadata"]["uid"], database)


def test_invalid_database_name_is_refused_before_any_run(
    kubectl: Kubectl, environment: str, postgres: PostgresServer
) -> None:
    """An injection attempt in a parameter never gets in: the schema's pattern refuses it at `kubectl apply`."""
    name = unique("badname")
    refused = try_apply(
        kubectl, service_request(name, environment, GOLDEN_PATH, database="Robert'); DROP TABLE students;--")
    )
    assert refused.returncode != 0
    assert "invalid parameters: parameters.database:" in refused.stderr
    assert get(kubectl, "servicerequest", name, "-n", environment) is None  # nothing to run, nothing to clean


def test_case01_no_parameter_sets_identity_and_no_team_takes_over_anothers_database(
    kubectl: Kubectl, environment: str, postgres: PostgresServer, pg_catalog: str
) -> None:
    """Issue 11, case 1: a member of another team, with a golden path whose schema admits any key,
    tries to become the payments request (its environment, namespace and name) and to fold their own
    names onto its database; they get their own database or a refusal, never the victim's."""
    victim, database, sr = provision(kubectl, environment, "orders")
    victim_uri = secret_values(kubectl, f"{victim}-connection", environment)["uri"]
    mark = postgres.query(f"SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = '{database}'")
    assert mark == [f"managed by blacktop for request {sr['metadata']['uid']}"]  # the uid, not chosen names
    open_path = json.loads(json.dumps(yaml.safe_load((REPO / "examples" / "goldenpath-postgres.yaml").read_text())))
    open_path["metadata"]["name"] = open_name = unique("pg-open")
    del open_path["spec"]["parameters"]["additionalProperties"]  # like the default schema: any key goes
    apply_json(kubectl, open_path)
    attacker = as_user("mallory", "other")
    # Their own environment, named so that the old `<environment>_<database>` names folded together.
    other_env = f"{environment}-orders"
    assert try_apply(kubectl, environment_body(other_env, "other"), *attacker).returncode == 0
    try:
        for ready in (f"environment/{other_env}", f"goldenpath/{open_name}"):
            kubectl("wait", "--for=condition=Ready", ready, "--timeout=50s")
        takeover = service_request(unique("mallory"), other_env, open_name, database=victim.replace("-", "_"))
        takeover["spec"]["parameters"].update(environment=environment, namespace=environment, name=victim)
        refused = try_apply(kubectl, takeover, *attacker)
        assert refused.returncode != 0
        assert "parameter(s) environment, name, namespace cannot be set: Blacktop passes" in refused.stderr
        # The fold: their `<environment>-orders` + `x<id>` against the victim's `<environment>` + `orders_x<id>`.
        victim2, part = unique("victim"), f"x{unique('db')[-6:]}"
        apply_json(kubectl, service_request(victim2, environment, GOLDEN_PATH, database=f"orders_{part}"))
        victim2_db = db_name(environment, f"orders_{part}")
        wait_ready(kubectl, victim2, environment)
        squat = unique("squat")
        assert (
            try_apply(kubectl, service_request(squat, other_env, open_name, database=part), *attacker).returncode == 0
        )
        wait_ready(kubectl, squat, other_env)
        theirs = secret_values(kubectl, f"{squat}-connection", other_env)
        assert theirs["database"] == db_name(other_env, part) != victim2_db
        for target in (database, victim2_db):  # the victim's databases stay the victim's roles', with their passwords
            assert postgres.query(f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{target}'") == [
                target
            ]
            as_owner = f"postgresql://{target}:{theirs['password']}@127.0.0.1:{postgres.port}/{target}"
            assert postgres.psql("SELECT 1", uri=as_owner, check=False).returncode != 0
        # Deleting their request drops only theirs; the victim's logins still work.
        kubectl("delete", "servicerequest", squat, "-n", other_env, "--timeout=180s")
        assert postgres.query("SELECT current_user", uri=victim_uri) == [database]
        victim2_uri = secret_values(kubectl, f"{victim2}-connection", environment)["uri"]
        assert postgres.query("SELECT current_database()", uri=victim2_uri) == [victim2_db]
        kubectl("delete", "servicerequest", victim2, "-n", environment, "--timeout=180s")
    finally:
        kubectl("delete", "environment", other_env, "--ignore-not-found", "--timeout=180s")
        kubectl("delete", "goldenpath", open_name, "--ignore-not-found", "--wait=false")
    delete_and_check_nothing_left(kubectl, postgres, victim, environment, sr["metadata"]["uid"], database)


def environment_cost(kubectl: Kubectl, environment: str, leftover: float) -> bool:
    """Whether the environment's status.cost is its requests' cost plus ``leftover`` (for the requests it has)."""
    cost = ((get(kubectl, "environment", environment) or {}).get("status") or {}).get("cost") or {}
    requests = json.loads(kubectl("get", "servicerequests", "-n", environment, "-o", "json").stdout)["items"]
    expected = leftover + sum(float((r.get("status") or {}).get("monthlyCost") or 0) for r in requests)
    return cost.get("monthly") == f"{expected:.2f}" and cost.get("serviceRequests") == len(requests)


def test_case04_state_left_by_a_stripped_finalizer_is_destroyed_and_counted_until_then(
    kubectl: Kubectl, environment: str, postgres: PostgresServer, operator: OperatorProcess
) -> None:
    """Issue 11, case 4: a tenant strips the finalizer of their own request while its destroy cannot run.
    The leftover state is reported (Event, metric) with its cost still counted, then destroyed."""
    member = as_user("alice@payments", "payments")
    name, database, sr = provision(kubectl, environment, "orphan")
    uid = sr["metadata"]["uid"]
    series = f'blacktop_leftover_states{{golden_path="{GOLDEN_PATH}",reason="orphaned"}} 1.0'
    postgres.stop()
    try:
        kubectl("delete", "servicerequest", name, "-n", environment, "--wait=false", *member)
        wait_reason(kubectl, name, environment, "ProviderError", timeout=120, interval=0.5)
        strip = '[{"op":"remove","path":"/metadata/finalizers"}]'
        kubectl("patch", "servicerequest", name, "-n", environment, "--type=json", "-p", strip, *member)
        wait_for(lambda: get(kubectl, "servicerequest", name, "-n", environment) is None, timeout=30, what="it to go")
        assert get(kubectl, "secret", f"tfstate-default-{uid}", "-n", OPERATOR_NS) is not None
        wait_for(
            lambda: "LeftoverNotDestroyed" in event_reasons(kubectl, name, environment),
            timeout=60,
            what="the leftover to be reported",
        )
        wait_for(lambda: series in scrape_metrics(operator), timeout=30, what=series)
        # Its cost still counts against the environment's budget, beside what the remaining requests cost.
        wait_for(lambda: environment_cost(kubectl, environment, 15), timeout=60, what="the leftover's cost counted")
    finally:
        postgres.start()
    wait_for(
        lambda: get(kubectl, "secret", f"tfstate-default-{uid}", "-n", OPERATOR_NS) is None,
        timeout=180,
        what="the leftover state to be destroyed",
    )
    assert "LeftoverDestroyed" in event_reasons(kubectl, name, environment)
    assert postgres.query(f"SELECT 1 FROM pg_database WHERE datname = '{database}'") == []
    assert postgres.query(f"SELECT 1 FROM pg_roles WHERE rolname = '{database}'") == []
    assert get(kubectl, "lease", f"lock-tfstate-default-{uid}", "-n", OPERATOR_NS) is None
    wait_for(lambda: series not in scrape_metrics(operator), timeout=30, what="the leftover gauge to clear")
    wait_for(lambda: environment_cost(kubectl, environment, 0), timeout=60, what="the environment's cost to drop")


def test_server_outage_is_a_provider_error_and_recovers_by_itself(
    kubectl: Kubectl, environment: str, postgres: PostgresServer
) -> None:
    name, database, sr = provision(kubectl, environment, "outage")
    postgres.stop()
    try:
        patch_size(kubectl, name, environment, "large")
        ready = wait_reason(kubectl, name, environment, "ProviderError", timeout=120, interval=0.5)
        assert ready["status"] == "False"
        assert "could not connect to PostgreSQL" in ready["message"]
        assert "connection refused" in ready["message"]
        assert postgres.password not in ready["message"]
        assert "ProviderError" in event_reasons(kubectl, name, environment)
        failed = get(kubectl, "servicerequest", name, "-n", environment)
        assert (condition(failed, "Reconciling") or {}).get("status") == "True"  # retrying by itself, not stalled
    finally:
        postgres.start()
    wait_ready(kubectl, name, environment, timeout=120)  # the next retry (backoff <= 10 s) succeeds
    assert postgres.query(f"SELECT rolconnlimit FROM pg_roles WHERE rolname = '{database}'") == ["200"]
    delete_and_check_nothing_left(kubectl, postgres, name, environment, sr["metadata"]["uid"], database)


def test_drift_made_out_of_band_is_detected_and_corrected(
    kubectl: Kubectl, environment: str, postgres: PostgresServer
) -> None:
    name, database, sr = provision(kubectl, environment, "drift", DRIFTING)
    wait_for(
        lambda: sr_condition(kubectl, name, environment, "Drifted").get("reason") == "NoChanges",
        timeout=60,
        what="a first drift check that finds nothing",
    )
    # Someone drops the database by hand.
    postgres.psql(f'DROP DATABASE "{database}" WITH (FORCE)')
    wait_for(
        lambda: {"DriftDetected", "DriftCorrected"} <= event_reasons(kubectl, name, environment),
        timeout=90,
        what="DriftDetected and DriftCorrected events",
    )
    assert postgres.query(f"SELECT 1 FROM pg_database WHERE datname = '{database}'") == ["1"]
    drifted = sr_condition(kubectl, name, environment, "Drifted")
    assert drifted["status"] == "False"
    assert drifted["reason"] in {"DriftCorrected", "NoChanges"}
    values = secret_values(kubectl, f"{name}-connection", environment)
    assert postgres.query("SELECT current_database()", uri=values["uri"]) == [database]
    delete_and_check_nothing_left(kubectl, postgres, name, environment, sr["metadata"]["uid"], database)


def test_drift_correction_is_judged_by_the_plan_stage_guardrails(
    kubectl: Kubectl, environment: str, postgres: PostgresServer
) -> None:
    name, database, sr = provision(kubectl, environment, "frozen", DRIFTING)
    policy = unique("freeze")
    apply_json(
        kubectl,
        {
            "apiVersion": "platform.blacktop.dev/v1alpha1",
            "kind": "GuardrailPolicy",
            "metadata": {"name": policy},
            "spec": {
                "mode": "Enforce",
                "match": {"goldenPaths": [DRIFTING]},
                "rules": [
                    {
                        "name": "no-changes-when-frozen",
                        "stage": "Plan",
                        "expression": "!(has(object.metadata.labels) && 'frozen' in object.metadata.labels)",
                        "message": "{{ object.metadata.name }} is frozen",
                    }
                ],
            },
        },
    )
    try:
        kubectl("wait", "--for=condition=Ready", f"guardrailpolicy/{policy}", "--timeout=60s")
        kubectl("label", "servicerequest", name, "-n", environment, "frozen=yes")
        postgres.psql(f'DROP DATABASE "{database}" WITH (FORCE)')
        drifted = wait_for(
            lambda: (
                (c := sr_condition(kubectl, name, environment, "Drifted")) and "not corrected" in c["message"] and c
            ),
            timeout=90,
            what="the drift to be reported and its correction refused",
        )
        assert drifted["status"] == "True"
        assert f"denied by GuardrailPolicy {policy}/no-changes-when-frozen: {name} is frozen" in drifted["message"]
        compliant = sr_condition(kubectl, name, environment, "PolicyCompliant")
        assert (compliant["status"], compliant["reason"]) == ("False", "PolicyDenied")
        assert "PolicyDenied" in event_reasons(kubectl, name, environment)
        assert postgres.query(f"SELECT 1 FROM pg_database WHERE datname = '{database}'") == []  # nothing applied
    finally:
        kubectl("delete", "guardrailpolicy", policy, "--ignore-not-found")
    # Without the policy the next check corrects the drift.
    wait_for(
        lambda: "DriftCorrected" in event_reasons(kubectl, name, environment),
        timeout=90,
        what="the drift to be corrected once the policy is gone",
    )
    assert postgres.query(f"SELECT 1 FROM pg_database WHERE datname = '{database}'") == ["1"]
    delete_and_check_nothing_left(kubectl, postgres, name, environment, sr["metadata"]["uid"], database)


def test_drift_is_only_reported_when_the_policy_says_report(
    kubectl: Kubectl, environment: str, postgres: PostgresServer, operator: OperatorProcess
) -> None:
    name, database, sr = provision(kubectl, environment, "report", REPORTING)
    postgres.psql(f'ALTER ROLE "{database}" CONNECTION LIMIT 99')  # changed by hand
    drifted = wait_for(
        lambda: (c := sr_condition(kubectl, name, environment, "Drifted")) and c["status"] == "True" and c,
        timeout=60,
        what="Drifted=True",
    )
    assert drifted["reason"] == "DriftDetected"
    assert "postgresql_role.app" in drifted["message"]
    assert "DriftDetected" in event_reasons(kubectl, name, environment)
    first = get(kubectl, "servicerequest", name, "-n", environment)
    assert first is not None
    wait_for(
        lambda: (
            (get(kubectl, "servicerequest", name, "-n", environment) or {})["status"]["lastDriftCheckTime"]
            != first["status"]["lastDriftCheckTime"]
        ),
        timeout=60,
        what="another drift check",
    )
    assert postgres.query(f"SELECT rolconnlimit FROM pg_roles WHERE rolname = '{database}'") == ["99"]
    assert "DriftCorrected" not in event_reasons(kubectl, name, environment)
    assert sr_condition(kubectl, name, environment)["status"] == "True"  # still Ready
    # A restart does not correct it either: the request is resumed as it is, without an apply.
    offset = len(operator.log_text())
    operator.stop()
    operator.start()
    wait_for(
        lambda: f"{environment}/{name} is up to date" in operator.log_text()[offset:],
        timeout=90,
        what="the restarted operator to resume the request",
    )
    checked = (get(kubectl, "servicerequest", name, "-n", environment) or {})["status"]["lastDriftCheckTime"]
    wait_for(
        lambda: (
            (get(kubectl, "servicerequest", name, "-n", environment) or {})["status"]["lastDriftCheckTime"] != checked
        ),
        timeout=60,
        what="a drift check after the restart",
    )
    after = get(kubectl, "servicerequest", name, "-n", environment)
    assert after is not None
    assert after["status"]["lastRun"]["operation"] == "drift"  # no apply since the restart
    assert postgres.query(f"SELECT rolconnlimit FROM pg_roles WHERE rolname = '{database}'") == ["99"]
    assert "DriftCorrected" not in event_reasons(kubectl, name, environment)
    delete_and_check_nothing_left(kubectl, postgres, name, environment, sr["metadata"]["uid"], database)


def empty_state(kubectl: Kubectl, uid: str) -> None:
    """Empty the request's state, as a run that died after CREATE and before saving its state leaves it."""
    secret = get(kubectl, "secret", f"tfstate-default-{uid}", "-n", OPERATOR_NS)
    assert secret is not None
    state = json.loads(gzip.decompress(base64.b64decode(secret["data"]["tfstate"])))
    state.update(resources=[], outputs={}, serial=state["serial"] + 1)
    secret["data"]["tfstate"] = base64.b64encode(gzip.compress(json.dumps(state).encode())).decode()
    kubectl("replace", "-f", "-", input=json.dumps(secret))


def test_leftovers_of_an_interrupted_run_are_adopted_and_strangers_refused(
    kubectl: Kubectl, environment: str, postgres: PostgresServer
) -> None:
    # A run created the role and the database (marked with the request's uid), then died before saving
    # its state: the next run finds them, sees its own mark and adopts them.
    name, database, sr = provision(kubectl, environment, "leftover")
    uid = sr["metadata"]["uid"]
    assert postgres.query(f"SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = '{database}'") == [
        f"managed by blacktop for request {uid}"
    ]
    before = secret_values(kubectl, f"{name}-connection", environment)["password"]
    empty_state(kubectl, uid)
    patch_size(kubectl, name, environment, "medium")
    wait_for(
        lambda: (
            state_resources(kubectl, uid) == ["postgresql_database.app", "postgresql_role.app", "random_password.role"]
        ),
        timeout=180,
        what="the next run to adopt the role and database into the state",
    )
    wait_ready(kubectl, name, environment)
    assert postgres.query(f"SELECT count(*) FROM pg_roles WHERE rolname LIKE '{database}%'") == ["1"]
    uri = secret_values(kubectl, f"{name}-connection", environment)["uri"]
    assert before not in uri  # a new password, set on the adopted role
    assert postgres.query("SELECT current_user", uri=uri) == [database]  # the password is the new one
    delete_and_check_nothing_left(kubectl, postgres, name, environment, uid, database)

    # A role of the same name that Blacktop did not make is never taken over.
    name = unique("stranger")
    database = db_name(environment, name.replace("-", "_"))
    postgres.psql(f"CREATE ROLE \"{database}\" LOGIN PASSWORD 'theirs'")
    try:
        apply_json(kubectl, service_request(name, environment, GOLDEN_PATH, database=name.replace("-", "_")))
        failed = wait_reason(kubectl, name, environment, "ApplyFailed", timeout=120, interval=0.5)
        assert "already exists and is not managed by this configuration" in " ".join(failed["message"].split())
        kubectl("delete", "servicerequest", name, "-n", environment, "--timeout=180s")
        assert postgres.query(f"SELECT count(*) FROM pg_roles WHERE rolname = '{database}'") == ["1"]  # untouched
    finally:
        postgres.psql(f'DROP ROLE IF EXISTS "{database}"')


def test_a_lock_held_by_someone_else_is_reported_and_never_broken(
    kubectl: Kubectl, environment: str, postgres: PostgresServer
) -> None:
    name, database, sr = provision(kubectl, environment, "locked")
    uid = sr["metadata"]["uid"]
    lease_name = f"lock-tfstate-default-{uid}"
    lease = get(kubectl, "lease", lease_name, "-n", OPERATOR_NS)
    assert lease is not None
    assert not lease["spec"].get("holderIdentity")  # released after the run
    # A person runs `tofu apply` against the same state by hand and holds its lock.
    foreign = {"ID": "f0f0f0f0-0000-4000-8000-000000000001", "Who": "alice@laptop", "Operation": "OperationTypeApply"}
    lease["metadata"].setdefault("annotations", {})["app.terraform.io/lock-info"] = json.dumps(foreign)
    lease["spec"]["holderIdentity"] = foreign["ID"]
    kubectl("replace", "-f", "-", input=json.dumps(lease))

    patch_size(kubectl, name, environment, "medium")
    ready = wait_reason(kubectl, name, environment, "StateLocked", timeout=60, interval=0.5)
    assert "alice@laptop" in ready["message"]
    assert foreign["ID"] in ready["message"]
    assert "StateLocked" in event_reasons(kubectl, name, environment)
    held = get(kubectl, "lease", lease_name, "-n", OPERATOR_NS)
    assert held is not None
    assert held["spec"]["holderIdentity"] == foreign["ID"]  # reported, not broken
    assert "StateLockRecovered" not in event_reasons(kubectl, name, environment)

    # Alice is done: the next retry goes through.
    held["spec"].pop("holderIdentity")
    held["metadata"]["annotations"].pop("app.terraform.io/lock-info")
    kubectl("replace", "-f", "-", input=json.dumps(held))
    wait_ready(kubectl, name, environment, timeout=120)
    assert postgres.query(f"SELECT rolconnlimit FROM pg_roles WHERE rolname = '{database}'") == ["50"]
    delete_and_check_nothing_left(kubectl, postgres, name, environment, uid, database)


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (tofu runs in its own session, but it is still a child)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += children
        frontier = children
    return found


def command_lines(pids: list[int]) -> list[str]:
    lines = []
    for pid in pids:
        try:
            lines.append((Path("/proc") / str(pid) / "cmdline").read_text().replace("\0", " "))
        except OSError:
            continue
    return lines


def crash(proc: OperatorProcess) -> None:
    """SIGKILL the operator and everything it started, at once: a node dying mid-run."""
    assert proc.proc is not None
    victims = [proc.proc.pid, *descendants(proc.proc.pid)]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    proc.proc.wait(timeout=30)


def state_resources(kubectl: Kubectl, uid: str) -> list[str]:
    secret = get(kubectl, "secret", f"tfstate-default-{uid}", "-n", OPERATOR_NS)
    assert secret is not None
    state = json.loads(gzip.decompress(base64.b64decode(secret["data"]["tfstate"])))
    return sorted(f"{r['type']}.{r['name']}" for r in state["resources"] if r["mode"] == "managed")


@pytest.mark.e2e
def test_operator_killed_during_apply_recovers_its_own_lock(
    kubectl: Kubectl,
    environment: str,
    postgres: PostgresServer,
    operator: OperatorProcess,
    installed: Path,
    modules_root: Path,
    tmp_path: Path,
) -> None:
    operator.stop()  # the session's operator would handle the request too: this test runs its own
    own = OperatorProcess(installed, tmp_path / "operator.log", env={"BLACKTOP_MODULES_ROOT": str(modules_root)})
    OPERATOR_LOGS.append(own.log_file)
    name = unique("crash")
    database = db_name(environment, name.replace("-", "_"))
    try:
        own.start()
        # A paused server accepts connections and never answers: the apply hangs in CREATE ROLE.
        postgres.pause()
        try:
            apply_json(kubectl, service_request(name, environment, GOLDEN_PATH, database=name.replace("-", "_")))

            def applying() -> dict[str, Any] | None:
                sr = get(kubectl, "servicerequest", name, "-n", environment)
                status = (sr or {}).get("status") or {}
                assert own.proc is not None
                in_apply = any(" apply " in f" {line} " for line in command_lines(descendants(own.proc.pid)))
                return sr if status.get("stage") == "Applying" and in_apply else None

            sr = wait_for(applying, timeout=120, interval=0.2, what="the apply to be running")
            crash(own)
        finally:
            postgres.resume()
        uid = sr["metadata"]["uid"]
        lock_id = sr["status"]["lastRun"]["lockId"]
        lease = get(kubectl, "lease", f"lock-tfstate-default-{uid}", "-n", OPERATOR_NS)
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == lock_id  # the dead run's lock is left behind

        started = time.monotonic()
        own.start()
        wait_ready(kubectl, name, environment, timeout=180)
        print(f"Ready {time.monotonic() - started:.1f}s after the restart")
        assert "StateLockRecovered" in event_reasons(kubectl, name, environment)
        lease = get(kubectl, "lease", f"lock-tfstate-default-{uid}", "-n", OPERATOR_NS)
        assert lease is not None
        assert not lease["spec"].get("holderIdentity")
        # No duplicates: one role, one database, each once in the state, and the Secret's password works.
        assert postgres.query(f"SELECT count(*) FROM pg_roles WHERE rolname LIKE '{database}%'") == ["1"]
        assert postgres.query(f"SELECT count(*) FROM pg_database WHERE datname LIKE '{database}%'") == ["1"]
        assert state_resources(kubectl, uid) == [
            "postgresql_database.app",
            "postgresql_role.app",
            "random_password.role",
        ]
        crashed = secret_values(kubectl, f"{name}-connection", environment)
        SEEN_SECRETS.append(crashed["password"])
        assert postgres.query("SELECT current_user", uri=crashed["uri"]) == [database]
        delete_and_check_nothing_left(kubectl, postgres, name, environment, uid, database)
    finally:
        own.stop()
        operator.start()


def test_no_secret_value_in_the_log_events_or_status(
    kubectl: Kubectl, environment: str, postgres: PostgresServer, operator: OperatorProcess
) -> None:
    """The canaries: the admin password the provider used, and every generated password (this test's
    own and those of the tests before it, failures included), appear in no log, Event or status."""
    name, database, sr = provision(kubectl, environment, "leak")
    values = secret_values(kubectl, f"{name}-connection", environment)
    canaries = [postgres.password, values["password"], *SEEN_SECRETS]
    assert all(len(c) >= 16 for c in canaries)
    assert values["password"] in values["uri"]  # the canary is real: it is where it belongs
    visible = {
        "operator log": operator.log_text() + "".join(p.read_text(errors="replace") for p in OPERATOR_LOGS),
        "events": kubectl("get", "events", "-A", "-o", "json").stdout,
        "status": kubectl("get", "servicerequests", "-A", "-o", "json").stdout,
        "golden paths": kubectl("get", "goldenpaths", "-o", "json").stdout,
    }
    for where, text in visible.items():
        for canary in canaries:
            assert canary not in text, f"a secret value leaked into the {where}"
    delete_and_check_nothing_left(kubectl, postgres, name, environment, sr["metadata"]["uid"], database)
