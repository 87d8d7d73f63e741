"""Blacktop installed by its Helm chart onto a real node, the way a platform team installs it.

`helm install --wait` of charts/blacktop into a cluster of its own (control plane + node) with the
operator image built here and imported into the node: the operator runs as a Pod under the chart's
ServiceAccount and nothing else; the apiserver calls the admission webhook through the chart's
Service with the chart's certificate; the developer portal (portal.enabled) answers through its
Service and signs a ServiceAccount in with the apiserver's TokenReview; an Environment and a
postgres-database request go Ready against a real PostgreSQL on the host, whose database the
Secret's uri reaches; of the chart's two replicas exactly one leads (the coordination Lease), and
deleting the leader Pod in the middle of an apply (running in a runner pod: the chart's pod mode)
hands the Lease to the standby within 15 s, which finishes the work; deleting destroys; `helm
uninstall` leaves only what the README says it keeps (the CRDs and the example catalog).

The tests of this module share one release, in file order: install, use, then uninstall last.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from blacktop.localcluster import LocalCluster, images
from blacktop.runners import pods
from blacktop.terraform.runner import RunIdentity
from chart_support import CHART, JSON, argocd_health, helm
from helpers import (
    REPO,
    Kubectl,
    apply_json,
    condition,
    environment_body,
    event_reasons,
    fetch,
    get,
    http_status,
    secret_values,
    service_request,
    try_apply,
    unique,
    wait_for,
    wait_ready,
)
from pgserver import PostgresServer

pytestmark = pytest.mark.e2e

RELEASE, NAMESPACE = "blacktop", "blacktop-system"  # the namespace the example catalog's credentials name
FULLNAME = RELEASE  # the chart's object names: a release named like the chart is not prefixed twice
OPERATOR_SELECTOR = "app.kubernetes.io/name=blacktop,app.kubernetes.io/component=operator"
LEADER_LEASE = "blacktop-leader"
HEALTHS: list[tuple[str, JSON, str]] = []  # (what, object, expected Argo CD health), checked last


@pytest.fixture(scope="module")
def node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A cluster of its own (the chart installs cluster-wide objects the session's install owns), with
    a node that has the operator image."""
    with LocalCluster(
        tmp_path_factory.mktemp("chart-node"), node=True, images=[images.build_operator_image()]
    ) as local:
        yield local


@pytest.fixture(scope="module")
def admin(node_cluster: LocalCluster) -> Kubectl:
    return Kubectl(node_cluster.kubeconfig)


@pytest.fixture(scope="module")
def postgres(node_cluster: LocalCluster) -> Iterator[PostgresServer]:
    """A real PostgreSQL on the host, listening where Pods reach the host (the node link's host end)."""
    assert node_cluster.network is not None
    server = PostgresServer(host=node_cluster.network.host_ip)
    server.start()
    yield server
    server.remove()


def helm_args(kubeconfig: Path, *settings: str) -> list[str]:
    return [f"--kubeconfig={kubeconfig}", *[arg for setting in settings for arg in ("--set", setting)]]


@pytest.fixture(scope="module")
def release(node_cluster: LocalCluster, admin: Kubectl, postgres: PostgresServer) -> Iterator[str]:
    """The chart installed with `helm install --wait` (its pod Ready), the example catalog on, and the
    platform team's PostgreSQL admin Secret in place first."""
    admin("create", "namespace", NAMESPACE)
    secret = yaml.safe_load((REPO / "examples" / "postgres-admin-secret.yaml").read_text())
    secret["stringData"] = postgres.env
    apply_json(admin, secret)
    started = time.monotonic()
    helm(
        "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--wait", "--timeout=5m",
        "--set", "catalog.enabled=true", "--set", "config.resyncSeconds=10", "--set", "portal.enabled=true",
        kubeconfig=node_cluster.kubeconfig, timeout=360,
    )  # fmt: skip
    print(f"helm install --wait: {time.monotonic() - started:.1f}s")
    yield RELEASE
    # If a test failed before the uninstall test, clean up what it left while the operator still runs.
    if helm("status", RELEASE, "-n", NAMESPACE, kubeconfig=node_cluster.kubeconfig, check=False).returncode == 0:
        admin("delete", "servicerequests", "--all", "-A", "--timeout=180s", check=False)
        admin("delete", "environments", "--all", "--timeout=180s", check=False)
        helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", kubeconfig=node_cluster.kubeconfig, check=False)


def operator_pods(admin: Kubectl) -> list[JSON]:
    pods: list[JSON] = json.loads(admin("get", "pods", "-n", NAMESPACE, "-l", OPERATOR_SELECTOR, "-o", "json").stdout)[
        "items"
    ]
    return pods


