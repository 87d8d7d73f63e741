"""Pod mode's pure parts: what a run's objects grant and hide, what a runner pod's status means, which
leftovers go, and what travels through the exchange Secret. The e2e tests (tests/e2e/test_pod_runner.py)
prove the same on a real node."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from blacktop.api.conditions import Reason
from blacktop.config import Settings
from blacktop.runners import pods
from blacktop.runners.exchange import Answer, Command, ResultTooLargeError, decode_answer, encode_answer
from blacktop.terraform.errors import Classification
from blacktop.terraform.runner import Outputs, PlanResult, RunIdentity, RunnerOptions, RunResult, RunTarget, ShownPlan
from blacktop.terraform.state import state_of

pytestmark = pytest.mark.unit

NS = "blacktop-system"
UID = "0f6c2a44-5d1e-4a9b-9c3e-1d2f3a4b5c6d"
RUN = RunIdentity(id="a1b2c3d4e5f6", lock_id="7e57-10ck", operation="apply")
SECRET_VALUE = "hunter2-admin-password"
SETTINGS = Settings(runner="pod", runner_image="example.com/blacktop:1", namespace=NS)
ACCOUNT = {"metadata": {"name": pods.run_name(RUN), "uid": "sa-uid"}}


def target(credentials_ns: str = NS, **runner: Any) -> RunTarget:
    return RunTarget(
        name="payments-dev-db-0f6c2a44",
        module=Path("/modules/tiny"),
        root=Path("/modules"),
        variables={"name": "db", "size": "small"},
        credentials={"PGPASSWORD": SECRET_VALUE, "PGHOST": "10.0.0.1", "tls.crt": "not-an-env-name"},
        state=state_of(NS, UID),
        credentials_secret=(credentials_ns, "postgres-admin"),
        runner=RunnerOptions(**runner),
        request="payments-dev/db",
    )


def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["spec"]["containers"]
    return dict(only)


def test_a_runner_pod_runs_unprivileged_with_only_its_own_token() -> None:
    pod = pods.pod(SETTINGS, target(), RUN, ACCOUNT)
    spec, box = pod["spec"], container(pod)
    assert spec["serviceAccountName"] == "blacktop-run-a1b2c3d4e5f6"
    assert spec["automountServiceAccountToken"] is False  # the standard token path stays empty
    assert spec["enableServiceLinks"] is False
    assert spec["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] == pods.deadline_seconds(SETTINGS) > 0
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = box["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert box["image"] == "example.com/blacktop:1"
    assert box["args"] == ["runner"]
    # The one token: the run's own account's, projected where the standard path is not.
    mounts = {m["name"]: m["mountPath"] for m in box["volumeMounts"]}
    assert mounts["token"] == pods.TOKEN_DIR != "/var/run/secrets/kubernetes.io/serviceaccount"
    assert all(not path.startswith("/var/run/secrets") for path in mounts.values())
    (token,) = [v for v in spec["volumes"] if v["name"] == "token"]
    sources = token["projected"]["sources"]
    assert [s for s in sources if "serviceAccountToken" in s] == [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}
    ]
    # Owned by its ServiceAccount, labelled with its request and run.
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "sa-uid"
    assert pod["metadata"]["labels"][pods.LABEL_REQUEST] == UID
    assert pod["metadata"]["labels"][pods.LABEL_RUN] == RUN.id


def test_credentials_reach_the_runner_by_reference_never_by_value() -> None:
    pod = pods.pod(SETTINGS, target(), RUN, ACCOUNT)
    env = container(pod)["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
    assert refs == {
        "PGHOST": {"name": "postgres-admin", "key": "PGHOST"},
        "PGPASSWORD": {"name": "postgres-admin", "key": "PGPASSWORD"},
    }
    assert SECRET_VALUE not in json.dumps(pod)
    values = {e["name"]: e.get("value") for e in env}
    assert values["BLACKTOP_RUN_LOCK_ID"] == RUN.lock_id
    assert values["BLACKTOP_RUN_CREDENTIALS"] == "PGHOST,PGPASSWORD"
    # Credentials come first: a credential named like one of the runner's own variables cannot win.
    names = [e["name"] for e in env]
    assert names.index("PGPASSWORD") < names.index("BLACKTOP_RUN_LOCK_ID")
    # Nothing to copy when the pod can reference the Secret where it is.
    inputs = pods.inputs_secret(target(), RUN, ACCOUNT, pods.bundle({"main.tf": b""}))
    assert not [k for k in inputs["data"] if k.startswith(pods.CREDENTIAL_PREFIX)]


def test_credentials_in_another_namespace_are_copied_into_the_runs_own_secret() -> None:
    elsewhere = target(credentials_ns="platform-secrets")
    pod = pods.pod(SETTINGS, elsewhere, RUN, ACCOUNT)
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(pod)["env"] if "valueFrom" in e}
    assert refs["PGPASSWORD"] == {"name": "blacktop-run-a1b2c3d4e5f6-inputs", "key": "credential.PGPASSWORD"}
    assert SECRET_VALUE not in json.dumps(pod)
    inputs = pods.inputs_secret(elsewhere, RUN, ACCOUNT, pods.bundle({"main.tf": b""}))
    assert base64.b64decode(inputs["data"]["credential.PGPASSWORD"]).decode() == SECRET_VALUE
    assert inputs["immutable"] is True
    assert inputs["metadata"]["ownerReferences"][0]["uid"] == "sa-uid"
    # ... and only the module, the variables and the values to redact become files in the pod.
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "inputs"]
    assert [item["key"] for item in volume["secret"]["items"]] == [pods.MODULE_KEY, pods.VARIABLES_KEY, pods.REDACT_KEY]
    # Inputs from other requests are redacted in the pod like its credentials.
    consumer = dataclasses.replace(elsewhere, secrets=("an-input-token",))
    redact = pods.inputs_secret(consumer, RUN, ACCOUNT, pods.bundle({"main.tf": b""}))["data"][pods.REDACT_KEY]
    assert json.loads(base64.b64decode(redact)) == ["an-input-token"]


def test_resources_come_from_the_golden_path_with_the_operators_defaults() -> None:
    # A limit below the default request becomes the request too (Kubernetes refuses request > limit).
    small = container(pods.pod(SETTINGS, target(limits={"memory": "16Mi"}), RUN, ACCOUNT))["resources"]
    assert small["requests"]["memory"] == small["limits"]["memory"] == "16Mi"
    assert pods.quantity("1.5Gi") == 1.5 * 2**30
    assert pods.quantity("250m") == 0.25
    with pytest.raises(ValueError, match="not a quantity"):
        pods.quantity("lots")
    pod = pods.pod(SETTINGS, target(limits={"memory": "2Gi"}, requests={"cpu": "50m"}), RUN, ACCOUNT)
    assert container(pod)["resources"] == {
        "requests": {"cpu": "50m", "memory": SETTINGS.runner_memory_request},
        "limits": {"cpu": SETTINGS.runner_cpu_limit, "memory": "2Gi"},
    }
    assert (
        container(pods.pod(SETTINGS, target(image="example.com/own:2"), RUN, ACCOUNT))["image"] == "example.com/own:2"
    )
    with pytest.raises(ValueError, match="BLACKTOP_RUNNER_IMAGE"):
        pods.pod(Settings(runner="pod"), target(), RUN, ACCOUNT)


def test_the_run_role_grants_its_two_secrets_and_reading_its_lease_nothing_else() -> None:
    role = pods.role(target(), RUN, ACCOUNT)
    state = state_of(NS, UID)
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [state.state_secret, "blacktop-run-a1b2c3d4e5f6"],
            "verbs": ["get", "patch"],
        },
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [state.lock_lease],
            "verbs": ["get"],
        },
    ]
    binding = pods.role_binding(target(), RUN, ACCOUNT)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "blacktop-run-a1b2c3d4e5f6", "namespace": NS}]
    assert pods.service_account(target(), RUN)["automountServiceAccountToken"] is False


def test_a_module_bundle_round_trips_and_refuses_paths_leaving_its_folder() -> None:
    files = {"main.tf": b'output "x" { value = 1 }', "modules/sub/a.tf": b"# sub"}
    packed = base64.b64decode(pods.bundle(files))
    assert pods.unbundle(packed) == files
    for bad in ("../escape.tf", "/etc/passwd", "a/../../b"):
        evil = gzip.compress(json.dumps({"files": {bad: ""}}).encode())
        with pytest.raises(ValueError, match="unsafe path"):
            pods.unbundle(evil)
    with pytest.raises(pods.ModuleTooLargeError, match="at most 512 KiB"):
        pods.bundle({"big.bin": os.urandom(pods.MAX_MODULE_BYTES + 1)})


def _pod(phase: str = "Running", **status: Any) -> dict[str, Any]:
    pod = pods.pod(SETTINGS, target(limits={"memory": "64Mi"}), RUN, ACCOUNT)
    pod["status"] = {"phase": phase, **status}
    return pod


def _state(**state: Any) -> dict[str, Any]:
    return {"containerStatuses": [{"name": "runner", "state": state}]}


@pytest.mark.parametrize(
    ("pod", "reason", "words"),
    [
        (None, Reason.RUNNER_EVICTED, "was deleted"),
        (
            {
                **_pod(**_state(running={})),
                "metadata": {**_pod()["metadata"], "deletionTimestamp": "2026-03-01T09:00:00Z"},
            },
            Reason.RUNNER_EVICTED,
            "was deleted",
        ),
        (
            _pod("Failed", reason="Evicted", message="The node was low on memory."),
            Reason.RUNNER_EVICTED,
            "low on memory",
        ),
        (_pod("Failed", reason="DeadlineExceeded"), Reason.TIMEOUT, "deadline"),
        (
            _pod("Failed", **_state(terminated={"reason": "OOMKilled", "exitCode": 137})),
            Reason.RUNNER_OUT_OF_MEMORY,
            "limit 64Mi",
        ),
        (
            _pod("Failed", **_state(terminated={"reason": "Error", "exitCode": 1, "message": "KeyError: 'X'"})),
            Reason.RUNNER_FAILED,
            "KeyError",
        ),
        (
            _pod("Pending", **_state(waiting={"reason": "ImagePullBackOff", "message": "no such image"})),
            Reason.RUNNER_FAILED,
            "runner image",
        ),
        (_pod("Succeeded"), Reason.RUNNER_FAILED, "without answering"),
    ],
)
def test_a_runner_pod_that_cannot_answer_says_why(pod: dict[str, Any] | None, reason: str, words: str) -> None:
    found = pods.failure(pod, "blacktop-run-x")
    assert found is not None
    assert found[0] == reason
    assert words in found[1]


def test_a_running_or_starting_pod_is_no_failure() -> None:
    assert pods.failure(_pod(**_state(running={"startedAt": "now"})), "p") is None
    assert pods.failure(_pod("Pending", **_state(waiting={"reason": "ContainerCreating"})), "p") is None
    unscheduled = _pod(
        "Pending",
        conditions=[{"type": "PodScheduled", "status": "False", "message": "0/1 nodes: Insufficient memory."}],
    )
    assert pods.failure(unscheduled, "p") is None
    assert "Insufficient memory" in pods.not_started(unscheduled, "p", 300)
    assert not pods.started(unscheduled)
    assert pods.terminated(None)
    assert pods.terminated(_pod("Failed"))
    assert not pods.terminated(_pod())


NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _leftover(name: str, age: float, phase: str | None, finished: float | None = None) -> pods.Leftover:
    pod = None
    if phase is not None:
        pod = {"metadata": {"name": name, "annotations": {}}, "status": {"phase": phase}}
        if finished is not None:
            stamp = (NOW - timedelta(seconds=finished)).strftime("%Y-%m-%dT%H:%M:%SZ")
            pod["metadata"]["annotations"][pods.ANNOTATION_FINISHED] = stamp
    return pods.Leftover(name, NOW - timedelta(seconds=age), pod)


def test_failed_runs_are_kept_for_a_while_and_a_few_at_most() -> None:
    runs = [
        _leftover("running", 5000, "Running"),  # may still write: never
        _leftover("mine", 5000, None),  # a run of this process being started
        _leftover("old-failure", 5000, "Succeeded", finished=4000),
        _leftover("no-pod", 5000, None),
        *[_leftover(f"recent-{i}", 500, "Failed", finished=100 + i) for i in range(4)],
    ]
    gone = pods.expired(runs, now=NOW, keep_seconds=600, keep_max=2, active={"mine"})
    # The two oldest of the recent failures go beyond the two kept.
    assert sorted(gone) == ["no-pod", "old-failure", "recent-2", "recent-3"]


def test_what_travels_through_the_exchange_round_trips() -> None:
    assert Command.decode({"command": Command(3, "apply", "abc").encode()}) == Command(3, "apply", "abc")
    assert Command.decode({"command": base64.b64encode(b'{"seq": 1, "operation": "rm -rf"}').decode()}) is None
    plan = {"resource_changes": [{"address": "a.b", "change": {"actions": ["create"]}}]}
    shown = ShownPlan("show", 0, "", "", 0.3, plan=plan, digest="d1g")
    back = decode_answer({"result": encode_answer(Answer(4, shown))})
    assert back is not None
    assert isinstance(back.result, ShownPlan)
    assert (back.seq, back.result.plan, back.result.digest, back.result.summary.add) == (4, plan, "d1g", 1)
    outputs = decode_answer(
        {"result": encode_answer(Answer(5, Outputs("output", 0, "", "", 0.1, values={"p": ("s", True)})))}
    )
    assert outputs is not None
    assert isinstance(outputs.result, Outputs)
    assert outputs.result.values == {"p": ("s", True)}
    failed = RunResult("apply", 1, "", "Error: boom", 1.0, classification=Classification(Reason.APPLY_FAILED))
    again = decode_answer({"result": encode_answer(Answer(6, failed, terminated=True, state_saved=False))})
    assert again is not None
    assert (again.result.reason, again.terminated, again.state_saved) == (Reason.APPLY_FAILED, True, False)
    planned = decode_answer({"result": encode_answer(Answer(2, PlanResult("plan", 2, "~", "", 0.5, ok_codes=(0, 2))))})
    assert planned is not None
    assert isinstance(planned.result, PlanResult)
    assert planned.result.changes
    huge = ShownPlan("show", 0, "", "", 0.1, plan={"x": base64.b64encode(os.urandom(1200 * 1024)).decode()})
    with pytest.raises(ResultTooLargeError, match="at most 900 KiB"):
        encode_answer(Answer(7, huge))
