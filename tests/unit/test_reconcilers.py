"""Every branch of the reconcilers, called directly on a fake client, fake runners and a fixed clock.

Each test builds its world through the real reconcilers (an Environment reconciled into its
namespace, a GoldenPath validated against its module on disk), then drives one reconciler and
checks status, Events, the state lock and what ran. ``@reaches(...)`` names the Reasons a test must
see written (in a condition or an Event); the last test checks that every Reason a controller can
set is reached by one of them. The integration tests prove the same paths against the real thing.
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from blacktop.api.common import format_time
from blacktop.api.conditions import Reason
from blacktop.api.scorecard import Metric
from blacktop.api.servicerequest import ServiceRequestStatus
from blacktop.controllers import (
    admission,
    budget,
    drift,
    environment,
    feedback,
    goldenpath,
    guardrailpolicy,
    history,
    rollout,
    scorecard,
)
from blacktop.controllers.context import Context
from blacktop.controllers.failures import Failure
from blacktop.controllers.slots import FairSlots
from blacktop.controllers.tracker import StatusTracker
from blacktop.controllers.upgrades import ProvisioningUpgrader
from blacktop.kube.errors import ForbiddenError, InvalidError, UnavailableError
from blacktop.kube.resources import (
    ENVIRONMENTS,
    GOLDENPATHS,
    GUARDRAILPOLICIES,
    PLATFORMSCORECARDS,
    SERVICEREQUESTS,
    resource_for,
)
from blacktop.metrics.registry import create_metrics
from blacktop.terraform import state as states
from blacktop.terraform.module import ModuleCache
from blacktop.terraform.sources import ModuleSources
from blacktop.terraform.subprocess_runner import SubprocessRunners
from blacktop.terraform.workspace import WorkspaceError
from fakes import LEASE, REPO, Harness, harness
from helpers import API, tiny_golden_path

pytestmark = pytest.mark.unit

NS = "payments-dev"
SECRET = resource_for("v1", "Secret")
NAMESPACE = resource_for("v1", "Namespace")
CRD = resource_for("apiextensions.k8s.io/v1", "CustomResourceDefinition")
CONFIGMAP = resource_for("v1", "ConfigMap")
JSON = dict[str, Any]
# What `tofu show -json` says of the tiny module's plan: one built-in resource to create.
TINY_PLAN: dict[str, Any] = {
    "resource_changes": [
        {
            "address": "terraform_data.service",
            "type": "terraform_data",
            "provider_name": "terraform.io/builtin/terraform",
            "change": {"actions": ["create"]},
        }
    ],
    "configuration": {"root_module": {"resources": [{"address": "terraform_data.service", "mode": "managed"}]}},
}
OUTPUTS = {"endpoint": ("tiny://db.small.svc:8080", False), "token": ("s3cr3t-t0ken", True)}
# Reasons a test reaches, by test name (filled by @reaches).
REACHED_BY: dict[str, tuple[str, ...]] = {}
# Reasons no controller sets; each says why.
NOT_SET_BY_CONTROLLERS = {
    Reason.BACKOFF_RETRYING: "reserved: a failed run reports its classified reason, its retry in the message",
}

Scenario = Callable[..., Awaitable[None]]


def reaches(*reasons: str, each: str | None = None) -> Callable[[Scenario], Callable[..., None]]:
    """Run the async test body on a fresh harness ``h``; afterwards each of ``reasons`` must have been
    written. A parametrized test names its parameter ``each``: every run must reach its own value."""

    def wrap(body: Scenario) -> Callable[..., None]:
        REACHED_BY[body.__name__] = reasons

        @functools.wraps(body)
        def test(h: Harness, **kwargs: Any) -> None:
            asyncio.run(body(h, **kwargs))
            expected = {kwargs[each]} if each else set(reasons)
            assert expected <= set(reasons)
            missing = expected - h.client.reached
            assert not missing, f"never written: {sorted(missing)} (written: {sorted(h.client.reached)})"

        return test

    return wrap


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    world = harness(tmp_path)
    world.runners.script.plan = json.loads(json.dumps(TINY_PLAN))
    world.runners.script.outputs = dict(OUTPUTS)
    return world


async def ready_world(h: Harness, **env: Any) -> str:
    """A Ready environment and the Ready `tiny` golden path; returns the namespace."""
    namespace = await h.environment(**env)
    await h.golden_path()
    return namespace


async def provisioned(h: Harness, name: str = "db", **parameters: Any) -> str:
    """A request of `tiny`, provisioned; returns its namespace."""
    namespace = await ready_world(h)
    h.request(name, namespace, size="small", **parameters)
    assert await h.reconcile(name, namespace) is None
    assert h.condition(name, namespace)["reason"] == Reason.PROVISIONED
    return namespace


def lease_holder(h: Harness, name: str, namespace: str) -> str | None:
    uid = h.body(name, namespace)["metadata"]["uid"]
    lease = h.client.stored(LEASE, f"lock-tfstate-default-{uid}", h.ctx.settings.namespace)
    return ((lease or {}).get("spec") or {}).get("holderIdentity")


def died_mid_apply(h: Harness, request: dict[str, Any]) -> None:
    """The operator was killed mid-apply: status recorded the run's lock (dead-lock), the Lease still holds it."""
    h.client.put({**request, "status": {"lastRun": {"id": "dead", "operation": "apply", "lockId": "dead-lock"}}})
    dead = states.LockInfo(id="dead-lock", operation="OperationTypeApply", who="blacktop@old", info="", created="")
    h.client.put(states.new_lease(states.state_of(h.ctx.settings.namespace, request["metadata"]["uid"]), dead))


def plan_policy(name: str, mode: str = "Enforce") -> dict[str, Any]:
    """A Plan-stage policy refusing plans that create terraform_data resources."""
    return {
        "apiVersion": API,
        "kind": "GuardrailPolicy",
        "metadata": {"name": name},
        "spec": {
            "mode": mode,
            "match": {"kinds": ["ServiceRequest"]},
            "rules": [
                {
                    "name": "no-placeholders",
                    "stage": "Plan",
                    "expression": "!plan.resource_changes.exists(c, c.type == 'terraform_data')",
                    "message": "{{ object.metadata.name }} would create placeholders",
                }
            ],
        },
    }


def bump_generation(h: Harness, name: str, namespace: str) -> None:
    """What a spec change does to the stored request: a new generation (the next reconcile runs)."""
    body = h.body(name, namespace)
    h.client.put({**body, "metadata": {**body["metadata"], "generation": int(body["metadata"]["generation"]) + 1}})


# -- provisioning ---------------------------------------------------------------------------------


@reaches(Reason.PROGRESSING, Reason.RECONCILED, Reason.PROVISIONED, Reason.MONITORING_UNAVAILABLE)
async def test_a_request_is_planned_applied_and_delivered_under_its_own_lock(h: Harness) -> None:
    namespace = await ready_world(h)
    h.request("db", namespace, size="small")
    h.clock.advance(42)  # the request waited 42 s before the operator got to it
    assert await h.reconcile("db", namespace) is None

    status = h.status("db", namespace)
    assert status["stage"] == "Ready"
    assert status["leadTimeSeconds"] == 42  # by the injected clock, from creationTimestamp
    assert status["firstReadyTime"] == format_time(h.clock.now)
    assert status["plan"] == {"add": 1, "change": 0, "destroy": 0, "resources": ["terraform_data.service"]}
    assert status["monthlyCost"] == "1.00"
    assert status["environment"] == namespace
    assert (status["connectionSecret"], status["outputs"]) == ("db-connection", ["endpoint", "token"])
    assert status["failures"] == 0
    assert status["observedGeneration"] == 1
    run = status["lastRun"]
    assert (run["operation"], run["result"]) == ("apply", "Succeeded")
    # Every operation ran under the lock the status recorded, and the lock is released afterwards. No
    # `show`: no Plan-stage rule reads the plan, and tiny calls no module (its own files were checked).
    assert h.runners.operations == ["init", "plan", "apply", "output"]
    assert {holder for _, holder in h.runners.calls} == {run["lockId"]}
    assert lease_holder(h, "db", namespace) is None
    assert h.ctx.held_locks == set()  # no longer busy: a leftover of this ID would be an orphan
    # The lock ID was on record before the lock was taken.
    verbs = [(verb, kind) for verb, kind, _ in h.client.calls]
    assert verbs.index(("merge_patch", "ServiceRequest")) < verbs.index(("create", "Lease"))
    # The module sees its declared variables only; the runner got the request's identity and state.
    target = h.runners.opened[0]
    assert dict(target.variables) == {"name": "db", "size": "small"}
    assert target.name == f"{namespace}-db-{h.body('db', namespace)['metadata']['uid'][:8]}"
    assert target.state.lock_lease == f"lock-tfstate-default-{h.body('db', namespace)['metadata']['uid']}"
    secret = h.client.stored(SECRET, "db-connection", namespace)
    assert secret is not None
    assert sorted(secret["data"]) == ["endpoint", "token"]
    assert ("Normal", "Provisioned") in [(t, r) for t, r, _ in h.client.events("db")]
    # Tiny declares no monitoring: nothing to report for the request (the environment's PodMonitor had no CRD).
    assert h.condition("db", namespace, "MonitoringConfigured") is None


def writes(h: Harness, name: str) -> int:
    """Status writes and Events about the request ``name`` so far."""
    return len([c for c in h.client.calls if c[0] == "merge_patch" and c[2] == name]) + len(h.client.events(name))


@reaches(Reason.PROVISIONED)
async def test_a_ready_request_with_unchanged_inputs_starts_no_run_and_writes_nothing(h: Harness) -> None:
    namespace = await provisioned(h)
    first = h.status("db", namespace)
    assert first["appliedDigest"]
    h.runners.calls.clear()
    before = writes(h, "db")
    for _ in range(3):  # resumed after restarts, resynced: nothing changed
        h.clock.advance(600)
        assert await h.reconcile("db", namespace) is None
    assert h.runners.operations == []
    assert h.runners.opened[1:] == []
    assert writes(h, "db") == before
    assert h.status("db", namespace) == first
    unchanged = h.ctx.metrics.registry.get_sample_value(
        "blacktop_reconciles_total", {"kind": "ServiceRequest", "outcome": "unchanged"}
    )
    assert unchanged == 3


@reaches(Reason.PROGRESSING, Reason.PROVISIONED)
async def test_a_ready_request_whose_golden_path_changed_is_re_verified_without_leaving_ready(h: Harness) -> None:
    namespace = await provisioned(h)
    first = h.status("db", namespace)
    golden = h.client.stored(GOLDENPATHS, "tiny")
    assert golden is not None
    golden["spec"]["description"] = "a new revision"
    h.client.put({**golden, "metadata": {**golden["metadata"], "generation": 2}})
    h.runners.script.changes = False  # the new revision changes nothing in the infrastructure
    h.runners.calls.clear()
    seen: list[tuple[str, str | None]] = []
    original = h.client.merge_patch

    async def watching(*args: Any, **kwargs: Any) -> Any:  # every status written on the way
        result = await original(*args, **kwargs)
        if result.get("kind") != "ServiceRequest":
            return result  # e.g. what a run records on the state Secret
        ready = next((c for c in result.get("status", {}).get("conditions", []) if c["type"] == "Ready"), None)
        seen.append(((ready or {}).get("status", ""), result["status"].get("stage")))
        return result

    h.client.merge_patch = watching  # type: ignore[method-assign]
    assert await h.reconcile("db", namespace) is None
    assert h.runners.operations == ["init", "plan", "output"]  # an empty plan is never applied
    assert {ready for ready, _ in seen} == {"True"}  # kstatus never saw it not Ready
    assert {stage for _, stage in seen} == {"Ready"}
    again = h.status("db", namespace)
    assert again["appliedDigest"] != first["appliedDigest"]
    assert again["plan"] == {"add": 0, "change": 0, "destroy": 0, "resources": []}
    assert h.condition("db", namespace, "Reconciling") is None
    assert again["lastRun"]["result"] == "Succeeded"
    assert all(t == "Normal" for t, _, _ in h.client.events("db"))
    h.runners.calls.clear()
    assert await h.reconcile("db", namespace) is None  # and now it is up to date
    assert h.runners.operations == []


@reaches(Reason.PROGRESSING, Reason.PROVISIONED)
async def test_a_spec_change_plans_again_and_progress_is_a_normal_event(h: Harness) -> None:
    namespace = await provisioned(h)
    body = h.body("db", namespace)
    h.client.put(
        {
            **body,
            "spec": {**body["spec"], "parameters": {"size": "large"}},
            "metadata": {**body["metadata"], "generation": 2},
        }
    )
    assert await h.reconcile("db", namespace) is None
    assert h.status("db", namespace)["observedGeneration"] == 2
    assert h.client.event_reasons("db").count(Reason.PROVISIONED) == 2  # every successful apply says so
    progress = [(t, r) for t, r, _ in h.client.events("db") if r == Reason.PROGRESSING]
    assert progress
    assert {t for t, _ in progress} == {"Normal"}  # routine work never pages anyone
    assert "Warning" not in {t for t, _, _ in h.client.events("db")}


@reaches(Reason.PLAN_FAILED, Reason.RETRIES_EXHAUSTED)
async def test_a_failing_run_backs_off_then_stalls_and_recovers_by_itself(h: Harness) -> None:
    namespace = await ready_world(h)
    h.request("db", namespace)
    limit = h.ctx.settings.max_failures_before_stalled
    for attempt in range(1, limit + 1):
        h.runners.fail("plan", "Error: Resource postcondition failed\n  the tiny service failed to start")
        failure = await h.reconcile("db", namespace)
        assert isinstance(failure, Failure)
        assert failure.reason == Reason.PLAN_FAILED
        status, ready = h.status("db", namespace), h.condition("db", namespace)
        assert ready is not None
        assert status["failures"] == attempt
        assert status["stage"] == "Failed"
        assert status["lastRun"]["result"] == "Failed"
        assert status["nextRetryTime"] == format_time(h.clock.now + timedelta(seconds=failure.delay))
        assert ready["reason"] == Reason.PLAN_FAILED
        assert f"plan failed (PlanFailed, attempt {attempt}, next retry in" in ready["message"]
        assert "the tiny service failed to start" in ready["message"]
        assert lease_holder(h, "db", namespace) is None  # released on failure too
        if attempt < limit:
            ceiling = min(300.0, 5.0 * 2 ** (attempt - 1))
            assert ceiling / 2 <= failure.delay <= ceiling  # capped exponential backoff, jittered
            assert h.condition("db", namespace, "Reconciling") is not None
        h.clock.advance(failure.delay)
    stalled = h.condition("db", namespace, "Stalled")
    assert stalled is not None
    assert (stalled["status"], stalled["reason"]) == ("True", Reason.RETRIES_EXHAUSTED)
    assert failure.delay == h.ctx.settings.stalled_retry_seconds  # still retried, slowly
    assert h.condition("db", namespace, "Reconciling") is None

    assert await h.reconcile("db", namespace) is None  # the cause went away
    status = h.status("db", namespace)
    assert (status["failures"], status.get("nextRetryTime")) == (0, None)
    assert h.condition("db", namespace, "Stalled") is None
    assert h.condition("db", namespace)["status"] == "True"