def leader(admin: Kubectl) -> str | None:
    """The name of the operator Pod holding the leader Lease (its identity starts with the pod's
    host name, which is the Pod's name)."""
    lease = get(admin, "lease", LEADER_LEASE, "-n", NAMESPACE)
    holder = str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")
    names = [p["metadata"]["name"] for p in operator_pods(admin)]
    return next((name for name in names if holder.startswith(f"{name}_")), None)


def operator_log(admin: Kubectl) -> str:
    return admin("logs", "-n", NAMESPACE, "-l", OPERATOR_SELECTOR, "--tail=-1", check=False).stdout


def test_the_operator_runs_as_pods_under_the_chart_service_account(release: str, admin: Kubectl) -> None:
    pods = operator_pods(admin)
    assert len(pods) == 2  # the chart's default: a leader and a standby (a PodDisruptionBudget keeps one)
    assert get(admin, "poddisruptionbudget", FULLNAME, "-n", NAMESPACE) is not None
    wait_for(lambda: leader(admin), timeout=60, what="one replica to hold the leader Lease")
    for pod in pods:
        _assert_confined(admin, pod)
    # The catalog the leader reconciles is Ready: modules from the image, providers from its offline mirror.
    for golden in ("tiny", "postgres-database"):
        admin("wait", "--for=condition=Ready", f"goldenpath/{golden}", "--timeout=120s")


def _assert_confined(admin: Kubectl, pod: JSON) -> None:
    assert pod["status"]["phase"] == "Running"
    assert (condition(pod, "Ready") or {}).get("status") == "True"
    assert pod["spec"]["nodeName"] == "blacktop-node"
    assert pod["spec"]["serviceAccountName"] == FULLNAME
    container = pod["spec"]["containers"][0]
    assert container["image"] == images.operator_image_name()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == 65532
    # Its identity is the ServiceAccount's: what it may do is exactly what the chart grants.
    sa = f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"
    assert admin("auth", "can-i", "list", "secrets", "-n", "default", f"--as={sa}", check=False).stdout.strip() == "no"
    assert admin("auth", "can-i", "create", "clusterroles", f"--as={sa}", check=False).stdout.strip() == "no"


def broken_policy() -> JSON:
    """A GuardrailPolicy that does not compile: only the operator's webhook can refuse it."""
    return {
        "apiVersion": "platform.blacktop.dev/v1alpha1",
        "kind": "GuardrailPolicy",
        "metadata": {"name": unique("broken")},
        "spec": {"mode": "Enforce", "rules": [{"name": "r", "expression": "object.spec.team ==", "message": "m"}]},
    }


def assert_refused_by_the_webhook(admin: Kubectl, *extra: str) -> None:
    refused = try_apply(admin, broken_policy(), *extra)
    assert refused.returncode != 0
    assert "denied the request" in refused.stderr, refused.stderr
    assert "does not compile" in refused.stderr, refused.stderr
    assert "failed calling webhook" not in refused.stderr, refused.stderr


def test_the_apiserver_calls_the_webhook_through_its_service(release: str, admin: Kubectl) -> None:
    config = get(admin, "validatingwebhookconfiguration", FULLNAME)
    assert config is not None
    assert {w["clientConfig"]["service"]["name"] for w in config["webhooks"]} == {f"{FULLNAME}-webhook"}
    # The operator's own answer comes back (not a call failure), for a dry run and a real apply.
    assert_refused_by_the_webhook(admin, "--dry-run=server")
    assert_refused_by_the_webhook(admin)


def test_the_portal_answers_through_its_service_and_signs_in_with_the_apiservers_answer(
    release: str, admin: Kubectl
) -> None:
    service = get(admin, "service", f"{FULLNAME}-portal", "-n", NAMESPACE)
    assert service is not None
    url = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"
    # Only the leader serves the portal: the Service reaches the leader's Pod (labelled by the leader), not the standby.
    holder = wait_for(lambda: leader(admin), timeout=60, what="a leader")

    def portal_pods() -> set[str] | None:
        found = get(admin, "endpoints", f"{FULLNAME}-portal", "-n", NAMESPACE) or {}
        names = {a["targetRef"]["name"] for s in found.get("subsets") or [] for a in s.get("addresses") or []}
        return names or None

    assert wait_for(portal_pods, timeout=30, what="the portal Service's endpoints") == {holder}
    # Nobody is let in without a token the apiserver accepts.
    wait_for(lambda: http_status(f"{url}/catalog") == 401, timeout=60, what="the portal's sign-in page")
    assert fetch(f"{url}/catalog", "not-a-token")[0] == 401
    # A ServiceAccount's token is reviewed by the apiserver under the chart's RBAC (tokenreviews and
    # subjectaccessreviews), and the catalog page renders the module's README shipped in the image.
    admin("create", "serviceaccount", "portal-visitor", "-n", "default")
    token = admin("create", "token", "portal-visitor", "-n", "default").stdout.strip()

    def shown() -> str | None:
        status, body = fetch(f"{url}/catalog/postgres-database", token)
        return body if status == 200 and "A database of its own on the" in body else None

    page = wait_for(shown, timeout=60, interval=0.5, what="the postgres-database page of the portal")
    assert "system:serviceaccount:default:portal-visitor" in page
    admin("delete", "serviceaccount", "portal-visitor", "-n", "default")


