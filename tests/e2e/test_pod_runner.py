"""Pod mode on the session's node: every run a pod of its own, with the least privilege it needs.

The operator (a process on the host, BLACKTOP_RUNNER=pod) runs each request's OpenTofu in a runner
pod from the operator image built here and imported into the node: provision, update and destroy; a
module looking for a ServiceAccount token finds none at the standard path, only its run's own; the
runner's account may touch its request's state and nothing else, and a tenant cannot see any of it;
a runner pod deleted mid-apply is a RunnerEvicted failure that the retry recovers from; an operator
SIGKILLed mid-apply leaves its runner working, and the next operator process waits for that pod
(RunnerAdopted) instead of running beside it; a pod over its memory limit is RunnerOutOfMemory until
the platform team raises the golden path's limit. The session's own operator is stopped meanwhile
(it would reconcile the same requests) and started again afterwards.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import (
    API,
    REPO,
    Kubectl,
    OperatorProcess,
    apply_json,
    apply_ready,
    condition,
    event_reasons,
    get,
    make_environment,
    patch_parameters,
    secret_values,
    service_request,
    tiny_golden_path,
    unique,
    wait_for,
    wait_ready,
)
from pgserver import PostgresServer

pytestmark = pytest.mark.e2e

NS = "blacktop-system"
RUNNERS = "app.kubernetes.io/component=runner"
REQUEST_LABEL = "platform.blacktop.dev/request-uid"
TINY, PROBE, POSTGRES, OOM = "pod-tiny", "pod-token-probe", "pod-postgres", "pod-tiny-oom"
ADMIN_SECRET = "pod-postgres-admin"
JSON = dict[str, Any]


@pytest.fixture(scope="module")
def runner_image(cluster: Any) -> str:
    """The operator image built from this checkout (cached: the chart's test builds the same), in the
    session node's containerd."""
    from blacktop.localcluster import images

    if not hasattr(cluster, "import_image"):  # BLACKTOP_TEST_KUBECONFIG: the cluster must have it already
        return images.operator_image_name()
    started = time.monotonic()
    archive = images.build_operator_image()
    built = time.monotonic()
    cluster.import_image(archive)
    print(f"operator image: built {built - started:.1f}s, imported {time.monotonic() - built:.1f}s")
    return archive.name


@pytest.fixture(scope="module")
def postgres(cluster: Any) -> Iterator[PostgresServer]:
    """PostgreSQL on the host, where runner pods reach it (the node link's host end)."""
    network = getattr(cluster, "network", None)
    server = PostgresServer(host=network.host_ip if network is not None else "127.0.0.1")
    server.start()
    yield server
    server.remove()


@pytest.fixture(scope="module")
def pod_operator(
    operator: OperatorProcess,
    installed: Path,
    modules_root: Path,
    runner_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """An operator in pod mode instead of the session's (which is started again afterwards)."""
    operator.stop()
    own = OperatorProcess(
        installed,
        tmp_path_factory.mktemp("pod-operator") / "operator.log",
        env={
            "BLACKTOP_MODULES_ROOT": str(modules_root),
            "BLACKTOP_RUNNER": "pod",
            "BLACKTOP_RUNNER_IMAGE": runner_image,
            "BLACKTOP_MAX_CONCURRENT_RUNS": "4",
            # Quick retries: a failure test waits for the retry after a RunnerEvicted, not for backoff.
            "BLACKTOP_BACKOFF_BASE_SECONDS": "2",
        },
    )
    own.start()
    yield own
    own.stop()
    operator.start()


@pytest.fixture(scope="module")
def catalog(kubectl: Kubectl, pod_operator: OperatorProcess, postgres: PostgresServer) -> Iterator[None]:
    admin = yaml.safe_load((REPO / "examples" / "postgres-admin-secret.yaml").read_text())
    admin["metadata"]["name"], admin["stringData"] = ADMIN_SECRET, postgres.env
    apply_json(kubectl, admin)
    database = yaml.safe_load((REPO / "examples" / "goldenpath-postgres.yaml").read_text())
    database["metadata"]["name"] = POSTGRES
    database["spec"]["credentialsSecretRef"]["name"] = ADMIN_SECRET
    oom = tiny_golden_path(OOM)
    oom["spec"]["runner"] = {"resources": {"limits": {"memory": "20Mi"}}}
    probe = {
        "apiVersion": API,
        "kind": "GoldenPath",
        "metadata": {"name": PROBE},
        "spec": {
            "description": "Looks for ServiceAccount tokens (tests/fixtures/modules/token-probe).",
            "module": "token-probe",
            "outputs": [{"name": "standard_token_found"}, {"name": "run_token_subject"}],
        },
    }
    for body in (tiny_golden_path(TINY), probe, database, oom):
        apply_ready(kubectl, body)
    yield
    kubectl("delete", "goldenpath", TINY, PROBE, POSTGRES, OOM, "--ignore-not-found", "--wait=false")
    kubectl("delete", "secret", ADMIN_SECRET, "-n", NS, "--ignore-not-found")


@pytest.fixture(scope="module")
def environment(kubectl: Kubectl, catalog: None) -> Iterator[str]:
    name = make_environment(kubectl, unique("pods"), "payments")
    yield name
    # Each test deleted its requests; the namespace goes in the background.
    kubectl("delete", "environment", name, "--ignore-not-found", "--wait=false", check=False)


def runner_pods(kubectl: Kubectl, uid: str | None = None) -> list[JSON]:
    selector = RUNNERS + (f",{REQUEST_LABEL}={uid}" if uid else "")
    pods: list[JSON] = json.loads(kubectl("get", "pods", "-n", NS, "-l", selector, "-o", "json").stdout)["items"]
    return pods


def run_objects(kubectl: Kubectl, uid: str) -> list[str]:
    """Everything left of the runs of the request ``uid`` (Secrets, accounts, roles, bindings, pods)."""
    kinds = "pods,serviceaccounts,secrets,roles.rbac.authorization.k8s.io,rolebindings.rbac.authorization.k8s.io"
    out = kubectl("get", kinds, "-n", NS, "-l", f"{REQUEST_LABEL}={uid}", "-o", "name").stdout
    return out.split()


def running(pod: JSON) -> bool:
    return (pod.get("status") or {}).get("phase") not in {"Succeeded", "Failed"}


class PodWatch:
    """Samples the runner pods of one request in the background: every pod seen, and how many ran at once."""

    def __init__(self, kubectl: Kubectl, uid: str) -> None:
        self.kubectl, self.uid = kubectl, uid
        self.seen: dict[str, JSON] = {}
        self.most_at_once = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PodWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _sample(self) -> None:
        while not self._stop.is_set():
            pods = runner_pods(self.kubectl, self.uid)
            self.most_at_once = max(self.most_at_once, sum(1 for p in pods if running(p)))
            self.seen.update({p["metadata"]["name"]: p for p in pods})
            time.sleep(0.2)


def uid_of(kubectl: Kubectl, name: str, namespace: str) -> str:
    body = wait_for(lambda: get(kubectl, "servicerequest", name, "-n", namespace), what=f"request {name}")
    return str(body["metadata"]["uid"])


def stage_is(kubectl: Kubectl, name: str, namespace: str, stage: str) -> JSON | None:
    sr = get(kubectl, "servicerequest", name, "-n", namespace)
    return sr if ((sr or {}).get("status") or {}).get("stage") == stage else None


def test_provision_update_and_destroy_each_run_in_a_pod_of_its_own(kubectl: Kubectl, environment: str) -> None:
    name = unique("svc")
    apply_json(kubectl, service_request(name, environment, TINY, size="small"))
    uid = uid_of(kubectl, name, environment)
    with PodWatch(kubectl, uid) as watch:
        first = wait_ready(kubectl, name, environment, timeout=180)
        assert secret_values(kubectl, f"{name}-connection", environment)["endpoint"] == f"tiny://{name}.small.svc:8080"
        patch_parameters(kubectl, name, environment, size="medium")
        updated = wait_ready(kubectl, name, environment, timeout=180)
        assert updated["metadata"]["generation"] == 2
        assert secret_values(kubectl, f"{name}-connection", environment)["endpoint"] == f"tiny://{name}.medium.svc:8080"
        kubectl("delete", "servicerequest", name, "-n", environment, "--timeout=180s")
    runs = {first["status"]["lastRun"]["id"], updated["status"]["lastRun"]["id"]}
    # One pod per run (apply, apply, destroy), named by the run, one at a time, its token its own.
    names = {f"blacktop-run-{run}" for run in runs}
    assert names <= set(watch.seen), f"runner pods seen: {sorted(watch.seen)}"
    assert len(watch.seen) == 3
    assert watch.most_at_once == 1
    for pod in watch.seen.values():
        spec = pod["spec"]
        assert spec["serviceAccountName"] == pod["metadata"]["name"]
        assert spec["automountServiceAccountToken"] is False
        mounts = [m["mountPath"] for c in spec["containers"] for m in c["volumeMounts"]]
        assert not [m for m in mounts if m.startswith("/var/run/secrets/kubernetes.io")], mounts
        assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    # Nothing is left behind: state, lock, and every run's objects are gone.
    assert get(kubectl, "secret", f"tfstate-default-{uid}", "-n", NS) is None
    wait_for(lambda: not run_objects(kubectl, uid) or None, timeout=60, what="the runs' objects to be gone")


def test_a_module_finds_no_operator_token_only_its_runs_own(kubectl: Kubectl, environment: str) -> None:
    name = unique("probe")
    apply_json(kubectl, service_request(name, environment, PROBE))
    done = wait_ready(kubectl, name, environment, timeout=180)
    seen = secret_values(kubectl, f"{name}-connection", environment)
    assert seen["standard_token_found"] == "false"
    run = done["status"]["lastRun"]["id"]
    assert seen["run_token_subject"] == f"system:serviceaccount:{NS}:blacktop-run-{run}"
    kubectl("delete", "servicerequest", name, "-n", environment, "--timeout=180s")


def event_messages(kubectl: Kubectl, name: str, namespace: str, reason: str) -> list[str]:
    """The messages of the Events with ``reason`` about the object ``name``."""
    events = json.loads(
        kubectl("get", "events", "-n", namespace, f"--field-selector=involvedObject.name={name}", "-o", "json").stdout
    )
    return [e["message"] for e in events["items"] if e["reason"] == reason]


def can(kubectl: Kubectl, who: str, *args: str) -> bool:
    return kubectl("auth", "can-i", *args, f"--as={who}", check=False).stdout.strip() == "yes"


def test_a_runner_deleted_mid_apply_is_runner_evicted_and_the_retry_recovers(
    kubectl: Kubectl, environment: str, postgres: PostgresServer, pod_operator: OperatorProcess
) -> None:
    name = unique("evict")
    database = f"{environment}__{name}".replace("-", "_")  # <environment>__<database> on the server
    postgres.pause()  # connections hang: the apply waits in CREATE ROLE
    try:
        apply_json(kubectl, service_request(name, environment, POSTGRES, database=name.replace("-", "_")))
        applying = wait_for(lambda: stage_is(kubectl, name, environment, "Applying"), timeout=180, what="the apply")
        uid, run = applying["metadata"]["uid"], applying["status"]["lastRun"]["id"]
        pod_name = f"blacktop-run-{run}"
        (pod,) = [p for p in runner_pods(kubectl, uid) if p["metadata"]["name"] == pod_name]
        # The runner's account may read and write its request's state, read its lock, nothing else.
        who = f"system:serviceaccount:{NS}:{pod_name}"
        assert can(kubectl, who, "get", f"secret/tfstate-default-{uid}", "-n", NS)
        assert can(kubectl, who, "patch", f"secret/tfstate-default-{uid}", "-n", NS)
        assert can(kubectl, who, "get", f"lease/lock-tfstate-default-{uid}", "-n", NS)
        assert not can(kubectl, who, "update", f"lease/lock-tfstate-default-{uid}", "-n", NS)
        assert not can(kubectl, who, "get", f"secret/{ADMIN_SECRET}", "-n", NS)
        assert not can(kubectl, who, "list", "secrets", "-n", NS)
        assert not can(kubectl, who, "create", "pods", "-n", NS)
        assert not can(kubectl, who, "get", "secrets", "-n", environment)
        # The credentials reach that pod by reference only; the operator's environment never has them.
        env = pod["spec"]["containers"][0]["env"]
        assert {"name": ADMIN_SECRET, "key": "PGPASSWORD"} in [
            e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e
        ]
        assert postgres.password not in json.dumps(pod)
        assert pod_operator.proc is not None
        assert postgres.password not in Path(f"/proc/{pod_operator.proc.pid}/environ").read_text(errors="replace")
        # A tenant of the environment sees none of it.
        tenant = ["--as=dev@example.com", "--as-group=payments"]
        for args in (["get", "pods"], ["get", "secrets"], ["logs", pod_name]):
            refused = kubectl(*args, "-n", NS, *tenant, check=False)
            assert refused.returncode != 0
            assert "forbidden" in refused.stderr.lower(), refused.stderr

        kubectl("delete", "pod", pod_name, "-n", NS, "--wait=false")
        evicted = wait_for(
            lambda: event_messages(kubectl, name, environment, "RunnerEvicted"), timeout=120, what="RunnerEvicted"
        )
        assert f"runner pod {pod_name} was deleted" in evicted[0]
    finally:
        postgres.resume()
    done = wait_ready(kubectl, name, environment, timeout=240)
    assert done["status"]["lastRun"]["id"] != run
    assert postgres.query(f"SELECT count(*) FROM pg_roles WHERE rolname = '{database}'") == ["1"]
    assert postgres.query(f"SELECT count(*) FROM pg_database WHERE datname = '{database}'") == ["1"]
    values = secret_values(kubectl, f"{name}-connection", environment)
    assert postgres.query("SELECT current_user", uri=values["uri"]) == [database]
    kubectl("delete", "servicerequest", name, "-n", environment, "--timeout=180s")
    assert postgres.query(f"SELECT 1 FROM pg_database WHERE datname = '{database}'") == []


def test_an_operator_killed_mid_apply_leaves_its_runner_to_the_next_one_which_waits_for_it(
    kubectl: Kubectl, environment: str, postgres: PostgresServer, pod_operator: OperatorProcess
) -> None:
    name = unique("adopt")
    database = f"{environment}__{name}".replace("-", "_")  # <environment>__<database> on the server
    postgres.pause()
    try:
        apply_json(kubectl, service_request(name, environment, POSTGRES, database=name.replace("-", "_")))
        uid = uid_of(kubectl, name, environment)
        with PodWatch(kubectl, uid) as watch:
            applying = wait_for(lambda: stage_is(kubectl, name, environment, "Applying"), timeout=180, what="the apply")
            dead_run = applying["status"]["lastRun"]
            pod_operator.kill()  # SIGKILL: nothing of the operator runs its cleanup
            # The runner works on, under the dead run's lock.
            (left,) = [p for p in runner_pods(kubectl, uid) if running(p)]
            assert left["metadata"]["name"] == f"blacktop-run-{dead_run['id']}"
            lease = get(kubectl, "lease", f"lock-tfstate-default-{uid}", "-n", NS)
            assert lease is not None
            assert lease["spec"]["holderIdentity"] == dead_run["lockId"]
            pod_operator.start()
            wait_for(
                lambda: "RunnerAdopted" in event_reasons(kubectl, name, environment) or None,
                timeout=120,
                what="the new operator to wait for the runner it found",
            )
            postgres.resume()  # the adopted apply goes on
            done = wait_ready(kubectl, name, environment, timeout=240)
    finally:
        postgres.resume()
    # Never two runners of the request at once: the new run's pod came after the adopted one.
    assert watch.most_at_once == 1
    assert f"blacktop-run-{dead_run['id']}" in watch.seen
    assert done["status"]["lastRun"]["id"] != dead_run["id"]
    assert {"RunnerAdopted", "StateLockRecovered"} <= event_reasons(kubectl, name, environment)
    assert postgres.query(f"SELECT count(*) FROM pg_roles WHERE rolname = '{database}'") == ["1"]
    assert postgres.query(f"SELECT count(*) FROM pg_database WHERE datname = '{database}'") == ["1"]
    values = secret_values(kubectl, f"{name}-connection", environment)
    assert postgres.query("SELECT current_user", uri=values["uri"]) == [database]
    kubectl("delete", "servicerequest", name, "-n", environment, "--timeout=180s")


def test_a_runner_out_of_memory_says_so_until_the_golden_path_gives_it_more(kubectl: Kubectl, environment: str) -> None:
    name = unique("oom")
    apply_json(kubectl, service_request(name, environment, OOM))
    said = wait_for(
        lambda: event_messages(kubectl, name, environment, "RunnerOutOfMemory"), timeout=120, what="RunnerOutOfMemory"
    )
    assert "raise the golden path's runner.resources.limits.memory" in said[0]
    kept = [p for p in runner_pods(kubectl, uid_of(kubectl, name, environment)) if not running(p)]
    assert kept, "the failed run's pod is kept for kubectl logs"
    # The platform team raises the limit; the request recovers by itself on its next retry.
    kubectl(
        "patch",
        "goldenpath",
        OOM,
        "--type=merge",
        "-p",
        '{"spec":{"runner":{"resources":{"limits":{"memory":"512Mi"}}}}}',
    )
    done = wait_ready(kubectl, name, environment, timeout=180)
    assert (condition(done) or {}).get("reason") == "Provisioned"
    kubectl("delete", "servicerequest", name, "-n", environment, "--timeout=180s")