@pytest.mark.parametrize(
    ("operation", "stderr", "timed_out", "reason"),
    [
        ("apply", "Error: something odd", False, Reason.APPLY_FAILED),
        ("apply", "Error: dial tcp 127.0.0.1:5432: connect: connection refused", False, Reason.PROVIDER_ERROR),
        ("plan", "", True, Reason.TIMEOUT),
        ("plan", "Error: Invalid value for variable\n  on main.tf line 3", False, Reason.INVALID_PARAMETERS),
        ("init", "Error loading state: the state is already locked by another tofu client", False, Reason.STATE_LOCKED),
    ],
)
@reaches(
    Reason.APPLY_FAILED,
    Reason.PROVIDER_ERROR,
    Reason.TIMEOUT,
    Reason.STATE_LOCKED,
    Reason.INVALID_PARAMETERS,
    each="reason",
)
async def test_run_failures_carry_their_class(
    h: Harness, operation: str, stderr: str, timed_out: bool, reason: str
) -> None:
    namespace = await ready_world(h)
    h.request("db", namespace)
    h.runners.fail(operation, stderr, timed_out=timed_out)
    failure = await h.reconcile("db", namespace)
    assert isinstance(failure, Failure)
    assert failure.reason == reason
    ready = h.condition("db", namespace)
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", reason)
    assert ready["message"].startswith(f"{operation} failed ({reason}, attempt 1")
    assert h.runners.operations[-1] == operation  # nothing runs after a failed step
    assert h.condition("db", namespace, "Applied") is None


@reaches(Reason.STATE_LOCKED)
async def test_a_lock_held_by_someone_else_is_reported_and_never_broken(h: Harness) -> None:
    namespace = await ready_world(h)
    request = h.request("db", namespace)
    state = states.state_of(h.ctx.settings.namespace, request["metadata"]["uid"])
    alice = states.LockInfo(id="f0f0-1", operation="OperationTypeApply", who="alice@laptop", info="", created="")
    h.client.put(states.new_lease(state, alice))

    failure = await h.reconcile("db", namespace)
    assert isinstance(failure, Failure)
    assert failure.reason == Reason.STATE_LOCKED
    ready = h.condition("db", namespace)
    assert ready is not None
    assert "locking the state failed (StateLocked" in ready["message"]
    assert "the state is locked by alice@laptop (lock ID f0f0-1)" in ready["message"]
    assert "tofu force-unlock f0f0-1" in ready["message"]
    assert h.runners.operations == []  # nothing ran
    assert lease_holder(h, "db", namespace) == "f0f0-1"  # reported, not broken
    assert Reason.STATE_LOCK_RECOVERED not in h.client.event_reasons("db")
    assert ("Warning", Reason.STATE_LOCKED) in [(t, r) for t, r, _ in h.client.events("db")]

    lease = h.client.stored(LEASE, state.lock_lease, state.namespace)
    assert lease is not None
    h.client.put(states.unlocked(lease))  # alice is done
    assert await h.reconcile("db", namespace) is None


@reaches(Reason.STATE_LOCKED)
async def test_a_lock_a_run_of_this_process_holds_is_busy_not_orphaned(h: Harness) -> None:
    namespace = await ready_world(h)
    request = h.request("db", namespace)
    uid = request["metadata"]["uid"]
    ours = states.lock_for("running-1", "apply", uid, "r1")
    h.client.put(states.new_lease(states.state_of(h.ctx.settings.namespace, uid), ours))
    h.ctx.held_locks.add("running-1")  # e.g. a drift check of the same request, still running
    failure = await h.reconcile("db", namespace)
    assert isinstance(failure, Failure)
    assert failure.reason == Reason.STATE_LOCKED
    assert lease_holder(h, "db", namespace) == "running-1"


@reaches(Reason.STATE_LOCK_RECOVERED, Reason.PROVISIONED)
async def test_the_lock_of_a_run_that_died_is_taken_over(h: Harness) -> None:
    namespace = await ready_world(h)
    request = h.request("db", namespace)
    uid = request["metadata"]["uid"]
    died_mid_apply(h, request)

    assert await h.reconcile("db", namespace) is None
    assert lease_holder(h, "db", namespace) is None
    recovered = [m for _, r, m in h.client.events("db") if r == Reason.STATE_LOCK_RECOVERED]
    assert len(recovered) == 1
    assert "released state lock dead-lock left by an earlier run" in recovered[0]
    assert h.client.stored(SECRET, f"tfstate-default-{uid}", h.ctx.settings.namespace) is not None  # seeded


@reaches(Reason.ENVIRONMENT_NOT_FOUND)
async def test_a_request_outside_an_environment_is_stalled(h: Harness) -> None:
    await h.golden_path()
    h.client.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "plain"}})
    h.request("lost", "plain")
    assert await h.reconcile("lost", "plain") is None  # no retry: it waits for a change
    ready = h.condition("lost", "plain")
    assert ready is not None
    assert "does not belong to an Environment" in ready["message"]
    assert h.condition("lost", "plain", "Stalled") is not None
    assert h.status("lost", "plain")["stage"] == "Failed"
    assert h.runners.opened == []


@reaches(Reason.GOLDEN_PATH_NOT_FOUND, Reason.GOLDEN_PATH_NOT_READY)
async def test_a_missing_or_unready_golden_path_is_waited_for(h: Harness) -> None:
    namespace = await h.environment()
    h.request("ghost", namespace, "no-such-path")
    failure = await h.reconcile("ghost", namespace)
    assert isinstance(failure, Failure)
    assert (failure.reason, failure.delay) == (Reason.GOLDEN_PATH_NOT_FOUND, h.ctx.settings.dependency_retry_seconds)
    ready = h.condition("ghost", namespace)
    assert ready is not None
    assert "kubectl get goldenpaths" in ready["message"]
    assert h.condition("ghost", namespace, "Reconciling") is not None
    assert h.status("ghost", namespace)["stage"] == "Pending"

    broken = tiny_golden_path("broken")
    broken["spec"]["module"] = "no-such-module"
    await h.golden_path(broken)
    h.request("waits", namespace, "broken")
    failure = await h.reconcile("waits", namespace)
    assert isinstance(failure, Failure)
    assert failure.reason == Reason.GOLDEN_PATH_NOT_READY
    assert h.runners.opened == []


@reaches(Reason.TIER_NOT_ALLOWED)
async def test_a_golden_path_not_offered_in_the_tier_is_refused(h: Harness) -> None:
    namespace = await ready_world(h, name="payments-prod", tier="prod")  # tiny: dev and staging only
    h.request("db", namespace)
    assert await h.reconcile("db", namespace) is None
    ready = h.condition("db", namespace)
    assert ready is not None
    assert ready["message"] == "golden path 'tiny' is offered in tiers dev, staging, not in prod"
    assert h.condition("db", namespace, "Stalled") is not None
    assert h.runners.opened == []


@reaches(Reason.INVALID_PARAMETERS)
async def test_invalid_parameters_are_refused_before_any_run(h: Harness) -> None:
    namespace = await ready_world(h)
    h.request("bad", namespace, size="gigantic")
    assert await h.reconcile("bad", namespace) is None
    valid = h.condition("bad", namespace, "ParametersValid")
    assert valid is not None
    assert (valid["status"], valid["reason"]) == ("False", Reason.INVALID_PARAMETERS)
    assert "parameters.size" in valid["message"]
    assert "gigantic" in valid["message"]
    assert h.condition("bad", namespace)["reason"] == Reason.INVALID_PARAMETERS
    assert h.runners.opened == []


@reaches(Reason.INVALID_SPEC)
async def test_a_spec_the_schema_should_have_refused_is_stalled(h: Harness) -> None:
    namespace = await ready_world(h)
    body = h.request("odd", namespace)
    h.client.put({**body, "spec": {"goldenPath": "tiny", "surprise": True}})
    assert await h.reconcile("odd", namespace) is None
    ready = h.condition("odd", namespace)
    assert ready is not None
    assert ready["message"].startswith("spec is invalid")


@reaches(Reason.CREDENTIALS_NOT_FOUND)
async def test_missing_credentials_are_reported_before_any_lock(h: Harness) -> None:
    namespace = await h.environment()
    golden = tiny_golden_path("with-credentials")
    golden["spec"]["credentialsSecretRef"] = {"name": "pg-admin", "namespace": "blacktop-system"}
    await h.golden_path(golden)
    h.request("db", namespace, "with-credentials")
    failure = await h.reconcile("db", namespace)
    assert isinstance(failure, Failure)
    assert (failure.reason, failure.delay) == (Reason.CREDENTIALS_NOT_FOUND, h.ctx.settings.dependency_retry_seconds)
    assert "blacktop-system/pg-admin" in failure.message
    assert h.status("db", namespace)["lastRun"] is None  # no run began, no lock was taken
    assert h.runners.opened == []

    h.client.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "pg-admin", "namespace": "blacktop-system"},
            "data": {"PGPASSWORD": "aHVudGVyMg=="},
        }
    )
    assert await h.reconcile("db", namespace) is None
    assert dict(h.runners.opened[0].credentials) == {"PGPASSWORD": "hunter2"}


@reaches(Reason.MODULE_UNAVAILABLE)
async def test_a_module_that_vanished_is_reported(h: Harness) -> None:
    namespace = await h.environment()
    # Ready by an earlier operator's word, but its module is not (or no longer) on this operator's disk.
    golden = tiny_golden_path("vanished")
    golden["spec"]["module"] = "vanished"
    h.client.put(
        {
            **golden,
            "status": {
                "moduleDigest": "0" * 64,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "Reconciled",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ],
            },
        }
    )
    h.request("db", namespace, "vanished")
    failure = await h.reconcile("db", namespace)
    assert isinstance(failure, Failure)
    assert failure.reason == Reason.MODULE_UNAVAILABLE
    assert "not found" in failure.message
    assert "reading the module failed (ModuleUnavailable, attempt 1" in h.condition("db", namespace)["message"]
    assert h.status("db", namespace)["failures"] == 1
    assert ("Warning", Reason.MODULE_UNAVAILABLE) in [(t, r) for t, r, _ in h.client.events("db")]


@reaches()
async def test_the_module_is_parsed_once_per_digest(h: Harness) -> None:
    namespace = await ready_world(h)
    first = h.ctx.modules.inspect("tiny")
    for name in ("a", "b"):
        h.request(name, namespace)
        assert await h.reconcile(name, namespace) is None
    assert h.ctx.modules.inspect("tiny") is first  # the same parse: nothing was read again


# -- failures that are not the tool's ----------------------------------------------------------


@reaches(Reason.API_UNAVAILABLE, Reason.PROVISIONED)
async def test_an_api_server_outage_is_a_failed_attempt_retried_within_seconds_and_never_stalled(h: Harness) -> None:
    namespace = await ready_world(h)
    h.request("db", namespace)
    h.client.refuse("get", "Namespace", UnavailableError(0, "Unavailable", "ReadTimeoutError: read timed out"))
    cap = h.ctx.settings.infrastructure_backoff_cap_seconds
    for attempt in range(1, 9):  # longer than max_failures_before_stalled
        failure = await h.reconcile("db", namespace)
        assert isinstance(failure, Failure)
        assert failure.reason == Reason.API_UNAVAILABLE
        assert failure.delay <= cap  # back within seconds once the server is
        assert h.status("db", namespace)["failures"] == attempt
        h.clock.advance(failure.delay)
    ready = h.condition("db", namespace)
    assert ready is not None
    assert ready["reason"] == Reason.API_UNAVAILABLE
    assert "talking to the API server failed (ApiUnavailable, attempt 8" in ready["message"]
    assert h.condition("db", namespace, "Stalled") is None  # the operator's outage is not the request's fault
    assert h.client.event_reasons("db").count(Reason.API_UNAVAILABLE) == 1  # one Warning, not one per attempt
    del h.client.refusals[("get", "Namespace")]
    assert await h.reconcile("db", namespace) is None
    assert h.status("db", namespace)["failures"] == 0


@reaches()
async def test_when_the_failure_cannot_even_be_recorded_the_retry_is_soon(h: Harness) -> None:
    namespace = await ready_world(h)
    h.request("db", namespace)
    h.client.refuse("merge_patch", "ServiceRequest", UnavailableError(0, "Unavailable", "connection refused"))
    failure = await h.reconcile("db", namespace)
    assert isinstance(failure, Failure)
    assert failure.reason == Reason.API_UNAVAILABLE
    assert failure.delay <= h.ctx.settings.infrastructure_backoff_cap_seconds


@reaches(Reason.API_REJECTED)
async def test_a_call_the_api_server_refuses_is_reported_with_its_reason(h: Harness) -> None:
    namespace = await ready_world(h)
    h.request("db", namespace)
    h.client.refuse("apply", "Secret", ForbiddenError(403, "Forbidden", "secrets is forbidden", "PATCH", "/api/v1/..."))
    failure = await h.reconcile("db", namespace)
    assert isinstance(failure, Failure)
    assert failure.reason == Reason.API_REJECTED
    assert "secrets is forbidden" in h.condition("db", namespace)["message"]
    assert lease_holder(h, "db", namespace) is None  # the run ended, its lock released