def test_an_environment_and_a_database_go_ready_and_the_database_answers(
    release: str, admin: Kubectl, postgres: PostgresServer
) -> None:
    env = unique("pay")
    apply_json(admin, environment_body(env, "payments"))
    admin("wait", "--for=condition=Ready", f"environment/{env}", "--timeout=120s")
    HEALTHS.append(("environment Ready", get(admin, "environment", env) or {}, "Healthy"))
    name = unique("orders")
    apply_json(admin, service_request(name, env, "postgres-database", database="orders", size="small"))
    ready = wait_ready(admin, name, env, timeout=240)
    HEALTHS.append(("request Ready", ready, "Healthy"))
    values = secret_values(admin, f"{name}-connection", env)
    assert values["host"] == postgres.host
    database = values["database"]
    # The Secret's uri works from the host, as a developer's laptop would use it.
    assert postgres.query("SELECT current_database()", uri=values["uri"]) == [database]
    state = f"tfstate-default-{ready['metadata']['uid']}"
    assert get(admin, "secret", state, "-n", NAMESPACE) is not None
    admin("delete", "servicerequest", name, "-n", env, "--timeout=180s")
    assert postgres.query(f"SELECT 1 FROM pg_database WHERE datname = '{database}'") == []
    assert get(admin, "secret", state, "-n", NAMESPACE) is None
    admin("delete", "environment", env, "--timeout=180s")


def test_deleting_the_leader_pod_mid_apply_leaves_the_work_to_the_standby(
    release: str, admin: Kubectl, postgres: PostgresServer
) -> None:
    env = unique("crash")
    apply_json(admin, environment_body(env, "payments"))
    admin("wait", "--for=condition=Ready", f"environment/{env}", "--timeout=120s")
    name = unique("ledger")
    old_leader = wait_for(lambda: leader(admin), timeout=60, what="a leader")
    (standby,) = [p["metadata"]["name"] for p in operator_pods(admin) if p["metadata"]["name"] != old_leader]
    # A paused server accepts connections and never answers: the apply hangs in CREATE ROLE.
    postgres.pause()
    try:
        apply_json(admin, service_request(name, env, "postgres-database", database="ledger"))

        def applying() -> JSON | None:
            sr = get(admin, "servicerequest", name, "-n", env)
            return sr if ((sr or {}).get("status") or {}).get("stage") == "Applying" else None

        during = wait_for(applying, timeout=180, interval=0.2, what="the apply to be running")
        HEALTHS.append(("request while applying", during, "Progressing"))
        # The chart's default is pod mode: the apply runs in a runner pod of its own, not in the operator's.
        run = RunIdentity(id=during["status"]["lastRun"]["id"], lock_id="", operation="apply")
        selector = f"{pods.RUNNER_SELECTOR},{pods.LABEL_RUN}={run.id}"
        runners = json.loads(admin("get", "pods", "-n", NAMESPACE, "-l", selector, "-o", "json").stdout)["items"]
        assert [p["spec"]["serviceAccountName"] for p in runners] == [pods.run_name(run)]
        # Both replicas' logs from now on (the old leader's go with its Pod): shown if the hand-over fails.
        followers = [
            subprocess.Popen(
                [admin.binary, f"--kubeconfig={admin.kubeconfig}", "logs", "-f", "-n", NAMESPACE, pod],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for pod in (old_leader, standby)
        ]
        deleted = time.monotonic()
        admin("delete", "pod", old_leader, "-n", NAMESPACE, "--wait=false")
        # The standby takes the Lease: at once when the leader releases it as it stops, within the
        # lease (10 s by default) if it dies without.
        try:
            wait_for(lambda: leader(admin) == standby or None, timeout=15, interval=0.2, what="the standby to lead")
        finally:
            for follower in followers:
                follower.terminate()
                out = follower.communicate(timeout=30)[0].decode(errors="replace").splitlines()
                print(f"--- {follower.args[-1]} ---", *[line for line in out if "DEBUG" not in line][-60:], sep="\n")
        print(f"the standby led {time.monotonic() - deleted:.1f}s after the leader pod was deleted")
        wait_for(
            lambda: all(p["metadata"]["name"] != old_leader for p in operator_pods(admin)) or None,
            timeout=120,
            what="the old leader pod to be gone",
        )
    finally:
        postgres.resume()
    admin("rollout", "status", f"deployment/{FULLNAME}", "-n", NAMESPACE, "--timeout=120s")
    done = wait_ready(admin, name, env, timeout=240)
    assert leader(admin) == standby
    assert len(operator_pods(admin)) == 2  # the Deployment replaced the old leader: now the standby
    # The new leader ran its own run to the end (a new run ID), and exactly one role and database exist.
    assert done["status"]["lastRun"]["id"] != during["status"]["lastRun"]["id"]
    database = secret_values(admin, f"{name}-connection", env)["database"]
    assert postgres.query(f"SELECT count(*) FROM pg_database WHERE datname = '{database}'") == ["1"]
    assert postgres.query(f"SELECT count(*) FROM pg_roles WHERE rolname = '{database}'") == ["1"]
    print("events:", sorted(event_reasons(admin, name, env)))
    admin("delete", "servicerequest", name, "-n", env, "--timeout=180s")
    assert postgres.query(f"SELECT 1 FROM pg_database WHERE datname = '{database}'") == []
    admin("delete", "environment", env, "--timeout=180s")


def test_an_upgrade_keeps_the_webhook_certificate(release: str, admin: Kubectl, node_cluster: LocalCluster) -> None:
    secret_name = f"{FULLNAME}-webhook-tls"
    before = get(admin, "secret", secret_name, "-n", NAMESPACE)
    assert before is not None
    helm(
        "upgrade", release, str(CHART), "--namespace", NAMESPACE, "--reuse-values", "--wait", "--timeout=5m",
        kubeconfig=node_cluster.kubeconfig, timeout=360,
    )  # fmt: skip
    after = get(admin, "secret", secret_name, "-n", NAMESPACE)
    assert after is not None
    assert after["data"] == before["data"]
    config = get(admin, "validatingwebhookconfiguration", FULLNAME)
    assert config is not None
    assert {w["clientConfig"]["caBundle"] for w in config["webhooks"]} == {before["data"]["ca.crt"]}
    # ... and the webhook still answers through the Service after the pod was replaced.
    assert_refused_by_the_webhook(admin)


def test_argocd_reads_the_health_of_what_the_pod_reconciled(release: str) -> None:
    results = {what: (argocd_health(obj), expected) for what, obj, expected in HEALTHS}
    wrong = {what: health for what, (health, expected) in results.items() if health["status"] != expected}
    assert not wrong, f"health.lua disagrees on: {json.dumps(wrong, indent=2)}"
    assert {expected for _, (_, expected) in results.items()} >= {"Healthy", "Progressing"}


def test_nothing_the_operator_pod_did_was_forbidden(release: str, admin: Kubectl) -> None:
    log = operator_log(admin)
    assert "running" in log.lower() or log, "no operator log"
    forbidden = [line for line in log.splitlines() if "forbidden" in line.lower() or " 403" in line]
    assert not forbidden, "the chart's RBAC refused calls:\n" + "\n".join(forbidden[:20])


def test_helm_uninstall_leaves_only_the_crds_and_the_catalog(
    release: str, admin: Kubectl, node_cluster: LocalCluster
) -> None:
    manifest = helm("get", "manifest", release, "-n", NAMESPACE, kubeconfig=node_cluster.kubeconfig).stdout
    objects: list[dict[str, Any]] = [doc for doc in yaml.safe_load_all(manifest) if doc]
    helm("uninstall", release, "-n", NAMESPACE, "--wait", kubeconfig=node_cluster.kubeconfig)
    kept = []
    for obj in objects:
        group = obj["apiVersion"].rpartition("/")[0]
        kind = f"{obj['kind'].lower()}.{group}" if group else obj["kind"].lower()
        args = [
            kind,
            obj["metadata"]["name"],
            *(["-n", obj["metadata"]["namespace"]] if obj["metadata"].get("namespace") else []),
        ]
        if get(admin, *args) is not None:
            kept.append((obj["kind"], obj["metadata"]["name"]))
    assert sorted(kept) == [
        ("GoldenPath", "postgres-database"),
        ("GoldenPath", "tiny"),
        ("GoldenPath", "web-service"),
    ]
    for plural in ("environments", "goldenpaths", "goldenpathrevisions", "servicerequests", "guardrailpolicies"):
        assert get(admin, "crd", f"{plural}.platform.blacktop.dev") is not None
    wait_for(lambda: not operator_pods(admin) or None, timeout=120, what="the operator pods to be gone")