@reaches(Reason.WORKSPACE_ERROR, Reason.PROVISIONED)
async def test_a_full_disk_is_a_workspace_error_and_recovers_within_seconds(h: Harness) -> None:
    namespace = await ready_world(h)
    h.request("db", namespace)
    for _ in range(3):
        h.runners.open_errors.append(WorkspaceError("cannot prepare the workspace /w/x: No space left on device"))
    for attempt in range(1, 4):
        failure = await h.reconcile("db", namespace)
        assert isinstance(failure, Failure)
        assert failure.reason == Reason.WORKSPACE_ERROR
        assert failure.delay <= h.ctx.settings.infrastructure_backoff_cap_seconds
        assert h.status("db", namespace)["failures"] == attempt
        h.clock.advance(failure.delay)
    ready = h.condition("db", namespace)
    assert ready is not None
    assert "preparing the workspace failed (WorkspaceError, attempt 3" in ready["message"]
    assert "No space left on device" in ready["message"]
    assert h.status("db", namespace)["lastRun"]["result"] == "Failed"
    assert lease_holder(h, "db", namespace) is None
    assert await h.reconcile("db", namespace) is None  # space was freed
    assert h.condition("db", namespace)["status"] == "True"


@reaches(Reason.WORKSPACE_ERROR)
async def test_the_real_runner_turns_an_os_error_of_the_workspace_into_a_workspace_error(
    h: Harness, tmp_path: Path
) -> None:
    """The subprocess runner on a workspace root it cannot create (a file is in the way): the OSError
    of the file system reaches status as WorkspaceError, before any tool starts."""
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("in the way")
    h.ctx.runners = SubprocessRunners.from_settings(
        h.ctx.settings.model_copy(update={"workspace_root": blocked}), kubeconfig=None
    )
    namespace = await ready_world(h)
    h.request("db", namespace)
    failure = await h.reconcile("db", namespace)
    assert isinstance(failure, Failure)
    assert failure.reason == Reason.WORKSPACE_ERROR
    assert f"cannot prepare the workspace {blocked}" in h.condition("db", namespace)["message"]


@reaches(Reason.INTERNAL_ERROR)
async def test_a_bug_is_reported_as_an_internal_error_not_swallowed(h: Harness) -> None:
    namespace = await ready_world(h)
    h.request("db", namespace)
    h.runners.open_errors.append(RuntimeError("boom"))
    failure = await h.reconcile("db", namespace)
    assert isinstance(failure, Failure)
    assert failure.reason == Reason.INTERNAL_ERROR
    message = h.condition("db", namespace)["message"]
    assert "unexpected RuntimeError: boom" in message
    assert h.status("db", namespace)["failures"] == 1


@reaches(Reason.API_UNAVAILABLE)
async def test_a_failed_re_verification_keeps_the_request_ready(h: Harness) -> None:
    namespace = await provisioned(h)
    golden = h.client.stored(GOLDENPATHS, "tiny")
    assert golden is not None
    h.client.put({**golden, "metadata": {**golden["metadata"], "generation": 5}})
    h.client.refuse("replace", "Lease", UnavailableError(0, "Unavailable", "connection reset"))
    failure = await h.reconcile("db", namespace)
    assert isinstance(failure, Failure)
    assert failure.reason == Reason.API_UNAVAILABLE
    assert h.condition("db", namespace)["status"] == "True"
    reconciling = h.condition("db", namespace, "Reconciling")
    assert reconciling is not None
    assert reconciling["reason"] == Reason.API_UNAVAILABLE
    assert ("Warning", Reason.API_UNAVAILABLE) in [(t, r) for t, r, _ in h.client.events("db")]


# -- fair run slots -------------------------------------------------------------------------------


@reaches(Reason.QUEUED, Reason.PROVISIONED)
async def test_a_run_waiting_for_a_slot_says_where_it_stands_and_other_teams_are_not_starved(
    h: Harness, tmp_path: Path
) -> None:
    world = harness(tmp_path, max_concurrent_runs=1)
    world.runners.script.plan = json.loads(json.dumps(TINY_PLAN))
    world.runners.script.outputs = dict(OUTPUTS)
    await world.golden_path()
    big = await world.environment("big-dev", "big")
    small = await world.environment("small-dev", "small")
    gate = asyncio.Event()
    order: list[str] = []
    for name in ("b1", "b2", "b3"):
        uid = world.request(name, big)["metadata"]["uid"]
        world.runners.gates[f"{big}-{name}-{uid[:8]}"] = gate
    uid = world.request("s1", small)["metadata"]["uid"]
    world.runners.gates[f"{small}-s1-{uid[:8]}"] = gate

    async def reconcile(name: str, namespace: str) -> None:
        assert await world.reconcile(name, namespace) is None
        order.append(name)

    tasks = [asyncio.create_task(reconcile(n, big)) for n in ("b1", "b2", "b3")]
    for _ in range(50):
        await asyncio.sleep(0)
    tasks.append(asyncio.create_task(reconcile("s1", small)))
    for _ in range(50):
        await asyncio.sleep(0)
    waiting = world.status("s1", small)
    assert waiting["stage"] == "Queued"
    assert waiting["queue"]["team"] == "small"
    assert waiting["queue"]["position"] == 1  # first of its team
    assert waiting["queue"]["ahead"] >= 1
    queued = world.condition("s1", small)
    assert queued is not None
    assert (queued["status"], queued["reason"]) == ("False", Reason.QUEUED)
    assert "waiting for a run slot" in queued["message"]
    assert world.status("b3", big)["queue"]["position"] == 2  # behind b2 in its team's queue
    gate.set()
    await asyncio.gather(*tasks)
    assert order.index("s1") < order.index("b3")  # the small team was not held back by the big one's burst
    assert all(world.status(n, ns).get("queue") is None for n, ns in (("b1", big), ("b3", big), ("s1", small)))
    assert ("Normal", Reason.QUEUED) in [(t, r) for t, r, _ in world.client.events("s1")]
    h.client.reached.update(world.client.reached)


def test_fair_slots_interleave_teams_and_cap_each() -> None:
    async def scenario() -> list[str]:
        slots = FairSlots(total=2, per_team=1)
        granted: list[str] = []

        async def run(team: str) -> None:
            await slots.acquire(team, slots.new_run())
            granted.append(team)
            await asyncio.sleep(0)
            slots.release(team)

        await asyncio.gather(*(run(t) for t in ["a"] * 4 + ["b"] * 2 + ["c"]))
        return granted

    granted = asyncio.run(scenario())
    assert granted[:3] == ["a", "b", "c"]  # one each before anyone's second
    assert sorted(granted) == ["a"] * 4 + ["b"] * 2 + ["c"]


def test_a_waiter_cancelled_while_queued_gives_nothing_away() -> None:
    async def scenario() -> tuple[int, int]:
        slots = FairSlots(total=1, per_team=1)
        await slots.acquire("a", slots.new_run())
        waiter = asyncio.create_task(slots.acquire("b", slots.new_run()))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        slots.release("a")
        return slots.in_use, slots.waiting

    assert asyncio.run(scenario()) == (0, 0)


# -- Plan-stage guardrails ------------------------------------------------------------------------


@reaches(Reason.POLICY_DENIED)
async def test_a_plan_a_policy_denies_is_never_applied(h: Harness) -> None:
    namespace = await ready_world(h)
    h.client.put(plan_policy("no-placeholders"))
    h.request("db", namespace)
    assert await h.reconcile("db", namespace) is None  # Stalled: a human changes the request or the policy
    compliant = h.condition("db", namespace, "PolicyCompliant")
    assert compliant is not None
    assert (compliant["status"], compliant["reason"]) == ("False", Reason.POLICY_DENIED)
    assert "denied by GuardrailPolicy no-placeholders/no-placeholders" in compliant["message"]
    assert "db would create placeholders" in compliant["message"]
    ready = h.condition("db", namespace)
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", Reason.POLICY_DENIED)
    assert h.condition("db", namespace, "Stalled") is not None
    status = h.status("db", namespace)
    assert (status["stage"], status["lastRun"]["result"]) == ("Failed", "Failed")
    assert h.runners.operations == ["init", "plan", "show"]
    assert h.condition("db", namespace, "Applied") is None
    assert h.client.stored(SECRET, "db-connection", namespace) is None
    assert lease_holder(h, "db", namespace) is None
    assert ("Warning", Reason.POLICY_DENIED) in [(t, r) for t, r, _ in h.client.events("db")]


@reaches(Reason.POLICY_WARNED)
async def test_a_plan_warning_is_recorded_and_the_apply_goes_on(h: Harness) -> None:
    namespace = await ready_world(h)
    h.client.put(plan_policy("placeholders-warned", mode="Warn"))
    h.request("db", namespace)
    assert await h.reconcile("db", namespace) is None
    compliant = h.condition("db", namespace, "PolicyCompliant")
    assert compliant is not None
    assert (compliant["status"], compliant["reason"]) == ("True", Reason.POLICY_WARNED)
    assert h.condition("db", namespace)["status"] == "True"
    policy = h.client.stored(GUARDRAILPOLICIES, "placeholders-warned")
    assert policy is not None
    assert policy["status"]["violationCount"] == 1
    assert policy["status"]["violations"][0]["name"] == "db"
    assert policy["status"]["observedGeneration"] is None  # recording a violation judges no spec


@pytest.mark.parametrize(
    ("plan", "reason"),
    [
        (
            {"resource_changes": [{"address": "evil_thing.x", "provider_name": "registry.opentofu.org/evil/thing"}]},
            Reason.PROVIDER_NOT_ALLOWED,
        ),
        (
            {
                "configuration": {
                    "root_module": {
                        "resources": [{"address": "terraform_data.x", "provisioners": [{"type": "local-exec"}]}]
                    }
                }
            },
            Reason.FORBIDDEN_PROVISIONER,
        ),
    ],
)
@reaches(Reason.PROVIDER_NOT_ALLOWED, Reason.FORBIDDEN_PROVISIONER, each="reason")
async def test_the_built_in_protections_judge_every_plan(
    h: Harness, tmp_path: Path, plan: dict[str, Any], reason: str
) -> None:
    """A module that calls modules runs code its golden path never saw: its every plan is shown and
    judged, whatever the module's own files say."""
    root = tmp_path / "modules"
    for source in (REPO / "terraform-modules" / "tiny", REPO / "tests" / "fixtures" / "modules" / "calls-a-module"):
        shutil.copytree(source, root / source.name)
    world = harness(tmp_path, modules_root=root)
    world.runners.script.plan = plan
    namespace = await world.environment()
    golden = tiny_golden_path("nested")
    golden["spec"]["module"] = "calls-a-module"
    await world.golden_path(golden)
    world.request("db", namespace, "nested")
    assert await world.reconcile("db", namespace) is None
    compliant = world.condition("db", namespace, "PolicyCompliant")
    assert compliant is not None
    assert (compliant["status"], compliant["reason"]) == ("False", reason)
    assert compliant["message"].startswith("denied by built-in protection: ")
    assert "show" in world.runners.operations
    assert "apply" not in world.runners.operations
    h.client.reached.update(world.client.reached)


@reaches(Reason.RECONCILED)
async def test_without_a_plan_rule_the_plan_of_a_checked_module_is_not_shown(h: Harness) -> None:
    namespace = await ready_world(h)
    h.request("db", namespace)
    assert await h.reconcile("db", namespace) is None
    assert "show" not in h.runners.operations  # a tool run saved: nothing would read the document
    compliant = h.condition("db", namespace, "PolicyCompliant")
    assert compliant is not None
    assert compliant["message"] == "the module passes the built-in protections; no Plan-stage rule applies"
    assert h.status("db", namespace)["plan"]["resources"] == ["terraform_data.service"]  # from the plan itself
    h.client.put(plan_policy("watching", mode="Audit"))  # a Plan-stage rule now applies: shown and judged
    h.request("db2", namespace)
    assert await h.reconcile("db2", namespace) is None
    assert h.runners.operations.count("show") == 1


# -- destroy --------------------------------------------------------------------------------------


@reaches(Reason.DELETING, Reason.DESTROYED)
async def test_deleting_a_request_destroys_then_forgets_its_state(h: Harness) -> None:
    namespace = await provisioned(h)
    uid = h.body("db", namespace)["metadata"]["uid"]
    operator_ns = h.ctx.settings.namespace
    h.runners.calls.clear()
    assert await h.finalize("db", namespace) is None
    assert h.runners.operations == ["init", "destroy"]
    destroy_lock = h.status("db", namespace)["lastRun"]["lockId"]
    assert {holder for _, holder in h.runners.calls} == {destroy_lock}
    assert h.client.stored(SECRET, f"tfstate-default-{uid}", operator_ns) is None
    assert h.client.stored(LEASE, f"lock-tfstate-default-{uid}", operator_ns) is None
    assert h.runners.discarded == [f"{namespace}-db-{uid[:8]}"]
    destroyed = [m for _, r, m in h.client.events("db") if r == Reason.DESTROYED]
    assert destroyed == ["tiny destroyed in 1.5s"]


@reaches(Reason.DESTROY_FAILED)
async def test_a_failed_destroy_is_retried_with_backoff(h: Harness) -> None:
    namespace = await provisioned(h)
    h.runners.fail("destroy", "Error: deleting: still in use")
    failure = await h.finalize("db", namespace)
    assert isinstance(failure, Failure)
    assert failure.reason == Reason.DESTROY_FAILED
    assert 2.5 <= failure.delay <= 5
    ready = h.condition("db", namespace)
    assert ready is not None
    assert "destroy failed (DestroyFailed, attempt 1" in ready["message"]
    uid = h.body("db", namespace)["metadata"]["uid"]
    assert h.client.stored(SECRET, f"tfstate-default-{uid}", h.ctx.settings.namespace) is not None  # kept
    assert h.runners.discarded == []


@reaches(Reason.DESTROY_FAILED)
async def test_a_destroy_without_its_golden_path_waits_for_it(h: Harness) -> None:
    namespace = await provisioned(h)
    await h.ctx.client.delete(GOLDENPATHS, "tiny")
    failure = await h.finalize("db", namespace)
    assert isinstance(failure, Failure)
    assert (failure.reason, failure.delay) == (Reason.DESTROY_FAILED, h.ctx.settings.blocked_retry_seconds)
    assert "re-create it so its module can run" in failure.message
    assert h.condition("db", namespace, "Stalled") is not None


@reaches()
async def test_a_request_that_never_ran_is_released_at_once(h: Harness) -> None:
    namespace = await ready_world(h)
    h.request("db", namespace, size="gigantic")
    assert await h.reconcile("db", namespace) is None
    assert await h.finalize("db", namespace) is None
    assert h.runners.opened == []  # nothing to destroy: no run at all
    assert len(h.runners.discarded) == 1


# -- drift ----------------------------------------------------------------------------------------


async def due_for_drift(h: Harness, policy: str = "Report") -> str:
    """A provisioned request whose golden path checks drift every 10 minutes, 11 minutes later."""
    golden = tiny_golden_path()
    golden["spec"].update({"driftPolicy": policy, "driftCheckInterval": "10m"})
    namespace = await h.environment()
    await h.golden_path(golden)
    h.request("db", namespace, size="small")
    assert await h.reconcile("db", namespace) is None
    h.runners.calls.clear()
    h.clock.advance(11 * 60)
    return namespace


@reaches(Reason.NO_CHANGES)
async def test_a_drift_check_finds_nothing_and_is_not_due_again_until_the_interval(h: Harness) -> None:
    namespace = await due_for_drift(h)
    h.runners.script.changes = False
    ready_before = h.condition("db", namespace)
    status = await drift.check_drift(h.ctx, namespace, "db")
    assert status is not None
    drifted = h.condition("db", namespace, "Drifted")
    assert drifted is not None
    assert (drifted["status"], drifted["reason"]) == ("False", Reason.NO_CHANGES)
    stored = h.status("db", namespace)
    assert stored["lastDriftCheckTime"] == format_time(h.clock.now)
    assert (stored["lastRun"]["operation"], stored["lastRun"]["result"]) == ("drift", "Succeeded")
    assert h.runners.operations == ["init", "plan"]
    assert {holder for _, holder in h.runners.calls} == {stored["lastRun"]["lockId"]}
    assert h.condition("db", namespace) == ready_before  # Ready is provisioning's
    h.clock.advance(60)
    assert await drift.check_drift(h.ctx, namespace, "db") is None  # not due yet


@reaches(Reason.DRIFT_DETECTED)
async def test_drift_is_reported_once_and_left_alone_under_report(h: Harness) -> None:
    namespace = await due_for_drift(h)
    assert await drift.check_drift(h.ctx, namespace, "db") is not None
    drifted = h.condition("db", namespace, "Drifted")
    assert drifted is not None
    assert (drifted["status"], drifted["reason"]) == ("True", Reason.DRIFT_DETECTED)
    assert "1 to add, 0 to change, 0 to destroy (terraform_data.service)" in drifted["message"]
    h.clock.advance(11 * 60)
    await drift.check_drift(h.ctx, namespace, "db")
    assert h.client.event_reasons("db").count(Reason.DRIFT_DETECTED) == 1  # once, not every check
    assert "apply" not in h.runners.operations


@reaches(Reason.DRIFT_CORRECTED)
async def test_drift_is_corrected_under_correct_and_the_outputs_delivered_again(h: Harness) -> None:
    namespace = await due_for_drift(h, "Correct")
    h.runners.script.outputs = {**OUTPUTS, "token": ("a-new-token", True)}
    await drift.check_drift(h.ctx, namespace, "db")
    drifted = h.condition("db", namespace, "Drifted")
    assert drifted is not None
    assert (drifted["status"], drifted["reason"]) == ("False", Reason.DRIFT_CORRECTED)
    assert h.runners.operations == ["init", "plan", "show", "apply", "output"]
    secret = h.client.stored(SECRET, "db-connection", namespace)
    assert secret is not None
    assert secret["data"]["token"] == "YS1uZXctdG9rZW4="
    assert Reason.DRIFT_CORRECTED in h.client.event_reasons("db")


@reaches(Reason.DRIFT_DETECTED, Reason.POLICY_DENIED)
async def test_a_correction_the_guardrails_deny_stays_reported(h: Harness) -> None:
    namespace = await due_for_drift(h, "Correct")
    h.client.put(plan_policy("freeze"))
    await drift.check_drift(h.ctx, namespace, "db")
    drifted = h.condition("db", namespace, "Drifted")
    assert drifted is not None
    assert drifted["status"] == "True"
    assert "not corrected: denied by GuardrailPolicy freeze/no-placeholders" in drifted["message"]
    assert "apply" not in h.runners.operations
    assert any(m.startswith("drift not corrected:") for _, r, m in h.client.events("db") if r == Reason.POLICY_DENIED)


@reaches(Reason.APPLY_FAILED)
async def test_a_failed_correction_is_classified_in_drifted(h: Harness) -> None:
    namespace = await due_for_drift(h, "Correct")
    h.runners.fail("apply", "Error: something odd")
    await drift.check_drift(h.ctx, namespace, "db")
    drifted = h.condition("db", namespace, "Drifted")
    assert drifted is not None
    assert (drifted["status"], drifted["reason"]) == ("True", Reason.APPLY_FAILED)
    assert "correcting it failed: Error: something odd" in drifted["message"]
    assert h.status("db", namespace)["lastRun"]["result"] == "Failed"
    assert h.condition("db", namespace)["status"] == "True"


@reaches(Reason.PLAN_FAILED, Reason.STATE_LOCKED)
async def test_a_drift_check_that_cannot_run_says_so_and_never_touches_ready(h: Harness) -> None:
    namespace = await due_for_drift(h)
    h.runners.fail("plan", "Error: Resource postcondition failed")
    await drift.check_drift(h.ctx, namespace, "db")
    drifted = h.condition("db", namespace, "Drifted")
    assert drifted is not None
    assert (drifted["status"], drifted["reason"]) == ("Unknown", Reason.PLAN_FAILED)
    assert drifted["message"].startswith("the drift check could not run: ")
    assert h.status("db", namespace)["lastRun"]["result"] == "Failed"
    assert h.condition("db", namespace)["reason"] == Reason.PROVISIONED

    h.clock.advance(11 * 60)
    uid = h.body("db", namespace)["metadata"]["uid"]
    alice = states.LockInfo(id="f0f0-2", operation="OperationTypeApply", who="alice@laptop", info="", created="")
    h.client.put(states.new_lease(states.state_of(h.ctx.settings.namespace, uid), alice))
    await drift.check_drift(h.ctx, namespace, "db")
    drifted = h.condition("db", namespace, "Drifted")
    assert drifted is not None
    assert (drifted["status"], drifted["reason"]) == ("Unknown", Reason.STATE_LOCKED)
    assert "alice@laptop" in drifted["message"]
    assert lease_holder(h, "db", namespace) == "f0f0-2"


@reaches(Reason.CREDENTIALS_NOT_FOUND)
async def test_a_drift_check_without_its_credentials_says_so(h: Harness) -> None:
    namespace = await h.environment()
    golden = tiny_golden_path()
    golden["spec"]["credentialsSecretRef"] = {"name": "pg-admin", "namespace": "blacktop-system"}
    await h.golden_path(golden)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pg-admin", "namespace": "blacktop-system"}}
    h.client.put(secret)
    h.request("db", namespace)
    assert await h.reconcile("db", namespace) is None
    await h.ctx.client.delete(SECRET, "pg-admin", "blacktop-system")
    h.clock.advance(11 * 60)
    h.runners.calls.clear()
    assert await drift.check_drift(h.ctx, namespace, "db") is not None
    drifted = h.condition("db", namespace, "Drifted")
    assert drifted is not None
    assert (drifted["status"], drifted["reason"]) == ("Unknown", Reason.CREDENTIALS_NOT_FOUND)
    assert h.runners.operations == []  # no run began
    assert h.status("db", namespace)["lastDriftCheckTime"] == format_time(h.clock.now)  # next check after the interval


# -- runners: pods that fail, runners left by an earlier process, slots ----------------------------


@pytest.mark.parametrize("reason", [Reason.RUNNER_FAILED, Reason.RUNNER_EVICTED, Reason.RUNNER_OUT_OF_MEMORY])
@reaches(Reason.RUNNER_FAILED, Reason.RUNNER_EVICTED, Reason.RUNNER_OUT_OF_MEMORY, each="reason")
async def test_a_runner_that_fails_is_a_classified_failure_retried_like_any(h: Harness, reason: str) -> None:
    namespace = await ready_world(h)
    h.request("db", namespace)
    h.runners.fail("apply", "runner pod blacktop-run-x stopped: the reason says why", reason=reason)
    failure = await h.reconcile("db", namespace)
    assert isinstance(failure, Failure)
    assert failure.reason == reason
    ready = h.condition("db", namespace)
    assert ready is not None
    assert ready["message"].startswith(f"apply failed ({reason}, attempt 1, next retry in")
    assert h.runners.closed == ["failed"]
    assert lease_holder(h, "db", namespace) is None  # the runner had stopped: the lock is released
    assert await h.reconcile("db", namespace) is None  # the retry
    assert h.runners.closed == ["failed", "succeeded"]


@reaches(Reason.RUNNER_ADOPTED, Reason.STATE_LOCK_RECOVERED, Reason.PROVISIONED)
async def test_a_runner_an_earlier_process_left_is_waited_for_before_its_lock_is_taken_over(h: Harness) -> None:
    namespace = await ready_world(h)
    died_mid_apply(h, h.request("db", namespace))
    h.runners.leftover = "waiting for runner pod blacktop-run-dead (run dead, apply)"

    assert await h.reconcile("db", namespace) is None
    # First the wait (the dead run's lock still in place), then the takeover, then the run.
    assert h.runners.calls[0] == ("settle", "dead-lock")
    assert h.runners.operations[1:] == ["init", "plan", "apply", "output"]  # no Plan-stage rule: no show
    reasons = h.client.event_reasons("db")
    assert reasons.index(Reason.RUNNER_ADOPTED) < reasons.index(Reason.STATE_LOCK_RECOVERED)
    adopted = [m for _, r, m in h.client.events("db") if r == Reason.RUNNER_ADOPTED]
    assert adopted == ["waiting for runner pod blacktop-run-dead (run dead, apply)"]


@reaches(Reason.STATE_LOCKED)
async def test_a_runner_of_an_earlier_process_that_never_stops_is_reported_and_nothing_runs(h: Harness) -> None:
    namespace = await ready_world(h)
    h.request("db", namespace)
    h.runners.script.busy = "runner pod blacktop-run-old of an earlier run is still running past its deadline"
    failure = await h.reconcile("db", namespace)
    assert isinstance(failure, Failure)
    assert failure.reason == Reason.STATE_LOCKED
    ready = h.condition("db", namespace)
    assert ready is not None
    assert "waiting for an earlier runner failed (StateLocked" in ready["message"]
    assert "still running past its deadline" in ready["message"]
    assert h.runners.operations == []
    assert lease_holder(h, "db", namespace) is None  # never taken


@reaches(Reason.STATE_LOCK_RECOVERED, Reason.PROVISIONED)
async def test_a_shutdown_mid_run_keeps_the_lock_only_while_the_runner_works_on(h: Harness) -> None:
    namespace = await ready_world(h)
    h.request("db", namespace)
    # A runner pod works on after the operator is cancelled: the lock stays with the run.
    h.runners.script.detach, h.runners.script.cancel = True, {"apply"}
    with pytest.raises(asyncio.CancelledError):
        await h.reconcile("db", namespace)
    run = h.status("db", namespace)["lastRun"]
    assert h.runners.closed == ["cancelled"]
    assert lease_holder(h, "db", namespace) == run["lockId"]
    assert run["lockId"] not in h.ctx.held_locks  # not busy in this process: the next run recovers it
    # The next run (the next operator process) takes it over and finishes.
    h.runners.script.detach = False
    assert await h.reconcile("db", namespace) is None
    assert Reason.STATE_LOCK_RECOVERED in h.client.event_reasons("db")
    # A subprocess dies with its run: a cancelled run releases the lock (a spec change makes it run).
    bump_generation(h, "db", namespace)
    h.runners.script.cancel = {"plan"}
    with pytest.raises(asyncio.CancelledError):
        await h.reconcile("db", namespace)
    assert lease_holder(h, "db", namespace) is None


@reaches(Reason.PROVISIONED)
async def test_a_run_keeps_its_slot_to_its_end_and_no_team_fills_every_slot(h: Harness) -> None:
    assert (h.ctx.settings.max_concurrent_runs, h.ctx.settings.team_run_limit) == (2, 1)
    payments = await ready_world(h)
    search = await h.environment("search-dev", "search")
    for name, namespace in (("a", payments), ("b", payments), ("c", search)):
        h.request(name, namespace)
    gate = h.runners.script.gate = asyncio.Event()
    runs = [asyncio.create_task(h.reconcile(n, ns)) for n, ns in (("a", payments), ("b", payments), ("c", search))]
    for _ in range(50):  # let every run get as far as it can (loop turns, no wall-clock time)
        await asyncio.sleep(0)
    in_flight = {target.split("-")[2] for target in h.runners.in_flight}  # <namespace>-<env>-<name>-<uid>
    assert len(in_flight) == 2
    assert "c" in in_flight  # the other team's run is not held up by payments' second request
    assert h.ctx.metrics.runs_queued._value.get() == 1  # payments' second run waits for its team's slot
    gate.set()
    assert await asyncio.gather(*runs) == [None, None, None]
    # Each payments run held its slot from its first operation to its last: never interleaved.
    holders = [holder for operation, holder in h.runners.calls if operation != "settle"]
    lock = {name: h.status(name, payments)["lastRun"]["lockId"] for name in ("a", "b")}
    order = [name for holder in holders for name, held in lock.items() if held == holder]
    assert order in (["a"] * 4 + ["b"] * 4, ["b"] * 4 + ["a"] * 4)  # init, plan, apply, output each
    assert h.ctx.metrics.runs_in_flight._value.get() == 0


@reaches(Reason.DRIFT_CORRECTED)
async def test_a_correction_is_in_progress_while_it_applies_and_ready_never_flips(h: Harness) -> None:
    namespace = await due_for_drift(h, "Correct")
    seen: list[tuple[str | None, str | None]] = []
    original = h.client.merge_patch

    async def watching(*args: Any, **kwargs: Any) -> Any:
        result = await original(*args, **kwargs)
        conditions = {c["type"]: c for c in result.get("status", {}).get("conditions", [])}
        seen.append((conditions["Ready"]["status"], (conditions.get("Reconciling") or {}).get("status")))
        return result

    h.client.merge_patch = watching  # type: ignore[method-assign]
    await drift.check_drift(h.ctx, namespace, "db")
    assert ("True", "True") in seen  # Reconciling while the correction applied
    assert {ready for ready, _ in seen} == {"True"}
    assert seen[-1] == ("True", None)  # and not any more


@reaches(Reason.PROVISIONED)
async def test_a_request_whose_inputs_changed_is_re_verified_not_reported_as_drift(h: Harness) -> None:
    namespace = await due_for_drift(h)
    golden = h.client.stored(GOLDENPATHS, "tiny")
    assert golden is not None
    h.client.put({**golden, "metadata": {**golden["metadata"], "generation": 7}})
    before = h.status("db", namespace)["appliedDigest"]
    await drift.check_drift(h.ctx, namespace, "db")
    assert h.condition("db", namespace, "Drifted") is None  # a new revision is no drift
    assert h.status("db", namespace)["appliedDigest"] != before
    assert h.status("db", namespace)["lastRun"]["operation"] == "apply"


@reaches(Reason.API_UNAVAILABLE)
async def test_a_drift_check_the_api_server_breaks_says_so_once(h: Harness) -> None:
    namespace = await due_for_drift(h)
    h.client.refuse("replace", "Lease", UnavailableError(0, "Unavailable", "read timed out"))
    for _ in range(2):
        await drift.check_drift(h.ctx, namespace, "db")
        h.clock.advance(11 * 60)
    drifted = h.condition("db", namespace, "Drifted")
    assert drifted is not None
    assert (drifted["status"], drifted["reason"]) == ("Unknown", Reason.API_UNAVAILABLE)
    assert h.client.event_reasons("db").count(Reason.API_UNAVAILABLE) == 1
    assert h.condition("db", namespace)["status"] == "True"


# -- Environment ----------------------------------------------------------------------------------


@reaches(Reason.RECONCILED, Reason.MONITORING_UNAVAILABLE)
async def test_an_environment_gets_its_namespace_and_says_monitoring_is_unavailable(h: Harness) -> None:
    name = await h.environment("shop-dev", "shop", budget={"monthly": "50", "currency": "EUR"})
    namespace = h.client.stored(NAMESPACE, name)
    assert namespace is not None
    assert namespace["metadata"]["labels"]["platform.blacktop.dev/environment"] == name
    env = h.client.stored(ENVIRONMENTS, name)
    assert env is not None
    conditions = {c["type"]: c for c in env["status"]["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("True", Reason.RECONCILED)
    monitoring = conditions["MonitoringConfigured"]
    assert (monitoring["status"], monitoring["reason"]) == ("False", Reason.MONITORING_UNAVAILABLE)
    assert "podmonitors.monitoring.coreos.com" in monitoring["message"]
    assert env["status"]["cost"]["budget"] == "50"


@reaches(Reason.MONITORING_CONFIGURED)
async def test_with_prometheus_operator_monitoring_is_configured(h: Harness) -> None:
    for crd in ("podmonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com"):
        h.client.put(
            {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": crd}}
        )
    name = await h.environment()
    env = h.client.stored(ENVIRONMENTS, name)
    assert env is not None
    monitoring = next(c for c in env["status"]["conditions"] if c["type"] == "MonitoringConfigured")
    assert (monitoring["status"], monitoring["reason"]) == ("True", Reason.MONITORING_CONFIGURED)
    assert h.client.stored(resource_for("monitoring.coreos.com/v1", "PodMonitor"), "blacktop-workloads", name)


@reaches(Reason.NAMESPACE_CONFLICT)
async def test_a_namespace_someone_else_owns_is_never_adopted(h: Harness) -> None:
    h.client.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "taken", "labels": {"keep": "me"}}})
    await h.environment("taken", "shop")
    env = h.client.stored(ENVIRONMENTS, "taken")
    assert env is not None
    ready = env["status"]["conditions"][0]
    assert (ready["type"], ready["reason"]) == ("Ready", Reason.NAMESPACE_CONFLICT)
    assert h.client.stored(NAMESPACE, "taken")["metadata"]["labels"] == {"keep": "me"}


@reaches(Reason.INVALID_SPEC)
async def test_an_environment_spec_the_schema_should_have_refused_is_stalled(h: Harness) -> None:
    env = h.client.put({"apiVersion": API, "kind": "Environment", "metadata": {"name": "odd"}, "spec": {"team": "t"}})
    await environment.reconcile_environment(h.ctx, env)
    stored = h.client.stored(ENVIRONMENTS, "odd")
    assert stored is not None
    assert stored["status"]["conditions"][0]["reason"] == Reason.INVALID_SPEC


@reaches(Reason.APPLY_CHILD_FAILED)
async def test_a_child_the_api_server_refuses_is_reported_and_retried(h: Harness) -> None:
    h.client.refuse("apply", "ResourceQuota", InvalidError(422, "Invalid", "spec.hard: quota too large"))
    with pytest.raises(Failure) as raised:
        await h.environment("shop-dev", "shop")
    assert (raised.value.reason, raised.value.delay) == (
        Reason.APPLY_CHILD_FAILED,
        h.ctx.settings.blocked_retry_seconds,
    )
    env = h.client.stored(ENVIRONMENTS, "shop-dev")
    assert env is not None
    ready = env["status"]["conditions"][0]
    assert ready["reason"] == Reason.APPLY_CHILD_FAILED
    assert "quota too large" in ready["message"]


@reaches(Reason.EXPIRED)
async def test_an_environment_past_its_ttl_is_deleted(h: Harness) -> None:
    name = await h.environment("short-dev", "shop", ttl="1h")
    env = h.client.stored(ENVIRONMENTS, name)
    assert env is not None
    assert not await environment.expire_if_due(h.ctx, env)
    h.clock.advance(3600)
    assert await environment.expire_if_due(h.ctx, env)
    assert h.client.stored(ENVIRONMENTS, name) is None
    assert any("TTL 1h ran out at" in m for _, r, m in h.client.events(name) if r == Reason.EXPIRED)


@reaches(Reason.WAITING_FOR_SERVICE_REQUESTS, Reason.DELETING)
async def test_deleting_an_environment_waits_for_its_requests(h: Harness) -> None:
    namespace = await provisioned(h)
    env = h.client.stored(ENVIRONMENTS, namespace)
    assert env is not None
    with pytest.raises(Failure) as raised:
        await environment.finalize_environment(h.ctx, env)
    assert (raised.value.reason, raised.value.delay) == (
        Reason.WAITING_FOR_SERVICE_REQUESTS,
        h.ctx.settings.deletion_poll_seconds,
    )
    assert "waiting for 1 service request(s) to be destroyed: db" in raised.value.message
    assert h.client.stored(SERVICEREQUESTS, "db", namespace) is None  # asked to go (the fake has no finalizers)
    await environment.finalize_environment(h.ctx, env)
    # The namespace is left to garbage collection (it is owned by the Environment): the operator holds
    # no right to delete namespaces at all.
    ns = h.client.stored(NAMESPACE, namespace)
    assert ns is not None
    assert ns["metadata"]["ownerReferences"][0]["uid"] == env["metadata"]["uid"]


@reaches()
async def test_the_cost_refresh_writes_the_cost_and_claims_no_generation(h: Harness) -> None:
    namespace = await provisioned(h)
    env = h.client.stored(ENVIRONMENTS, namespace)
    assert env is not None
    generation = env["status"]["observedGeneration"]
    h.client.put(
        {**env, "spec": {**env["spec"], "budget": {"monthly": "10"}}, "metadata": {**env["metadata"], "generation": 2}}
    )
    events_before = len(h.client.events(namespace))
    cost = await budget.refresh_environment_cost(h.ctx, namespace)
    assert cost is not None
    assert (cost.monthly, cost.budget, cost.service_requests) == ("1.00", "10", 1)
    stored = h.client.stored(ENVIRONMENTS, namespace)
    assert stored is not None
    assert stored["status"]["cost"]["monthly"] == "1.00"
    assert stored["status"]["observedGeneration"] == generation  # the new spec is not reconciled yet
    assert len(h.client.events(namespace)) == events_before


# -- GoldenPath and GuardrailPolicy ---------------------------------------------------------------


async def _reconcile_golden(h: Harness, body: dict[str, Any]) -> dict[str, Any]:
    stored = h.client.put(body)
    await goldenpath.reconcile_golden_path(h.ctx, stored)
    result = h.client.stored(GOLDENPATHS, body["metadata"]["name"])
    assert result is not None
    return {c["type"]: c for c in result["status"]["conditions"]} | {"status": result["status"]}


@reaches(Reason.RECONCILED)
async def test_a_golden_path_with_a_valid_module_is_available(h: Harness) -> None:
    found = await _reconcile_golden(h, tiny_golden_path())
    assert (found["Ready"]["status"], found["Validated"]["status"]) == ("True", "True")
    assert found["status"]["moduleDigest"] == h.ctx.modules.inspect("tiny").digest
    assert found["status"]["providers"] == []


@pytest.mark.parametrize(
    ("module", "spec", "reason"),
    [
        ("no-such-module", {}, Reason.MODULE_NOT_FOUND),
        ("forbidden-local-exec", {}, Reason.FORBIDDEN_PROVISIONER),
        ("forbidden-provider", {}, Reason.PROVIDER_NOT_ALLOWED),
        ("tiny", {"parameters": {"type": "array"}}, Reason.INVALID_SCHEMA),
        ("tiny", {"outputs": [{"name": "nope"}]}, Reason.INVALID_SPEC),
    ],
)
@reaches(
    Reason.MODULE_NOT_FOUND,
    Reason.FORBIDDEN_PROVISIONER,
    Reason.PROVIDER_NOT_ALLOWED,
    Reason.INVALID_SCHEMA,
    Reason.INVALID_SPEC,
    each="reason",
)
async def test_a_golden_path_that_cannot_be_used_says_why(
    h: Harness, tmp_path: Path, module: str, spec: dict[str, Any], reason: str
) -> None:
    root = tmp_path / "modules"
    for source in (REPO / "terraform-modules" / "tiny", *(REPO / "tests" / "fixtures" / "modules").iterdir()):
        shutil.copytree(source, root / source.name)
    world = harness(tmp_path, modules_root=root)
    body = tiny_golden_path("unusable")
    body["spec"].update({"module": module, **spec})
    found = await _reconcile_golden(world, body)
    h.client.reached.update(world.client.reached)  # what the world with those modules wrote
    assert (found["Ready"]["status"], found["Ready"]["reason"]) == ("False", reason)
    assert found["Validated"]["reason"] == reason
    assert found["Stalled"]["status"] == "True"


@reaches(Reason.ACTIVE, Reason.COMPILE_ERROR)
async def test_a_policy_is_active_when_it_compiles(h: Harness) -> None:
    h.client.put(plan_policy("good"))
    status = await guardrailpolicy.reconcile_policy(h.ctx, "good")
    assert status is not None
    assert status.conditions[0].reason == Reason.ACTIVE
    bad = plan_policy("bad")
    bad["spec"]["rules"][0]["expression"] = "this is not CEL ((("
    h.client.put(bad)
    status = await guardrailpolicy.reconcile_policy(h.ctx, "bad")
    assert status is not None
    assert (status.conditions[0].status, status.conditions[0].reason) == ("False", Reason.COMPILE_ERROR)


# -- the status tracker ---------------------------------------------------------------------------


@reaches()
async def test_the_tracker_writes_changes_once_and_posts_ready_changes_once(h: Harness) -> None:
    namespace = await ready_world(h)
    body = h.request("db", namespace)
    tracker = StatusTracker(body, ServiceRequestStatus, now=h.clock.now)
    tracker.ready("up", Reason.PROVISIONED)
    await tracker.write(h.client, SERVICEREQUESTS)
    writes = len([c for c in h.client.calls if c[0] == "merge_patch"])
    await tracker.write(h.client, SERVICEREQUESTS)  # nothing changed since the last write
    assert len([c for c in h.client.calls if c[0] == "merge_patch"]) == writes
    assert h.client.event_reasons("db") == [Reason.PROVISIONED]
    tracker.ready("up", Reason.PROVISIONED)
    tracker.announce()  # unchanged, but said again on purpose
    await tracker.write(h.client, SERVICEREQUESTS)
    assert h.client.event_reasons("db") == [Reason.PROVISIONED, Reason.PROVISIONED]
    await tracker.write(h.client, SERVICEREQUESTS)  # an announcement is for one write
    assert h.client.event_reasons("db") == [Reason.PROVISIONED, Reason.PROVISIONED]


@reaches()
async def test_only_a_tracker_that_judged_moves_observed_generation(h: Harness) -> None:
    namespace = await ready_world(h)
    body = h.request("db", namespace)
    h.client.put({**body, "metadata": {**body["metadata"], "generation": 3}, "status": {"observedGeneration": 2}})
    recorder = StatusTracker(h.body("db", namespace), ServiceRequestStatus, now=h.clock.now)
    recorder.status.monthly_cost = "1.00"
    await recorder.write(h.client, SERVICEREQUESTS)
    assert h.status("db", namespace)["observedGeneration"] == 2
    judge = StatusTracker(h.body("db", namespace), ServiceRequestStatus, now=h.clock.now)
    judge.not_ready(Reason.PROGRESSING, "planning", stalled=False)
    await judge.write(h.client, SERVICEREQUESTS)
    assert h.status("db", namespace)["observedGeneration"] == 3


# -- revisions and rollouts ---------------------------------------------------------------------------


def _fleet_golden_path(strategy: str = "Automatic") -> dict[str, Any]:
    body = tiny_golden_path()
    body["spec"]["tiers"] = ["dev", "staging", "prod"]
    body["spec"]["rollout"] = {"strategy": strategy, "batchSize": 1}
    return body


async def _fleet(h: Harness, strategy: str = "Automatic") -> dict[str, str]:
    """One request per tier (and a pinned one in prod) of `tiny` at revision 1; request -> namespace."""
    namespaces = {tier: await h.environment(f"shop-{tier}", "shop", tier) for tier in ("dev", "staging", "prod")}
    await h.golden_path(_fleet_golden_path(strategy))
    fleet = {"api": namespaces["dev"], "cart": namespaces["staging"], "orders": namespaces["prod"]}
    for name, namespace in fleet.items():
        h.request(name, namespace, size="small")
    pinned = h.request("ledger", namespaces["prod"], size="small")
    h.client.put({**pinned, "spec": {**pinned["spec"], "revision": 1}})
    fleet["ledger"] = namespaces["prod"]
    for name, namespace in fleet.items():
        assert await h.reconcile(name, namespace) is None
        assert h.status(name, namespace)["revision"] == 1
    return fleet


async def _publish_revision_2(h: Harness) -> None:
    """A schema change: the golden path's revision 2."""
    golden = h.client.stored(GOLDENPATHS, "tiny")
    assert golden is not None
    golden["spec"]["parameters"]["properties"]["note"] = {"type": "string", "default": ""}
    await h.client.apply(golden)
    status = await goldenpath.reconcile_golden_path(h.ctx, h.client.stored(GOLDENPATHS, "tiny") or {})
    assert status.latest_revision == 2


async def _advance(h: Harness) -> Any:
    async with h.ctx.lock("GoldenPath/tiny"):
        return await rollout.advance(h.ctx, "tiny", ProvisioningUpgrader())


def _upgrade(h: Harness, name: str, namespace: str) -> dict[str, Any]:
    found = h.condition(name, namespace, "UpgradeAvailable")
    assert found is not None, f"{name} has no UpgradeAvailable"
    return found


@reaches(
    Reason.REVISION_CREATED,
    Reason.ROLLOUT_COMPLETE,
    Reason.ROLLOUT_PROGRESSING,
    Reason.ROLLOUT_PENDING,
    Reason.ROLLOUT_HALTED,
    Reason.UP_TO_DATE,
    Reason.PINNED,
    Reason.UPGRADED,
)
async def test_an_automatic_rollout_goes_tier_by_tier_halts_on_a_failed_plan_and_resumes(h: Harness) -> None:
    fleet = await _fleet(h)
    assert (await _advance(h)).phase == "Complete"
    assert h.client.event_reasons("tiny").count(Reason.REVISION_CREATED) == 1
    await _publish_revision_2(h)
    h.runners.calls.clear()

    step = await _advance(h)  # dev first: planned, then applied
    assert (step.phase, step.tier) == ("Progressing", "staging")
    assert h.status("api", fleet["api"])["revision"] == 2
    assert [op for op, _ in h.runners.calls[:3]] == ["init", "plan", "show"]  # the plan came first
    assert all(holder is not None for _, holder in h.runners.calls)  # every run under the state lock
    assert _upgrade(h, "orders", fleet["orders"])["reason"] == Reason.ROLLOUT_PENDING
    assert _upgrade(h, "api", fleet["api"])["reason"] == Reason.UP_TO_DATE
    assert Reason.UPGRADED in h.client.event_reasons("api")

    h.runners.fail("plan", "Error: Resource precondition failed\n\nsize large is no longer offered")
    step = await _advance(h)
    assert step.phase == "Halted"
    assert step.halted.request == f"{fleet['cart']}/cart"
    assert (step.halted.tier, step.halted.reason) == ("staging", Reason.PLAN_FAILED)
    assert "no longer offered" not in step.halted.message  # the team's error stays with its request
    assert "no longer offered" in _upgrade(h, "cart", fleet["cart"])["message"]
    assert h.status("cart", fleet["cart"])["revision"] == 1
    assert h.condition("cart", fleet["cart"])["status"] == "True"  # still Ready on revision 1
    assert _upgrade(h, "orders", fleet["orders"])["reason"] == Reason.ROLLOUT_HALTED
    assert "no longer offered" not in _upgrade(h, "orders", fleet["orders"])["message"]
    assert (await _advance(h)).phase == "Halted"  # it holds until something changes
    assert h.status("orders", fleet["orders"])["revision"] == 1

    # Its owner changes the request: reconciled on the revision it runs, then the rollout resumes.
    body = h.body("cart", fleet["cart"])
    await h.client.apply({**body, "spec": {**body["spec"], "parameters": {"size": "medium"}}})
    assert await h.reconcile("cart", fleet["cart"]) is None
    assert h.status("cart", fleet["cart"])["revision"] == 1
    for _ in range(3):
        step = await _advance(h)
    assert step.phase == "Complete"
    assert [h.status(n, ns)["revision"] for n, ns in fleet.items()] == [2, 2, 2, 1]
    pinned = _upgrade(h, "ledger", fleet["ledger"])
    assert pinned["reason"] == Reason.PINNED
    assert '{"spec":{"revision":2}}' in pinned["message"]
    assert Reason.ROLLOUT_HALTED in h.client.event_reasons("tiny")


@reaches(Reason.APPLY_FAILED, Reason.ROLLOUT_HALTED)
async def test_a_failed_upgrade_apply_halts_and_puts_the_request_back(h: Harness) -> None:
    fleet = await _fleet(h)
    await _publish_revision_2(h)
    h.runners.fail("apply", "Error: Resource postcondition failed")
    step = await _advance(h)
    assert (step.phase, step.halted.reason) == ("Halted", Reason.APPLY_FAILED)
    assert step.halted.request == f"{fleet['api']}/api"
    assert "put back on revision 1" in _upgrade(h, "api", fleet["api"])["message"]
    assert h.status("api", fleet["api"])["revision"] == 1
    assert h.condition("api", fleet["api"])["status"] == "True"
    assert h.status("cart", fleet["cart"])["revision"] == 1  # later tiers never moved

    # Both the upgrade and the way back fail: status no longer claims a revision, so a move (here a
    # rollback of the target to 1) takes it to the target like a request never applied.
    other = await _fleet_second_request(h, fleet)
    for _ in range(2):
        h.runners.fail("apply", "Error: connection refused")
    body = h.body(other, fleet["api"])
    outcome = await ProvisioningUpgrader().apply(h.ctx, fleet["api"], other, 2)
    assert not outcome.ok
    assert "putting it back on revision 1 failed too" in outcome.message
    assert h.status(other, fleet["api"]).get("revision") is None
    assert body["metadata"]["generation"] == h.body(other, fleet["api"])["metadata"]["generation"]
    golden = h.client.stored(GOLDENPATHS, "tiny") or {}
    await h.client.apply({**golden, "spec": {**golden["spec"], "rollout": {"strategy": "Automatic", "revision": 1}}})
    await goldenpath.reconcile_golden_path(h.ctx, h.client.stored(GOLDENPATHS, "tiny") or {})
    for _ in range(3):
        step = await _advance(h)
    assert h.status(other, fleet["api"])["revision"] == 1


async def _fleet_second_request(h: Harness, fleet: dict[str, str]) -> str:
    h.request("web", fleet["api"], size="small")
    assert await h.reconcile("web", fleet["api"]) is None
    assert h.status("web", fleet["api"])["revision"] == 2  # new requests start on the target
    body = h.body("web", fleet["api"])
    h.client.put({**body, "status": {**body["status"], "revision": 1}})  # as if it had run revision 1
    return "web"


@reaches(Reason.ROLLOUT_WAITING, Reason.MANUAL_UPGRADE)
async def test_a_manual_rollout_waits_for_owners_and_a_pin_moves_a_request(h: Harness) -> None:
    fleet = await _fleet(h, strategy="Manual")
    await _publish_revision_2(h)
    step = await _advance(h)
    assert step.phase == "WaitingForOwners"
    assert [h.status(n, ns)["revision"] for n, ns in fleet.items()] == [1, 1, 1, 1]
    hint = _upgrade(h, "api", fleet["api"])
    assert hint["reason"] == Reason.MANUAL_UPGRADE
    assert f"kubectl patch servicerequest api -n {fleet['api']}" in hint["message"]
    body = h.body("api", fleet["api"])
    await h.client.apply({**body, "spec": {**body["spec"], "revision": 2}})
    assert await h.reconcile("api", fleet["api"]) is None
    assert h.status("api", fleet["api"])["revision"] == 2
    # A new request starts on the target; the UpgradeAvailable of the moved one turns False.
    h.request("search", fleet["api"], size="small")
    assert await h.reconcile("search", fleet["api"]) is None
    assert h.status("search", fleet["api"])["revision"] == 2
    await _advance(h)
    assert _upgrade(h, "api", fleet["api"])["status"] == "False"


@reaches(Reason.REVISION_NOT_FOUND, Reason.SOURCE_UNAVAILABLE)
async def test_missing_revisions_and_unreachable_git_servers_are_reported(h: Harness) -> None:
    namespace = await ready_world(h)
    body = h.request("db", namespace, size="small")
    h.client.put({**body, "spec": {**body["spec"], "revision": 9}})
    assert await h.reconcile("db", namespace) is None
    ready = h.condition("db", namespace)
    assert ready is not None
    assert ready["reason"] == Reason.REVISION_NOT_FOUND
    assert "no revision 9 (kept: 1)" in ready["message"]
    target = tiny_golden_path("elsewhere")
    target["spec"]["rollout"] = {"revision": 4}
    await h.golden_path(target)
    gp = h.client.stored(GOLDENPATHS, "elsewhere") or {}
    assert gp["status"]["conditions"][0]["reason"] == Reason.REVISION_NOT_FOUND
    remote = tiny_golden_path("remote")
    remote["spec"].update({"module": "tiny", "git": {"url": "http://127.0.0.1:1/modules.git", "ref": "v1"}})
    await h.golden_path(remote)
    gp = h.client.stored(GOLDENPATHS, "remote") or {}
    ready = next(c for c in gp["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == Reason.SOURCE_UNAVAILABLE
    assert "listing the refs of http://127.0.0.1:1/modules.git failed" in ready["message"]


# -- notifications ----------------------------------------------------------------------------------


@reaches(Reason.EXPIRING_SOON, Reason.NOTIFICATION_CHANNEL_INVALID)
async def test_an_environment_says_it_expires_and_whether_its_channels_work(h: Harness) -> None:
    channels = [{"name": "chat", "type": "Slack", "secretRef": {"name": "chat-hook"}}]
    namespace = await h.environment(ttl="20h", notifications=channels)
    env = h.client.stored(ENVIRONMENTS, namespace)
    assert env is not None
    conditions = {c["type"]: c for c in env["status"]["conditions"]}
    assert (conditions["Expiring"]["status"], conditions["Expiring"]["reason"]) == ("True", Reason.EXPIRING_SOON)
    assert conditions["Ready"]["status"] == "True"  # neither an expiry nor a chat hook makes it unusable
    configured = conditions["NotificationsConfigured"]
    assert (configured["status"], configured["reason"]) == ("False", Reason.NOTIFICATION_CHANNEL_INVALID)
    assert f"channel chat: Secret {namespace}/chat-hook does not exist" in configured["message"]
    h.client.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "chat-hook", "namespace": namespace},
            "data": {"url": "aHR0cHM6Ly9ob29rcy5leGFtcGxlL1QvQi9zZWNyZXQ="},  # https://hooks.example/T/B/secret
        }
    )
    await environment.reconcile_environment(h.ctx, env)
    env = h.client.stored(ENVIRONMENTS, namespace)
    assert env is not None
    configured = next(c for c in env["status"]["conditions"] if c["type"] == "NotificationsConfigured")
    assert (configured["status"], configured["message"]) == ("True", "channels ready: chat")
    assert "hooks.example" not in json.dumps(env)  # the URL is never quoted
    long_lived = await h.environment("payments-staging", ttl="72h")
    stored = h.client.stored(ENVIRONMENTS, long_lived)
    assert stored is not None
    assert {c["type"] for c in stored["status"]["conditions"]} == {"Ready", "NamespaceReady", "MonitoringConfigured"}


@reaches(Reason.NOTIFICATION_FAILED)
async def test_a_message_given_up_is_an_event_on_the_environment_naming_the_channel(h: Harness) -> None:
    from blacktop.api.notifications import ChannelType, NotificationEvent
    from blacktop.controllers import notifications
    from blacktop.notifications.delivery import Target
    from blacktop.notifications.notices import Notice

    namespace = await h.environment()
    notice = Notice(
        id="n1",
        event=NotificationEvent.FAILED,
        kind="ServiceRequest",
        name="db",
        namespace=namespace,
        environment=namespace,
        reason=Reason.APPLY_FAILED,
        summary="failed",
        message="boom",
        time=format_time(h.clock.now),
    )
    hook = Target(f"{namespace}/hook", "team", ChannelType.WEBHOOK, "https://hooks.example/secret", "k")
    await notifications.report_failure(h.ctx, notice, hook, "HTTP 503 after 8 attempt(s)")
    [(kind, reason, message)] = [e for e in h.client.events(namespace) if e[1] == Reason.NOTIFICATION_FAILED]
    assert (kind, reason) == ("Warning", Reason.NOTIFICATION_FAILED)
    assert message == (
        f"notification Failed about ServiceRequest {namespace}/db to channel {namespace}/hook failed: "
        "HTTP 503 after 8 attempt(s)"
    )
    platform = Target("platform-chat", "platform", ChannelType.SLACK, "https://hooks.example/p")
    await notifications.report_failure(h.ctx, notice, platform, "HTTP 500")
    # The platform's own channels are the SREs' business (log and metrics), not the team's.
    assert h.client.event_reasons(namespace).count(Reason.NOTIFICATION_FAILED) == 1


# -- approvals --------------------------------------------------------------------------------------


def approval_policy(**require: Any) -> dict[str, Any]:
    """A Plan-stage rule every plan fails, asking for approval instead of denying."""
    return {
        "apiVersion": API,
        "kind": "GuardrailPolicy",
        "metadata": {"name": "needs-a-lead"},
        "spec": {
            "match": {"kinds": ["ServiceRequest"]},
            "rules": [
                {
                    "name": "lead",
                    "stage": "Plan",
                    "expression": "false",
                    "message": "a lead approves",
                    "requireApproval": require or {"approvers": [{"kind": "Group", "name": "leads"}]},
                }
            ],
        },
    }


def annotate(h: Harness, name: str, namespace: str, **values: str) -> None:
    """Set annotations as an update (and the mutating webhook's stamps) would leave them."""
    body = h.body(name, namespace)
    body["metadata"]["annotations"] = {**(body["metadata"].get("annotations") or {}), **values}
    h.client.put(body)


@reaches(Reason.AWAITING_APPROVAL, Reason.APPROVED, Reason.PROVISIONED)
async def test_a_plan_waits_for_approval_and_only_that_plan_is_applied_once_approved(h: Harness) -> None:
    namespace = await ready_world(h)
    h.client.put(approval_policy())
    body = h.request("db", namespace, size="small")
    annotate(h, "db", namespace, **{"blacktop.dev/requested-by": "alice"})
    assert await h.reconcile("db", namespace) is None  # no retry: it waits for a human
    status = h.status("db", namespace)
    assert status["stage"] == "AwaitingApproval"
    assert h.runners.operations == ["init", "plan", "show"]  # nothing applied
    assert status["lastRun"]["result"] == "AwaitingApproval"
    approval = status["approval"]
    digest = approval["planDigest"]
    assert digest.startswith("sha256:")
    assert (approval["state"], approval["operation"], approval["requestedBy"]) == ("Pending", "apply", "alice")
    assert approval["plan"] == "1 to add, 0 to change, 0 to destroy"
    assert approval["monthlyCost"] == "1.00"
    assert approval["approvers"] == [{"kind": "Group", "name": "leads"}]
    assert approval["rules"] == [{"policy": "needs-a-lead", "rule": "lead", "message": "a lead approves"}]
    assert (
        approval["command"]
        == f"kubectl annotate servicerequest -n {namespace} db blacktop.dev/approve={digest} --overwrite"
    )
    ready = h.condition("db", namespace)
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", Reason.AWAITING_APPROVAL)
    assert f"plan {digest} (1 to add, 0 to change, 0 to destroy) awaits approval by Group leads" in ready["message"]
    assert h.condition("db", namespace, "Reconciling") is not None  # waiting, not stalled (kstatus: in progress)
    # A resumed operator plans again: the same plan, still waiting since it first did.
    h.clock.advance(300)
    assert await h.reconcile("db", namespace) is None
    again = h.status("db", namespace)["approval"]
    assert (again["planDigest"], again["requestedAt"]) == (digest, approval["requestedAt"])
    assert "apply" not in h.runners.operations

    annotate(h, "db", namespace, **{"blacktop.dev/approve": digest, "blacktop.dev/approved-by": "bob"})
    assert await h.reconcile("db", namespace) is None
    status = h.status("db", namespace)
    assert status["stage"] == "Ready"
    assert h.runners.operations[-2:] == ["apply", "output"]
    done = status["approval"]
    assert (done["state"], done["approvedBy"], done["waitedSeconds"]) == ("Approved", "bob", 300)
    assert done["approvedAt"] == format_time(h.clock.now)
    approved = [m for _, r, m in h.client.events("db") if r == Reason.APPROVED]
    assert approved == [f"apply plan {digest} (1 to add, 0 to change, 0 to destroy) approved by bob after 300s"]
    assert body["metadata"]["uid"] == h.body("db", namespace)["metadata"]["uid"]


@reaches(Reason.AWAITING_APPROVAL, Reason.APPROVAL_SUPERSEDED)
async def test_a_new_spec_voids_the_approval_and_a_plan_without_changes_never_waits(h: Harness) -> None:
    namespace = await ready_world(h)
    h.client.put(approval_policy())
    h.request("db", namespace, size="small")
    assert await h.reconcile("db", namespace) is None
    first = h.status("db", namespace)["approval"]["planDigest"]
    annotate(h, "db", namespace, **{"blacktop.dev/approve": first, "blacktop.dev/approved-by": "bob"})
    assert await h.reconcile("db", namespace) is None
    assert h.status("db", namespace)["stage"] == "Ready"
    body = h.body("db", namespace)
    body["spec"]["parameters"] = {"size": "large"}
    await h.ctx.client.replace(body)  # a new generation: a new plan, the old approval holds for the old one
    h.runners.calls.clear()
    assert await h.reconcile("db", namespace) is None
    status = h.status("db", namespace)
    second = status["approval"]["planDigest"]
    assert second != first
    assert (status["stage"], status["approval"]["state"]) == ("AwaitingApproval", "Pending")
    assert "apply" not in h.runners.operations
    superseded = [m for _, r, m in h.client.events("db") if r == Reason.APPROVAL_SUPERSEDED]
    assert len(superseded) == 1
    assert f"the approval of plan {first} does not apply to the plan now waiting ({second}" in superseded[0]
    # Nothing left to change (e.g. someone applied it by hand): nothing to approve, the request is Ready.
    h.runners.script.changes = False
    h.runners.script.plan = {"resource_changes": []}
    assert await h.reconcile("db", namespace) is None
    status = h.status("db", namespace)
    assert status["stage"] == "Ready"
    assert "approval" not in status  # this Ready needed no human: nothing waits, nothing was approved for it


@reaches(Reason.DRIFT_DETECTED, Reason.AWAITING_APPROVAL, Reason.APPROVED, Reason.DRIFT_CORRECTED)
async def test_a_drift_correction_waits_for_approval_under_correct_with_approval(h: Harness) -> None:
    namespace = await due_for_drift(h, "CorrectWithApproval")
    await drift.check_drift(h.ctx, namespace, "db")
    status = h.status("db", namespace)
    assert status["stage"] == "Ready"  # Ready is provisioning's: the running service is fine
    approval = status["approval"]
    assert (approval["operation"], approval["state"]) == ("drift", "Pending")
    assert approval["rules"][0]["rule"] == "driftPolicy"
    assert approval["approvers"] == [{"kind": "Group", "name": "payments"}]  # no owners: the team
    drifted = h.condition("db", namespace, "Drifted")
    assert drifted is not None
    assert "not corrected yet: the correction plan" in drifted["message"]
    assert "apply" not in h.runners.operations
    assert h.client.event_reasons("db").count(Reason.AWAITING_APPROVAL) == 1
    h.clock.advance(11 * 60)
    await drift.check_drift(h.ctx, namespace, "db")  # the same drift: asked once
    assert h.client.event_reasons("db").count(Reason.AWAITING_APPROVAL) == 1
    annotate(
        h, "db", namespace, **{"blacktop.dev/approve": approval["planDigest"], "blacktop.dev/approved-by": "carol"}
    )
    assert await drift.check_drift(h.ctx, namespace, "db", force=True) is not None  # the approval wakes it
    drifted = h.condition("db", namespace, "Drifted")
    assert drifted is not None
    assert drifted["reason"] == Reason.DRIFT_CORRECTED
    assert h.status("db", namespace)["approval"]["approvedBy"] == "carol"


# -- composition ------------------------------------------------------------------------------------


async def consumer_world(h: Harness) -> str:
    """A Ready environment, `tiny`, and the `consumer` golden path (its module is a test fixture), and a
    request `api` whose inputs are `db`'s endpoint and (sensitive) token; returns the namespace."""
    root = h.ctx.settings.workspace_root.parent / "modules"
    for source in (REPO / "terraform-modules" / "tiny", REPO / "tests" / "fixtures" / "modules" / "consumer"):
        shutil.copytree(source, root / source.name)
    h.ctx.settings = h.ctx.settings.model_copy(update={"modules_root": root})
    h.ctx.modules = ModuleCache(root)
    h.ctx.sources = ModuleSources(
        h.ctx.settings.module_cache_root, root, max_entries=4, max_bytes=1 << 24, timeout=10.0
    )
    namespace = await ready_world(h)
    await h.golden_path(
        {
            "apiVersion": API,
            "kind": "GoldenPath",
            "metadata": {"name": "consumer"},
            "spec": {"description": "c", "module": "consumer", "outputs": [{"name": "endpoint"}]},
        }
    )
    api = h.request("api", namespace, "consumer")
    api["spec"]["inputs"] = [
        {"variable": "upstream", "from": {"serviceRequest": "db", "output": "endpoint"}},
        {"variable": "upstream_token", "from": {"serviceRequest": "db", "output": "token"}},
    ]
    h.client.put(api)
    return namespace


@reaches(Reason.WAITING_FOR_INPUTS, Reason.PROVISIONED, Reason.INPUTS_CHANGED)
async def test_a_consumer_waits_for_its_source_gets_its_outputs_unseen_and_follows_their_changes(h: Harness) -> None:
    namespace = await consumer_world(h)
    failure = await h.reconcile("api", namespace)
    assert isinstance(failure, Failure)
    assert (failure.reason, failure.delay) == (Reason.WAITING_FOR_INPUTS, h.ctx.settings.dependency_retry_seconds)
    status = h.status("api", namespace)
    assert status["stage"] == "WaitingForInputs"
    assert [(i["variable"], i["ready"]) for i in status["inputs"]] == [("upstream", False), ("upstream_token", False)]
    assert (
        "waiting for input(s) from db (for upstream), db (for upstream_token)"
        in h.condition("api", namespace)["message"]
    )
    assert h.runners.opened == []

    h.request("db", namespace, size="small")
    assert await h.reconcile("db", namespace) is None
    assert await h.reconcile("api", namespace) is None
    target = h.runners.opened[-1]
    assert target.variables["upstream"] == "tiny://db.small.svc:8080"
    assert target.variables["upstream_token"] == "s3cr3t-t0ken"
    assert set(target.secrets) == {"tiny://db.small.svc:8080", "s3cr3t-t0ken"}  # redacted from every output
    status = h.status("api", namespace)
    assert status["stage"] == "Ready"
    revision = status["inputs"][0]["revision"]
    assert revision
    assert [i["ready"] for i in status["inputs"]] == [True, True]
    assert "s3cr3t-t0ken" not in json.dumps(h.body("api", namespace))
    assert all("s3cr3t-t0ken" not in m for _, _, m in h.client.events())

    from blacktop.controllers import servicerequest

    assert await servicerequest.reapply_for_inputs(h.ctx, namespace, "api") is False  # nothing changed
    h.runners.script.outputs = {**OUTPUTS, "token": ("a-rotated-token", True)}
    bump_generation(h, "db", namespace)  # a Ready source with unchanged inputs runs no more: change it
    assert await h.reconcile("db", namespace) is None  # the source applied again, with another token
    opened = len(h.runners.opened)
    assert await servicerequest.reapply_for_inputs(h.ctx, namespace, "api") is True
    assert len(h.runners.opened) == opened + 1
    assert h.runners.opened[-1].variables["upstream_token"] == "a-rotated-token"
    assert h.status("api", namespace)["inputs"][1]["revision"] != revision
    assert Reason.INPUTS_CHANGED in h.client.event_reasons("api")
    reapplied = h.ctx.metrics.registry.get_sample_value("blacktop_input_reapplies_total", {"golden_path": "consumer"})
    assert reapplied == 1


@reaches(Reason.WAITING_FOR_DEPENDENTS)
async def test_a_source_is_destroyed_only_after_its_consumers(h: Harness) -> None:
    namespace = await consumer_world(h)
    h.request("db", namespace, size="small")
    assert await h.reconcile("db", namespace) is None
    assert await h.reconcile("api", namespace) is None
    failure = await h.finalize("db", namespace)
    assert isinstance(failure, Failure)
    assert (failure.reason, failure.delay) == (Reason.WAITING_FOR_DEPENDENTS, h.ctx.settings.deletion_poll_seconds)
    assert "waiting for api (they consume its outputs) to be deleted first" in failure.message
    assert "destroy" not in h.runners.operations
    assert await h.finalize("api", namespace) is None  # the consumer's destroy still reads its inputs
    assert h.runners.opened[-1].variables["upstream"] == "tiny://db.small.svc:8080"
    await h.ctx.client.delete(SERVICEREQUESTS, "api", namespace)
    assert await h.finalize("db", namespace) is None
    assert h.runners.operations[-1] == "destroy"


# -- issue 11: tenancy ---------------------------------------------------------------------------------


@reaches(Reason.RESERVED_NAME)
async def test_an_environment_with_a_reserved_name_gets_nothing(h: Harness) -> None:
    from helpers import environment_body

    body = h.client.put(environment_body("monitoring", "other"))  # got in while no webhook ran
    status = await environment.reconcile_environment(h.ctx, body)
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", Reason.RESERVED_NAME)
    assert "the monitoring namespace" in ready.message
    assert h.client.stored(NAMESPACE, "monitoring") is None


@reaches(Reason.COST_LIMIT_EXCEEDED)
async def test_a_policy_over_the_cost_limit_says_so_and_is_enforced_all_the_same(h: Harness) -> None:
    expression = "object.x.split(',').all(a, object.x.split(',').size() > 0)"
    rule = {"name": "slow", "expression": expression, "message": "m"}
    h.client.put(
        {"apiVersion": API, "kind": "GuardrailPolicy", "metadata": {"name": "pricey"}, "spec": {"rules": [rule]}}
    )
    status = await guardrailpolicy.reconcile_policy(h.ctx, "pricey")
    assert status is not None
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert ready.reason == Reason.COST_LIMIT_EXCEEDED
    assert "rule slow: estimated worst-case cost" in ready.message
    assert [p.name for p in await guardrailpolicy.active_policies(h.ctx)] == ["pricey"]


@reaches(Reason.SECRET_CONFLICT)
async def test_a_connection_secret_someone_else_owns_is_left_alone(h: Harness) -> None:
    namespace = await ready_world(h)
    theirs = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db-connection", "namespace": namespace}}
    h.client.put({**theirs, "data": {"mine": "eA=="}})
    h.request("db", namespace, size="small")
    failure = await h.reconcile("db", namespace)
    assert failure is not None
    assert (failure.reason, failure.delay) == (Reason.SECRET_CONFLICT, h.ctx.settings.dependency_retry_seconds)
    ready = h.condition("db", namespace)
    assert ready is not None
    assert "does not belong to this ServiceRequest" in ready["message"]
    assert (h.client.stored(SECRET, "db-connection", namespace) or {})["data"] == {"mine": "eA=="}


@reaches(Reason.MODULE_OUTSIDE_ROOT)
async def test_a_module_with_a_symlink_out_of_the_root_is_refused(h: Harness, tmp_path: Path) -> None:
    from blacktop.terraform.module import ModuleCache

    root = tmp_path / "modules"
    shutil.copytree(REPO / "terraform-modules" / "tiny", root / "tiny")
    (tmp_path / "elsewhere.tf").write_text("")
    (root / "tiny" / "linked.tf").symlink_to(tmp_path / "elsewhere.tf")
    h.ctx.modules = ModuleCache(root)
    name = await h.golden_path()
    status = h.client.stored(GOLDENPATHS, name)
    assert status is not None
    ready = next(c for c in status["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == Reason.MODULE_OUTSIDE_ROOT
    assert "linked.tf in module folder 'tiny' is a symlink" in ready["message"]


@reaches(Reason.ABANDONED)
async def test_an_abandoned_request_goes_without_a_destroy_and_says_what_it_left(h: Harness) -> None:
    namespace = await provisioned(h)
    body = h.body("db", namespace)
    body["metadata"]["annotations"] = {"platform.blacktop.dev/abandon": "true"}
    h.client.put(body)
    assert await h.finalize("db", namespace) is None
    assert "destroy" not in h.runners.operations
    uid = body["metadata"]["uid"]
    state = h.client.stored(SECRET, f"tfstate-default-{uid}", h.ctx.settings.namespace)
    assert state is not None
    assert "terraform_data.service" in state["metadata"]["annotations"]["platform.blacktop.dev/abandoned"]


@reaches()
async def test_a_request_that_never_applied_anything_deletes_at_once(h: Harness) -> None:
    namespace = await ready_world(h)
    h.request("db", namespace, size="small")
    h.runners.fail("init", "Error: Failed to query available provider packages")
    assert isinstance(await h.reconcile("db", namespace), Failure)
    uid = h.body("db", namespace)["metadata"]["uid"]
    assert h.client.stored(SECRET, f"tfstate-default-{uid}", h.ctx.settings.namespace) is not None  # seeded
    assert await h.finalize("db", namespace) is None
    assert "destroy" not in h.runners.operations
    assert h.client.stored(SECRET, f"tfstate-default-{uid}", h.ctx.settings.namespace) is None


@reaches(Reason.LEFTOVER_NOT_DESTROYED, Reason.LEFTOVER_DESTROYED)
async def test_state_left_by_a_request_gone_without_a_destroy_is_destroyed(h: Harness) -> None:
    from blacktop.controllers.leftovers import Sweeper

    namespace = await provisioned(h)
    uid = h.body("db", namespace)["metadata"]["uid"]
    state = h.client.stored(SECRET, f"tfstate-default-{uid}", h.ctx.settings.namespace) or {}
    assert state["metadata"]["annotations"]["platform.blacktop.dev/revision"] == "1"  # destroyed at the revision it ran
    await h.client.delete(SERVICEREQUESTS, "db", namespace)  # its finalizer was removed
    sweeper = Sweeper(h.ctx)
    h.runners.fail("destroy", "Error: dial tcp 127.0.0.1:5432: connection refused")
    left = await sweeper.sweep()
    assert [(v.golden_path, v.reason, v.monthly_cost_cents) for v in left.values()] == [("tiny", "orphaned", 100)]
    assert h.ctx.metrics.inventory.leftover_cents(namespace) == 100  # still counted
    assert h.client.event_reasons("db")[-1] == Reason.LEFTOVER_NOT_DESTROYED
    h.clock.advance(600)
    sweeper._attempts[uid] = (1, 0.0, "retry now")  # due at once (the backoff is monotonic time)
    assert await sweeper.sweep() == {}
    assert h.client.stored(SECRET, f"tfstate-default-{uid}", h.ctx.settings.namespace) is None
    assert h.client.event_reasons("db")[-1] == Reason.LEFTOVER_DESTROYED
    assert h.ctx.metrics.inventory.leftover_cents(namespace) == 0
    # What it destroyed with: the recorded variables, the request's own identity among them.
    assert h.runners.opened[-1].variables["name"] == "db"


class _CachedRequests:
    """The informer cache's ServiceRequests as a test sets them (synced)."""

    def __init__(self, bodies: list[dict[str, Any]]) -> None:
        import threading

        self.synced = threading.Event()
        self.synced.set()
        self.bodies = bodies

    def objects(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return [b for b in self.bodies if namespace is None or b["metadata"]["namespace"] == namespace]


@reaches()
async def test_an_idle_sweep_lists_no_requests_and_a_state_the_cache_misses_is_checked_with_the_api(h: Harness) -> None:
    from types import SimpleNamespace

    from blacktop.controllers.leftovers import Sweeper

    namespace = await provisioned(h)
    body = h.body("db", namespace)
    cache = _CachedRequests([body])
    h.ctx.cache = SimpleNamespace(requests=cache)  # type: ignore[assignment]
    sweeper = Sweeper(h.ctx)
    before = len(h.client.calls)
    assert await sweeper.sweep() == {}
    assert ("list", "ServiceRequest", "") not in h.client.calls[before:]  # every state's request is in the cache
    # A cache a moment behind (the request is not in it yet) orphans nothing: the API server is asked.
    cache.bodies = []
    before = len(h.client.calls)
    assert await sweeper.sweep() == {}
    assert ("list", "ServiceRequest", "") in h.client.calls[before:]
    assert h.client.stored(SECRET, f"tfstate-default-{body['metadata']['uid']}", h.ctx.settings.namespace) is not None


# -- every Reason has a test ------------------------------------------------------------------------


# -- the scorecard: history recorder, scorecard objects and ledger, Feedback --------------------------


async def scorecard_objects(h: Harness) -> dict[str, JSON]:
    return {o["metadata"]["name"]: o for o in await h.client.list(PLATFORMSCORECARDS)}


def verdict(obj: JSON) -> tuple[str, str]:
    met = next(c for c in obj["status"]["conditions"] if c["type"] == "TargetMet")
    return met["status"], met["reason"]


async def recorded(h: Harness, name: str, namespace: str) -> JSON:
    """Let the history recorder see the request as it is (as the watch would), then return its history."""
    await history.record_history(h.ctx, h.body(name, namespace))
    return dict(h.status(name, namespace).get("history") or {})


@reaches(Reason.TARGET_MET, Reason.TARGET_MISSED, Reason.NO_DATA, Reason.NO_TARGET)
async def test_the_scorecard_objects_show_each_figure_its_target_and_its_verdict(h: Harness) -> None:
    h.runners.script.plan = TINY_PLAN  # the apply changes something
    namespace = await provisioned(h)
    assert (await recorded(h, "db", namespace))["changes"][0]["applied"] is True
    first = await scorecard.refresh_scorecard(h.ctx)
    objects = await scorecard_objects(h)
    assert set(objects) == {m.value for m in Metric}
    assert h.ctx.metrics.scorecard.latest is first
    onboarding = objects["team-onboarding"]["status"]
    assert (onboarding["value"], onboarding["target"], verdict(objects["team-onboarding"])) == (
        0,
        "< 30m",
        ("True", "TargetMet"),
    )
    assert objects["change-frequency"]["status"]["value"] == 1
    assert verdict(objects["change-frequency"]) == ("Unknown", "NoTarget")
    assert verdict(objects["developer-satisfaction"]) == ("Unknown", "NoData")
    assert objects["self-service-rate"]["status"]["value"] == 1.0
    ledger = h.client.stored(CONFIGMAP, scorecard.LEDGER_CONFIGMAP, h.ctx.settings.namespace)
    assert ledger is not None
    assert [t["name"] for t in json.loads(ledger["data"]["ledger.json"])["teams"]] == ["payments"]
    # A second team waits an hour without a Ready request: onboarding misses its target, an Event says so.
    await h.environment("search-dev", "search")
    h.clock.advance(3600)
    await scorecard.refresh_scorecard(h.ctx)
    objects = await scorecard_objects(h)
    assert verdict(objects["team-onboarding"]) == ("False", "TargetMissed")
    assert objects["team-onboarding"]["status"]["display"] == "1h"
    assert h.client.event_reasons("team-onboarding") == ["Reconciled", "TargetMet", "TargetMissed"]


@reaches()
async def test_a_restarted_operator_computes_the_same_scorecard_and_writes_nothing(h: Harness) -> None:
    h.runners.script.plan = TINY_PLAN
    namespace = await provisioned(h)
    await recorded(h, "db", namespace)
    before = await scorecard.refresh_scorecard(h.ctx)
    # A new process: a fresh Context (an empty book, new metrics) on the same cluster.
    restarted = Context(h.client, h.ctx.settings, runners=h.runners, metrics=create_metrics(), clock=h.clock)
    h.client.calls.clear()
    after = await scorecard.refresh_scorecard(restarted)
    assert after.figures == before.figures
    writes = [(verb, kind) for verb, kind, _ in h.client.calls if verb not in ("get", "list")]
    assert writes == []  # the same figures, the same ledger: nothing to write
    assert await history.record_history(restarted, h.body("db", namespace)) is None  # nor any history


@reaches(Reason.INVALID_TARGET)
async def test_a_target_the_crd_would_refuse_is_reported_not_used(h: Harness) -> None:
    h.client.put(
        {
            "apiVersion": API,
            "kind": "PlatformScorecard",
            "metadata": {"name": "change-lead-time"},
            "spec": {"target": "soon"},
        }
    )
    await scorecard.refresh_scorecard(h.ctx)
    obj = (await scorecard_objects(h))["change-lead-time"]
    assert verdict(obj) == ("Unknown", "InvalidTarget")
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidTarget")
    assert "fix spec.target" in ready["message"]


@reaches()
async def test_a_request_that_fails_then_is_fixed_by_hand_has_its_history_recorded(h: Harness) -> None:
    namespace = await ready_world(h)
    h.request("db", namespace, size="small")
    h.runners.fail("plan", "Error: the tiny service failed to start")
    assert await h.reconcile("db", namespace) is not None
    failed_at = h.status("db", namespace)["lastRun"]["finishedAt"]
    trouble = (await recorded(h, "db", namespace))["trouble"]
    assert (trouble["failureClass"], trouble["since"]) == ("PlanFailed", failed_at)
    h.clock.advance(120)
    stored = h.body("db", namespace)
    stored["spec"]["parameters"]["size"] = "medium"  # the developer's fix: generation 2
    h.client.put(stored | {"metadata": {**stored["metadata"], "generation": 2}})
    mid = await recorded(h, "db", namespace)
    assert [(s["kind"], s["generation"]) for s in mid["humanSteps"]] == [("ManualRetry", 2)]
    h.clock.advance(30)
    assert await h.reconcile("db", namespace) is None
    done = await recorded(h, "db", namespace)
    (episode,) = done["episodes"]
    assert episode["recoverySeconds"] == 150
    assert "trouble" not in done
    assert [c["generation"] for c in done["changes"]] == [2]
    # A platform admin's edit, told by admission, is a human step too.
    admission.note_platform_edit(
        h.ctx,
        {"metadata": {"namespace": namespace, "name": "db", "generation": 2}},
        None,
        {"groups": ["system:masters"]},
    )
    assert [s["kind"] for s in (await recorded(h, "db", namespace))["humanSteps"]] == ["ManualRetry", "PlatformEdit"]


@reaches()
async def test_a_deleted_request_goes_into_the_ledger_and_keeps_counting(h: Harness) -> None:
    namespace = await ready_world(h)
    h.request("db", namespace, size="small")
    h.runners.fail("plan")
    await h.reconcile("db", namespace)
    await recorded(h, "db", namespace)
    await scorecard.refresh_scorecard(h.ctx)
    gone = h.body("db", namespace)
    await h.client.delete(SERVICEREQUESTS, "db", namespace)
    await history.record_history(h.ctx, gone, deleted=True)  # the DELETED event: before any refresh saw it deleting
    h.client.refuse("apply", "ConfigMap", InvalidError(422, "Invalid", "too large"))
    with pytest.raises(InvalidError):
        await scorecard.refresh_scorecard(h.ctx)  # the ledger cannot be written: the facts are kept for later
    del h.client.refusals[("apply", "ConfigMap")]
    card = await scorecard.refresh_scorecard(h.ctx)
    assert card.figure(Metric.WEEKLY_TROUBLE).value == 1
    assert card.figure(Metric.SELF_SERVICE_RATE).value == 0.0
    ledger = h.client.stored(CONFIGMAP, scorecard.LEDGER_CONFIGMAP, h.ctx.settings.namespace) or {}
    (retired,) = json.loads(ledger["data"]["ledger.json"])["retiredRequests"]
    assert (retired["team"], retired["goldenPath"]) == ("payments", "tiny")


@reaches(Reason.COUNTED, Reason.ENVIRONMENT_NOT_FOUND, Reason.GOLDEN_PATH_NOT_FOUND)
async def test_feedback_says_how_it_counts(h: Harness) -> None:
    namespace = await ready_world(h)

    def rating(name: str, ns: str, **spec: Any) -> JSON:
        body = {"apiVersion": API, "kind": "Feedback", "metadata": {"name": name, "namespace": ns}, "spec": spec}
        return h.client.put(body)

    counted = await feedback.reconcile_feedback(h.ctx, rating("ok", namespace, score=9, goldenPath="tiny"))
    assert (counted.team, counted.category, counted.quarter) == ("payments", "Promoter", "2026-Q1")
    stray = await feedback.reconcile_feedback(h.ctx, rating("stray", "default", score=3))
    assert stray.team is None
    assert "not counted" in stray.conditions[0].message
    unknown = await feedback.reconcile_feedback(h.ctx, rating("gone", namespace, score=6, goldenPath="retired"))
    assert unknown.conditions[0].reason == Reason.GOLDEN_PATH_NOT_FOUND
    assert "of the platform only" in unknown.conditions[0].message


def test_every_reason_a_controller_sets_is_reached_by_a_test() -> None:
    every = {value for name, value in vars(Reason).items() if name.isupper()}
    reached = {reason for reasons in REACHED_BY.values() for reason in reasons}
    assert set(NOT_SET_BY_CONTROLLERS) <= every
    assert every - set(NOT_SET_BY_CONTROLLERS) - reached == set()
    assert reached & set(NOT_SET_BY_CONTROLLERS) == set()


def test_a_waiter_cancelled_just_before_its_turn_never_leaks_a_slot() -> None:
    async def scenario() -> tuple[int, int, bool]:
        slots = FairSlots(total=1, per_team=1)
        await slots.acquire("a", slots.new_run())
        waiter = asyncio.create_task(slots.acquire("b", slots.new_run()))
        await asyncio.sleep(0)
        waiter.cancel()  # cancelled, and before it wakes up ...
        slots.release("a")  # ... the slot frees: it must not go to the cancelled waiter
        with pytest.raises(asyncio.CancelledError):
            await waiter
        later = asyncio.create_task(slots.acquire("c", slots.new_run()))
        await asyncio.sleep(0)
        return slots.in_use, slots.waiting, later.done()

    assert asyncio.run(scenario()) == (1, 0, True)  # the next one got it
